"""Multi-class losses on logits or log-probabilities: ``cross_entropy`` and ``nll_loss``.

Notation (as in the docs): ``x`` logits with classes along ``axis``, ``C`` classes,
``ℓ = log_softmax(x)``, ``y`` the target, ``w`` per-class weights, ``ε`` label smoothing.
"""

from __future__ import annotations

from typing import NamedTuple

from ._namespace import Array, Namespace, compute_dtype, index_dtype, is_lazy, namespace, take_along_class_axis
from ._reduce import reduce_loss
from ._softmax import shifted_logsumexp
from ._validate import (
    check_classes,
    check_floating,
    check_fraction,
    check_index_target,
    check_integer,
    check_probability_target,
    check_reduction,
    check_target_range,
    check_weight,
    class_axis,
)

__all__ = ["cross_entropy", "nll_loss"]

_NAMES = ("input", "target", "weight")


def cross_entropy(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    axis: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Cross entropy between logits and class-index or class-probability targets.

    PyTorch's ``torch.nn.functional.cross_entropy``, argument for argument, on any Array
    API library. With :math:`\ell = \mathrm{log\_softmax}(x)` over the class axis:

    * **Index targets** (integer ``target`` with ``input``'s shape minus the class axis):

      .. math::
         l_i = (1-\varepsilon)\,\bigl(-w_{y_i}\,\ell_{i,y_i}\bigr)
               + \frac{\varepsilon}{C}\,\Bigl(-\sum_c w_c\,\ell_{i,c}\Bigr),

      and :math:`l_i = 0` where :math:`y_i` equals ``ignore_index``. ``"mean"`` divides
      :math:`\sum_i l_i` by :math:`\sum_{i \text{ not ignored}} w_{y_i}` (the count when
      ``weight`` is None), so it is *not* ``reduction="none"`` followed by ``.mean()``.
      Every target ignored gives NaN for ``"mean"`` (0/0) and 0 for ``"sum"``.
    * **Probability targets** (floating ``target`` with ``input``'s shape): with
      :math:`q = (1-\varepsilon)\,y + \varepsilon/C`,
      :math:`l_i = -\sum_c w_c\,q_{i,c}\,\ell_{i,c}` (terms with :math:`w_c q_{i,c} = 0`
      count as 0, so ``-inf`` logits on zero-probability classes stay finite);
      ``"mean"`` divides by the number of positions.

    Label smoothing follows Szegedy et al., "Rethinking the Inception Architecture for
    Computer Vision" (2016), in PyTorch's uniform convention.

    Parameters
    ----------
    input : array
        Logits, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` (classes along
        ``axis``). Half-precision inputs are computed in float32.
    target : array
        Class indices (any integer dtype) or class probabilities (see above).
    weight : array, optional
        Per-class weights, shape ``(C,)``.
    ignore_index : int, default -100
        Index targets equal to it contribute nothing (index targets only). It may be a
        real class; that class still takes part in the softmax.
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
    axis : int, optional
        The class axis. ``None`` is PyTorch's rule: 0 for 1-D ``input``, else 1. Use
        ``axis=-1`` for ``(batch, time, vocab)`` logits.
    xp : namespace, optional
        The array namespace, to skip inference.

    Returns
    -------
    array
        In ``input``'s library, device and dtype: 0-d for ``"mean"``/``"sum"``, the
        target's shape (index targets) or ``input``'s shape without the class axis for
        ``"none"``.

    Raises
    ------
    IndexError
        An index outside ``[0, C)`` that is not ``ignore_index`` (eager arrays). Under JAX
        and Dask, whose values are not read, that position's loss is NaN instead.

    Examples
    --------
    >>> import numpy as np, xce
    >>> logits = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]])
    >>> round(float(xce.cross_entropy(logits, np.asarray([0, 2]))), 4)
    1.2288
    """
    xp = namespace(_NAMES, input, target, weight, xp=xp)
    reduction = check_reduction(reduction)
    eps = check_fraction(label_smoothing, "label_smoothing")
    ignore_index = check_integer(ignore_index, "ignore_index")
    ax = class_axis(input, axis)
    check_floating(input, "input", xp=xp)
    n_classes = check_classes(input, ax)
    lazy = is_lazy(input)
    check_weight(weight, n_classes, input, xp=xp, lazy=lazy)

    work = _as_compute(input, xp=xp)
    w = None if weight is None else xp.astype(weight, work.dtype)
    shifted, lse = shifted_logsumexp(work, ax, xp=xp)

    if tuple(target.shape) == tuple(input.shape):
        check_probability_target(target, input, ignore_index, xp=xp, lazy=lazy)
        loss = _probability_target_loss(shifted, lse, xp.astype(target, work.dtype), w, eps, ax, xp=xp)
        out = reduce_loss(loss, reduction, xp=xp)
    else:
        check_index_target(target, input, ax, xp=xp, lazy=lazy)
        index = _prepare_index(target, n_classes, ignore_index, xp=xp, lazy=lazy)
        lse = xp.squeeze(lse, axis=ax)
        loss = lse - take_along_class_axis(shifted, index.safe, ax, xp=xp)  # -ℓ[y]
        w_y = None if w is None else _gather_weight(w, index.safe, xp=xp)
        if w_y is not None:
            loss = w_y * loss
        if eps > 0.0:
            loss = (1.0 - eps) * loss + (eps / n_classes) * _uniform_smoothing_term(shifted, lse, w, ax, xp=xp)
        loss = _mask(loss, index, xp=xp)
        out = reduce_loss(loss, reduction, denominator=_denominator(w_y, index, xp=xp), xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def nll_loss(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    axis: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Negative log-likelihood of class-index targets given log-probabilities.

    PyTorch's ``torch.nn.functional.nll_loss``:
    :math:`l_i = -w_{y_i}\,x_{i,y_i}`, 0 where :math:`y_i` equals ``ignore_index``;
    ``"mean"`` divides by :math:`\sum_{i \text{ not ignored}} w_{y_i}`.
    ``cross_entropy(x, y)`` equals ``nll_loss(log_softmax(x, axis=1), y)``.

    Parameters are those of :func:`cross_entropy` (index targets only), with ``input``
    holding log-probabilities (any real values are accepted, as in PyTorch).

    Examples
    --------
    >>> import numpy as np, xce
    >>> float(xce.nll_loss(np.asarray([[2.0, 3.0, 1.0], [3.0, 7.0, 9.0]]), np.asarray([1, 2])))
    -6.0
    """
    xp = namespace(_NAMES, input, target, weight, xp=xp)
    reduction = check_reduction(reduction)
    ignore_index = check_integer(ignore_index, "ignore_index")
    ax = class_axis(input, axis)
    check_floating(input, "input", xp=xp)
    n_classes = check_classes(input, ax)
    lazy = is_lazy(input)
    check_weight(weight, n_classes, input, xp=xp, lazy=lazy)
    check_index_target(target, input, ax, xp=xp, lazy=lazy)

    work = _as_compute(input, xp=xp)
    index = _prepare_index(target, n_classes, ignore_index, xp=xp, lazy=lazy)
    loss = -take_along_class_axis(work, index.safe, ax, xp=xp)
    w_y = None if weight is None else _gather_weight(xp.astype(weight, work.dtype), index.safe, xp=xp)
    if w_y is not None:
        loss = w_y * loss
    loss = _mask(loss, index, xp=xp)
    out = reduce_loss(loss, reduction, denominator=_denominator(w_y, index, xp=xp), xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


# --- shared pieces of the index-target path ------------------------------------------------


class _Index(NamedTuple):
    safe: Array  # targets with ignored/invalid positions replaced by 0, in the indexing dtype
    ignored: Array | None  # target == ignore_index, or None when no value can equal it
    invalid: Array | None  # out of range and not ignored (lazy arrays only; eager ones raise)


def _prepare_index(target: Array, n_classes: int, ignore_index: int, *, xp: Namespace, lazy: bool) -> _Index:
    info = xp.iinfo(target.dtype)
    # A uint8 target can never equal -100; comparing would overflow in strict namespaces.
    ignored = target == ignore_index if info.min <= ignore_index <= info.max else None
    invalid = None
    if lazy:
        invalid = _out_of_range(target, n_classes, info, xp=xp)
        if invalid is not None and ignored is not None:
            invalid = invalid & ~ignored
    else:
        check_target_range(target, n_classes, ignored, xp=xp)
    drop = ignored if invalid is None else invalid if ignored is None else ignored | invalid
    safe = target if drop is None else xp.where(drop, 0, target)
    dtype = index_dtype(xp)
    if safe.dtype != dtype:
        safe = xp.astype(safe, dtype)
    return _Index(safe, ignored, invalid)


def _out_of_range(target: Array, n_classes: int, info, *, xp: Namespace) -> Array | None:
    checks = []
    if info.min < 0:
        checks.append(target < 0)
    if info.max >= n_classes:
        checks.append(target >= n_classes)
    if not checks:
        return None
    return checks[0] if len(checks) == 1 else checks[0] | checks[1]


def _gather_weight(w: Array, index: Array, *, xp: Namespace) -> Array:
    """``w[index]`` for an index array of any shape (``take`` wants 1-D indices)."""
    return xp.reshape(xp.take(w, xp.reshape(index, (-1,)), axis=0), index.shape)


def _mask(loss: Array, index: _Index, *, xp: Namespace) -> Array:
    if index.invalid is not None:
        # Lazy arrays: an out-of-range label must not become a plausible finite loss.
        loss = xp.where(index.invalid, float("nan"), loss)
    if index.ignored is not None:
        loss = xp.where(index.ignored, 0.0, loss)
    return loss


def _denominator(w_y: Array | None, index: _Index, *, xp: Namespace) -> Array | None:
    """Per-position weights of the ``"mean"`` denominator; None means 'count positions'."""
    if index.ignored is None:
        return w_y
    kept = w_y if w_y is not None else xp.ones(index.ignored.shape, dtype=xp.float32, device=_device(index.safe))
    return xp.where(index.ignored, 0.0, kept)


def _device(x: Array):
    from ._namespace import device_of

    return device_of(x)


def _uniform_smoothing_term(shifted: Array, lse: Array, w: Array | None, ax: int, *, xp: Namespace) -> Array:
    r""":math:`-\sum_c w_c \ell_c`, from the shifted logits: :math:`\sum_c w_c\,(lse - s_c)`."""
    if w is None:
        return shifted.shape[ax] * lse - xp.sum(shifted, axis=ax)
    w_b = _broadcast_classes(w, shifted.ndim, ax, xp=xp)
    return xp.sum(w) * lse - xp.sum(w_b * shifted, axis=ax)


def _probability_target_loss(
    shifted: Array, lse: Array, q: Array, w: Array | None, eps: float, ax: int, *, xp: Namespace
) -> Array:
    if eps > 0.0:
        q = (1.0 - eps) * q + eps / shifted.shape[ax]
    if w is not None:
        q = q * _broadcast_classes(w, shifted.ndim, ax, xp=xp)
    neg_log_p = lse - shifted
    # 0 · (-log p) is 0 even where log p = -inf (masked logits with no target mass).
    return xp.sum(xp.where(q == 0.0, 0.0, q * neg_log_p), axis=ax)


def _broadcast_classes(w: Array, ndim: int, ax: int, *, xp: Namespace) -> Array:
    shape = [1] * ndim
    shape[ax] = w.shape[0]
    return xp.reshape(w, tuple(shape))


def _as_compute(x: Array, *, xp: Namespace) -> Array:
    dtype = compute_dtype(x.dtype, xp=xp)
    return x if dtype == x.dtype else xp.astype(x, dtype)

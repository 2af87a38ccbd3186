"""Multi-class losses on logits or log-probabilities: ``cross_entropy``, ``nll_loss``,
``softmax_focal_loss`` and ``poly1_cross_entropy``.

Notation (as in the docs): ``x`` logits with classes along ``axis``, ``C`` classes,
``ℓ = log_softmax(x)``, ``y`` the target, ``w`` per-class weights, ``ε`` label smoothing.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _engine
from ._engine import RowStats
from ._namespace import (
    Array,
    Namespace,
    as_compute,
    compute_dtype,
    device_of,
    has_values,
    index_dtype,
    is_lazy,
    namespace,
    take_along_class_axis,
)
from ._reduce import reduce_loss
from ._validate import (
    check_choice,
    check_classes,
    check_floating,
    check_fraction,
    check_index_target,
    check_integer,
    check_probability_target,
    check_real,
    check_reduction,
    check_target_range,
    check_weight,
    class_axis,
)
from .adapters import for_array
from .labels import SMOOTHING_MODES, uniform_equivalent

__all__ = ["cross_entropy", "nll_loss", "poly1_cross_entropy", "softmax_focal_loss"]

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
    label_smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
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
    Computer Vision" (2016). ``label_smoothing_mode="uniform"`` is PyTorch's convention
    (ε/C to every class, as above). ``"off_target"`` (fairseq, Megatron-LM) puts 1-ε on
    the target and ε/(C-1) on every other class; it is the uniform formula with
    :math:`\varepsilon' = \varepsilon\,C/(C-1)`, so weights, ``ignore_index`` and the
    ``"mean"`` denominator behave identically in both modes (for probability targets,
    :math:`q = (1-\varepsilon')\,y + \varepsilon'/C`).

    **z-loss** (PaLM, Chowdhery et al. 2022): ``z_loss=z > 0`` adds
    :math:`z\,(\log\sum_c e^{x_{i,c}})^2` to every position that is not ignored (0 at
    ignored ones, in ``"none"`` too). It is *not* multiplied by the class weights: with
    ``"mean"`` the cross-entropy part is divided by :math:`\sum w_{y_i}` as above and the
    z part by the **number** of non-ignored positions (probability targets: the number of
    positions, like the cross-entropy part), so ``z`` means the same with or without
    ``weight``. ``"sum"`` adds the two sums.

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
    label_smoothing_mode : {"uniform", "off_target"}, default "uniform"
        How ``label_smoothing`` spreads its mass (see above). ``"off_target"`` needs C >= 2.
    z_loss : float >= 0, default 0.0
        Coefficient of the PaLM z-loss on :math:`\log Z = \mathrm{logsumexp}(x)`.
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
    >>> x8 = np.asarray([[1.0, 8.0, 1.0], [1.0, 1.0, 8.0]])
    >>> round(float(xce.cross_entropy(x8, np.asarray([1, 2]), label_smoothing=0.05,
    ...                               label_smoothing_mode="off_target")), 4)
    0.3518
    """
    xp = namespace(_NAMES, input, target, weight, xp=xp)
    if _engine.supports(input):
        # Large eager inputs under autograd: the adapter's analytic backward saves O(N), not
        # the blocked forward's temporaries (torch; other libraries have no such adapter).
        adapter = for_array(input)
        if adapter is not None and adapter.wants_cross_entropy(input, target, weight):
            return adapter.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, axis=axis,
                                         label_smoothing_mode=label_smoothing_mode, z_loss=z_loss)
    args = check_cross_entropy_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis,
                                         label_smoothing_mode, z_loss, xp=xp)
    return cross_entropy_with_stats(input, target, weight, args, xp=xp)[0]


def cross_entropy_with_stats(
    input: Array, target: Array, weight: Array | None, args: CrossEntropyArguments, *, xp: Namespace
) -> tuple[Array, RowStats]:
    """:func:`cross_entropy` of checked arguments, and the per-position softmax statistics
    it was computed from (``st.shift + st.lse`` is the logsumexp an analytic backward needs)."""
    reduction, eps, z, ax, n_classes, lazy, index = args
    dtype = compute_dtype(input.dtype, xp=xp)
    w = None if weight is None else xp.astype(weight, dtype)

    if index is None:  # probability targets
        st = _softmax_stats(input, ax, xp=xp, lazy=lazy, weight=w, probs=target, smoothing=eps, dtype=dtype)
        loss = st.prob_mass * st.lse - st.prob_dot  # -Σ_c w_c q_c ℓ_c
        if z > 0.0:
            loss = loss + z * (st.lse + st.shift) ** 2  # same count denominator as the cross-entropy part
        out = reduce_loss(loss, reduction, xp=xp)
    else:
        st = _softmax_stats(input, ax, xp=xp, lazy=lazy, index=index.safe, weight=w, class_sum=eps > 0.0, dtype=dtype)
        loss = st.lse - st.target  # -ℓ[y]
        w_y = None if w is None else _gather_weight(w, index.safe, xp=xp)
        if w_y is not None:
            loss = w_y * loss
        if eps > 0.0:
            # -Σ_c w_c ℓ_c = Σ_c w_c (lse - s_c), from per-position sums only.
            total_weight = n_classes if w is None else xp.sum(w)
            loss = (1.0 - eps) * loss + (eps / n_classes) * (total_weight * st.lse - st.class_sum)
        loss = _mask(loss, index, xp=xp)
        out = reduce_loss(loss, reduction, denominator=_denominator(w_y, index, xp=xp), xp=xp)
        if z > 0.0:
            # Unweighted: averaged over the non-ignored positions whatever the class weights.
            z_term = _mask(z * (st.lse + st.shift) ** 2, index, xp=xp)
            out = out + reduce_loss(z_term, reduction, denominator=_denominator(None, index, xp=xp), xp=xp)
    return (out if out.dtype == input.dtype else xp.astype(out, input.dtype)), st


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

    work = as_compute(input, xp=xp)
    index = _prepare_index(target, n_classes, ignore_index, xp=xp, lazy=lazy)
    loss = -take_along_class_axis(work, index.safe, ax, xp=xp)
    w_y = None if weight is None else _gather_weight(xp.astype(weight, work.dtype), index.safe, xp=xp)
    if w_y is not None:
        loss = w_y * loss
    loss = _mask(loss, index, xp=xp)
    out = reduce_loss(loss, reduction, denominator=_denominator(w_y, index, xp=xp), xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def softmax_focal_loss(
    input: Array,
    target: Array,
    gamma: float = 2.0,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    axis: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Multi-class (softmax) focal loss on logits and class-index targets.

    Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), with the softmax
    probability of the target class :math:`p_{i,y} = e^{\ell_{i,y_i}}`:

    .. math::
       l_i = -w_{y_i}\,(1 - p_{i,y})^\gamma\,\ell_{i,y_i},

    0 where :math:`y_i` equals ``ignore_index``; reduced exactly like :func:`cross_entropy`'s
    index path (``"mean"`` divides by :math:`\sum_{i \text{ not ignored}} w_{y_i}`), so
    ``gamma=0`` gives ``cross_entropy``. :math:`1 - p` is computed as
    :math:`-\mathrm{expm1}(\ell)`, accurate when :math:`p \to 1`. Class-index targets only;
    per-class α is the ``weight`` argument.

    Parameters
    ----------
    input : array
        Logits, classes along ``axis`` (PyTorch's rule when None). Half precision is computed in float32.
    target : array
        Integer class indices, ``input``'s shape without the class axis.
    gamma : float >= 0, default 2.0
    weight : array, optional
        Per-class weights, shape ``(C,)``.
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"
    axis : int, optional
    xp : namespace, optional

    Returns
    -------
    array
        As :func:`cross_entropy`. Out-of-range targets raise ``IndexError`` on eager arrays
        and give NaN under JAX and Dask.

    Examples
    --------
    >>> import numpy as np, xce
    >>> logits = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]])
    >>> round(float(xce.softmax_focal_loss(logits, np.asarray([0, 2]))), 4)
    0.7966
    """
    xp = namespace(_NAMES, input, target, weight, xp=xp)
    reduction = check_reduction(reduction)
    gamma = check_real(gamma, "gamma", minimum=0.0)
    log_p, w_y, index = _target_log_prob(input, target, weight, ignore_index, axis, "softmax_focal_loss", xp=xp)
    one_minus_p = -xp.expm1(log_p)
    # Rounding can leave log p a hair above 0; a negative base would make a fractional power NaN.
    one_minus_p = xp.where(one_minus_p > 0.0, one_minus_p, 0.0)
    loss = -(one_minus_p**gamma) * log_p
    return _reduce_index_loss(loss, w_y, index, reduction, input, xp=xp)


def poly1_cross_entropy(
    input: Array,
    target: Array,
    epsilon: float = 1.0,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    axis: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Poly-1 cross entropy: cross entropy plus ε times the first polynomial term.

    Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions" (ICLR 2022):

    .. math::
       l_i = w_{y_i}\,\bigl(-\ell_{i,y_i} + \varepsilon\,(1 - p_{i,y})\bigr),

    0 where :math:`y_i` equals ``ignore_index``, reduced like :func:`cross_entropy`'s index
    path. The class weight multiplies the whole per-position loss (so ``"mean"`` stays a
    weighted mean of Poly-1 losses). ``epsilon=0`` gives ``cross_entropy``; the paper
    recommends :math:`\varepsilon \ge -1` (any finite value is accepted). Class-index
    targets only (optax's ``poly_loss_cross_entropy`` is the dense-label form).

    Parameters
    ----------
    input : array
        Logits, classes along ``axis`` (PyTorch's rule when None). Half precision is computed in float32.
    target : array
        Integer class indices, ``input``'s shape without the class axis.
    epsilon : float, default 1.0
    weight : array, optional
        Per-class weights, shape ``(C,)``.
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"
    axis : int, optional
    xp : namespace, optional

    Returns
    -------
    array
        As :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, xce
    >>> logits = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]])
    >>> round(float(xce.poly1_cross_entropy(logits, np.asarray([0, 2]))), 4)
    1.8343
    """
    xp = namespace(_NAMES, input, target, weight, xp=xp)
    reduction = check_reduction(reduction)
    epsilon = check_real(epsilon, "epsilon")
    log_p, w_y, index = _target_log_prob(input, target, weight, ignore_index, axis, "poly1_cross_entropy", xp=xp)
    loss = epsilon * -xp.expm1(log_p) - log_p
    return _reduce_index_loss(loss, w_y, index, reduction, input, xp=xp)


def _target_log_prob(
    input: Array, target: Array, weight: Array | None, ignore_index: int, axis: int | None, name: str, *, xp: Namespace
) -> tuple[Array, Array | None, _Index]:
    """Checks of the index-only losses, then (log p_y, w_y, index) in the compute dtype."""
    ignore_index = check_integer(ignore_index, "ignore_index")
    ax = class_axis(input, axis)
    check_floating(input, "input", xp=xp)
    n_classes = check_classes(input, ax)
    lazy = is_lazy(input)
    check_weight(weight, n_classes, input, xp=xp, lazy=lazy)
    if tuple(target.shape) == tuple(input.shape):
        raise ValueError(
            f"{name} takes class-index targets (input's shape without the class axis); got a target of input's "
            f"shape {tuple(input.shape)}. Convert probabilities with argmax, or use cross_entropy for soft targets."
        )
    check_index_target(target, input, ax, xp=xp, lazy=lazy)
    dtype = compute_dtype(input.dtype, xp=xp)
    index = _prepare_index(target, n_classes, ignore_index, xp=xp, lazy=lazy)
    st = _softmax_stats(input, ax, xp=xp, lazy=lazy, index=index.safe, dtype=dtype)
    w_y = None if weight is None else _gather_weight(xp.astype(weight, dtype), index.safe, xp=xp)
    return st.target - st.lse, w_y, index


def _reduce_index_loss(
    loss: Array, w_y: Array | None, index: _Index, reduction: str, input: Array, *, xp: Namespace
) -> Array:
    """Weight, mask and reduce per-position losses exactly as cross_entropy's index path."""
    if w_y is not None:
        loss = w_y * loss
    loss = _mask(loss, index, xp=xp)
    out = reduce_loss(loss, reduction, denominator=_denominator(w_y, index, xp=xp), xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


class CrossEntropyArguments(NamedTuple):
    reduction: str
    eps: float  # in the uniform convention (off_target already converted)
    z: float
    ax: int
    n_classes: int
    lazy: bool
    index: _Index | None  # None for probability targets


def check_cross_entropy_arguments(
    input: Array,
    target: Array,
    weight: Array | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    axis: int | None,
    label_smoothing_mode: str,
    z_loss: float,
    *,
    xp: Namespace,
) -> CrossEntropyArguments:
    """Every check of :func:`cross_entropy`'s arguments, shared with its gradient."""
    reduction = check_reduction(reduction)
    eps = check_fraction(label_smoothing, "label_smoothing")
    mode = check_choice(label_smoothing_mode, "label_smoothing_mode", SMOOTHING_MODES)
    z = check_real(z_loss, "z_loss", minimum=0.0)
    ignore_index = check_integer(ignore_index, "ignore_index")
    ax = class_axis(input, axis)
    check_floating(input, "input", xp=xp)
    n_classes = check_classes(input, ax)
    eps = uniform_equivalent(eps, mode, n_classes, "label_smoothing")
    lazy = is_lazy(input)
    check_weight(weight, n_classes, input, xp=xp, lazy=lazy)
    if tuple(target.shape) == tuple(input.shape):
        check_probability_target(target, input, ignore_index, xp=xp, lazy=lazy)
        index = None
    else:
        check_index_target(target, input, ax, xp=xp, lazy=lazy)
        index = _prepare_index(target, n_classes, ignore_index, xp=xp, lazy=lazy)
    return CrossEntropyArguments(reduction, eps, z, ax, n_classes, lazy, index)


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
    elif _all_valid(target, n_classes, ignore_index, xp=xp):
        # The common case, settled by two reductions: no position ignored, none out of range
        # (small calls are dispatch-bound; this skips a comparison, two masks and three `where`s).
        ignored = None
    else:
        if ignored is not None and has_values(target) and not bool(xp.any(ignored)):
            ignored = None
        check_target_range(target, n_classes, ignored, xp=xp)
    drop = ignored if invalid is None else invalid if ignored is None else ignored | invalid
    safe = target if drop is None else xp.where(drop, 0, target)
    dtype = index_dtype(xp)
    if safe.dtype != dtype:
        safe = xp.astype(safe, dtype)
    return _Index(safe, ignored, invalid)


def _all_valid(target: Array, n_classes: int, ignore_index: int, *, xp: Namespace) -> bool:
    """Eager: every index lies in [0, n_classes) and none equals ``ignore_index``."""
    if not has_values(target) or 0 in tuple(target.shape):
        return False
    lo, hi = int(xp.min(target)), int(xp.max(target))
    return lo >= 0 and hi < n_classes and not lo <= ignore_index <= hi


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
    kept = w_y if w_y is not None else xp.ones(index.ignored.shape, dtype=xp.float32, device=device_of(index.safe))
    return xp.where(index.ignored, 0.0, kept)


def _softmax_stats(
    x: Array,
    ax: int,
    *,
    xp: Namespace,
    lazy: bool,
    index: Array | None = None,
    weight: Array | None = None,
    class_sum: bool = False,
    probs: Array | None = None,
    smoothing: float = 0.0,
    dtype: Any,
) -> RowStats:
    """Per-position softmax statistics of ``x`` along ``ax``, shaped like ``x`` without ``ax``.

    ``x`` is viewed as ``(A, C)`` or ``(A, C, B)`` (the axes before and after the class
    axis flattened) so one engine serves every layout; eager arrays large enough go through
    the blocked engine, the rest (JAX, Dask, small inputs) through the same math as one block.
    """
    n_classes = x.shape[ax]
    outer, inner = math.prod(x.shape[:ax]), math.prod(x.shape[ax + 1 :])
    shape = (outer, n_classes) if inner == 1 else (outer, n_classes, inner)
    out_shape = tuple(x.shape[:ax]) + tuple(x.shape[ax + 1 :])

    def view(a: Array | None, s: tuple[int, ...]) -> Array | None:
        return a if a is None or tuple(a.shape) == s else xp.reshape(a, s)

    x3 = view(x, shape)
    idx3 = view(index, shape[:1] + shape[2:])
    probs3 = view(probs, shape)
    compute = _engine.row_stats if not lazy and _engine.supports(x) else _engine.fused_stats
    st = compute(x3, idx3, xp=xp, weight=weight, class_sum=class_sum, probs=probs3, smoothing=smoothing,
                 compute_dtype=dtype)
    return RowStats(*(view(f, out_shape) for f in st))

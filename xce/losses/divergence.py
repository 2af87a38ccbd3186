"""Kullback-Leibler divergence with PyTorch's argument order (input = log-probabilities)."""

from __future__ import annotations

from typing import Any

from .._arrays import axis_length
from .._namespace import Array, Namespace, compute_dtype, is_lazy, namespace, on_input_device
from .._reduce import per_count, reduce_loss
from .._validate import check_floating, check_mask, check_reduction, check_same_device

__all__ = ["kl_div"]


@on_input_device
def kl_div(
    input: Array,
    target: Array,
    reduction: str = "mean",
    log_target: bool = False,
    *,
    where: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Pointwise Kullback-Leibler divergence :math:`D_{KL}(P \,\|\, Q)` with ``input = log Q``.

    PyTorch's ``torch.nn.functional.kl_div``: ``input`` holds log-probabilities
    :math:`\log q`, ``target`` probabilities :math:`p` (or :math:`\log p` with
    ``log_target=True``):

    .. math::
       l_i = p_i\,(\log p_i - \log q_i), \qquad
       l_i = e^{t_i}\,(t_i - \log q_i) \ \text{with} \ t = \log p \ (\texttt{log\_target}).

    An element with :math:`p_i = 0` contributes exactly 0 (:math:`0 \log 0 = 0`), also
    where :math:`\log q_i = -\infty` (PyTorch gives NaN there). Negative target values
    give NaN. Reductions: ``"none"``, ``"sum"``, ``"mean"`` (over all elements — not the
    KL divergence of a batch of distributions), and ``"batchmean"``: the sum divided by
    ``input.shape[0]``, the mathematically correct batch KL divergence. Kullback and
    Leibler, "On Information and Sufficiency" (1951).

    ``where`` (optax's ``kl_divergence(..., where=)``, per element): masked elements
    contribute exactly 0, with a zero gradient, whatever their values (they are replaced
    before any arithmetic); ``"mean"`` divides by the number of kept elements and
    ``"batchmean"`` by the number of rows (indices along ``input``'s first axis) that keep
    at least one element, so that an all-True mask gives PyTorch's reductions and a masked
    row leaves the batch. optax's function returns the per-row sums: ``"none"`` summed
    over the class axis.

    Parameters
    ----------
    input : array
        Log-probabilities :math:`\log q`, any shape. Half precision is computed in float32.
    target : array
        Probabilities (or log-probabilities with ``log_target``), broadcastable with ``input``.
    reduction : {"mean", "batchmean", "sum", "none"}, default "mean"
    log_target : bool, default False
    where : bool array, optional
        A mask broadcastable to the elementwise loss (the broadcast shape of ``input`` and
        ``target``); elements where it is False count as absent (see above).
    xp : namespace, optional

    Returns
    -------
    array
        ``input``'s library, device and dtype; the broadcast shape for ``"none"``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> log_q = np.log(np.asarray([[0.5, 0.5], [0.9, 0.1]]))
    >>> p = np.asarray([[1.0, 0.0], [0.5, 0.5]])
    >>> round(float(xce.kl_div(log_q, p, reduction="batchmean")), 4)
    0.602
    """
    xp = namespace(("input", "target", "where"), input, target, where, xp=xp)
    reduction = check_reduction(reduction, ("none", "mean", "sum", "batchmean"))
    if not isinstance(log_target, bool):
        raise TypeError(f"log_target must be a bool; got {type(log_target).__name__} {log_target!r}.")
    check_floating(input, "input", xp=xp)
    check_floating(target, "target", xp=xp)
    try:
        shape = _broadcast_shape(tuple(input.shape), tuple(target.shape))
    except ValueError:
        raise ValueError(
            f"target of shape {tuple(target.shape)} does not broadcast with input of shape {tuple(input.shape)}."
        ) from None
    lazy = is_lazy(input)
    if not lazy:
        check_same_device(input, target, "target")
    keep = None
    if where is not None:
        keep = check_mask(where, shape, input, xp=xp, lazy=lazy,
                          loss="the elementwise loss (the broadcast shape of input and target)")

    dtype = compute_dtype(input.dtype, xp=xp)
    log_q = input if input.dtype == dtype else xp.astype(input, dtype)
    t = target if target.dtype == dtype else xp.astype(target, dtype)
    if keep is not None:
        # Masked elements get t = 0 (log_target: p = 1, t - log q = 0) before any arithmetic: an
        # exact 0 that no inf or NaN there reaches, in the value or in the gradient.
        log_q, t = xp.where(keep, log_q, 0.0), xp.where(keep, t, 0.0)
    out = _reduce(_pointwise(log_q, t, log_target, xp=xp), reduction, input, keep, xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def _pointwise(log_q: Array, t: Array, log_target: bool, *, xp: Namespace) -> Array:
    r"""The unreduced divergence :math:`p\,(\log p - \log q)`, 0 where :math:`p = 0`."""
    if log_target:
        return xp.exp(t) * (t - log_q)
    # Double where: zero-target elements never evaluate log 0 or 0·(-inf) (masked log q), so
    # neither the value nor the gradient sees a NaN; a negative target still gives NaN.
    zero = t == 0.0
    return xp.where(zero, 0.0, t * (xp.log(xp.where(zero, 1.0, t)) - xp.where(zero, 0.0, log_q)))


def _reduce(loss: Array, reduction: str, input: Array, keep: Array | None, *, xp: Namespace) -> Array:
    """PyTorch's reductions; under ``where``, ``"mean"`` over the kept elements and
    ``"batchmean"`` over the rows that keep one."""
    if reduction == "batchmean":
        total = reduce_loss(loss, "sum", xp=xp)
        if keep is None:  # PyTorch: input.size(0) (counted from input where symbolic); 0-d: the sum
            return per_count(total, axis_length(input, 0, xp=xp) if input.ndim else 1, xp=xp)
        return total / _kept_rows(keep, input, total.dtype, xp=xp)
    count = None if keep is None or reduction != "mean" else xp.astype(keep, loss.dtype)
    return reduce_loss(loss, reduction, denominator=count, xp=xp)


def _kept_rows(keep: Array, input: Array, dtype: Any, *, xp: Namespace) -> Array:
    """How many of ``input``'s rows (indices along its first axis) keep an element: the
    ``"batchmean"`` denominator under ``where`` (``input.shape[0]`` when all are kept)."""
    if input.ndim == 0 or input.shape[0] == 1:  # one row, broadcast or not
        return xp.astype(xp.any(keep), dtype)
    row_axis = keep.ndim - input.ndim  # where input's first axis lies in the broadcast shape
    others = tuple(a for a in range(keep.ndim) if a != row_axis)
    return xp.sum(xp.astype(xp.any(keep, axis=others) if others else keep, dtype))


def _broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for i in range(max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x != y and 1 not in (x, y) and None not in (x, y):  # None: symbolic, checked when the graph runs
            raise ValueError
        out.append(y if x == 1 else x)
    return tuple(reversed(out))

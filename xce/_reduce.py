"""Reductions shared by every loss (``none``, ``sum``, the weighted ``mean``) and the
per-position scale that is their derivative."""

from __future__ import annotations

from typing import Any

from ._arrays import count
from ._namespace import Array, Namespace, device_of

__all__ = ["per_count", "reduce_loss", "reduction_scale"]


def reduce_loss(loss: Array, reduction: str, *, denominator: Array | None = None, xp: Namespace) -> Array:
    """Reduce per-position losses.

    ``mean`` divides the sum by ``sum(denominator)`` when given (PyTorch's weighted mean:
    the weights of the non-ignored targets), else by the number of positions. An empty or
    fully ignored batch gives ``0/0 = NaN`` for ``mean`` and ``0`` for ``sum``, as in PyTorch.
    """
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    if denominator is None:
        return per_count(total, count(loss, xp=xp), xp=xp)
    return total / xp.sum(denominator)


def per_count(total: Any, n: Any, *, xp: Namespace, dtype: Any = None) -> Any:
    """``total / n`` for a count ``n``: a Python int, or a 0-d integer array (in ``dtype``,
    default ``total``'s) where it was counted from a symbolic shape (:func:`xce._arrays.count`).
    For an array ``total`` this is the array's division: 0/0 gives NaN instead of raising."""
    if isinstance(n, int):
        return total / float(n)
    return total / xp.astype(n, total.dtype if dtype is None else dtype)


def reduction_scale(cotangent: Array | None, reduction: str, per_position: Array, denominator: Array | None,
                    dtype: Any, *, xp: Namespace) -> Array | float:
    """Per-position factor ``s`` with ``d(reduce_loss(l)) = Σ_i s_i dl_i``, times the cotangent
    (the upstream gradient: a scalar for ``"mean"``/``"sum"``, the loss's shape for ``"none"``)."""
    g: Array | float = 1.0 if cotangent is None else xp.astype(cotangent, dtype)
    if reduction != "mean":
        return g
    if denominator is None:
        n = count(per_position, xp=xp)  # a number, or an array where the shape is symbolic
        den = xp.asarray(float(n), dtype=dtype, device=device_of(per_position)) if isinstance(n, int) else \
            xp.astype(n, dtype)
    else:
        den = xp.astype(xp.sum(denominator), dtype)
    return g / den

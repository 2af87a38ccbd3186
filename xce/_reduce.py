"""Reductions shared by every loss (``none``, ``sum``, the weighted ``mean``) and the
per-position scale that is their derivative."""

from __future__ import annotations

from typing import Any

from ._namespace import Array, Namespace, device_of

__all__ = ["reduce_loss", "reduction_scale"]


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
        count = 1
        for n in loss.shape:
            count *= n
        # total is an array, so this is the array's division: 0/0 gives NaN instead of raising.
        return total / float(count)
    return total / xp.sum(denominator)


def reduction_scale(cotangent: Array | None, reduction: str, per_position: Array, denominator: Array | None,
                    dtype: Any, *, xp: Namespace) -> Array | float:
    """Per-position factor ``s`` with ``d(reduce_loss(l)) = Σ_i s_i dl_i``, times the cotangent
    (the upstream gradient: a scalar for ``"mean"``/``"sum"``, the loss's shape for ``"none"``)."""
    g: Array | float = 1.0 if cotangent is None else xp.astype(cotangent, dtype)
    if reduction != "mean":
        return g
    if denominator is None:
        count = 1
        for n in per_position.shape:
            count *= n
        den = xp.asarray(float(count), dtype=dtype, device=device_of(per_position))
    else:
        den = xp.astype(xp.sum(denominator), dtype)
    return g / den

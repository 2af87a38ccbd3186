"""Reductions shared by every loss: ``none``, ``sum`` and the (weighted) ``mean``."""

from __future__ import annotations

from ._namespace import Array, Namespace


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


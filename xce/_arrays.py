"""Small array helpers written against the standard: the class axis put back or broadcast,
and a result handed back in its input's shape and dtype."""

from __future__ import annotations

from ._namespace import Array, Namespace

__all__ = ["along_classes", "expand_at", "like_input"]


def expand_at(coef: Array | float, axis: int, *, xp: Namespace) -> Array | float:
    """A per-position factor with the class axis put back (scalars pass through)."""
    if isinstance(coef, float) or coef.ndim == 0:
        return coef
    return xp.expand_dims(coef, axis=axis)


def along_classes(w: Array, ndim: int, axis: int, *, xp: Namespace) -> Array:
    """Per-class ``w`` shaped to broadcast along class axis ``axis`` of an ``ndim``-d array."""
    shape = [1] * ndim
    shape[axis] = w.shape[0]
    return xp.reshape(w, tuple(shape))


def like_input(g: Array, input: Array, *, xp: Namespace) -> Array:
    """``g`` broadcast to ``input``'s shape and cast to its dtype (copies only what differs)."""
    if tuple(g.shape) != tuple(input.shape):
        g = xp.broadcast_to(g, tuple(input.shape))
    return g if g.dtype == input.dtype else xp.astype(g, input.dtype)

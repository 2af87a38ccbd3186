"""Small array helpers written against the standard: the class axis put back or broadcast,
a result handed back in its input's shape and dtype, and counts that also hold for
symbolic shapes (dimensions known only when the graph runs, shown as ``None``)."""

from __future__ import annotations

from typing import Any

from ._namespace import Array, Namespace, device_of, index_dtype, is_masked, known_size

__all__ = ["along_classes", "axis_length", "count", "expand_at", "like_input", "positions_like"]


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
        g = broadcast_like(g, input, xp=xp)
    return g if g.dtype == input.dtype else xp.astype(g, input.dtype)


def broadcast_like(g: Array, like: Array, *, xp: Namespace) -> Array:
    """``g`` broadcast to ``like``'s shape; through ``broadcast_arrays`` where that shape is
    symbolic (``broadcast_to`` wants the numbers)."""
    if known_size(tuple(like.shape)) is None:
        return xp.broadcast_arrays(g, like)[0]
    return xp.broadcast_to(g, tuple(like.shape))


def count(x: Array, *, xp: Namespace) -> Any:
    """``x``'s number of elements: a Python int when its shape is known (no array operation),
    else a 0-d array of the indexing dtype counted from ``x`` itself: symbolic shapes, and
    masked arrays, whose masked elements ``sum`` skips and so are not counted."""
    n = known_size(tuple(x.shape))
    if n is not None and not is_masked(x):
        return n
    return xp.sum(xp.ones_like(x, dtype=index_dtype(xp)))


def axis_length(x: Array, axis: int, *, xp: Namespace) -> Any:
    """``x.shape[axis]``: a Python int where known, else a 0-d array counted from ``x``."""
    n = known_size((x.shape[axis],))
    if n is not None:
        return n
    axis %= x.ndim
    return count(x[tuple(slice(None) if i == axis else 0 for i in range(x.ndim))], xp=xp)


def positions_like(x: Array, axis: int, dtype: Any, *, xp: Namespace) -> Array:
    """An array of ``x``'s shape without ``axis``, whose shape (count) is read, never its
    values: ``empty`` where the shape is known, else ``x`` at index 0 along ``axis`` (a
    symbolic shape cannot be passed to ``empty``)."""
    shape = tuple(x.shape[:axis]) + tuple(x.shape[axis + 1 :])
    if known_size(shape) is not None:
        return xp.empty(shape, dtype=dtype, device=device_of(x))
    return x[tuple(0 if i == axis else slice(None) for i in range(x.ndim))]

"""Class-index targets: the one home of ``ignore_index``, the range check, the one-hot, the
mask of dropped positions and the ``"mean"`` denominator, shared by every index-target loss
(cross entropy, nll, focal, poly-1), the fused linear loss and their gradients.
"""

from __future__ import annotations

from typing import NamedTuple

from ._namespace import Array, Namespace, device_of, has_values, index_dtype, value_range
from ._validate import check_target_range, out_of_range

__all__ = [
    "IndexTarget",
    "class_ids",
    "gather_weight",
    "mask_loss",
    "mean_weights",
    "one_hot_like",
    "prepare_index",
]


class IndexTarget(NamedTuple):
    """Checked class indices."""

    safe: Array  #: targets with ignored/invalid positions replaced by 0, in the indexing dtype
    ignored: Array | None  #: ``target == ignore_index``, or None when no position is ignored
    invalid: Array | None  #: out of range and not ignored (lazy arrays only; eager ones raise)

    @property
    def dropped(self) -> Array | None:
        """Positions that contribute nothing (ignored, or lazily invalid); None when none can."""
        if self.invalid is None:
            return self.ignored
        return self.invalid if self.ignored is None else self.ignored | self.invalid


def prepare_index(target: Array, n_classes: int, ignore_index: int, *, xp: Namespace, lazy: bool,
                  keep: Array | None = None) -> IndexTarget:
    """Check ``target`` against ``[0, n_classes)`` (eager arrays raise ``IndexError``; lazy ones
    mark the position invalid, later NaN) and make it safe to gather with. ``keep`` (a mask of
    ``target``'s shape, from ``where=``): positions outside it count as ignored."""
    invalid = None
    if not lazy and keep is None and _all_valid(target, n_classes, ignore_index, xp=xp):
        # The common case, settled by one min/max: no position ignored, none out of range
        # (small calls are dispatch-bound; this skips a comparison, two masks and three `where`s).
        ignored = None
    else:
        info = xp.iinfo(target.dtype)
        # A uint8 target can never equal -100; comparing would overflow in strict namespaces.
        ignored = target == ignore_index if info.min <= ignore_index <= info.max else None
        if keep is not None:
            ignored = ~keep if ignored is None else ignored | ~keep
        if lazy:
            invalid = out_of_range(target, n_classes, xp=xp)
            if invalid is not None and ignored is not None:
                invalid = invalid & ~ignored
        else:
            if ignored is not None and has_values(target) and not bool(xp.any(ignored)):
                ignored = None
            check_target_range(target, n_classes, ignored, xp=xp)
    drop = IndexTarget(target, ignored, invalid).dropped
    safe = target if drop is None else xp.where(drop, 0, target)
    dtype = index_dtype(xp)
    if safe.dtype != dtype:
        safe = xp.astype(safe, dtype)
    return IndexTarget(safe, ignored, invalid)


def _all_valid(target: Array, n_classes: int, ignore_index: int, *, xp: Namespace) -> bool:
    """Eager: every index lies in [0, n_classes) and none equals ``ignore_index``."""
    if not has_values(target) or 0 in tuple(target.shape):
        return False
    lo, hi = value_range(target, xp=xp)
    return lo >= 0 and hi < n_classes and not lo <= ignore_index <= hi


def gather_weight(w: Array, index: Array, *, xp: Namespace) -> Array:
    """``w[index]`` for an index array of any shape (``take`` wants 1-D indices).

    A symbolic ``index.shape`` (``None`` dimensions) cannot be restored by ``reshape`` when more
    than one dimension is unknown; the weight is then selected by comparison with the class ids.
    """
    if index.ndim == 1:
        return xp.take(w, index, axis=0)
    shape = tuple(index.shape)
    unknown = sum(d is None for d in shape)
    if unknown > 1:
        hit = xp.expand_dims(index, axis=-1) == class_ids(w.shape[0], index.ndim + 1, -1, xp=xp,
                                                           device=device_of(w), dtype=index.dtype)
        return xp.sum(xp.where(hit, w, 0.0), axis=-1)
    return xp.reshape(xp.take(w, xp.reshape(index, (-1,)), axis=0), tuple(-1 if d is None else d for d in shape))


def mask_loss(loss: Array, index: IndexTarget, *, xp: Namespace) -> Array:
    """0 at ignored positions; NaN at (lazily) invalid ones, which must not look plausible."""
    if index.invalid is not None:
        loss = xp.where(index.invalid, float("nan"), loss)
    if index.ignored is not None:
        loss = xp.where(index.ignored, 0.0, loss)
    return loss


def mean_weights(w_y: Array | None, index: IndexTarget, *, xp: Namespace) -> Array | None:
    """Per-position weights of the ``"mean"`` denominator (``w_y`` at kept positions, 0 at
    ignored ones); None means 'count every position'."""
    if index.ignored is None:
        return w_y
    if w_y is None:  # 1 at kept positions (no shape needed: it may be symbolic)
        return xp.astype(~index.ignored, xp.float32)
    return xp.where(index.ignored, 0.0, w_y)


def class_ids(n_classes: int, ndim: int, axis: int, *, xp: Namespace, device: object, dtype: object = None) -> Array:
    """``arange(n_classes)`` shaped to broadcast along ``axis`` of an ``ndim``-d array, in the
    indexing dtype (a uint8 target may have more than 256 classes)."""
    shape = [1] * ndim
    shape[axis] = n_classes
    ids = xp.arange(n_classes, dtype=index_dtype(xp) if dtype is None else dtype, device=device)
    return xp.reshape(ids, tuple(shape))


def one_hot_like(index: Array, like: Array, axis: int, *, xp: Namespace) -> Array:
    """One-hot of valid ``index`` along ``axis`` of ``like``, in ``like``'s dtype."""
    classes = class_ids(like.shape[axis], like.ndim, axis, xp=xp, device=device_of(like), dtype=index.dtype)
    return xp.astype(xp.expand_dims(index, axis=axis) == classes, like.dtype)

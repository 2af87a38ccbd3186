r"""Vocabulary-parallel cross entropy: the loss from per-shard statistics.

When the class (vocabulary) axis of the logits is split across devices or processes,
each shard :math:`k` holds the columns :math:`[s_k, s_k + C_k)` and never needs the
others. It summarises its slice in O(N) numbers per position (Megatron-LM's
vocab-parallel cross entropy, Shoeybi et al. 2019):

* :math:`m_k = \max_c x_c` over the slice,
* :math:`S_k = \sum_c e^{x_c - \tilde m_k}` with :math:`\tilde m_k = m_k` where finite, else 0,
* the target logit :math:`x_{y}` when :math:`y \in [s_k, s_k + C_k)` (else 0) and that mask,
* :math:`\Sigma_k = \sum_c x_c` (only for label smoothing).

Merging is associative: with :math:`M = \max_k m_k`,
:math:`S = \sum_k S_k\,e^{\tilde m_k - \tilde M}` and the other fields add up, and the merged
tuple is the statistics of the concatenated slices. From the full-vocabulary statistics,
:math:`\log Z = \log S + \tilde M` and

.. math::
   l_i = (1-\varepsilon)\,(\log Z - x_{y}) + \frac{\varepsilon}{C}\,(C \log Z - \Sigma),

0 where :math:`y` equals ``ignore_index``: exactly :func:`xce.cross_entropy`'s index path
without class weights. Everything here is written once against the Array API
(NumPy, PyTorch, JAX — also inside ``shard_map`` —, Dask, CuPy, array-api-strict).
Only :func:`vocab_parallel_cross_entropy` is PyTorch-specific, and all of its
``torch.distributed`` calls sit in :func:`_torch_all_reduce_statistics`.

Out-of-range targets: no single shard can tell an index that belongs to no shard from
one that belongs to another, so a non-ignored target found in no shard gives a NaN loss
on every backend (it is not raised, unlike :func:`xce.cross_entropy` on eager arrays).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from ._namespace import (
    Array,
    Namespace,
    as_compute,
    device_of,
    index_dtype,
    is_lazy,
    namespace,
    on_input_device,
    take_along_class_axis,
)
from ._reduce import reduce_loss
from ._registry import adapter_for
from ._softmax import finite_or_zero
from ._targets import class_ids
from ._validate import check_floating, check_fraction, check_index_target, check_integer, check_reduction, class_axis
from .losses.cross_entropy import gradient_coefficients, index_loss

__all__ = [
    "ShardStatistics",
    "combine_shard_statistics",
    "loss_from_statistics",
    "merge_shard_statistics",
    "rescale_sumexp",
    "shard_statistics",
    "shard_statistics_gradient",
    "vocab_parallel_cross_entropy",
]


class ShardStatistics(NamedTuple):
    """Per-position summary of a vocabulary slice; every array has the target's shape.

    Arrays are in the compute dtype (float32 for half-precision logits).
    """

    max: Array  #: max logit of the slice (``-inf`` / ``+inf`` / NaN kept as they are)
    sumexp: Array  #: sum of exp(logit - shift(max)); shift(m) = m where finite, else 0
    target_logit: Array  #: the target's logit where it falls in the slice, else 0
    in_shard: Array  #: bool, the (non-ignored) target falls in the slice
    logit_sum: Array | None  #: sum of the slice's logits (label smoothing), or None
    n_classes: int  #: number of classes the statistics cover


@on_input_device
def shard_statistics(
    local_logits: Array,
    target: Array,
    *,
    vocab_start: int,
    axis: int | None = None,
    ignore_index: int = -100,
    with_logit_sum: bool = False,
    xp: Namespace | None = None,
) -> ShardStatistics:
    """Statistics of one vocabulary slice of the logits.

    Parameters
    ----------
    local_logits : array
        The columns ``[vocab_start, vocab_start + C_local)`` of the full logits, classes along
        ``axis`` (PyTorch's rule when None: 0 for 1-D, else 1; use ``axis=-1`` for
        ``(batch, time, vocab)``).
    target : array
        Integer class indices into the *full* vocabulary, ``local_logits``' shape without the
        class axis (the same on every shard).
    vocab_start : int
        Global index of the slice's first class.
    ignore_index : int, default -100
        Ignored targets are in no shard.
    with_logit_sum : bool, default False
        Also compute the sum of the logits, needed for label smoothing.

    Examples
    --------
    >>> import numpy as np, xce
    >>> from xce.parallel import shard_statistics, merge_shard_statistics
    >>> x = np.asarray([[2.0, 1.0, 0.1, 0.3], [0.5, 2.0, 0.3, 1.0]])
    >>> y = np.asarray([0, 3])
    >>> parts = [shard_statistics(x[:, :3], y, vocab_start=0), shard_statistics(x[:, 3:], y, vocab_start=3)]
    >>> round(float(merge_shard_statistics(parts, y)), 4), round(float(xce.cross_entropy(x, y)), 4)
    (1.0519, 1.0519)
    """
    xp = namespace(("input", "target"), local_logits, target, xp=xp)
    vocab_start = check_integer(vocab_start, "vocab_start")
    ignore_index = check_integer(ignore_index, "ignore_index")
    ax = class_axis(local_logits, axis)
    check_floating(local_logits, "input", xp=xp)
    check_index_target(target, local_logits, ax, xp=xp, lazy=is_lazy(local_logits))
    work = as_compute(local_logits, xp=xp)
    n_local = work.shape[ax]

    if 0 in work.shape:  # an empty slice or batch (Dask refuses max over empty chunks)
        m = xp.full(target.shape, -float("inf"), dtype=work.dtype, device=device_of(work))
    else:
        m = xp.max(work, axis=ax)
    sumexp = xp.sum(xp.exp(work - xp.expand_dims(finite_or_zero(m, xp=xp), axis=ax)), axis=ax)

    index = xp.astype(target, index_dtype(xp))
    local = index - vocab_start
    in_shard = (local >= 0) & (local < n_local) & (index != ignore_index)
    safe = xp.where(in_shard, local, 0)
    if n_local:
        target_logit = xp.where(in_shard, take_along_class_axis(work, safe, ax, xp=xp), 0.0)
    else:
        target_logit = xp.zeros(target.shape, dtype=work.dtype, device=device_of(work))
    logit_sum = xp.sum(work, axis=ax) if with_logit_sum else None
    return ShardStatistics(m, sumexp, target_logit, in_shard, logit_sum, n_local)


def rescale_sumexp(sumexp: Array, local_max: Array, global_max: Array, *, xp: Namespace) -> Array:
    """``sumexp`` (relative to ``shift(local_max)``) re-expressed relative to ``shift(global_max)``.

    A slice of all ``-inf`` has ``sumexp = 0`` and gets the factor 0 (``exp(0 - M)`` would
    overflow for very negative ``M`` and make ``0 * inf = NaN``).
    """
    local_shift = xp.where(local_max == -float("inf"), -float("inf"), finite_or_zero(local_max, xp=xp))
    return sumexp * xp.exp(local_shift - finite_or_zero(global_max, xp=xp))


def combine_shard_statistics(shards: Sequence[ShardStatistics], *, xp: Namespace | None = None) -> ShardStatistics:
    """Merge the statistics of disjoint vocabulary slices into those of their union.

    This is what the collectives do in a distributed run (an all-reduce MAX of ``max``, then an
    all-reduce SUM of the rescaled ``sumexp`` and of the other fields), written for a list of
    shards held in one process. Associative: combining partial combinations gives the same result.
    """
    if not shards:
        raise ValueError("combine_shard_statistics needs at least one shard's statistics; got none.")
    first = shards[0]
    xp = namespace(("input",), first.sumexp, xp=xp)
    smoothing = [s.logit_sum is not None for s in shards]
    if any(smoothing) and not all(smoothing):
        raise ValueError("either every shard or none has logit_sum (pass the same with_logit_sum to each).")
    global_max = shards[0].max
    for s in shards[1:]:
        global_max = xp.maximum(global_max, s.max)
    sumexp = _add(rescale_sumexp(s.sumexp, s.max, global_max, xp=xp) for s in shards)
    target_logit = _add(s.target_logit for s in shards)
    in_shard = shards[0].in_shard
    for s in shards[1:]:
        in_shard = in_shard | s.in_shard
    logit_sum = _add(s.logit_sum for s in shards) if all(smoothing) else None
    return ShardStatistics(global_max, sumexp, target_logit, in_shard, logit_sum, sum(s.n_classes for s in shards))


def loss_from_statistics(stats: ShardStatistics, target: Array, *, ignore_index: int = -100, reduction: str = "mean",
        label_smoothing: float = 0.0, xp: Namespace | None = None) -> Array:
    """The cross entropy from full-vocabulary statistics (the output of a combination).

    ``reduction`` follows PyTorch: ``"mean"`` divides by the number of non-ignored positions
    (NaN when all are ignored), ``"sum"`` adds, ``"none"`` returns the target's shape. Returns
    the statistics' (compute) dtype.
    """
    xp = namespace(("input", "target"), stats.sumexp, target, xp=xp)
    reduction = check_reduction(reduction)
    eps = check_fraction(label_smoothing, "label_smoothing")
    ignore_index = check_integer(ignore_index, "ignore_index")
    loss = position_loss(stats, eps, xp=xp)
    ignored = xp.astype(target, index_dtype(xp)) == ignore_index
    loss = mask_positions(loss, stats.in_shard, ignored, xp=xp)
    kept = xp.where(ignored, 0.0, xp.ones(loss.shape, dtype=loss.dtype, device=device_of(loss)))
    return reduce_loss(loss, reduction, denominator=kept, xp=xp)


def position_loss(stats: ShardStatistics, label_smoothing: float, *, xp: Namespace) -> Array:
    """Unmasked per-position loss from full-vocabulary statistics: cross entropy's own
    :func:`~xce.losses.cross_entropy.index_loss`, on statistics relative to the shift."""
    if label_smoothing > 0.0 and stats.logit_sum is None:
        raise ValueError("label_smoothing > 0 needs statistics computed with with_logit_sum=True.")
    shift = finite_or_zero(stats.max, xp=xp)
    c = stats.n_classes
    class_sum = None if label_smoothing == 0.0 else stats.logit_sum - c * shift
    return index_loss(xp.log(stats.sumexp), stats.target_logit - shift, class_sum, None, c, label_smoothing, c)


def mask_positions(loss: Array, in_shard: Array, ignored: Array, *, xp: Namespace) -> Array:
    """0 at ignored positions; NaN where a non-ignored target was found in no shard (out of range)."""
    loss = xp.where(in_shard, loss, float("nan"))
    return xp.where(ignored, 0.0, loss)


def merge_shard_statistics(shards: Sequence[ShardStatistics], target: Array, *, ignore_index: int = -100,
        reduction: str = "mean", label_smoothing: float = 0.0, xp: Namespace | None = None) -> Array:
    """Cross entropy from the statistics of slices that together cover the vocabulary.

    Equals ``xce.cross_entropy(full_logits, target, ignore_index=..., reduction=...,
    label_smoothing=...)`` (in the compute dtype). The shards may come in any order.

    Examples
    --------
    >>> import numpy as np, xce
    >>> from xce.parallel import shard_statistics, merge_shard_statistics
    >>> x = np.asarray([[2.0, 1.0, 0.1, 0.3], [0.5, 2.0, 0.3, 1.0], [0.0, 1.0, 2.0, 3.0]])
    >>> y = np.asarray([0, 3, -100])
    >>> parts = [shard_statistics(x[:, a:b], y, vocab_start=a, with_logit_sum=True) for a, b in [(0, 1), (1, 4)]]
    >>> merge_shard_statistics(parts, y, label_smoothing=0.1, reduction="none").round(4)
    array([0.6457, 1.5781, 0.    ])
    >>> xce.cross_entropy(x, y, label_smoothing=0.1, reduction="none").round(4)
    array([0.6457, 1.5781, 0.    ])
    """
    if not shards:
        raise ValueError("merge_shard_statistics needs at least one shard's statistics; got none.")
    xp = namespace(("input", "target"), shards[0].sumexp, target, xp=xp)
    combined = combine_shard_statistics(shards, xp=xp)
    return loss_from_statistics(
        combined, target, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing, xp=xp
    )


def shard_statistics_gradient(
    local_logits: Array,
    target: Array,
    log_normalizer: Array,
    *,
    vocab_start: int,
    n_classes: int,
    axis: int | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of the per-position loss with respect to one slice of the logits.

    :math:`\partial l_i / \partial x_{i,c} = p_{i,c} - (1-\varepsilon)\,[c = y_i] - \varepsilon / C`
    with :math:`p = e^{x - \log Z}` (``log_normalizer`` is the full-vocabulary :math:`\log Z`,
    the target's shape); 0 at ignored positions. Multiply by the upstream gradient of each
    position. Local: no communication is needed in the backward pass.
    """
    xp = namespace(("input", "target"), local_logits, target, xp=xp)
    ax = class_axis(local_logits, axis)
    work = as_compute(local_logits, xp=xp)
    log_z = xp.expand_dims(log_normalizer, axis=ax)
    index = xp.expand_dims(xp.astype(target, index_dtype(xp)), axis=ax)
    classes = class_ids(work.shape[ax], work.ndim, ax, xp=xp, device=device_of(work), dtype=index.dtype) + vocab_start
    # a·p - b·e_y - u with the per-position scale 1 (the caller multiplies by the upstream gradient).
    a, b, u = gradient_coefficients(1.0, 1.0, None, 1.0, float(n_classes), label_smoothing, 0.0, n_classes)
    grad = a * xp.exp(work - log_z) - b * xp.astype(index == classes, work.dtype)
    if label_smoothing > 0.0:
        grad = grad - u
    return xp.where(index == ignore_index, 0.0, grad)


def _add(arrays: Iterable[Array]) -> Array:
    it = iter(arrays)
    total = next(it)
    for a in it:
        total = total + a
    return total


# --- torch.distributed (the collectives and the autograd Function live in xce.adapters.torch) --


@on_input_device
def vocab_parallel_cross_entropy(
    local_logits: Any,
    target: Any,
    *,
    vocab_start: int,
    group: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: int | None = None,
    vocab_size: int | None = None,
) -> Any:
    """``F.cross_entropy`` of logits whose vocabulary is split across a ``torch.distributed`` group.

    Every rank passes its slice ``local_logits`` (columns ``[vocab_start, vocab_start + C_local)``
    of the full logits; slices disjoint, covering the vocabulary, any sizes) and the same
    full-vocabulary ``target``. Communication is O(N): one all-reduce MAX and one all-reduce SUM
    of four N-vectors (plus one integer all-reduce for the vocabulary size when smoothing without
    ``vocab_size``). Every rank returns the same loss, equal to ``F.cross_entropy`` on the full
    logits (no class weights). Differentiable: the backward pass is local
    (:func:`shard_statistics_gradient`), each rank getting the gradient of its own slice.

    Must be called by every rank of ``group`` (the default group when None).

    Examples
    --------
    A one-process group, so that the example runs anywhere; with several ranks each passes
    its own slice and ``vocab_start``.

    >>> import torch, torch.distributed as dist, torch.nn.functional as F
    >>> from xce.parallel import vocab_parallel_cross_entropy
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> x = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]], requires_grad=True)
    >>> y = torch.tensor([0, 2])
    >>> loss = vocab_parallel_cross_entropy(x, y, vocab_start=0, label_smoothing=0.1)
    >>> round(loss.item(), 4), round(F.cross_entropy(x, y, label_smoothing=0.1).item(), 4)
    (1.2455, 1.2455)
    >>> loss.backward()
    >>> dist.destroy_process_group()
    """
    xp = namespace(("input", "target"), local_logits, target)
    reduction = check_reduction(reduction)
    eps = check_fraction(label_smoothing, "label_smoothing")
    ignore_index = check_integer(ignore_index, "ignore_index")
    vocab_start = check_integer(vocab_start, "vocab_start")
    ax = class_axis(local_logits, axis)
    check_floating(local_logits, "input", xp=xp)
    check_index_target(target, local_logits, ax, xp=xp, lazy=False)
    adapter = adapter_for(local_logits)
    if adapter is None or not hasattr(adapter, "vocab_parallel_loss"):
        raise TypeError(f"vocab_parallel_cross_entropy runs over torch.distributed and needs torch tensors; got "
                        f"{type(local_logits).__name__}. Elsewhere combine shard_statistics with your framework's "
                        "collectives (docs/scaling.md).")
    loss = adapter.vocab_parallel_loss(local_logits, target, vocab_start, group, ignore_index, eps, ax, vocab_size)
    ignored = target == ignore_index
    kept = xp.where(ignored, 0.0, xp.ones(loss.shape, dtype=loss.dtype, device=device_of(loss)))
    out = reduce_loss(loss, reduction, denominator=kept, xp=xp)
    return out if out.dtype == local_logits.dtype else xp.astype(out, local_logits.dtype)

"""PyTorch adapter: autograd registration of xce's analytic backward passes, and every
``torch.distributed`` call of xce.

``cross_entropy`` and ``linear_cross_entropy`` here are :func:`xce.cross_entropy` and
:func:`xce.linear_cross_entropy` as ``torch.autograd.Function`` s: the forward runs the xce
loss under ``torch.no_grad`` and saves the inputs plus O(N) per-position statistics (the
logsumexp, from the same sweep over the logits as the loss); the backward is the loss's own
gradient rule (:func:`xce.losses.cross_entropy.gradient`), evaluated in blocks of rows written
in place into the gradient, so no softmax-sized intermediates live between forward and
backward and the backward's extra memory is the gradient plus one block.

``kl_div_with_logits`` / ``generalized_jsd`` (:func:`distillation`) follow the same plan: the
forward in blocks of rows under ``no_grad`` saves the two logits and their per-position
log-normalisers; the backward is :func:`xce.losses.distillation.gradients` in blocks, for the
student and the teacher (whichever requires grad).

Under ``torch.compile`` / ``torch.export`` the fused linear loss runs as the custom ops of
:mod:`.torch_ops` (the same sweep; a traced Function would be unrolled and re-fused by Inductor).

Gradients flow to ``input`` (and ``hidden``/``weight``/``bias`` for the linear loss). When
a class ``weight`` or a probability ``target`` requires grad, :func:`wants_cross_entropy`
says no and plain autograd through the definition serves the call. Double backward
(``create_graph=True``) differentiates the backward formula itself (it then recomputes the
logsumexp instead of using the saved one). The Functions define ``setup_context``, so
``torch.func`` transforms accept them.

This module depends on the core and registers itself with it (:mod:`xce._registry`); no core
module imports it.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat.torch as txp
import torch
import torch.distributed as dist
import torch.nn.functional as _F

from .. import _engine, _policy
from .. import linear as _linear
from .. import linear_distillation as _lindist
from .._namespace import Namespace, is_traced, namespace
from .._registry import fast_paths
from .._targets import IndexTarget, gather_weight, mean_weights
from ..labels import uniform_equivalent
from ..losses import cross_entropy as ce
from ..losses import distillation as _distillation
from ..parallel import (
    ShardStatistics,
    mask_positions,
    position_loss,
    rescale_sumexp,
    shard_statistics,
    shard_statistics_gradient,
)
from . import torch_ops as _ops

__all__ = [
    "cross_entropy",
    "dispatch_cross_entropy",
    "distillation",
    "fast_cross_entropy",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "needs_autograd",
    "stop_gradient",
    "vocab_parallel_loss",
    "wants_cross_entropy",
    "wants_distillation",
    "wants_linear_cross_entropy",
    "wants_linear_distillation",
]

_CE_NAMES = ("input", "target", "weight")


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """True when autograd is recording and one of ``tensors`` requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def wants_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """Whether :func:`cross_entropy`'s autograd Function serves this call: ``input`` requires
    grad and neither the class ``weight`` nor a probability ``target`` does (the Function's
    backward gives d/d input only; those fall back to autograd through the definition)."""
    if not needs_autograd(input) or is_traced(input):
        return False  # under torch.compile / torch.func the fused formula's autograd serves
    return not needs_autograd(weight, target if target.is_floating_point() else None)


# --- delegation to PyTorch's own kernel --------------------------------------------------------

# Up to this many float32 logits (as many bytes, 32 MiB, at other widths) a CPU forward without
# autograd goes to F.cross_entropy in one piece; above it, one block of rows at a time
# (_blocked_native). Why there: the kernel's (N, C) log-softmax then leaves glibc's largest mmap
# threshold (32 MiB) and every call maps fresh pages; below it one piece is faster than blocks
# (`python -m benchmarks crossover`; docs/performance.md, "Where the constants come from").
DELEGATE_MAX_ELEMENTS_CPU = _policy.TABLE["native_max_logits_cpu"].value
# Under autograd, above this many logits (or DELEGATE_MAX_ELEMENTS_CPU, the smaller) the blocked
# engine's analytic backward serves: autograd through F.cross_entropy keeps three (N, C) arrays,
# and between 2^21 and 2^23 logits its time swings with the allocator's state, where the
# Function's is steady and keeps one (docs/performance.md).
DELEGATE_MAX_ELEMENTS_CPU_AUTOGRAD = _policy.TABLE["native_max_logits_cpu_autograd"].value
# On a GPU the native kernels are fused and the engine's Python loop over blocks is not.
DELEGATE_MAX_ELEMENTS_GPU = _policy.TABLE["native_max_logits_gpu"].value
_NATIVE_DTYPES = (torch.float32, torch.float64)


def dispatch_cross_entropy(input: Any, target: Any, weight: Any, options: ce.Options, axis: int | None,
                           where: Any = None) -> Any:
    """``F.cross_entropy(...)`` where it computes exactly :func:`xce.cross_entropy`'s function
    and measures faster; None where it does not (the caller then runs the definition).

    Delegated: float32/float64 logits with integer targets, classes on axis 1 (PyTorch's
    layout), z-loss as the native loss plus :func:`~xce.losses.cross_entropy.z_loss_part` over
    ``torch.logsumexp`` (in one piece only), smoothing whose uniform equivalent is at most 1 (``"off_target"`` ε
    becomes ε·C/(C-1)), a class ``weight`` that does not require grad (PyTorch's ``nll_loss``
    is not differentiable in it), up to ``DELEGATE_MAX_ELEMENTS_*`` logits in one piece
    (:func:`_one_piece_max_cpu` on the CPU);
    larger ``(N, C)`` CPU inputs without autograd one block of rows at a time
    (:func:`_blocked_native`; under autograd the engine's analytic backward serves). Not delegated:
    probability targets (xce gives 0, PyTorch NaN, for zero-mass classes at ``-inf`` logits),
    half precision (xce accumulates in float32). No check reads the arrays first: an invalid
    call makes the native kernel raise, and the definition then raises xce's own error; a NaN
    result (non-finite logits) is recomputed by the definition where values may be read.
    """
    if not isinstance(input, torch.Tensor) or input.dtype not in _NATIVE_DTYPES or where is not None:
        return None
    if not isinstance(target, torch.Tensor) or not _index_dtype(target.dtype):
        return None
    ndim = input.ndim
    if axis is not None and (type(axis) is not int or not -ndim <= axis < ndim or axis % ndim != (ndim > 1)):
        return None  # another layout, or an invalid axis (the definition names the problem)
    cpu = input.is_cpu
    opts = _engine.options()
    if opts and not opts.get("delegate", True):
        return None
    # Large CPU inputs: blocks of rows where autograd does not need the engine's backward.
    blocked = input.numel() > (_one_piece_max_cpu(input, options.z) if cpu else DELEGATE_MAX_ELEMENTS_GPU)
    if blocked and (options.z != 0.0 or not (cpu and ndim == 2 and not needs_autograd(input)
                                             and _engine.supports(input))):
        return None
    if weight is not None and (not isinstance(weight, torch.Tensor) or not weight.is_floating_point()
                               or (weight.requires_grad and torch.is_grad_enabled())):  # (needs_autograd, inline)
        return None
    eps = options.label_smoothing
    try:
        if options.mode != "uniform" and ndim:
            eps = uniform_equivalent(eps, options.mode, input.shape[1 if ndim > 1 else 0], "label_smoothing")
        if eps > 1.0:
            return None
        w = weight if weight is None or weight.dtype == input.dtype else weight.to(input.dtype)
        t = target if target.dtype == torch.int64 else target.to(torch.int64)
        if blocked:
            out = _blocked_native(input, t, w, options.ignore_index, options.reduction, eps)
            if out is None:
                return None
        else:
            out = _native_cross_entropy(input, t, w, options.ignore_index, options.reduction, eps)
            if options.z != 0.0:
                # z-loss: the native loss plus the loss module's own z part over torch's logsumexp.
                log_z = torch.logsumexp(input, dim=1 if ndim > 1 else 0)
                index = IndexTarget(t, t == options.ignore_index, None)
                out = out + ce.z_loss_part(log_z, options.z, index, options.reduction, xp=txp)
    except (IndexError, RuntimeError, ValueError, TypeError):
        return None  # out-of-range targets, shapes, devices: the definition names the problem
    # (_engine.reads_values, its settings and device already at hand: small calls are dispatch-bound.)
    forced = opts.get("check_values") if opts else None
    out = _unless_nan(out, cpu and not (_functorch_active() or _is_compiling()) if forced is None else forced)
    if _policy.ACTIVE:
        _note_native(input, blocked, out is not None)
    return out


def _note_native(input: torch.Tensor, blocked: bool, used: bool) -> None:
    n = input.numel()
    if blocked:
        why = f"{n} logits above the one-piece limit {_one_piece_max_cpu(input, 0.0)}: a CPU forward without autograd"
    else:
        limit = _one_piece_max_cpu(input, 0.0) if input.is_cpu else DELEGATE_MAX_ELEMENTS_GPU
        why = f"F.cross_entropy computes this function; {n} logits within the one-piece limit {limit}"
    if not used:
        why += "; its result has a NaN (non-finite logits, where PyTorch and xce differ): the definition recomputes"
    _policy.note(_policy.NATIVE_BLOCKS if blocked else _policy.NATIVE, why, used=used)


def _one_piece_max_cpu(input: torch.Tensor, z: float) -> int:
    """The most logits of ``input`` that a CPU call hands to ``F.cross_entropy`` in one piece
    (see ``DELEGATE_MAX_ELEMENTS_CPU``): 32 MiB of them for a forward, fewer under autograd or
    with z-loss (``torch.logsumexp`` keeps an (N, C) array of its own)."""
    if z != 0.0 or needs_autograd(input):
        return min(DELEGATE_MAX_ELEMENTS_CPU, DELEGATE_MAX_ELEMENTS_CPU_AUTOGRAD)
    return DELEGATE_MAX_ELEMENTS_CPU * 4 // input.element_size()


def _native_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                          reduction: str, eps: float) -> torch.Tensor:
    """``F.cross_entropy``; its kernel directly where no ``__torch_function__`` override can
    apply (a ``TorchFunctionMode`` or a subclass sees ``F.cross_entropy`` itself)."""
    if _has_torch_function(input, target, weight):
        return _F.cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
                                label_smoothing=eps)
    # (The stub says str; the binding takes get_enum's int, as F.cross_entropy passes it.)
    return _KERNEL(input, target, weight, _REDUCTION_ENUM[reduction], ignore_index, eps)  # type: ignore[arg-type]


def _index_dtype(dtype: torch.dtype) -> bool:
    """Whether targets of ``dtype`` are class indices (integer: not floating, complex or bool),
    cached per dtype (three attribute calls per call otherwise)."""
    try:
        return _INDEX_DTYPES[dtype]
    except KeyError:
        ok = _INDEX_DTYPES[dtype] = not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
        return ok


_INDEX_DTYPES: dict[torch.dtype, bool] = {}


def _blocked_native(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int,
                    reduction: str, eps: float) -> torch.Tensor | None:
    """``F.cross_entropy`` of an ``(N, C)`` input one block of rows at a time, the blocks
    sized by the engine's plan (None where it would chunk the classes).

    Why: the kernel's log-softmax of a block stays O(block) and cache-sized (one piece writes
    an (N, C) one: at 4096x32000 0.25 s, in 16 MiB blocks 0.05 s on a 2-core CPU), and each
    block is one parallel region of the intra-op threads where the engine's own formula takes
    four, each of which waits for a thread descheduled by another process (docs/performance.md).
    Per-block sums add up; ``"mean"`` divides by xce's own denominator (``mean_weights``).
    """
    p = _engine.plan(input, xp=txp, use="kernel")
    n_rows, n_classes = input.shape
    if p.class_chunk < n_classes:
        return None  # rows too long for a block: the engine's class chunks serve
    rows = p.block_rows
    if reduction == "none":
        out = input.new_empty((n_rows,))
        for i0 in range(0, n_rows, rows):
            out[i0 : i0 + rows] = _F.cross_entropy(input[i0 : i0 + rows], target[i0 : i0 + rows], weight,
                                                   ignore_index=ignore_index, reduction="none", label_smoothing=eps)
        return out
    total = input.new_zeros(())
    for i0 in range(0, n_rows, rows):
        total = total + _F.cross_entropy(input[i0 : i0 + rows], target[i0 : i0 + rows], weight,
                                         ignore_index=ignore_index, reduction="sum", label_smoothing=eps)
    if reduction == "sum":
        return total
    ignored = target == ignore_index
    index = IndexTarget(torch.where(ignored, 0, target), ignored, None)
    w_y = None if weight is None else gather_weight(weight, index.safe, xp=txp)
    denominator: torch.Tensor | None = mean_weights(w_y, index, xp=txp)
    assert denominator is not None  # (``ignored`` is given)
    return total / denominator.sum(dtype=input.dtype)


def _native_loss_and_lse(input: torch.Tensor, weight: torch.Tensor | None,
                         args: ce.CrossEntropyArgs) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The autograd Function's forward, ``(loss, per-row logsumexp)``, from PyTorch's
    log-softmax kernel one block of rows at a time into one reused block buffer: CPU
    ``(N, C)`` float32/64 logits with index targets and no ``where``; None otherwise, and
    where a row is not finite (the definition then gives its limits).

    The blocks give the statistics against the shift ``lse`` itself: ``target = ℓ[y]`` and,
    with smoothing, ``class_sum = Σ_c w_c ℓ_c``; the loss module turns them into the loss
    (:func:`~xce.losses.cross_entropy.index_loss_from_stats`: weights, smoothing, mask, mean,
    z part). ``lse = max x - max ℓ`` is the engine's max-shifted value (``x[y] - ℓ[y]`` would
    inherit the ulp of the target's distance from the max). Why: the kernel's vectorised
    log-softmax into a cache-sized buffer, and three parallel regions per block (log-softmax,
    two maxima; a fourth for smoothing) where the engine's formula takes four plus its own
    (see :func:`_blocked_native`)."""
    if args.index is None or args.keep is not None or input.ndim != 2 or args.ax != 1 \
            or input.dtype not in _NATIVE_DTYPES or not input.is_cpu or not args.reads \
            or not _engine.options().get("delegate", True):
        return None
    p = _engine.plan(input, xp=txp, use="kernel")
    n_rows, n_classes = input.shape
    if p.class_chunk < n_classes:
        return None
    w = None if weight is None else weight.to(input.dtype)
    smoothing = args.eps != 0.0
    safe = args.index.safe
    target, lse = input.new_empty((n_rows,)), input.new_empty((n_rows,))
    class_sum = input.new_empty((n_rows,)) if smoothing else None
    work = input.new_empty((min(p.block_rows, n_rows), n_classes))
    for i0 in range(0, n_rows, p.block_rows):
        rows = slice(i0, i0 + p.block_rows)
        block = input[rows]
        log_p = work[: block.shape[0]]
        torch.log_softmax(block, 1, out=log_p)
        # max ℓ is ℓ at the argmax (ℓ = x - lse is monotone in x): two amax, no argmax (a far
        # slower kernel on the CPU).
        torch.sub(torch.amax(block, 1), torch.amax(log_p, 1), out=lse[rows])
        target[rows] = log_p.gather(1, safe[rows].unsqueeze(1)).squeeze(1)
        if class_sum is not None:
            if w is None:
                torch.sum(log_p, 1, out=class_sum[rows])
            else:
                torch.mv(log_p, w, out=class_sum[rows])
    if bool(torch.isnan(lse).any()):  # non-finite rows (eager CPU: values may be read)
        return None
    st = ce.RowStats(lse, torch.zeros_like(lse), target, class_sum)
    return ce.index_loss_from_stats(st, w, args, xp=txp), lse


def _unless_nan(out: torch.Tensor, readable: bool) -> torch.Tensor | None:
    """``out``, or None (run the definition) for a NaN result where values may be read.

    Non-finite logits are where the two differ: a row with +inf on another class than the
    target is NaN for PyTorch and +inf (the limit) for xce. Where values may be read (CPU,
    eager), a NaN result sends the call to the definition; elsewhere it stands (no sync)."""
    if not readable:
        return out
    # A sum is NaN where a term is (and where +inf meets -inf, negative class weights: only a
    # needless recomputation by the definition).
    return None if _isnan(_sum_values(out)) else out


def _sum_values(out: torch.Tensor) -> float:
    """``out.sum()`` as a Python float; up to ``_FEW_VALUES`` values summed in Python, which
    costs less than a reduction kernel's launch."""
    if out.ndim == 0:
        return out.item()
    return sum(out.tolist()) if out.ndim == 1 and out.numel() <= _FEW_VALUES else out.sum().item()


_FEW_VALUES = 32
_isnan = math.isnan
_TENSOR = torch.Tensor


_NUMBERS = (float, int)
# Checked hyper-parameters of the fast path's calls: (ignore_index, reduction, ε, mode, z)
# -> the kernel's (ignore_index, reduction enum, ε), or None for a call it does not serve.
# Only keys of exact types (int, and int or float) enter it: True == 1 as a key.
_FAST_OPTIONS: dict[tuple[Any, ...], tuple[int, int, float] | None] = {}
_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch.nn._reduction.get_enum
# F.cross_entropy's own kernel: F.cross_entropy is this call behind a __torch_function__
# check and the reduction's enum, taken here only when no override can apply (below).
_KERNEL = torch._C._nn.cross_entropy_loss
_has_torch_function = torch._C._has_torch_function_variadic
_is_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_INT64 = torch.int64
# (ignore_index, reduction, ε, mode, z, options) of the last call served: compared by identity.
_LAST_OPTIONS: tuple[Any, ...] = (object(),) * 5 + (None,)
# The calling context's xce.config settings (eager: the ContextVar, one C call) and the calling
# thread's open blocks (what Dynamo can read and guard per thread).
_context_settings = _engine.context_settings
_THREAD_BLOCKS = _engine.THREAD_BLOCKS


def fast_cross_entropy(input: torch.Tensor, target: Any, weight: Any, ignore_index: Any, reduction: Any,
                       label_smoothing: Any, axis: Any, mode: Any, z_loss: Any) -> torch.Tensor | None:
    """:func:`xce.cross_entropy` as ``F.cross_entropy``, before any of xce's own work: the
    commonest delegated call (no class weight, int64 targets, float32/64 logits, PyTorch's
    class axis, uniform smoothing and z-loss 0 given as Python numbers, no :func:`xce.config`
    setting in the calling thread / task), so that it costs the kernel and a few attribute
    reads. None for every other call, which takes the general path
    (:func:`dispatch_cross_entropy` or the definition), and for every invalid one, so that the
    general path raises xce's error."""
    # (At small sizes every line here shows next to the kernel: module globals, no helpers.)
    if weight is not None or axis is not None or type(target) is not _TENSOR:
        return None
    compiling = _is_compiling()
    if _THREAD_BLOCKS.open if compiling else _context_settings():  # this thread's / task's xce.config
        return None
    last = _LAST_OPTIONS
    if ignore_index is last[0] and reduction is last[1] and label_smoothing is last[2] and mode is last[3] \
            and z_loss is last[4]:
        # The very objects of the last served call (a call site passes the same constants every
        # time): checked then, and identity cannot mistake True for 1. No key to build or hash.
        options = last[5]
    else:
        options = _checked_options(ignore_index, reduction, label_smoothing, mode, z_loss)
    if options is None or target.dtype is not _INT64 or input.dtype not in _NATIVE_DTYPES:
        return None
    ignore, enum, eps = options
    cpu = input.is_cpu
    n_logits = input.numel()
    if n_logits > (DELEGATE_MAX_ELEMENTS_CPU_AUTOGRAD if cpu else DELEGATE_MAX_ELEMENTS_GPU) \
            or n_logits > DELEGATE_MAX_ELEMENTS_CPU:
        return None  # (larger: the general dispatch weighs autograd and the dtype's width)
    try:
        if _has_torch_function(input, target):  # a TorchFunctionMode sees F.cross_entropy itself
            out = _F.cross_entropy(input, target, None, None, ignore, None, ("none", "mean", "sum")[enum], eps)
        else:
            # (The stub says str; the binding takes get_enum's int, as F.cross_entropy passes it.)
            out = _KERNEL(input, target, None, enum, ignore, eps)
    except (IndexError, RuntimeError, ValueError):
        return None  # out-of-range targets, shapes, devices: the definition names the problem
    if not cpu or compiling or _functorch_active():
        return out  # values are not read (no sync, no graph break)
    if enum:
        return None if _isnan(out.item()) else out
    # _unless_nan, cheaper: every position's loss is >= 0 or +inf here (no class weight), so the
    # sum is NaN exactly when a position is (one read, not isnan + any).
    return None if _isnan(_sum_values(out)) else out


def _checked_options(ignore_index: Any, reduction: Any, label_smoothing: Any, mode: Any,
                     z_loss: Any) -> tuple[int, int, float] | None:
    """The fast path's options for these hyper-parameters (None: not served), from the cache;
    remembered as the last call's when their exact types make them servable."""
    global _LAST_OPTIONS
    if type(ignore_index) is not int or type(label_smoothing) not in _NUMBERS or type(z_loss) not in _NUMBERS:
        return None  # (True == 1 as a key: the exact types come first; the general path names errors)
    try:
        options = _FAST_OPTIONS[ignore_index, reduction, label_smoothing, mode, z_loss]
    except KeyError:
        options = _fast_options(ignore_index, reduction, label_smoothing, mode, z_loss)
    except TypeError:  # an unhashable argument (the general path names it)
        return None
    if options is not None:
        _LAST_OPTIONS = (ignore_index, reduction, label_smoothing, mode, z_loss, options)  # one rebinding
    return options


def _fast_options(ignore_index: int, reduction: Any, label_smoothing: float, mode: Any,
                  z_loss: float) -> tuple[int, int, float] | None:
    try:
        options = ce.check_options(ignore_index, reduction, label_smoothing, mode, z_loss)
    except (TypeError, ValueError):
        return None  # not cached: the general path raises the error
    served = options.z == 0.0 and options.mode == "uniform"
    fast = (options.ignore_index, _REDUCTION_ENUM[options.reduction], float(options.label_smoothing)) if served \
        else None
    if len(_FAST_OPTIONS) >= 1024:
        _FAST_OPTIONS.clear()
    _FAST_OPTIONS[ignore_index, reduction, label_smoothing, mode, z_loss] = fast
    return fast


def wants_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               class_weight: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None,
                               normalizer: Any = None) -> bool:
    """Whether autograd must see this call (the adapter then picks the Function or, where a
    class weight, sample weight or normalizer requires grad, autograd through the definition),
    or ``torch.compile`` / ``torch.export`` traces it (the custom ops of :mod:`.torch_ops`)."""
    if compiling():
        return True
    tensors = (hidden, weight, bias, class_weight, sample_weight,
               normalizer if isinstance(normalizer, torch.Tensor) else None)
    return needs_autograd(*tensors) and not is_traced(hidden)


def compiling() -> bool:
    """``torch.compile`` or ``torch.export`` is tracing, outside any ``torch.func`` transform
    (the custom ops have no vmap or forward-mode rule: there the formula serves)."""
    return torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(*inputs: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        # (*inputs): torch binds a setup_context Function's arguments with inspect.signature on
        # every call; a bare *args signature makes that ~10x cheaper than nine named ones.
        input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss, where = inputs
        xp = namespace(_CE_NAMES, input, target, weight)
        with torch.no_grad():
            args = ce.check_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode,
                                      z_loss, where, xp=xp)
            native = _native_loss_and_lse(input, weight, args)
            if native is not None:
                if _policy.ACTIVE:
                    _policy.note(_policy.NATIVE_BLOCKS, "the Function's forward: PyTorch's log-softmax one block "
                                 "of rows at a time gives the loss and the saved logsumexp")
                loss, lse = native
            else:
                # One sweep over the logits: the loss and the per-position logsumexp it was built from.
                loss, st = ce.cross_entropy_with_stats(input, target, weight, args, xp=xp)
                lse = st.shift + st.lse
            lse = lse.unsqueeze(args.ax)  # O(N): one value per position
        return loss, lse, args

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        input, target, weight = inputs[:3]
        _, lse, args = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(input, target, weight, lse)
        # The checked arguments, prepared index targets included (O(N)): the backward neither
        # checks nor reads the targets again.
        ctx.args = args

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor, _grad_lse: Any = None,
                 _grad_args: Any = None) -> tuple[torch.Tensor | None, ...]:
        input, target, weight, lse = ctx.saved_tensors
        args = ctx.args
        # Under create_graph the saved (detached) lse would cut the second derivative.
        second_order = torch.is_grad_enabled()
        grad = ce.gradient(input, target, weight, args, grad_output, None if second_order else lse, xp=txp,
                           blocked=not second_order)
        return grad, None, None, None, None, None, None, None, None, None


def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
    """:func:`xce.cross_entropy` (same parameters) with the analytic, memory-lean backward (see
    the module)."""
    values = ce.bind_arguments(args, kwargs)
    input, target, weight = values[:3]
    if not wants_cross_entropy(input, target, weight):
        # Plain autograd through the definition (never back through the dispatching
        # xce.cross_entropy, which would route here again).
        xp = namespace(_CE_NAMES, input, target, weight)
        checked = ce.check_arguments(*values, xp=xp)
        result: torch.Tensor = ce.cross_entropy_with_stats(input, target, weight, checked, xp=xp)[0]
        return result
    if _policy.ACTIVE:
        _policy.note(_policy.ANALYTIC_BACKWARD, f"input requires grad, {input.numel()} logits: an autograd.Function "
                     "saving the O(N) logsumexp; the backward is xce's gradient rule in blocks")
    loss: torch.Tensor
    loss, _, _ = _CrossEntropy.apply(*values)
    return loss


cross_entropy.__signature__ = ce.SIGNATURE  # type: ignore[attr-defined]


_LINEAR_NAMES = ("input", "linear_weight", "target", "linear_bias", "weight", "sample_weight")


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None, class_weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
                args: _linear.LinearArgs) -> Any:
        xp = namespace(_LINEAR_NAMES, hidden, weight, target, bias, class_weight, sample_weight)
        needs = ctx.needs_input_grad
        want = (needs[0] or needs[1] or needs[3]) and args.reduction != "none"
        with torch.no_grad():
            out = _linear.fused(hidden, weight, target, bias, class_weight, sample_weight, args, cotangent=None,
                                want_grad=want, xp=xp)
        ctx.args = args
        inputs = (hidden, weight, target, bias, class_weight, sample_weight)
        if want:  # Liger's schedule: gradients for cotangent 1 now, scaled in backward
            # (with the statistics, the inputs too: a gradient of stats.lse takes a sweep of its own)
            ctx.save_for_backward(out.d_hidden, out.d_weight, out.d_bias, *(inputs if args.return_stats else ()))
        else:
            ctx.save_for_backward(*inputs)
        ctx.precomputed = want
        if out.stats is None:
            return out.loss
        # stats.lse is differentiable (a user's own z-loss, as with cross_entropy); the z term
        # alone, the accuracy and the entropy are not. No zero-filled gradients: None where an
        # output is not used (the usual loss.backward() leaves stats.lse out of the graph).
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*out.stats[1:])
        return (out.loss, *out.stats)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor | None, grad_lse: torch.Tensor | None = None,
                 *_grad_stats: Any) -> tuple[torch.Tensor | None, ...]:
        args = ctx.args
        saved = ctx.saved_tensors
        grads: tuple[Any, ...] = (None, None, None)
        if ctx.precomputed:
            if grad_output is not None:
                # loss.backward() passes 1: hand the saved gradients over without a copy of dW
                # (asked only where values may be read: on a GPU the question is a host sync).
                one = _engine.reads_values(grad_output) and bool(grad_output == 1)
                grads = tuple(d if d is None or one else d * grad_output for d in saved[:3])
            if grad_lse is None:
                return grads[0], grads[1], None, grads[2], None, None, None
            inputs, grad_output = saved[3:], None  # the loss's part is in grads: the sweep adds stats.lse's
        else:
            inputs = saved
        if grad_output is None and grad_lse is None:
            return None, None, None, None, None, None, None
        hidden, weight, target, bias, class_weight, sample_weight = inputs
        if grad_output is None:  # only stats.lse is differentiated: the loss's cotangent is 0
            shape = tuple(hidden.shape[:-1]) if args.reduction == "none" else ()
            grad_output = torch.zeros(shape, dtype=hidden.dtype, device=hidden.device)
        xp = namespace(_LINEAR_NAMES, hidden, weight, target, bias, class_weight, sample_weight)
        out = _linear.fused(hidden, weight, target, bias, class_weight, sample_weight, args, cotangent=grad_output,
                            want_grad=True, want_loss=False, lse_cotangent=grad_lse, xp=xp)
        swept = (out.d_hidden, out.d_weight, out.d_bias)
        total = tuple(b if a is None else a + b for a, b in zip(grads, swept))
        return total[0], total[1], None, total[2], None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None,
                         class_weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
                         args: _linear.LinearArgs) -> torch.Tensor | tuple[torch.Tensor, ce.LossStats]:
    """:func:`xce.linear_cross_entropy` (checked, shift-prepared arguments) whose ``.backward()``
    never materialises the logits (with ``args.return_stats``, ``(loss, LossStats)``: its ``lse``
    is differentiable, with a sweep of its own in backward when it is used; the z term alone,
    the accuracy and the entropy are not).

    With ``"mean"``/``"sum"`` and inputs that require grad, the gradients are computed during
    the forward pass (one sweep over the vocabulary, as Liger-Kernel does) and scaled by the
    upstream gradient in backward; with ``"none"`` the backward makes a second sweep. A class
    weight, sample weight or normalizer that requires grad takes autograd through the unfused
    definition instead (the sweep treats them as constants).
    """
    result: torch.Tensor | tuple[torch.Tensor, ce.LossStats]
    normalizer = args.normalizer if isinstance(args.normalizer, torch.Tensor) else None
    if needs_autograd(class_weight, sample_weight, normalizer) or (compiling() and not _ops.serves(args)):
        if _policy.ACTIVE:
            _policy.note(_policy.DEFINITION, "the unfused formula under autograd: a class weight, sample weight or "
                         "normalizer requires grad (the sweep holds them constant)")
        result = _linear.unfused_loss(hidden, weight, target, bias, class_weight, sample_weight, args, xp=txp)
        return result
    if compiling():  # one opaque graph node: Inductor cannot re-fuse the blocks into the logits
        result = _ops.linear_cross_entropy(hidden, weight, target, bias, class_weight, sample_weight, args,
                                           want_grad=needs_autograd(hidden, weight, bias))
        return result
    if _policy.ACTIVE:
        _policy.note(_policy.FUSED_SWEEP, "under autograd: an autograd.Function whose forward sweeps the head in "
                     "blocks of rows and keeps the gradients, not the logits")
    out = _LinearCrossEntropy.apply(hidden, weight, target, bias, class_weight, sample_weight, args)
    result = (out[0], ce.LossStats(*out[1:])) if args.return_stats else out
    return result


# --- vocabulary-parallel cross entropy over torch.distributed --------------------------------


def _torch_all_reduce_statistics(
    stats: ShardStatistics, group: Any, *, xp: Namespace, n_classes: int | None
) -> ShardStatistics:
    """The only torch.distributed code: local statistics -> full-vocabulary statistics.

    Two collectives of O(N) values: MAX of the local maxima, then SUM of the rescaled
    sum-exps, target logits, target masks (and logit sums) packed into one tensor. The
    arithmetic in between is the Array API core's :func:`rescale_sumexp`.
    """
    global_max = stats.max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    parts = [
        rescale_sumexp(stats.sumexp, stats.max, global_max, xp=xp),
        stats.target_logit,
        stats.in_shard.to(stats.sumexp.dtype),
    ]
    if stats.logit_sum is not None:
        parts.append(stats.logit_sum)
    packed = torch.stack(parts)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    if n_classes is None:
        if stats.logit_sum is None:
            n_classes = -1  # not needed without smoothing
        else:
            count = torch.tensor([stats.n_classes], dtype=torch.int64, device=packed.device)
            dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
            n_classes = int(count.item())
    logit_sum = packed[3] if stats.logit_sum is not None else None
    return ShardStatistics(global_max, packed[0], packed[1], packed[2] > 0.5, logit_sum, n_classes)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor, vocab_start: int, group: Any, ignore_index: int,
                eps: float, ax: int, vocab_size: int | None) -> torch.Tensor:
        local = shard_statistics(
            x, target, vocab_start=vocab_start, axis=ax, ignore_index=ignore_index, with_logit_sum=eps > 0.0, xp=txp
        )
        full = _torch_all_reduce_statistics(local, group, xp=txp, n_classes=vocab_size)
        loss: torch.Tensor = mask_positions(position_loss(full, eps, xp=txp), full.in_shard, target == ignore_index,
                                            xp=txp)
        log_z = torch.log(full.sumexp) + torch.where(torch.isfinite(full.max), full.max, 0.0)
        ctx.save_for_backward(x, target, log_z)
        ctx.config = (vocab_start, full.n_classes, ax, ignore_index, eps)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, target, log_z = ctx.saved_tensors
        vocab_start, n_classes, ax, ignore_index, eps = ctx.config
        grad = shard_statistics_gradient(x, target, log_z, vocab_start=vocab_start, n_classes=n_classes, axis=ax,
                                         ignore_index=ignore_index, label_smoothing=eps, xp=txp)
        grad = grad * torch.unsqueeze(grad_loss, ax)
        return grad.to(x.dtype), None, None, None, None, None, None, None


def vocab_parallel_loss(local_logits: torch.Tensor, target: torch.Tensor, vocab_start: int, group: Any,
                        ignore_index: int, eps: float, ax: int, vocab_size: int | None) -> torch.Tensor:
    """Per-position vocab-parallel cross entropy (checked arguments; see
    :func:`xce.parallel.vocab_parallel_cross_entropy`), differentiable, backward local."""
    loss: torch.Tensor = _VocabParallelCrossEntropy.apply(local_logits, target, vocab_start, group, ignore_index,
                                                          eps, ax, vocab_size)
    return loss


# --- the fused linear distillation loss ------------------------------------------------------


def stop_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a constant of differentiation (the teacher of :func:`xce.linear_distillation_loss`)."""
    return x.detach()


def wants_linear_distillation(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`linear_distillation_loss`'s autograd Function serves the call: the student
    requires grad, outside ``torch.compile`` / ``torch.func`` (which take the unfused formula)."""
    return needs_autograd(hidden, weight, bias) and not is_traced(hidden)


class _LinearDistillation(torch.autograd.Function):
    """Inputs: the six arrays of :class:`xce.linear_distillation.Heads` (the teacher's already
    detached), the checked arguments, which student gradients are wanted, ``block_rows``."""

    @staticmethod
    def forward(*inputs: Any) -> tuple[Any, ...]:
        *arrays, checked, wants, block_rows = inputs
        # Reductions to a scalar: the gradients for cotangent 1 now, in the loss's sweep
        # (Liger's schedule), scaled in backward. "none": a second sweep with the cotangent.
        early = checked.args.reduction != "none"
        with torch.no_grad():
            out = _lindist.fused(_lindist.Heads(*arrays), checked, cotangent=None, wants=wants if early else None,
                                 block_rows=block_rows, xp=txp)
        return out.loss, out.d_hidden, out.d_weight, out.d_bias

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        *arrays, checked, wants, block_rows = inputs
        ctx.mark_non_differentiable(*(g for g in output[1:] if g is not None))
        ctx.early = checked.args.reduction != "none"
        if ctx.early:
            ctx.save_for_backward(*output[1:])
        else:
            ctx.save_for_backward(*arrays)
            ctx.config = (checked, wants, block_rows)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor, *_grad_gradients: Any) -> tuple[torch.Tensor | None, ...]:
        if ctx.early:
            grads = ctx.saved_tensors
            # loss.backward() passes 1: then hand the saved gradients over without a copy (the
            # comparison is read on the CPU only: no device sync).
            if not (grad_loss.device.type == "cpu" and bool(grad_loss == 1)):
                grads = tuple(None if g is None else g * grad_loss for g in grads)
        else:
            checked, wants, block_rows = ctx.config
            out = _lindist.fused(_lindist.Heads(*ctx.saved_tensors), checked, cotangent=grad_loss, wants=wants,
                                 want_loss=False, block_rows=block_rows, xp=txp)
            grads = (out.d_hidden, out.d_weight, out.d_bias)
        return (*grads, None, None, None, None, None, None)


def linear_distillation_loss(heads: Any, checked: Any, block_rows: int | None) -> torch.Tensor:
    """:func:`xce.linear_distillation_loss` (checked arguments, :class:`~xce.linear_distillation.Heads`)
    whose ``.backward()`` fills the student's gradients without either model's logits."""
    wants = tuple(needs_autograd(t) for t in heads[:3])
    loss: torch.Tensor
    loss, *_ = _LinearDistillation.apply(*heads, checked, wants, block_rows)
    return loss


# --- the distillation losses on logits ---------------------------------------------------------


def wants_distillation(student: torch.Tensor, teacher: torch.Tensor) -> bool:
    """Whether :func:`distillation`'s autograd Function serves a call of
    :func:`xce.kl_div_with_logits` / :func:`xce.generalized_jsd`: a logit requires grad, the
    tensors are eager and large enough for the blocked engine (``torch.compile`` /
    ``torch.func`` and ``xce.config(enabled=False)`` take the definition's autograd)."""
    return needs_autograd(student, teacher) and not is_traced(student) and _engine.supports(student)


class _Distillation(torch.autograd.Function):
    """Inputs: the student's and teacher's logits, the checked arguments, ``beta`` (a float:
    hyper-parameters given as eager tensors were read by the checks)."""

    @staticmethod
    def forward(student: torch.Tensor, teacher: torch.Tensor, args: Any, beta: Any) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():  # blocks of rows: no (N, C) temporary outlives its block
            loss, norms = _distillation.divergence_and_norms(student, teacher, args, beta, xp=txp, blocked=True)
        return loss, *norms

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        student, teacher, args, beta = inputs
        ctx.mark_non_differentiable(*output[1:])
        # The inputs and the two log-normalisers (O(N)): nothing (N, C) of the forward's.
        ctx.save_for_backward(student, teacher, *output[1:])
        ctx.config = (args, beta)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_grad_norms: Any) -> tuple[torch.Tensor | None, ...]:
        student, teacher, *norms = ctx.saved_tensors
        args, beta = ctx.config
        # Under create_graph the rule runs on whole tensors and recomputes the normalisers (in-place
        # block writes and the saved constants would cut the second derivative), and autograd then
        # differentiates it.
        first_order = not torch.is_grad_enabled()
        g_s, g_t = _distillation.gradients(student, teacher, args, beta, grad_loss, xp=txp,
                                           wants=tuple(ctx.needs_input_grad[:2]), blocked=first_order,
                                           norms=(norms[0], norms[1]) if first_order else None)
        return g_s, g_t, None, None


def distillation(student: torch.Tensor, teacher: torch.Tensor, args: Any, beta: Any) -> torch.Tensor:
    """:func:`xce.kl_div_with_logits` / :func:`xce.generalized_jsd` of checked arguments
    (``beta`` 0: forward KL, 1: reverse KL) whose backward is the loss module's gradient rule
    (:func:`xce.losses.distillation.gradients`, for the student and, when it requires grad, the
    teacher): autograd keeps the two logits, not the forward's temporaries, and both passes go a
    block of rows at a time."""
    loss: torch.Tensor = _Distillation.apply(student, teacher, args, beta)[0]
    return loss


fast_paths("cross_entropy")[torch.Tensor] = fast_cross_entropy

"""Blocked evaluation of per-row softmax statistics for eager backends.

The fused formulation (``shifted = x - max``, ``exp``, ``sum``, ``log``, a gather) makes
about five passes over the logits and allocates two temporaries the size of the input.
Here the same math runs over blocks of rows sized so that a block's temporaries stay in
cache: each logit is read from memory about once and the extra memory is O(block), not
O(input). Blocks run on a small thread pool where the backend releases the GIL.

Written once against the Array API (``xp`` is passed in). The only backend-specific
decisions are whether to use the thread pool and how many threads to use.

Layout: ``x`` is ``(A, C)`` (classes last) or ``(A, C, B)`` (classes in the middle, e.g.
``(N, C, d1*...*dk)`` reshaped); the class axis is always axis 1. Blocks are taken along
axis 0; when one slice ``x[i]`` is larger than the class-chunk size, the classes are
processed in chunks with an online logsumexp.

Only for eager arrays: under ``jax.jit`` a Python loop over blocks would unroll into the
trace, and Dask's chunks are already blocks, so lazy backends keep the fused formula
(:func:`supports` says which).

Options (block size, class chunk, threads, on/off) are read from :func:`config`, a
context manager; the defaults are automatic.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from ._namespace import (
    Array,
    Namespace,
    as_dtype,
    device_of,
    library_name,
    take_along_class_axis,
    write_into,
    writes_into,
)
from ._namespace import compute_dtype as default_compute_dtype
from ._softmax import finite_max

__all__ = ["RowStats", "config", "fused_stats", "plan", "row_stats", "supports"]

# Bytes of one compute-dtype block. A few such temporaries live at once per thread (the
# upcast block, x - m, exp(x - m)): 512 KiB keeps them in a 1 MiB L2 for single-threaded
# kernels (NumPy on the thread pool). Backends that split every op over their own threads
# (PyTorch on CPU) need bigger blocks for that split to pay off; GPUs bigger still, so a
# kernel launch has enough work: PyTorch on CPU takes 4 MiB, growing with the input to
# 16 MiB (see block_bytes). Measured on a 2-core EPYC (see docs/performance.md).
_BLOCK_BYTES = 1 << 19
_BLOCK_BYTES_INTRA_OP = 1 << 22
_BLOCK_BYTES_INTRA_OP_MAX = 1 << 24
_BLOCK_BYTES_GPU = 1 << 26
# Above this many elements per slice x[i] (1 MiB of float32), classes are chunked.
_CLASS_CHUNK = 1 << 18
# Below this many elements in total the blocked path is not worth its Python overhead.
_MIN_ELEMENTS = 1 << 16
# Libraries whose arrays are eager and whose kernels release the GIL for the thread pool.
_EAGER = {"numpy", "torch", "cupy", "array_api_strict"}
_POOLED = {"numpy"}  # torch parallelises each op with its own intra-op threads; cupy is async

_CONFIG: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("xce_engine_config", default=None)
_OPTIONS = ("enabled", "block_rows", "class_chunk", "threads", "min_elements")


@contextlib.contextmanager
def config(
    *,
    enabled: bool | None = None,
    block_rows: int | None = None,
    class_chunk: int | None = None,
    threads: int | None = None,
    min_elements: int | None = None,
) -> Iterator[None]:
    """Override the blocked engine's automatic choices inside a ``with`` block.

    Parameters
    ----------
    enabled : bool, optional
        ``False`` turns the blocked engine off (the fused formulation is used everywhere);
        ``True`` uses it for every eager call, however small.
    block_rows : int, optional
        Rows (slices along axis 0) per block. Default: as many as fit in 512 KiB of
        compute dtype (NumPy, array-api-strict), 4–16 MiB (PyTorch on CPU: 1/32 of the
        input within those bounds) or 64 MiB (GPU).
    class_chunk : int, optional
        Classes per chunk when one slice is too large (online logsumexp). Default: chunk
        only slices above 2**18 elements.
    threads : int, optional
        Worker threads for backends that release the GIL (NumPy). Default: the CPUs this
        process may run on, at most 8; ``1`` runs blocks in the calling thread. Calls made
        from inside a worker never start more threads (no oversubscription).
    min_elements : int, optional
        Inputs smaller than this use the fused formulation (default 2**16).

    Settings nest and are local to the current thread / asyncio task (``contextvars``).

    Examples
    --------
    >>> import numpy as np
    >>> from xce._engine import config, plan
    >>> with config(block_rows=8, threads=1):
    ...     plan(np.zeros((100, 10), np.float32), xp=np).block_rows
    8
    """
    values = dict(zip(_OPTIONS, (enabled, block_rows, class_chunk, threads, min_elements)))
    for name in ("block_rows", "class_chunk", "threads", "min_elements"):
        v = values[name]
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "min_elements" else 1)
        ):
            raise ValueError(f"{name} must be a positive integer; got {v!r}.")
    merged = dict(_options())
    merged.update({k: v for k, v in values.items() if v is not None})
    token = _CONFIG.set(merged)
    try:
        yield
    finally:
        _CONFIG.reset(token)


def _options() -> dict[str, Any]:
    return _CONFIG.get() or {}


class Plan(NamedTuple):
    block_rows: int  # slices along axis 0 per block
    class_chunk: int  # classes per chunk (== C when not chunked)
    threads: int  # worker threads (1: the calling thread)


class RowStats(NamedTuple):
    """Per-row statistics, in the compute dtype (float32 for half-precision input).

    With ``s = x - shift`` (``shift`` the row's finite maximum, 0 where it is not finite):

    * ``shift``: the shift itself;
    * ``lse``: ``log Σ_c exp(s_c)`` (add ``shift`` for the logsumexp of ``x``);
    * ``target``: ``s[index]`` (None without ``index``);
    * ``class_sum``: ``Σ_c w_c s_c`` (``w = 1`` without ``weight``; None unless requested);
    * ``prob_dot``: ``Σ_c w_c q_c s_c`` with 0 where ``w_c q_c = 0`` (probability targets);
    * ``prob_mass``: ``Σ_c w_c q_c`` (probability targets).

    Cross entropy then needs only (N,)-sized arithmetic: ``-ℓ_y = lse - target``,
    ``-Σ_c w_c ℓ_c = W·lse - class_sum``, ``-Σ_c w_c q_c ℓ_c = mass·lse - prob_dot``.
    """

    shift: Array
    lse: Array
    target: Array | None = None
    class_sum: Array | None = None
    prob_dot: Array | None = None
    prob_mass: Array | None = None


def supports(x: Array) -> bool:
    """True when the blocked engine may evaluate ``x`` (an eager array, engine enabled,
    large enough): NumPy, PyTorch, CuPy, array-api-strict. Never JAX or Dask."""
    if library_name(x) not in _EAGER:
        return False
    opts = _options()
    enabled = opts.get("enabled")
    if enabled is False:
        return False
    if enabled is True:
        return True
    return math.prod(x.shape) >= opts.get("min_elements", _MIN_ELEMENTS)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def plan(x: Array, *, xp: Namespace, compute_dtype: Any = None) -> Plan:
    """Block rows, class chunk and threads for ``x`` (``(A, C)`` or ``(A, C, B)``)."""
    opts = _options()
    rows, n_classes = x.shape[0], x.shape[1]
    inner = math.prod(x.shape[2:])
    itemsize = max(4, xp.finfo(x.dtype).bits // 8) if compute_dtype is None else xp.finfo(compute_dtype).bits // 8
    per_row = n_classes * inner
    class_chunk = opts.get("class_chunk")
    if class_chunk is None:
        class_chunk = n_classes if per_row <= _CLASS_CHUNK else max(1, block_bytes(x) // (itemsize * inner))
    class_chunk = min(class_chunk, n_classes)
    block_rows = opts.get("block_rows")
    if block_rows is None:
        block_rows = max(1, block_bytes(x) // (itemsize * class_chunk * inner))
    block_rows = max(1, min(block_rows, rows))
    threads = 1
    if library_name(x) in _POOLED and not getattr(_IN_WORKER, "flag", False):
        threads = opts.get("threads") or min(_cpus(), 8)
        threads = max(1, min(threads, math.ceil(rows / block_rows)))
    return Plan(block_rows, class_chunk, threads)


def on_accelerator(x: Array) -> bool:
    """Whether ``x`` lives on a GPU (CuPy, or a PyTorch tensor off the CPU)."""
    lib = library_name(x)
    return lib == "cupy" or (lib == "torch" and x.device.type != "cpu")


def block_bytes(x: Array) -> int:
    """The engine's default block size in bytes for ``x`` (see the constants above)."""
    if on_accelerator(x):
        return _BLOCK_BYTES_GPU
    if library_name(x) == "torch":
        # Each op of a block is one parallel region of torch's intra-op threads; when another
        # process holds a core, every region waits for a descheduled thread (measured: a
        # 4096x32000 forward went from 0.2 s to 4 s in 4 MiB blocks, 0.5 s in 64 MiB ones).
        # Fewer, larger blocks as the input grows, still a small fraction of it.
        total = math.prod(x.shape) * max(4, x.dtype.itemsize)  # in the compute dtype
        return min(_BLOCK_BYTES_INTRA_OP_MAX, max(_BLOCK_BYTES_INTRA_OP, total // 32))
    return _BLOCK_BYTES


# --- the math of one block ----------------------------------------------------------------


def _block(
    x: Array,
    index: Array | None,
    weight: Array | None,
    probs: Array | None,
    *,
    class_sum: bool,
    smoothing: float,
    class_chunk: int,
    dtype: Any,
    xp: Namespace,
    work: Array | None = None,
) -> tuple[Array | None, ...]:
    """Statistics of one block ``x`` (rows × C [× B]); reductions along axis 1, kept.

    ``work``, when given, is a buffer of ``x``'s shape in ``dtype`` that receives the
    shifted logits and then their exponentials (reused from block to block).
    """
    n_classes = x.shape[1]
    w_shape = (1, -1, 1) if x.ndim == 3 else (1, -1)
    w_all = None if weight is None else xp.reshape(weight, w_shape)
    if class_chunk >= n_classes:
        # The max of half-precision values is exact, so it is taken before the upcast; the
        # subtraction then promotes: no float32 copy of the block besides s itself.
        shift = as_dtype(finite_max(x, 1, xp=xp), dtype, xp=xp)
        s = write_into("subtract", work, x, shift, xp=xp)
        target = None
        if index is not None:
            # Gathered from x, not s: s then only feeds reductions, which XLA fuses without
            # materialising it (same value: the subtraction is elementwise either way).
            raw = xp.expand_dims(take_along_class_axis(x, index, 1, xp=xp), axis=1)
            target = as_dtype(raw, dtype, xp=xp) - shift
        csum = None
        if class_sum:
            csum = xp.sum(s if w_all is None else s * w_all, axis=1, keepdims=True)
        pdot = pmass = None
        if probs is not None:
            pdot, pmass = _prob_terms(s, probs, w_all, smoothing, n_classes, dtype, xp=xp)
        # In place when there is a buffer: s is not needed after this.
        lse = xp.log(xp.sum(write_into("exp", work, s, xp=xp), axis=1, keepdims=True))
        return shift, lse, target, csum, pdot, pmass

    # Classes in chunks: online logsumexp. The running shift only grows (a +inf max is
    # replaced by 0, as in the fused formula); sums accumulated against an older shift
    # are rescaled. Linear terms are accumulated against the first chunk's shift, ref.
    shift = total = ref = csum = pdot = pmass = None
    raw_max = None
    for c0 in range(0, n_classes, class_chunk):
        c1 = min(c0 + class_chunk, n_classes)
        xc = x[:, c0:c1, ...]
        xc = as_dtype(xc, dtype, xp=xp)
        cmax = xp.max(xc, axis=1, keepdims=True)
        raw_max = cmax if raw_max is None else xp.maximum(raw_max, cmax)
        new_shift = xp.where(xp.isfinite(raw_max), raw_max, 0.0)
        part = xp.sum(xp.exp(xc - new_shift), axis=1, keepdims=True)
        total = part if total is None else total * xp.exp(shift - new_shift) + part
        shift = new_shift
        if ref is None:
            ref = shift
        if class_sum or probs is not None:
            sc = xc - ref
            w_c = None if w_all is None else w_all[:, c0:c1, ...]
            if class_sum:
                term = xp.sum(sc if w_c is None else sc * w_c, axis=1, keepdims=True)
                csum = term if csum is None else csum + term
            if probs is not None:
                pc = probs[:, c0:c1, ...]
                d, mass = _prob_terms(sc, pc, w_c, smoothing, n_classes, dtype, xp=xp)
                pdot = d if pdot is None else pdot + d
                pmass = mass if pmass is None else pmass + mass
    lse = xp.log(total)
    target = None
    if index is not None:
        raw = xp.expand_dims(take_along_class_axis(x, index, 1, xp=xp), axis=1)
        target = as_dtype(raw, dtype, xp=xp) - shift
    delta = ref - shift  # Σ w (x - shift) = Σ w (x - ref) + W (ref - shift)
    if class_sum:
        csum = csum + delta * (n_classes if w_all is None else xp.sum(weight))
    if probs is not None:
        pdot = pdot + delta * pmass
    return shift, lse, target, csum, pdot, pmass


def _prob_terms(
    s: Array, q: Array, w: Array | None, smoothing: float, n_classes: int, dtype: Any, *, xp: Namespace
) -> tuple[Array, Array]:
    q = q if q.dtype == dtype else xp.astype(q, dtype)
    if smoothing > 0.0:
        q = (1.0 - smoothing) * q + smoothing / n_classes
    if w is not None:
        q = q * w
    # 0 · s must be 0 where s = -inf (masked logits with no target mass), so the logit is
    # masked there and only there: masking the product wherever q == 0 would also cut
    # d/dq, whose true value at q = 0 is -w_c·ℓ_c (one-hot and distillation targets).
    s = xp.where((q == 0.0) & ~xp.isfinite(s), 0.0, s)
    dot = xp.sum(q * s, axis=1, keepdims=True)
    return dot, xp.sum(q, axis=1, keepdims=True)


# --- the driver -----------------------------------------------------------------------------

_IN_WORKER = threading.local()
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or threads > _POOL_SIZE:
            old = _POOL
            _POOL = ThreadPoolExecutor(threads, thread_name_prefix="xce-engine", initializer=_mark_worker)
            _POOL_SIZE = threads
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def _mark_worker() -> None:
    _IN_WORKER.flag = True


def _forget_pool_in_child() -> None:
    """After ``fork`` the child has the parent's pool object but none of its threads: work
    submitted to it would wait forever (DataLoader workers, multiprocessing's default start
    method on Linux). The child starts a pool of its own on first use."""
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()
    _IN_WORKER.flag = False


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def row_stats(
    x: Array,
    index: Array | None = None,
    *,
    xp: Namespace,
    weight: Array | None = None,
    class_sum: bool = False,
    probs: Array | None = None,
    smoothing: float = 0.0,
    compute_dtype: Any = None,
) -> RowStats:
    """Blocked per-row softmax statistics of ``x`` along axis 1.

    Parameters
    ----------
    x : array, shape (A, C) or (A, C, B)
        Logits, classes along axis 1. Any real floating dtype; half precision is upcast
        to ``compute_dtype`` one block at a time.
    index : array of shape (A,) / (A, B), optional
        Valid class indices in the namespace's indexing dtype (ignored positions already
        replaced by a valid index). Gives ``RowStats.target``.
    weight : array, shape (C,), optional
        Class weights in the compute dtype, used by ``class_sum`` and ``probs``.
    class_sum : bool
        Also compute ``Σ_c w_c s_c`` (the label-smoothing term).
    probs : array shaped like ``x``, optional
        Class-probability targets: gives ``prob_dot`` and ``prob_mass``; ``smoothing``
        mixes them with the uniform distribution first, ``(1-ε) q + ε/C``.
    compute_dtype : dtype, optional
        Accumulation dtype; default float32 for half precision, else ``x.dtype``.

    Returns
    -------
    RowStats
        Arrays of shape (A,) or (A, B) in the compute dtype (fields not asked for: None).
    """
    if x.ndim not in (2, 3):
        raise ValueError(f"row_stats wants a (A, C) or (A, C, B) array; got shape {tuple(x.shape)}.")
    dtype = compute_dtype if compute_dtype is not None else default_compute_dtype(x.dtype, xp=xp)
    p = plan(x, xp=xp, compute_dtype=dtype)
    rows = x.shape[0]
    starts = list(range(0, rows, p.block_rows))

    # One buffer per worker thread for the block's shifted logits and exponentials: fresh
    # block-sized allocations each block may be unmapped and faulted in again every time.
    buffers: dict[int, Array] = {}
    reuse = p.class_chunk >= x.shape[1] and writes_into(x)

    def run(i0: int) -> tuple[Array | None, ...]:
        i1 = min(i0 + p.block_rows, rows)
        work = None
        if reuse:
            work = buffers.get(threading.get_ident())
            if work is None:
                work = xp.empty((p.block_rows, *x.shape[1:]), dtype=dtype, device=device_of(x))
                buffers[threading.get_ident()] = work
            work = work[: i1 - i0, ...]
        return _block(
            x[i0:i1, ...],
            None if index is None else index[i0:i1, ...],
            weight,
            None if probs is None else probs[i0:i1, ...],
            class_sum=class_sum,
            smoothing=smoothing,
            class_chunk=p.class_chunk,
            dtype=dtype,
            xp=xp,
            work=work,
        )

    pooled = p.threads > 1 and len(starts) > 1
    parts = list(_pool(p.threads).map(run, starts)) if pooled else [run(i0) for i0 in starts]
    if not parts:  # no rows: empty statistics
        empty = xp.zeros((0, *x.shape[2:]), dtype=dtype, device=device_of(x))
        return RowStats(
            empty,
            empty,
            None if index is None else empty,
            empty if class_sum else None,
            None if probs is None else empty,
            None if probs is None else empty,
        )
    fields = []
    for k in range(6):
        col = [part[k] for part in parts]
        if col[0] is None:
            fields.append(None)
            continue
        joined = col[0] if len(col) == 1 else xp.concat(col, axis=0)
        fields.append(joined[:, 0, ...])
    return RowStats(*fields)



def fused_stats(
    x: Array,
    index: Array | None = None,
    *,
    xp: Namespace,
    weight: Array | None = None,
    class_sum: bool = False,
    probs: Array | None = None,
    smoothing: float = 0.0,
    compute_dtype: Any = None,
) -> RowStats:
    """:func:`row_stats` as one block: the fused formula, for lazy backends and small inputs.

    No Python loop, so it traces into a single ``jax.jit`` program and keeps Dask's own
    chunking; same arguments and results as :func:`row_stats`.
    """
    dtype = compute_dtype if compute_dtype is not None else default_compute_dtype(x.dtype, xp=xp)
    fields = _block(x, index, weight, probs, class_sum=class_sum, smoothing=smoothing,
                    class_chunk=x.shape[1], dtype=dtype, xp=xp)
    # Indexing drops the kept axis: cheaper than a wrapped squeeze for dispatch-bound calls.
    return RowStats(*(None if f is None else f[:, 0, ...] for f in fields))

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
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

from ._namespace import (
    Array,
    Namespace,
    as_dtype,
    device_of,
    has_values,
    is_lazy,
    is_traced,
    known_size,
    library_name,
    torch_compiling,
    write_into,
    writes_into,
)
from ._namespace import compute_dtype as default_compute_dtype
from ._policy import TABLE
from ._softmax import finite_max, finite_or_zero

__all__ = ["THREAD_BLOCKS", "Plan", "SoftmaxSums", "Terms", "block_bytes", "config", "configured", "context_settings",
           "default_threads", "gradient_rows", "map_rows", "on_accelerator", "options", "plan", "reads_values",
           "softmax_sums", "supports"]

# Bytes of one compute-dtype block. A few such temporaries live at once per thread (the
# upcast block, x - m, exp(x - m)). NumPy on the thread pool: 2 MiB, the smallest block whose
# ~10 NumPy calls' Python and GIL time is amortised (smaller blocks were slower, larger ones
# no faster: docs/performance.md, "Where the constants come from"). Backends that
# split every op over their own threads (PyTorch on CPU) need bigger blocks for that split
# to pay off; GPUs bigger still, so a kernel launch has enough work: PyTorch on CPU takes
# 4 MiB, growing with the input to 16 MiB (see block_bytes). The numbers: xce._policy.TABLE.
_BLOCK_BYTES = TABLE["block_bytes"].value
_BLOCK_BYTES_INTRA_OP = TABLE["block_bytes_torch_cpu"].value
_BLOCK_BYTES_INTRA_OP_MAX = TABLE["block_bytes_torch_cpu_max"].value
_BLOCK_BYTES_KERNEL = TABLE["block_bytes_kernel"].value  # the floor of a kernel's block (block_bytes "kernel")
_BLOCK_BYTES_GPU = TABLE["block_bytes_gpu"].value
_BLOCK_BYTES_GRADIENT = TABLE["block_bytes_gradient"].value
_BLOCK_BYTES_MATMUL = TABLE["block_bytes_matmul"].value
# Above this many elements per slice x[i] (1 MiB of float32), classes are chunked.
_CLASS_CHUNK = TABLE["class_chunk_min_elements"].value
# Below this many elements in total the blocked path is not worth its Python overhead.
_MIN_ELEMENTS = TABLE["definition_blocks_min_elements"].value
# Libraries whose arrays are eager and whose kernels release the GIL for the thread pool.
_EAGER = {"numpy", "torch", "cupy", "array_api_strict"}
_POOLED = {"numpy"}  # torch parallelises each op with its own intra-op threads; cupy is async

_CONFIG: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("xce_engine_config", default=None)


class _ThreadBlocks(threading.local):
    """The :func:`config` blocks open in one thread, in the order entered: what Dynamo reads
    (it cannot read a ``ContextVar``, and it reads and guards a ``threading.local``'s
    attributes in the calling thread, so one thread's blocks never reach another's graphs)."""

    def __init__(self) -> None:
        self.open: list[dict[str, Any]] = []


#: Each thread's open :func:`config` blocks (``THREAD_BLOCKS.open``), read while Dynamo traces.
THREAD_BLOCKS = _ThreadBlocks()
#: The calling context's settings, None outside any block (one C call): the eager read.
context_settings = _CONFIG.get
_OPTIONS = ("enabled", "block_rows", "class_chunk", "threads", "min_elements", "delegate", "check_values")


@contextlib.contextmanager
def config(
    *,
    enabled: bool | None = None,
    block_rows: int | None = None,
    class_chunk: int | None = None,
    threads: int | None = None,
    min_elements: int | None = None,
    delegate: bool | None = None,
    check_values: bool | None = None,
) -> Iterator[None]:
    """Override xce's automatic choices inside a ``with`` block.

    Parameters
    ----------
    delegate : bool, optional
        ``False`` forces xce's own definitions everywhere. By default (``True``) a loss whose
        library ships a kernel computing exactly the same function (PyTorch's
        ``F.cross_entropy``) is handed to it at the sizes where it measures faster
        (``docs/performance.md``).
    check_values : bool, optional
        ``True`` reads values for the eager checks (out-of-range targets raise) even on
        accelerators and under ``torch.compile`` / ``torch.func``, where by default values are
        not read (no device→host sync, no graph break) and invalid targets give NaN.
    enabled : bool, optional
        ``False`` turns the blocked engine off (the fused formulation is used everywhere);
        ``True`` uses it for every eager call, however small.
    block_rows : int, optional
        Rows (slices along axis 0) per block. Default: as many as fit in 2 MiB of
        compute dtype (NumPy, array-api-strict), 4–16 MiB (PyTorch on CPU: 1/32 of the
        input within those bounds) or 64 MiB (GPU).
    class_chunk : int, optional
        Classes per chunk when one slice is too large (online logsumexp). Default: chunk
        only slices above 2**18 elements.
    threads : int, optional
        Worker threads for backends that release the GIL (NumPy); wins over every limit below.
        Default: the CPUs this process may run on, at most 8, and no more than
        ``OMP_NUM_THREADS`` (where set), ``torch.get_num_threads()`` (where PyTorch is imported:
        DataLoader workers set 1) or threadpoolctl's limit on the BLAS / OpenMP libraries
        (where threadpoolctl is imported, e.g. inside ``threadpool_limits(1)``); ``1`` runs
        blocks in the calling thread. Calls made from inside a worker never start more threads
        (no oversubscription).
    min_elements : int, optional
        Inputs smaller than this use the fused formulation (default 2**16).

    Settings nest and are local to the current thread / asyncio task (``contextvars``); while
    ``torch.compile`` traces, to the calling thread (a compiled function is guarded on them
    and recompiled when they change).

    Examples
    --------
    >>> import numpy as np
    >>> from xce._engine import config, plan
    >>> with config(block_rows=8, threads=1):
    ...     plan(np.zeros((100, 10), np.float32), xp=np).block_rows
    8
    """
    values = dict(zip(_OPTIONS, (enabled, block_rows, class_chunk, threads, min_elements, delegate, check_values)))
    for name in ("enabled", "delegate", "check_values"):
        if values[name] is not None and not isinstance(values[name], bool):
            raise TypeError(f"{name} must be a bool; got {type(values[name]).__name__} {values[name]!r}.")
    for name in ("block_rows", "class_chunk", "threads", "min_elements"):
        v = values[name]
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "min_elements" else 1)
        ):
            raise ValueError(f"{name} must be a positive integer; got {v!r}.")
    merged = dict(options())
    merged.update({k: v for k, v in values.items() if v is not None})
    token = _CONFIG.set(merged)
    blocks = THREAD_BLOCKS.open  # this thread's, even if the block is left from another one
    blocks.append(merged)
    try:
        yield
    finally:
        _CONFIG.reset(token)
        for i in range(len(blocks) - 1, -1, -1):  # by identity: an equal block may be open too
            if blocks[i] is merged:
                del blocks[i]
                break


def configured() -> bool:
    """Whether the calling thread / asyncio task is inside a :func:`config` block (False:
    every setting is its default)."""
    return bool(options())


def options() -> dict[str, Any]:
    """The settings of the calling context's innermost :func:`config` block (empty outside any).

    While ``torch.compile`` traces (its tracer cannot read a ``ContextVar``), those of the
    innermost block open in the calling thread: Dynamo guards the compiled code on them.
    """
    if torch_compiling():
        blocks = THREAD_BLOCKS.open
        return blocks[-1] if blocks else {}
    return _CONFIG.get() or {}


class Plan(NamedTuple):
    block_rows: int  # slices along axis 0 per block
    class_chunk: int  # classes per chunk (== C when not chunked)
    threads: int  # worker threads (1: the calling thread)


def supports(x: Array) -> bool:
    """True when the blocked engine may evaluate ``x`` (an eager array, engine enabled,
    large enough): NumPy, PyTorch, CuPy, array-api-strict. Never JAX or Dask, nor PyTorch under
    ``torch.compile`` / ``torch.func``, whose tracers want the fused formula, nor an array with a
    symbolic (``None``) dimension, whose blocks cannot be planned."""
    return refusal(x) is None


def refusal(x: Array) -> str | None:
    """Why the blocked engine does not evaluate ``x`` (None: it does): :func:`supports`' one
    decision, in words for :func:`xce.explain`."""
    lib = library_name(x)
    if lib not in _EAGER:
        return f"{lib} arrays are lazy or traced: one fused formula"
    if is_traced(x):
        return "traced (torch.compile, torch.func): one fused formula for the tracer"
    size = known_size(tuple(x.shape))
    if size is None:
        return "a symbolic dimension: blocks cannot be planned"
    opts = options()
    enabled = opts.get("enabled")
    if enabled is False:
        return "xce.config(enabled=False)"
    if enabled is True:
        return None
    least = opts.get("min_elements", _MIN_ELEMENTS)
    return None if size >= least else f"{size} elements < min_elements {least}"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


_MAX_THREADS = 8
_THREADPOOL: Any = None  # threadpoolctl's controller, made once threadpoolctl has been imported


def default_threads() -> int:
    """The engine's thread count when :func:`config` sets none: the smallest of 8, the CPUs
    this process may run on, ``OMP_NUM_THREADS`` (its first number, where set), PyTorch's
    ``torch.get_num_threads()`` (where torch is imported: DataLoader workers set 1) and the
    smallest thread limit threadpoolctl reports for the BLAS / OpenMP libraries (where
    threadpoolctl is imported, e.g. inside ``threadpool_limits``). Nothing is imported here."""
    n = min(_cpus(), _MAX_THREADS)
    omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0:
        n = min(n, int(omp))
    torch = sys.modules.get("torch")
    get_num_threads = getattr(torch, "get_num_threads", None)
    if get_num_threads is not None:
        n = min(n, get_num_threads())
    limit = _threadpool_limit()
    if limit is not None:
        n = min(n, limit)
    return max(1, n)


def _threadpool_limit() -> int | None:
    """The smallest ``num_threads`` of the libraries threadpoolctl controls (None where it is
    not imported or reports none). The controller is made once (finding the libraries takes
    about a millisecond); reading each library's current count is a C call."""
    global _THREADPOOL
    threadpoolctl = sys.modules.get("threadpoolctl")
    if threadpoolctl is None:
        return None
    try:
        if _THREADPOOL is None:
            _THREADPOOL = threadpoolctl.ThreadpoolController()
        counts = [lib.num_threads for lib in _THREADPOOL.lib_controllers]
    except Exception:  # an older or partial threadpoolctl: no limit known
        return None
    counts = [c for c in counts if isinstance(c, int) and c > 0]
    return min(counts) if counts else None


def plan(x: Array, *, xp: Namespace, compute_dtype: Any = None, use: str = "stats") -> Plan:
    """Block rows, class chunk and threads for ``x`` (``(A, C)`` or ``(A, C, B)``); ``use``
    as in :func:`block_bytes` sizes the rows (the class chunk is always the statistics')."""
    opts = options()
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
        block_rows = max(1, block_bytes(x, use) // (itemsize * class_chunk * inner))
    block_rows = max(1, min(block_rows, rows))
    threads = 1
    if library_name(x) in _POOLED and not getattr(_IN_WORKER, "flag", False):
        threads = opts.get("threads") or default_threads()
        threads = max(1, min(threads, math.ceil(rows / block_rows)))
    return Plan(block_rows, class_chunk, threads)


def reads_values(x: Array) -> bool:
    """Whether checks may read ``x``'s values (one fused reduction, then a host read).

    Not for lazy arrays (JAX, Dask), data-less ones (``meta``), arrays on an accelerator (a
    device→host sync per call) or under ``torch.compile`` / ``torch.func`` (a graph break, or
    an error under ``vmap``): there invalid values follow the lazy contract (NaN at that
    position). ``xce.config(check_values=True/False)`` decides for eager arrays instead.
    """
    if is_lazy(x) or not has_values(x):
        return False
    forced = options().get("check_values")
    if forced is not None:
        return bool(forced)
    return not on_accelerator(x) and not is_traced(x)


def on_accelerator(x: Array) -> bool:
    """Whether ``x`` lives on a GPU (CuPy, or a PyTorch tensor off the CPU)."""
    lib = library_name(x)
    return lib == "cupy" or (lib == "torch" and x.device.type != "cpu")


def block_bytes(x: Array, use: str = "stats") -> int:
    """The default block size in bytes for ``x``: the one block-size policy of xce.

    ``use`` says what the block is for. ``"stats"``: the forward statistics (see the
    constants above). ``"kernel"``: a block of rows handed whole to a library's own loss
    kernel (PyTorch's log-softmax: one parallel region per block, not the formula's four),
    whose temporary of the block's size is the blocked path's extra memory; so 1/32 of the
    input from 1 MiB up. ``"gradient"``: a block of the analytic backward, formed in the
    result itself, so its size costs no memory; 16 MiB fits a typical L3, so the in-place
    passes after the first re-read it from cache. ``"matmul"``: the logits of a block of
    rows of ``linear_cross_entropy`` (64 MiB: few, tall blocks keep ``dW``'s rank-``rows``
    updates efficient, each of which reads and writes all of ``dW``). GPUs take at least
    the GPU block. ``xce.config(block_rows=)`` overrides the rows of every use.
    """
    if use not in ("stats", "kernel"):
        size = _BLOCK_BYTES_GRADIENT if use == "gradient" else _BLOCK_BYTES_MATMUL
        return max(size, _BLOCK_BYTES_GPU) if use == "gradient" and on_accelerator(x) else size
    if on_accelerator(x):
        return _BLOCK_BYTES_GPU
    if library_name(x) == "torch":
        # Each op of a block is one parallel region of torch's intra-op threads; when another
        # process holds a core, every region waits for a descheduled thread, so: fewer, larger
        # blocks as the input grows, still a small fraction of it. A kernel's block needs less
        # work to pay for its region: 1/32 of the input from 1 MiB (docs/performance.md).
        total: int = math.prod(x.shape) * max(4, x.dtype.itemsize)  # in the compute dtype
        floor = _BLOCK_BYTES_KERNEL if use == "kernel" else _BLOCK_BYTES_INTRA_OP
        return min(_BLOCK_BYTES_INTRA_OP_MAX, max(floor, total // 32))
    return _BLOCK_BYTES


def gradient_rows(x: Array, ax: int, *, xp: Namespace) -> int | None:
    """Rows per block of a blocked gradient (or other block-by-block rule) over ``x`` with the
    classes on axis ``ax`` (None: not blocked: 1-D arrays, classes on axis 0, traced arrays,
    ``xce.config(enabled=False)``); ``xce.config(block_rows=)`` when set. Rows are the
    positions of ``(R, C)`` when the classes are the last axis, else slices along axis 0."""
    opts = options()
    if x.ndim < 2 or ax == 0 or opts.get("enabled") is False or is_traced(x):
        return None
    rows = opts.get("block_rows")
    if rows is not None:
        return int(rows)
    per_row: int = x.shape[-1] if ax == x.ndim - 1 else math.prod(x.shape[1:])
    itemsize: int = xp.finfo(default_compute_dtype(x.dtype, xp=xp)).bits // 8
    return max(1, block_bytes(x, "gradient") // (itemsize * max(per_row, 1)))


# --- the math of one block ----------------------------------------------------------------

# A per-block callback: given the block's logits shifted by a per-row reference ``s`` (rows ×
# chunk [× B], in the compute dtype), the block's rows and the chunk's classes, the linear
# statistics wanted, each as ``(Σ_c a_c s_c, Σ_c a_c)`` with the class axis kept (the second
# may be a Python number). The engine adds them over class chunks and re-expresses them
# against the row's final shift; it never knows what the coefficients ``a`` mean.
Terms = Callable[[Array, slice, slice], Sequence[tuple[Array, "Array | float"]]]


class SoftmaxSums(NamedTuple):
    """Per-row statistics, in the compute dtype, the class axis dropped.

    ``shift`` is the row's finite maximum (0 where it is not finite), ``lse`` is
    ``log Σ_c exp(x_c - shift)``, ``sums[k]`` is ``Σ_c a_c (x_c - shift)`` for the k-th
    linear statistic of the callback and ``masses[k]`` is ``Σ_c a_c``.
    """

    shift: Array
    lse: Array
    sums: tuple[Array, ...]
    masses: tuple[Array | float, ...]  #: ``Σ_c a_c`` of each statistic (a number where the callback gave one)
    #: ``Σ_c p_c (x_c - shift)`` with ``p`` the softmax (when asked for: the entropy is ``lse - moment``)
    moment: Array | None = None


_Block = tuple[Array, Array, tuple[Array, ...], tuple[Any, ...], "Array | None"]


def _exp_moment(e: Array, s: Array, *, xp: Namespace) -> Array:
    """``Σ_c e_c s_c`` over axis 1 (kept), with ``e = exp(s)``: a class of no mass adds 0
    (``0·(-inf)`` would be NaN)."""
    return xp.sum(e * xp.where(e > 0.0, s, 0.0), axis=1, keepdims=True)


def _block(
    x: Array, rows: slice, terms: Terms | None, *, class_chunk: int, dtype: Any, xp: Namespace,
    work: Array | None = None, moment: bool = False,
) -> _Block:
    """Shift, lse, linear sums and (``moment``) the softmax's ``Σ p s`` of one block ``x``
    (rows × C [× B]); axis 1 kept.

    ``work``, when given, is a buffer of ``x``'s shape in ``dtype`` that receives the
    shifted logits and then their exponentials (reused from block to block).
    """
    n_classes = x.shape[1]
    if class_chunk >= n_classes:
        # The max of half-precision values is exact, so it is taken before the upcast; the
        # subtraction then promotes: no float32 copy of the block besides s itself.
        shift = as_dtype(finite_max(x, 1, xp=xp), dtype, xp=xp)
        s = write_into("subtract", work, x, shift, xp=xp)
        pairs = () if terms is None else tuple(terms(s, rows, slice(0, n_classes)))
        # In place when there is a buffer and no moment: s is not needed after this.
        e = write_into("exp", None if moment else work, s, xp=xp)
        total = xp.sum(e, axis=1, keepdims=True)
        mom = _exp_moment(e, s, xp=xp) / total if moment else None
        return shift, xp.log(total), tuple(d for d, _ in pairs), tuple(m for _, m in pairs), mom

    # Classes in chunks: online logsumexp. The running shift only grows (a +inf max is
    # replaced by 0, as in the fused formula); sums accumulated against an older shift are
    # rescaled. Linear sums are accumulated against the first chunk's shift, ref, then moved:
    # Σ a (x - shift) = Σ a (x - ref) + (ref - shift) Σ a.
    shift = total = ref = raw_max = mom = None
    dots: list[Any] = []
    masses: list[Any] = []
    for c0 in range(0, n_classes, class_chunk):
        c1 = min(c0 + class_chunk, n_classes)
        xc = as_dtype(x[:, c0:c1, ...], dtype, xp=xp)
        cmax = xp.max(xc, axis=1, keepdims=True)
        raw_max = cmax if raw_max is None else xp.maximum(raw_max, cmax)
        new_shift = finite_or_zero(raw_max, xp=xp)
        e = xp.exp(xc - new_shift)
        part = xp.sum(e, axis=1, keepdims=True)
        if moment:  # Σ e^(x-S)(x-S) moved to the new shift S': e^(S-S')·(m + (S-S')·total)
            m_part = _exp_moment(e, xc - new_shift, xp=xp)
            mom = m_part if mom is None else xp.exp(shift - new_shift) * (mom + (shift - new_shift) * total) + m_part
        total = part if total is None else total * xp.exp(shift - new_shift) + part
        shift = new_shift
        if ref is None:
            ref = shift
        if terms is not None:
            for k, (dot, mass) in enumerate(terms(xc - ref, rows, slice(c0, c1))):
                if k == len(dots):
                    dots.append(dot)
                    masses.append(mass)
                else:
                    dots[k], masses[k] = dots[k] + dot, masses[k] + mass
    delta = ref - shift
    return (shift, xp.log(total), tuple(d + delta * m for d, m in zip(dots, masses)), tuple(masses),
            None if mom is None else mom / total)


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


def softmax_sums(x: Array, *, xp: Namespace, terms: Terms | None = None, compute_dtype: Any = None,
                 blocked: bool = True, moment: bool = False) -> SoftmaxSums:
    """Per-row shift, logsumexp and linear statistics of ``x`` along axis 1.

    Parameters
    ----------
    x : array, shape (A, C) or (A, C, B)
        Logits, classes along axis 1 (``blocked=False`` takes any ``(A, C, ...)``: the fused
        formula never reshapes, so symbolic dimensions may stay where they are). Any real
        floating dtype; half precision is upcast to ``compute_dtype`` one block at a time.
    terms : callable, optional
        The per-block callback of the linear statistics (see ``Terms``).
    compute_dtype : dtype, optional
        Accumulation dtype; default float32 for half precision, else ``x.dtype``.
    blocked : bool
        True: blocks of rows (and class chunks) by :func:`plan`, on the thread pool where
        the library releases the GIL. False: the fused formula, one block, no Python loop,
        so it traces into one ``jax.jit`` program and keeps Dask's own chunking.
    moment : bool
        Also ``SoftmaxSums.moment``, the softmax's mean of the shifted logits (the entropy
        is ``lse - moment``), from the same exponentials.
    """
    if x.ndim not in (2, 3) and (blocked or x.ndim < 2):
        raise ValueError(f"softmax_sums wants a (A, C) or (A, C, B) array; got shape {tuple(x.shape)}.")
    dtype = compute_dtype if compute_dtype is not None else default_compute_dtype(x.dtype, xp=xp)
    p = plan(x, xp=xp, compute_dtype=dtype) if blocked else None
    # One block is the fused formula: no work buffer to allocate and fill.
    if p is None or (p.block_rows >= x.shape[0] and p.class_chunk >= x.shape[1]):
        shift, lse, sums, masses, mom = _block(x, slice(None), terms, class_chunk=x.shape[1], dtype=dtype, xp=xp,
                                               moment=moment)
        # Indexing drops the kept axis: cheaper than a wrapped squeeze for dispatch-bound calls.
        return SoftmaxSums(shift[:, 0, ...], lse[:, 0, ...], tuple(t[:, 0, ...] for t in sums),
                           tuple(m if isinstance(m, float) or m.ndim == 0 else m[:, 0, ...] for m in masses),
                           None if mom is None else mom[:, 0, ...])
    reuse = p.class_chunk >= x.shape[1] and writes_into(x)

    def run(i0: int, i1: int, work: Array | None) -> _Block:
        return _block(x[i0:i1, ...], slice(i0, i1), terms, class_chunk=p.class_chunk, dtype=dtype, xp=xp,
                      work=work, moment=moment)

    parts = map_rows(run, x, p, buffer_dtype=dtype if reuse else None, xp=xp)
    if not parts:  # no rows: empty statistics
        empty = xp.zeros((0, *x.shape[2:]), dtype=dtype, device=device_of(x))
        n_terms = 0 if terms is None else len(terms(xp.zeros((0, *x.shape[1:]), dtype=dtype, device=device_of(x)),
                                                    slice(0, 0), slice(0, x.shape[1])))
        return SoftmaxSums(empty, empty, (empty,) * n_terms, (empty,) * n_terms, empty if moment else None)

    def joined(col: list[Any]) -> Any:
        if col[0] is None or isinstance(col[0], float) or col[0].ndim == 0:  # the same number for every row
            return col[0]
        return (col[0] if len(col) == 1 else xp.concat(col, axis=0))[:, 0, ...]

    n_terms = len(parts[0][2])
    return SoftmaxSums(joined([q[0] for q in parts]), joined([q[1] for q in parts]),
                       tuple(joined([q[2][k] for q in parts]) for k in range(n_terms)),
                       tuple(joined([q[3][k] for q in parts]) for k in range(n_terms)),
                       joined([q[4] for q in parts]))


T = TypeVar("T")


def map_rows(fn: Callable[[int, int, Array | None], T], x: Array, p: Plan, *, buffer_dtype: Any = None,
             xp: Namespace) -> list[T]:
    """``[fn(i0, i1, work) for each block of p.block_rows rows of x]``, in order.

    Blocks run on the engine's thread pool when ``p.threads > 1``. With ``buffer_dtype``
    each worker thread gets one buffer shaped like a full block of ``x`` (``work``, sliced to
    the block's rows), reused across its blocks: fresh block-sized allocations each block may
    be unmapped and faulted in again every time.
    """
    rows = x.shape[0]
    starts = list(range(0, rows, p.block_rows))
    buffers: dict[int, Array] = {}

    def run(i0: int) -> T:
        i1 = min(i0 + p.block_rows, rows)
        work = None
        if buffer_dtype is not None:
            work = buffers.get(threading.get_ident())
            if work is None:
                work = xp.empty((p.block_rows, *x.shape[1:]), dtype=buffer_dtype, device=device_of(x))
                buffers[threading.get_ident()] = work
            work = work[: i1 - i0, ...]
        return fn(i0, i1, work)

    if p.threads > 1 and len(starts) > 1:
        return list(_pool(p.threads).map(run, starts))
    return [run(i0) for i0 in starts]

"""The one seam between xce and the array libraries.

Everything backend-specific that the Array API standard cannot express lives here:
namespace resolution (cached per array type), lazy-array detection, devices, and
fallbacks for functions a namespace lacks. Loss modules only ever see ``xp``.
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
import types
from typing import Any

import array_api_compat

__all__ = [
    "add_at_rows",
    "as_compute",
    "as_dtype",
    "compute_dtype",
    "device_of",
    "has_values",
    "index_dtype",
    "is_lazy",
    "is_masked",
    "is_traced",
    "known_size",
    "library_name",
    "mutable_like_numpy",
    "namespace",
    "on_input_device",
    "put_along_class_axis",
    "same_device",
    "take_along_class_axis",
    "torch_compiling",
    "torch_tracing",
    "value_range",
    "write_into",
    "writes_into",
]

Array = Any
Namespace = Any

# Keyed by the tuple of argument types: resolving a namespace costs microseconds,
# which matters for small calls (an 8x10 loss is dominated by dispatch).
_NAMESPACE_CACHE: dict[tuple[tuple[str, ...], tuple[type, ...]], Namespace] = {}
_LAZY_CACHE: dict[type, bool] = {}
_INDEX_DTYPE_CACHE: dict[int, Any] = {}
_COMPUTE_DTYPE_CACHE: dict[tuple[int, Any], Any] = {}
# Libraries whose functions take ``out=`` with NumPy's meaning (write the result there).
_OUT_LIBRARIES = frozenset({"numpy", "cupy", "torch"})
_ELEMENTWISE = frozenset({"add", "subtract", "multiply", "divide", "exp"})
_KNOWN_LIBRARIES = {"numpy", "torch", "cupy", "jax", "jaxlib", "dask", "array_api_strict"}
# Positional array arguments that may never be None (optional ones such as ``weight`` may).
_REQUIRED = frozenset({"input", "target", "x"})


_LIBRARY_NAMES: dict[type, str] = {}


def library_name(x: object) -> str:
    """Top-level package that owns ``x``'s type (``'numpy'``, ``'torch'``, ...)."""
    cls = type(x)
    try:
        return _LIBRARY_NAMES[cls]
    except KeyError:  # (a few array types per process: the dict stays small)
        name = _LIBRARY_NAMES[cls] = cls.__module__.partition(".")[0]
        return name


def on_input_device(fn: Any) -> Any:
    """``fn`` run under the device of its first argument where the library allocates results on
    a *current* device rather than the inputs' (CuPy: ``with x.device:``); other libraries call
    ``fn`` directly. Why: array-api-compat ignores ``device=`` for CuPy and CuPy launches every
    kernel on the current device, so a call on arrays of another GPU would land its results on
    the current one (or fail). Wraps the public functions."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        x: Any = args[0] if args else next(iter(kwargs.values()), None)
        if library_name(x) == "cupy":
            with x.device:
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return call


def _library(ns: Namespace) -> str:
    name: str = ns.__name__
    return name.removeprefix("array_api_compat.").partition(".")[0]


def namespace(names: tuple[str, ...], *arrays: Array | None, xp: Namespace | None = None) -> Namespace:
    """Resolve the array namespace of ``arrays`` once per public call.

    ``names`` labels each positional array for error messages. ``None`` entries
    (optional arguments) are skipped, except for the required ``input``, ``target`` and
    ``x``. ``xp``, when given, is returned unchecked.
    """
    if xp is not None:
        return xp
    # The names are part of the key: (array, None) is valid for ("input", "weight") but
    # not for ("input", "target").
    key = (names, tuple(map(type, arrays)))  # (map: cheaper than a generator per call)
    try:
        return _NAMESPACE_CACHE[key]
    except KeyError:
        pass
    present = [(n, a) for n, a in zip(names, arrays) if a is not None or n in _REQUIRED]
    for name, a in present:
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(
                f"{name} must be an array (NumPy, PyTorch, JAX, CuPy, Dask or any Array API "
                f"library), got {type(a).__name__}; convert it first, e.g. numpy.asarray({name})."
            )
    spaces = [array_api_compat.array_namespace(a) for _, a in present]
    if len({id(ns) for ns in spaces}) > 1:
        described = ", ".join(f"{n} is {_a(_library(ns))} array" for (n, _), ns in zip(present, spaces))
        raise TypeError(
            f"arrays from different libraries cannot be mixed ({described}); convert them "
            "all to one library first."
        )
    resolved = array_api_compat.array_namespace(*(a for _, a in present))
    if all(type(a).__module__ == "numpy" and type(a).__name__ == "ndarray" for _, a in present):
        resolved = _numpy_namespace(resolved)
    _NAMESPACE_CACHE[key] = resolved
    return resolved


_NUMPY_NAMESPACES: dict[int, Namespace] = {}


def _numpy_namespace(compat: Namespace) -> Namespace:
    """array-api-compat's NumPy namespace, its ``sum``/``max``/``min`` called as the ufuncs'
    ``reduce`` for plain ``ndarray`` arguments.

    Why: ``np.sum`` & co. are Python wrappers (``_wrapreduction``) that cost more than the
    reduction itself on a small array, and an 8x10 loss takes three reductions. For an
    ``ndarray`` they call exactly these ufunc reductions, so the results are the same bits. Only
    where the namespace re-exports NumPy's own functions (NumPy 2), so no conversion of array-api-compat's is bypassed.
    """
    try:
        return _NUMPY_NAMESPACES[id(compat)]
    except KeyError:
        pass
    np = sys.modules["numpy"]
    ns = types.ModuleType(compat.__name__, compat.__doc__)
    ns.__dict__.update(vars(compat))
    if compat.sum is np.sum and compat.max is np.max and compat.min is np.min:
        add, maximum, minimum = np.add.reduce, np.maximum.reduce, np.minimum.reduce

        def sum(x: Array, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Array:
            return add(x, axis=axis, dtype=dtype, keepdims=keepdims)

        def max(x: Array, /, *, axis: Any = None, keepdims: bool = False) -> Array:
            return maximum(x, axis=axis, keepdims=keepdims)

        def min(x: Array, /, *, axis: Any = None, keepdims: bool = False) -> Array:
            return minimum(x, axis=axis, keepdims=keepdims)

        ns.__dict__.update(sum=sum, max=max, min=min)
    _NUMPY_NAMESPACES[id(compat)] = ns
    return ns


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def is_lazy(x: Array) -> bool:
    """True when ``x``'s values cannot be read cheaply (JAX, including under jit; Dask).

    Value checks (target range, probability range) run only on non-lazy arrays; on
    lazy ones the losses encode invalid values as NaN instead.
    """
    cls = type(x)
    try:
        return _LAZY_CACHE[cls]
    except KeyError:
        lazy = bool(array_api_compat.is_lazy_array(x))
        # Unknown array types are probed by value; only cache the known libraries.
        if library_name(x) in _KNOWN_LIBRARIES:
            _LAZY_CACHE[cls] = lazy
        return lazy


def is_traced(x: Array) -> bool:
    """True while a tracing transform runs over ``x``'s library (``torch.compile``, or a
    ``torch.func`` transform such as ``vmap`` / ``grad``): reading a value would break the
    graph or fail, and ``out=`` writes have no batching rule. (JAX's tracers are lazy arrays:
    :func:`is_lazy`.)"""
    return library_name(x) == "torch" and torch_tracing()


def torch_compiling() -> bool:
    """Whether ``torch.compile`` (Dynamo) or ``torch.export`` is tracing (not ``torch.func``)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def torch_tracing() -> bool:
    """Whether ``torch.compile`` is tracing or a ``torch.func`` transform is active."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active())


def same_device(x: Array, other: Array) -> bool:
    """Whether ``x`` and ``other`` live on one device (two NumPy arrays always do: no lookup)."""
    if type(x) is type(other) and type(x).__module__ == "numpy":
        return True
    return bool(device_of(x) == device_of(other))


def device_of(x: Array) -> Any:
    """``x``'s device; None (the library's default device) for arrays without a ``device``
    attribute, which the standard requires but some libraries lack (mlx's arrays live in
    unified memory). xce passes it on as ``device=`` and compares it, nothing more."""
    try:
        return array_api_compat.device(x)
    except AttributeError:
        return None


def known_size(shape: tuple[Any, ...]) -> int | None:
    """The number of elements of ``shape``; None when a dimension is unknown.

    The standard lets ``shape`` hold ``None`` for a dimension known only when the graph runs
    (ndonnx's symbolic dimensions, e.g. a dynamic batch in an ONNX export); Dask writes NaN for
    chunks of unknown size. Counts over such arrays come from the arrays themselves
    (:func:`xce._arrays.count`), and the blocked engine, which plans from the shape, leaves them
    to the fused formula.
    """
    try:
        n = math.prod(shape)  # one C call for the common, known shape
    except TypeError:  # a None dimension
        return None
    return None if n != n else int(n)  # NaN: Dask's unknown chunks


def is_masked(x: Array) -> bool:
    """True for a masked array (marray's ``MArray``): its reductions skip masked elements, so
    counts are taken from the array too (:func:`xce._arrays.count`) and a masked position
    leaves the ``"mean"`` like an ignored one."""
    return library_name(x) == "marray"


def has_values(x: Array) -> bool:
    """False for arrays that carry no data at all (PyTorch's ``meta`` device).

    Such arrays are not lazy (their type is eager) but value checks must skip them.
    """
    return not getattr(x, "is_meta", False)


def index_dtype(xp: Namespace) -> Any:
    """The namespace's default indexing dtype (int64, or int32 for JAX without x64).

    Not cached for JAX: its answer follows the ``jax_enable_x64`` flag, which users may
    toggle between calls (a cached int64 would then be truncated, with a warning).
    """
    key = id(xp)
    try:
        return _INDEX_DTYPE_CACHE[key]
    except KeyError:
        dtype = xp.__array_namespace_info__().default_dtypes()["indexing"]
        if _library(xp) != "jax":
            _INDEX_DTYPE_CACHE[key] = dtype
        return dtype


def compute_dtype(dtype: Any, *, xp: Namespace) -> Any:
    """The dtype to accumulate in: float32 for half precision, else ``dtype`` itself."""
    key = (id(xp), dtype)
    try:
        return _COMPUTE_DTYPE_CACHE[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable dtype object
        return xp.float32 if xp.finfo(dtype).bits < 32 else dtype
    out = xp.float32 if xp.finfo(dtype).bits < 32 else dtype
    _COMPUTE_DTYPE_CACHE[key] = out
    return out


def as_dtype(a: Array, dtype: Any, *, xp: Namespace) -> Array:
    """``a`` in ``dtype``; ``a`` itself when it already is (``xp.astype`` always copies)."""
    return a if a.dtype == dtype else xp.astype(a, dtype)


def as_compute(a: Array, *, xp: Namespace) -> Array:
    """``a`` in its compute dtype (float32 for half precision), copied only when that differs."""
    return as_dtype(a, compute_dtype(a.dtype, xp=xp), xp=xp)


def take_along_class_axis(x: Array, index: Array, axis: int, *, xp: Namespace) -> Array:
    """``x`` picked at ``index`` along ``axis``; the result has ``index``'s shape.

    ``index`` has ``x``'s shape without ``axis`` and holds valid, non-negative indices.
    """
    lib = library_name(x)
    if lib == "torch":
        # array-api-compat's version first maps negative indices (three more ops, which
        # dominate a small call); these indices are valid and non-negative.
        return sys.modules["torch"].take_along_dim(x, index.unsqueeze(axis), dim=axis).squeeze(axis)
    if lib == "numpy" and x.ndim == 2 and axis == 1:
        # Fancy indexing: a third of take_along_axis's cost on a small call (no index grid).
        return x[sys.modules["numpy"].arange(x.shape[0]), index]
    index = xp.expand_dims(index, axis=axis)
    if lib == "jax":
        # The default mode wraps negative indices and fills out-of-range ones (eight more ops
        # in a fused program); these are valid and non-negative.
        return xp.squeeze(sys.modules["jax.numpy"].take_along_axis(x, index, axis=axis, mode="promise_in_bounds"),
                          axis=axis)
    if hasattr(xp, "take_along_axis"):
        return xp.squeeze(xp.take_along_axis(x, index, axis=axis), axis=axis)
    # Dask has no take_along_axis: select with a comparison against the class ids.
    # Chunk-local and lazy; costs one pass over x.
    n_classes = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = n_classes
    classes = xp.arange(n_classes, dtype=index.dtype, device=device_of(x))
    chunks = getattr(x, "chunks", None)
    if chunks is not None:  # Dask: class ids chunked like x, so no task builds a full-vocabulary block
        classes = classes.rechunk((chunks[axis],))
    classes = xp.reshape(classes, tuple(shape))
    return xp.sum(xp.where(index == classes, x, 0.0), axis=axis)


def put_along_class_axis(x: Array, index: Array, values: Array, axis: int) -> bool:
    """Write ``values`` into ``x`` in place at ``index`` along ``axis`` (``x[i, index[i]] =
    values[i]`` with the classes last) where the library has a scatter: True when done, False
    where it has none (the caller then assigns another way). ``index`` has ``x``'s shape without
    ``axis`` and holds valid, non-negative indices; ``values`` has its shape and ``x``'s dtype.
    Why: the standard has no scatter, and the other ways cost a pass over ``x`` (a mask) or a
    few µs of indexing per row."""
    lib = library_name(x)
    if lib == "torch":
        x.scatter_(axis, index.unsqueeze(axis), values.unsqueeze(axis))
        return True
    if lib in ("numpy", "cupy") and x.ndim == 2 and axis == 1:
        x[sys.modules[lib].arange(x.shape[0]), index] = values  # (the rows are distinct)
        return True
    return False


def add_at_rows(out: Array, index: Array, values: Array) -> bool:
    """``out[index[i], ...] += values[i, ...]`` in place, rows of a repeated index accumulated,
    where the library has a scatter-add (PyTorch ``index_add_``, CuPy ``cupyx.scatter_add``,
    NumPy ``add.at``): True when done, False where it has none. ``index`` is 1-D, valid and
    non-negative; ``values`` has ``out``'s dtype. Why: the standard has no scatter-add; its
    sorted-runs substitute reads the sorted indices' range on the host, a sync per block on a GPU."""
    lib = library_name(out)
    if lib == "torch":
        out.index_add_(0, index, values)
        return True
    if lib == "cupy":
        importlib.import_module("cupyx").scatter_add(out, index, values)
        return True
    if lib == "numpy":
        sys.modules["numpy"].add.at(out, index, values)
        return True
    return False


# Libraries whose arrays mutate as NumPy's do: a basic slice is a view that in-place operators
# write through, and ``a[index_array, ...] = b`` assigns. JAX's arrays are immutable.
_MUTABLE_LIKE_NUMPY = {"numpy": True, "cupy": True, "torch": True, "jax": False}


def mutable_like_numpy(xp: Namespace) -> bool | None:
    """Whether ``xp``'s arrays mutate as NumPy's (views of basic slices written through in place,
    assignment at an index array): True or False for the libraries known, None for others, which
    the caller may probe on the CPU. Named, not probed: a probe's answer is a read, a sync on a GPU."""
    return _MUTABLE_LIKE_NUMPY.get(_library(xp))


def value_range(a: Array, *, xp: Namespace) -> tuple[int, int]:
    """``(min, max)`` of a non-empty eager integer array, read to the host: one fused
    reduction where the library has one (``torch.aminmax``), NumPy's methods (the
    ``np.min`` wrappers cost more than the reduction on a small call), else two reductions."""
    lib = library_name(a)
    if lib == "numpy":
        return int(a.min()), int(a.max())
    if lib == "torch" and not a.dtype.is_floating_point and a.dtype != sys.modules["torch"].bool:
        lo, hi = sys.modules["torch"].aminmax(a)
        return int(lo), int(hi)
    return int(xp.min(a)), int(xp.max(a))


def writes_into(x: Array) -> bool:
    """Whether :func:`write_into` can reuse a buffer for results computed from ``x``."""
    lib = library_name(x)
    return lib in _OUT_LIBRARIES and not (lib == "torch" and (_records_autograd((x,)) or torch_tracing()))


def write_into(name: str, out: Array | None, *args: Array | float, xp: Namespace) -> Array:
    """``xp.<name>(*args)``, written into ``out`` where the library can; returns the result.

    The standard has no ``out=``, so every elementwise call allocates its result. In a loop
    over blocks those allocations are the same few sizes again and again, and the C
    allocator may hand each one back to the OS and fault it in again on the next block
    (glibc does this above its mmap/trim thresholds: it tripled the blocked engine's time on
    PyTorch in our measurements). NumPy, CuPy and PyTorch accept ``out=`` (``out`` may be one
    of ``args``); other namespaces, and PyTorch while autograd records, get a new array.
    ``name`` is a function both the standard and those libraries spell the same way
    (``"exp"``, ``"subtract"``, ``"multiply"``, ``"matmul"``). ``out=None`` allocates.
    """
    if out is None:
        return getattr(xp, name)(*args)
    lib = library_name(out)
    if lib in _OUT_LIBRARIES and not (lib == "torch" and (_records_autograd(args) or torch_tracing())):
        first = args[0]
        if (lib == "torch" and name in _ELEMENTWISE and getattr(first, "dtype", out.dtype) != out.dtype
                and all(a is not out for a in args)):
            # PyTorch would first allocate an upcast copy of the whole operand (every block, in
            # a loop); assigning it into out casts in place. (NumPy casts in small buffers.)
            out[...] = first
            args = (out, *args[1:])
        return getattr(sys.modules[lib], name)(*args, out=out)
    return getattr(xp, name)(*args)


def _records_autograd(args: tuple[Array | float, ...]) -> bool:
    torch = sys.modules["torch"]
    return torch.is_grad_enabled() and any(getattr(a, "requires_grad", False) for a in args)

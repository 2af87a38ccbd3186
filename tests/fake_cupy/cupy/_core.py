"""The stand-in's arrays, devices and host-read counting (its own module: the namespace in
``cupy`` shadows builtins such as ``bool`` and ``any`` with NumPy's functions)."""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

import numpy as _np

__version__ = "13.0.0+standin"


class HostReadError(RuntimeError):
    """A value was read to the host while reads are refused (a device→host sync on a GPU)."""


class _State(threading.local):
    reads = 0
    refuse = False


#: ``state.reads`` counts host reads; ``state.refuse = True`` makes each one raise.
state = _State()


def _read(what: str) -> None:
    if state.refuse:
        raise HostReadError(f"host read on the CuPy stand-in: {what}")
    state.reads += 1


# -- devices ---------------------------------------------------------------------------------
_N_DEVICES = 2
_current = threading.local()


def _current_id() -> int:
    return getattr(_current, "id", 0)


class Device:
    def __init__(self, device: Any = None) -> None:
        if isinstance(device, Device):
            device = device.id
        self.id = _current_id() if device is None else int(device)
        if not 0 <= self.id < _N_DEVICES:
            raise ValueError(f"invalid device id {self.id}")
        self._saved: list[int] = []

    def __enter__(self) -> Device:
        self._saved.append(_current_id())
        _current.id = self.id
        return self

    def __exit__(self, *exc: object) -> None:
        _current.id = self._saved.pop()

    def use(self) -> None:
        _current.id = self.id

    def synchronize(self) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("cuda", self.id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


cuda = types.ModuleType("cupy.cuda")
cuda.Device = Device  # type: ignore[attr-defined]
cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: _N_DEVICES)  # type: ignore[attr-defined]
cuda.get_device_id = _current_id  # type: ignore[attr-defined]
cuda.__path__ = []  # type: ignore[attr-defined]  # (a package: array-api-compat imports cupy.cuda.device)
cuda.device = types.ModuleType("cupy.cuda.device")  # type: ignore[attr-defined]
cuda.device.Device = Device  # type: ignore[attr-defined]
Device.__module__ = "cupy.cuda"


def _check_device(arrays: list[ndarray]) -> None:
    cur = _current_id()
    for a in arrays:
        if a._dev != cur:
            raise ValueError(f"Array device must be same as the current device: array device = {a._dev} "
                             f"while current = {cur}")


# -- arrays ----------------------------------------------------------------------------------
def _wrap(r: Any, dev: int | None = None) -> Any:
    if isinstance(r, (_np.ndarray, _np.generic)):
        return ndarray._from(_np.asarray(r) if isinstance(r, _np.generic) else r, dev)
    if isinstance(r, tuple):
        return type(r)(*map(_wrap, r)) if hasattr(r, "_fields") else tuple(_wrap(x) for x in r)
    if isinstance(r, list):
        return [_wrap(x) for x in r]
    return r


def _unwrap(a: Any, found: list[ndarray], host_ok: bool = False) -> Any:
    if isinstance(a, ndarray):
        found.append(a)
        return a._a
    if isinstance(a, _np.ndarray) and not host_ok:
        raise TypeError(f"Unsupported type {type(a)}")
    if isinstance(a, (tuple, list)):
        return type(a)(_unwrap(x, found, host_ok) for x in a)
    return a


def _call(fn: Any, args: tuple, kwargs: dict, *, host_ok: bool = False) -> Any:
    found: list[ndarray] = []
    args = _unwrap(args, found, host_ok)
    out = kwargs.get("out")
    kwargs = {k: _unwrap(v, found, host_ok) for k, v in kwargs.items()}
    _check_device(found)
    r = fn(*args, **kwargs)
    return out if isinstance(out, ndarray) else _wrap(r)


def _is_mask(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (ndarray, _np.ndarray)) and k.dtype == _np.bool_ for k in keys)


class ndarray:
    """A CuPy-like array over a NumPy array, on one device."""

    __slots__ = ("_a", "_dev")
    __array_priority__ = 100.0
    __array_ufunc__ = None  # NumPy's operators defer to these (then refuse host arrays, as CuPy)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float) -> None:
        self._a = _np.empty(shape, dtype)
        self._dev = _current_id()

    @classmethod
    def _from(cls, a: _np.ndarray, dev: int | None = None) -> ndarray:
        self = object.__new__(cls)
        self._a = a
        self._dev = _current_id() if dev is None else dev
        return self

    # reads to the host
    def get(self, stream: Any = None, order: str = "C", out: Any = None) -> _np.ndarray:
        _read("get()")
        return self._a.copy()

    def item(self) -> Any:
        _read("item()")
        return self._a.item()

    def tolist(self) -> Any:
        _read("tolist()")
        return self._a.tolist()

    def __bool__(self) -> bool:
        _read("bool()")
        return bool(self._a)

    def __float__(self) -> float:
        _read("float()")
        return float(self._a)

    def __int__(self) -> int:
        _read("int()")
        return int(self._a)

    def __complex__(self) -> complex:
        _read("complex()")
        return complex(self._a)

    def __index__(self) -> int:
        _read("index()")
        return self._a.__index__()

    def __repr__(self) -> str:
        _read("repr()")
        return repr(self._a).replace("array(", "array(", 1)

    def __str__(self) -> str:
        _read("str()")
        return str(self._a)

    def __format__(self, spec: str) -> str:
        _read("format()")
        return format(self._a, spec)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    # metadata
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    device = property(lambda self: Device(self._dev))
    T = property(lambda self: ndarray._from(self._a.T, self._dev))
    mT = property(lambda self: ndarray._from(_np.swapaxes(self._a, -1, -2), self._dev))

    @property
    def base(self) -> Any:
        return None if self._a.base is None else ndarray._from(self._a.base, self._dev)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))

    # views (no kernel) keep the array's device
    def __getitem__(self, key: Any) -> ndarray:
        if _is_mask(key):
            _read("boolean-mask indexing")
        key = _unwrap(key, [], True)
        r = self._a[key]
        if not isinstance(r, _np.ndarray):  # a 0-d view, as CuPy's (NumPy would copy a scalar out)
            r = self._a[(*key, ...) if isinstance(key, tuple) else (key, ...)]
        return ndarray._from(r, self._dev)

    def __setitem__(self, key: Any, value: Any) -> None:
        if _is_mask(key):
            _read("boolean-mask assignment")
        found: list[ndarray] = []
        self._a[_unwrap(key, found, True)] = _unwrap(value, found)
        _check_device([self, *found])

    def reshape(self, *shape: Any, order: str = "C") -> ndarray:
        return ndarray._from(self._a.reshape(*shape, order=order), self._dev)

    def view(self, *args: Any) -> ndarray:
        return ndarray._from(self._a.view(*args), self._dev)

    def ravel(self, order: str = "C") -> ndarray:
        return ndarray._from(self._a.ravel(order), self._dev)

    def transpose(self, *axes: Any) -> ndarray:
        return ndarray._from(self._a.transpose(*axes), self._dev)

    def swapaxes(self, a: int, b: int) -> ndarray:
        return ndarray._from(self._a.swapaxes(a, b), self._dev)

    def squeeze(self, axis: Any = None) -> ndarray:
        return ndarray._from(self._a.squeeze(axis), self._dev)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self._dev)

    def __array_namespace__(self, *, api_version: Any = None) -> Any:
        return sys.modules["cupy"]

    # kernels: on the current device, every operand there too
    def copy(self, order: str = "C") -> ndarray:
        with Device(self._dev):
            return ndarray._from(self._a.copy(order))

    def __getattr__(self, name: str) -> Any:
        # the remaining methods (sum, max, astype, fill, ...) as kernels
        attr = getattr(self._a, name)
        if not callable(attr):
            raise AttributeError(name)
        return lambda *args, **kwargs: _method(self, attr, args, kwargs)


def _method(self: ndarray, attr: Any, args: tuple, kwargs: dict) -> Any:
    _check_device([self])
    return _call(attr, args, kwargs)


def _operator(name: str) -> Any:
    op = getattr(_np.ndarray, name)

    def method(self: ndarray, other: Any = None) -> Any:
        if other is None and name in ("__neg__", "__pos__", "__abs__", "__invert__"):
            return _call(op, (self,), {})
        if isinstance(other, _np.ndarray):
            return NotImplemented
        r = _call(op, (self, other), {})
        if name.startswith("__i"):  # in place: the same array object
            return self
        return r

    method.__name__ = name
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    for _form in ("__{}__", "__r{}__", "__i{}__"):
        setattr(ndarray, _form.format(_name), _operator(_form.format(_name)))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))


# -- the namespace: NumPy's functions as kernels ----------------------------------------------
class _Ufunc:
    def __init__(self, uf: _np.ufunc) -> None:
        self._uf = uf
        self.__name__ = uf.__name__
        self.nin, self.nout = uf.nin, uf.nout

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _call(self._uf, args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return _call(self._uf.reduce, args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return _call(self._uf.accumulate, args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return _call(self._uf.outer, args, kwargs)

    def at(self, *args: Any, **kwargs: Any) -> None:
        _call(self._uf.at, args, kwargs)


def _function(fn: Any, *, host_ok: bool = False) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return _call(fn, args, kwargs, host_ok=host_ok)

    wrapped.__name__ = getattr(fn, "__name__", "function")
    wrapped.__doc__ = getattr(fn, "__doc__", None)
    return wrapped


# Functions whose result's shape depends on values: CuPy reads a count to the host.
_SYNCING = {"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract", "trim_zeros"}


def _syncing(fn: Any) -> Any:
    inner = _function(fn)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _read(f"{fn.__name__}()")
        return inner(*args, **kwargs)

    wrapped.__name__ = fn.__name__
    return wrapped


def _namespace_of(module: Any, into: dict[str, Any]) -> None:
    for name in dir(module):
        if name.startswith("_") or name in into:
            continue
        obj = getattr(module, name)
        if isinstance(obj, _np.ufunc):
            into[name] = _Ufunc(obj)
        elif isinstance(obj, (type, types.ModuleType, int, float, str)) or obj is None:
            if not isinstance(obj, types.ModuleType):
                into[name] = obj
        elif callable(obj):
            into[name] = _syncing(obj) if name in _SYNCING else _function(obj)


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> ndarray:
    """Host data is copied to the current device; an array of another device is copied here."""
    if isinstance(a, ndarray):
        if a._dev == _current_id() and (dtype is None or _np.dtype(dtype) == a.dtype):
            return a
        return ndarray._from(_np.array(a._a, dtype=dtype, order=order))
    return ndarray._from(_np.array(_unwrap(a, [], True), dtype=dtype, order=order))


def array(a: Any, dtype: Any = None, copy: bool = True, order: str = "K", ndmin: int = 0) -> ndarray:
    if isinstance(a, ndarray) and not copy and a._dev == _current_id() and (dtype is None or a.dtype == dtype):
        return a
    return ndarray._from(_np.array(_unwrap(a, [], True), dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a: Any, stream: Any = None) -> _np.ndarray:
    return a.get() if isinstance(a, ndarray) else _np.asarray(a)


def get_array_module(*args: Any) -> Any:
    return sys.modules["cupy"]


asanyarray = ascontiguousarray = asarray
bool_ = _np.bool_
ndarray.__module__ = "cupy"


class _Generator:
    """``cupy.random.default_rng``: NumPy's generator, its arrays on the current device."""

    def __init__(self, seed: Any = None) -> None:
        self._g = _np.random.default_rng(seed)

    def __getattr__(self, name: str) -> Any:
        return _function(getattr(self._g, name))

"""The backend matrix: one ``xp`` fixture (library × device), a ``device`` fixture and
one assertion helper, ``assert_close_to``, used by every test.

Functions tagged with ``lazy_xp_function`` (below) run under ``jax.jit`` for the
``jax-jit`` backend and must stay lazy (never compute) for ``dask``; array-api-extra's
testing helpers do the patching.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from array_api_extra.testing import lazy_xp_function, patch_lazy_xp_functions

import xce

# Worker scripts run in subprocesses with their own environment (a Keras backend, a torch
# process group): never imported by the collection of doctests.
collect_ignore_glob = ["*_workers/*.py"]

# Every public function (not the loss classes) runs under jax.jit / stays lazy on dask.
for _name in xce.__all__:
    if inspect.isfunction(getattr(xce, _name)) and _name not in ("config", "value_and_grad"):
        lazy_xp_function(getattr(xce, _name))


@dataclass(frozen=True)
class Backend:
    name: str
    xp: Any
    device: Any
    lazy: bool  # values are not read inside the call (jax, dask, GPUs: docs/semantics.md)

    def asarray(self, data: Any, dtype: Any = None) -> Any:
        return self.xp.asarray(np.asarray(data), dtype=dtype, device=self.device)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# Decided before the stand-in can be installed: the stand-in's rows run only without the real CuPy.
_REAL_CUPY = _have("cupy")


def install_cupy_standin() -> Any:
    """The NumPy-backed CuPy stand-in (tests/fake_cupy) as ``cupy`` / ``cupyx`` in ``sys.modules``
    (for the rest of the process: array-api-compat keeps the module it imported); skips the
    calling test where the real CuPy is importable (then the ``cupy`` rows run instead)."""
    if _REAL_CUPY:
        pytest.skip("the real CuPy is importable: the cupy backend runs instead of its stand-in")
    if "cupy" not in sys.modules:
        path = os.path.join(os.path.dirname(__file__), "fake_cupy")
        sys.path.insert(0, path)
        try:
            importlib.import_module("cupy")
            importlib.import_module("cupyx")
        finally:
            sys.path.remove(path)
    return sys.modules["cupy"]


def _cuda_available() -> bool:
    if _REAL_CUPY:
        try:
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            return False
    return False


def _make_backend(name: str) -> Backend:
    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp, "cpu", lazy=False)
    if name == "array_api_strict":
        if not _have("array_api_strict"):
            pytest.skip("array-api-strict is not installed")
        import array_api_strict as xp

        return Backend(name, xp, xp.Device("CPU_DEVICE"), lazy=False)
    if name in ("torch", "torch-definitions", "torch-cuda"):
        if not _have("torch"):
            pytest.skip("torch is not installed")
        import array_api_compat.torch as xp
        import torch

        if name == "torch-cuda" and not torch.cuda.is_available():
            pytest.skip("no CUDA device for torch")
        return Backend(name, xp, torch.device("cuda" if name == "torch-cuda" else "cpu"), lazy=False)
    if name in ("jax", "jax-jit"):
        if not _have("jax"):
            pytest.skip("jax is not installed")
        import jax
        import jax.numpy as xp

        return Backend(name, xp, jax.devices("cpu")[0], lazy=True)
    if name == "dask":
        if not _have("dask"):
            pytest.skip("dask is not installed")
        import array_api_compat.dask.array as xp

        return Backend(name, xp, "cpu", lazy=True)
    if name == "ndonnx":
        if not (_have("ndonnx") and _have("onnxruntime")):
            pytest.skip("ndonnx / onnxruntime are not installed")
        import ndonnx as xp

        return Backend(name, xp, xp.__array_namespace_info__().default_device(), lazy=True)
    if name == "marray":
        if not _have("marray"):
            pytest.skip("marray is not installed")
        import array_api_compat.numpy as anp
        import marray

        return Backend(name, marray.masked_namespace(anp), "cpu", lazy=False)
    if name == "cupy":
        if not _cuda_available():
            pytest.skip("cupy with a CUDA device is not available")
        import array_api_compat.cupy as xp
        import cupy

        return Backend(name, xp, cupy.cuda.Device(0), lazy=True)
    if name == "cupy-standin":
        cupy = install_cupy_standin()
        import array_api_compat.cupy as xp

        return Backend(name, xp, cupy.cuda.Device(0), lazy=True)
    raise AssertionError(name)


# "torch" runs what users get (PyTorch's own kernel where xce delegates to it);
# "torch-definitions" the same tests with xce.config(delegate=False): xce's own definitions.
BACKENDS = ["numpy", "array_api_strict", "torch", "torch-definitions", "jax", "jax-jit", "dask", "cupy", "torch-cuda",
            "cupy-standin"]
# Libraries without autodiff, opt-in with XCE_EXTRA_BACKENDS=ndonnx,marray: ndonnx's eager mode
# runs every operation through onnxruntime, which would add minutes to the default run.
# tests/test_symbolic_backends.py covers both (and ONNX export with symbolic shapes) by default.
EXTRA_BACKENDS = ("ndonnx", "marray")
_EXTRA = [name for name in os.environ.get("XCE_EXTRA_BACKENDS", "").split(",") if name]
if not set(_EXTRA) <= set(EXTRA_BACKENDS):
    raise ValueError(f"XCE_EXTRA_BACKENDS={_EXTRA}: known extra backends are {EXTRA_BACKENDS}")
BACKENDS += _EXTRA
# The central skip list of the extra backends: (backend, test function) -> why.
EXTRA_SKIPS = {
    ("marray", "test_blocked_engine_equals_fused"): "the test reads its result with np.asarray, which MArray refuses",
}


def pytest_configure(config: pytest.Config) -> None:
    # float64 references need JAX's x64 mode; set once for the test process only.
    if _have("jax"):
        import jax

        jax.config.update("jax_enable_x64", True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    reason = EXTRA_SKIPS.get((request.param, getattr(request.node, "originalname", None)))
    if reason is not None:
        pytest.skip(reason)
    b = _make_backend(request.param)
    if request.param in ("jax-jit", "dask"):
        with patch_lazy_xp_functions(request, xp=b.xp):
            yield b
    elif request.param == "torch-definitions":
        with xce.config(delegate=False):
            yield b
    else:
        yield b


# Backends on an accelerator: their values are not read unless check_values=True (docs/semantics.md).
GPU_BACKENDS = frozenset({"cupy", "cupy-standin", "torch-cuda"})


@pytest.fixture
def values_read(backend: Backend):
    """The eager value checks (out-of-range values raise) on every backend: on a GPU they are
    what ``xce.config(check_values=True)`` raises, values being left unread by default."""
    if backend.name in GPU_BACKENDS:
        with xce.config(check_values=True):
            yield
    else:
        yield


@pytest.fixture
def xp(backend: Backend):
    return backend.xp


@pytest.fixture
def device(backend: Backend):
    return backend.device


FLOAT_DTYPES = ["float32", "float64", "float16", "bfloat16"]


@pytest.fixture(params=FLOAT_DTYPES)
def dtype(request: pytest.FixtureRequest, backend: Backend):
    """A floating dtype of the backend; half precisions where the library has them."""
    name = request.param
    dt = getattr(backend.xp, name, None)
    if dt is None and name == "bfloat16" and backend.name.startswith("jax"):
        import jax.numpy as jnp

        dt = jnp.bfloat16
    if dt is None and name == "bfloat16" and backend.name.startswith("torch"):
        import torch

        dt = torch.bfloat16
    if dt is None:
        pytest.skip(f"{backend.name} has no {name}")
    return dt


def dtype_name(dtype: Any) -> str:
    """'float32', 'bfloat16', ... for any library's dtype object."""
    match = re.search(r"b?float(16|32|64)", str(dtype))
    assert match, dtype
    return match.group(0)


# Relative tolerances against a float64 reference computed on the same (rounded) inputs.
RTOL = {"float64": 1e-10, "float32": 2e-6, "float16": 2e-3, "bfloat16": 1.6e-2}
ATOL = {"float64": 1e-12, "float32": 1e-6, "float16": 1e-3, "bfloat16": 1e-2}


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array as a NumPy array (computing Dask graphs, leaving devices)."""
    module = type(x).__module__
    if module.startswith("torch"):
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    if module.startswith("ndonnx"):
        return x.unwrap_numpy()
    if module.startswith("marray"):
        return np.asarray(x.data)
    if module.startswith("cupy"):
        return x.get()
    if module.startswith("dask"):
        return np.asarray(x.compute())
    if module.startswith("jax") and str(x.dtype) == "bfloat16":
        return np.asarray(x.astype("float32"))
    return np.asarray(x)


def assert_close_to(actual: Any, expected: Any, *, dtype: Any, backend: Backend, shape: tuple | None = None) -> None:
    """``actual`` (a ``backend`` array of ``dtype``) equals the float64 ``expected``.

    Checks the library, the dtype and the shape, then the values at the dtype's tolerance.
    NaNs must be in the same places.
    """
    assert type(actual).__module__.partition(".")[0] == type(backend.asarray(0.0)).__module__.partition(".")[0], (
        f"result is a {type(actual)}, not a {backend.name} array"
    )
    assert actual.dtype == dtype, f"dtype {actual.dtype} != {dtype}"
    expected = np.asarray(expected, dtype=np.float64)
    assert tuple(actual.shape) == (expected.shape if shape is None else shape)
    name = dtype_name(dtype)
    np.testing.assert_allclose(
        to_numpy(actual).astype(np.float64), expected, rtol=RTOL[name], atol=ATOL[name], equal_nan=True
    )

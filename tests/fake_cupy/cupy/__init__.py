"""A NumPy-backed stand-in for CuPy, for machines without a GPU (the ``cupy-standin`` backend).

array-api-compat takes its ``ndarray`` for a CuPy array (it decides by the type ``cupy.ndarray``)
and serves it through ``array_api_compat.cupy``, so xce's CuPy branches run. What a GPU makes
costly or forbids is kept: every host read (``bool``, ``float``, ``int``, ``item``, ``tolist``,
``get``, printing, boolean-mask indexing, ``nonzero``) is counted in :data:`state` and raises
:class:`HostReadError` while ``state.refuse`` is set; ``numpy.asarray`` of an array raises
``TypeError`` as CuPy's does; arrays live on a device (``cuda.Device(i)``, two of them), results
are allocated on the current device, and a kernel given an array of another device raises
``ValueError``. Installed into ``sys.modules`` by ``tests/conftest.py`` only where the real CuPy
is not importable; never imported by xce itself.
"""

import sys as _sys
import types as _types

import numpy as _np

from ._core import (  # noqa: F401
    Device,
    HostReadError,
    __version__,
    _Generator,
    _namespace_of,
    array,
    asanyarray,
    asarray,
    ascontiguousarray,
    asnumpy,
    bool_,
    cuda,
    get_array_module,
    ndarray,
    state,
)

_namespace_of(_np, globals())

linalg = _types.ModuleType("cupy.linalg")
_namespace_of(_np.linalg, linalg.__dict__)
fft = _types.ModuleType("cupy.fft")
_namespace_of(_np.fft, fft.__dict__)
random = _types.ModuleType("cupy.random")
random.default_rng = _Generator  # type: ignore[attr-defined]

for _sub in ("cuda", "linalg", "fft", "random"):
    _sys.modules[f"cupy.{_sub}"] = globals()[_sub]
_sys.modules["cupy.cuda.device"] = cuda.device  # type: ignore[attr-defined]

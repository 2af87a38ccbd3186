"""Framework adapters: the analytic backward passes of :mod:`xce.grad` registered with
PyTorch autograd (:mod:`xce.adapters.torch`) and ``jax.custom_vjp`` (:mod:`xce.adapters.jax`).

Importing :mod:`xce` imports neither framework; :func:`for_array` imports an adapter only
when that framework's array arrives.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .._namespace import library_name

__all__ = ["for_array"]

_ADAPTERS = {"torch": "xce.adapters.torch", "jax": "xce.adapters.jax", "jaxlib": "xce.adapters.jax"}


def for_array(x: Any) -> ModuleType | None:
    """The adapter module for ``x``'s library (imported on first use), or None."""
    name = _ADAPTERS.get(library_name(x))
    return None if name is None else importlib.import_module(name)

"""Framework adapters: the analytic backward passes of the losses registered with PyTorch
autograd (:mod:`xce.adapters.torch`) and ``jax.custom_jvp`` (:mod:`xce.adapters.jax`), the
delegation to PyTorch's own kernel, and
PyTorch's ``torch.distributed`` code.

Adapters depend on the core, never the reverse: this package only tells the core's registry
(:mod:`xce._registry`) which module serves which library, and that module is imported together
with its library (at once if the library already is, else by an import hook right after it), so
``import xce`` imports neither framework and no call imports anything.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .._registry import adapter_for, register_adapter

__all__ = ["for_array"]

register_adapter("torch", "xce.adapters.torch")
register_adapter("jax", "xce.adapters.jax")
register_adapter("jaxlib", "xce.adapters.jax")


def for_array(x: Any) -> ModuleType | None:
    """The adapter module for ``x``'s library (imported with its library), or None."""
    return adapter_for(x)  # type: ignore[return-value]

"""The two registries through which the core reaches code it must not import.

* **Adapters.** Framework adapters (:mod:`xce.adapters`) register themselves here by library
  name; the core asks :func:`adapter_for` for the adapter of an array's library and talks to
  it through the :class:`Adapter` protocol. The core never imports :mod:`xce.adapters` (the
  adapters import the core). An adapter module is imported as soon as its library is: at
  registration when the library is already imported, else right after the library's own
  import finishes (:class:`_AdapterImporter`, an import hook). So ``import xce`` imports
  neither PyTorch nor JAX, and no call ever imports anything: the first call of a process may
  be traced (``torch.compile``, whose tracer refuses ``importlib``) and takes the same path as
  every later one.
* **Fast paths.** An adapter may register, per loss and exact array type, a function that
  takes the loss's raw arguments and returns the result by the library's own kernel, or None
  to take the general path. It is looked up first, before any namespace or argument work,
  because at small sizes that work costs as much as the kernel (docs/performance.md, "Where
  the constants come from"). It must give exactly the definition's result (or None).
* **Gradients.** Each loss module registers its analytic gradient (or, for the fused linear
  loss, its value-and-gradient) beside its definition; :func:`xce.value_and_grad` looks them
  up here by the loss function itself.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Protocol, cast

from ._namespace import Array, library_name

__all__ = [
    "Adapter",
    "adapter_for",
    "adapter_hook",
    "fast_paths",
    "gradient_of",
    "register_adapter",
    "register_gradient",
    "register_value_and_grad",
    "registered_losses",
]


class Adapter(Protocol):
    """What the core asks of a framework adapter (a module, e.g. :mod:`xce.adapters.torch`)."""

    def dispatch_cross_entropy(self, input: Array, target: Array, weight: Array | None, options: Any,
                               axis: int | None, where: Array | None) -> Array | None:
        """The loss by the library's own means (a native kernel, a custom derivative rule), or
        None to run xce's definition. ``options``: the checked hyper-parameters."""
        ...

    def wants_cross_entropy(self, input: Array, target: Array, weight: Array | None) -> bool:
        """Whether this call should run through the adapter's autodiff registration."""
        ...

    def cross_entropy(self, input: Array, target: Array, weight: Array | None, ignore_index: int, reduction: str,
                      label_smoothing: float, *, axis: int | None, label_smoothing_mode: str,
                      z_loss: float, where: Array | None) -> Array: ...

    def wants_linear_cross_entropy(self, hidden: Array, weight: Array, bias: Array | None, class_weight: Array | None,
                                   sample_weight: Array | None, normalizer: Any) -> bool:
        """Whether this call of the fused linear loss should run through the adapter (autodiff)."""
        ...

    def linear_cross_entropy(self, hidden: Array, weight: Array, target: Array, bias: Array | None,
                             class_weight: Array | None, sample_weight: Array | None, args: Any) -> Any:
        """The fused linear loss of checked arguments (``xce.linear.LinearArgs``), differentiable
        (with ``args.return_stats``, ``(loss, LossStats)``)."""
        ...


_ADAPTER_MODULES: dict[str, str] = {}
_ADAPTERS: dict[str, Adapter | None] = {}


def register_adapter(library: str, module: str) -> None:
    """Make ``module`` the adapter for arrays of ``library``: imported now when ``library``
    already is, else right after ``library`` is imported."""
    _ADAPTER_MODULES[library] = module
    _ADAPTERS.pop(library, None)
    if library in sys.modules:
        _load(library)
    elif _IMPORTER not in sys.meta_path:
        sys.meta_path.insert(0, _IMPORTER)


def _load(library: str) -> None:
    """Import ``library``'s adapter; a failure is left for :func:`adapter_for` to raise
    where the library is used with xce, never in the user's ``import library``."""
    try:
        _ADAPTERS[library] = cast(Adapter, importlib.import_module(_ADAPTER_MODULES[library]))
    except Exception:
        _ADAPTERS.pop(library, None)


class _AdapterImporter(importlib.abc.MetaPathFinder):
    """Imports an adapter right after its library's top-level module has executed.

    It finds the library's spec with the other finders and wraps only that spec's loader
    instance's ``exec_module``: the module keeps its own loader type and spec."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _ADAPTER_MODULES or fullname in _ADAPTERS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_load_adapter(module: ModuleType) -> None:
            exec_module(module)
            loader.__dict__.pop("exec_module", None)
            _load(fullname)

        # A loader without an instance __dict__ keeps its method: the adapter is imported lazily.
        with contextlib.suppress(AttributeError):
            loader.exec_module = exec_then_load_adapter  # type: ignore[method-assign]
        return spec


_IMPORTER = _AdapterImporter()


def adapter_for(x: Array) -> Adapter | None:
    """The adapter of ``x``'s library, or None when it has none."""
    lib = library_name(x)
    try:
        return _ADAPTERS[lib]
    except KeyError:
        module = _ADAPTER_MODULES.get(lib)
        # Reached only when the import hook could not run (or the adapter failed to import):
        # the import, or its error, happens here.
        adapter = None if module is None else cast(Adapter, importlib.import_module(module))
        _ADAPTERS[lib] = adapter
        return adapter


# --- fast paths -------------------------------------------------------------------------------

_FAST_PATHS: dict[str, dict[type, Callable[..., Any]]] = {}


def fast_paths(loss: str) -> dict[type, Callable[..., Any]]:
    """The fast paths of ``loss`` by exact array type: the loss module keeps this dict and
    looks its input's type up in it; adapters fill it when they are imported."""
    return _FAST_PATHS.setdefault(loss, {})


def adapter_hook(x: Array, name: str) -> Any:
    """The function ``name`` of ``x``'s adapter, or None (no adapter, or one without it): for
    the hooks not every adapter has (the fused linear distillation loss, the distillation
    losses' autograd Function, ``stop_gradient``)."""
    return getattr(adapter_for(x), name, None)


# --- gradients --------------------------------------------------------------------------------

LossFn = Callable[..., Any]
_GRADIENTS: dict[LossFn, tuple[str, Callable[..., Any]]] = {}


def register_gradient(loss_fn: LossFn, grad_fn: Callable[..., Any]) -> None:
    """``grad_fn`` takes ``loss_fn``'s arguments plus ``cotangent=`` and returns d/d input."""
    _GRADIENTS[loss_fn] = ("grad", grad_fn)


def register_value_and_grad(loss_fn: LossFn, fn: Callable[..., Any]) -> None:
    """``fn`` takes ``loss_fn``'s arguments plus ``cotangent=`` and returns ``(loss, gradients)``
    itself (one fused sweep, e.g. the linear loss's three gradients)."""
    _GRADIENTS[loss_fn] = ("value_and_grad", fn)


def gradient_of(loss_fn: LossFn) -> tuple[str, Callable[..., Any]] | None:
    return _GRADIENTS.get(loss_fn)


def registered_losses() -> list[str]:
    return sorted(getattr(f, "__name__", repr(f)) for f in _GRADIENTS)

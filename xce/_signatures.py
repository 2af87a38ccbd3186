r"""One signature per loss: its gradient takes the loss's parameters plus ``cotangent=``.

A loss's public parameter list (names, order, kinds, defaults, annotations) is written once,
on the loss. Its analytic gradient (``<loss>_grad``, d loss / d input) or fused
``value_and_grad_<loss>`` takes the same parameters plus a keyword-only ``cotangent=None``;
:func:`derivative_of` derives that signature from the loss instead of writing it again, and
registers the function for :func:`xce.value_and_grad`.

Use (the implementation names every parameter in the derived order, without defaults: the
defaults are the loss's)::

    @derivative_of(nll_loss)
    def nll_loss_grad(input: Array, target: Array, weight: Array | None, ignore_index: int, reduction: str, *,
                      axis: int | None, where: Array | None, cotangent: Array | None,
                      xp: Namespace | None) -> Array:
        r'''Gradient of :func:`xce.nll_loss`: ... (an Examples section as for any public function).'''
        ...

The public ``nll_loss_grad`` then has ``inspect.signature`` equal to ``nll_loss``'s with
``cotangent`` inserted before ``xp``, the implementation's name and docstring, and behaves as a
plain ``def`` with that signature would, since it is one: a ``def`` with the derived signature
(compiled once, as :mod:`dataclasses` builds ``__init__``) binds each call (positional
arguments, defaults, ``TypeError`` for an unknown keyword, a missing or a repeated argument) and
passes every argument to the implementation by name. The names are checked against the
derived signature at import, so the two cannot drift apart.

Options: ``drop=`` the loss's parameters the gradient does not take (e.g. ``return_stats``);
``before=`` the parameter ``cotangent`` stands in front of (default ``"xp"``; last when the loss
has no such parameter); ``fused=True`` for a ``value_and_grad_<loss>`` returning
``(loss, gradients)`` (registered as such), with ``returns=`` its return annotation.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from ._registry import register_gradient, register_value_and_grad

__all__ = ["derivative_of", "with_cotangent"]

R = TypeVar("R")

COTANGENT = inspect.Parameter("cotangent", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Array | None")


def with_cotangent(loss_fn: Callable[..., Any], *, before: str = "xp", drop: Iterable[str] = (),
                   returns: Any = None) -> inspect.Signature:
    """``loss_fn``'s signature without ``drop``, with ``cotangent=None`` (keyword-only) inserted
    before the parameter ``before`` (last when absent); ``returns``: the return annotation (the
    loss's when None)."""
    sig = inspect.signature(loss_fn)
    dropped = set(drop)
    params = [p for p in sig.parameters.values() if p.name not in dropped]
    names = [p.name for p in params]
    params.insert(names.index(before) if before in names else len(params), COTANGENT)
    return sig.replace(parameters=params, return_annotation=sig.return_annotation if returns is None else returns)


def derivative_of(loss_fn: Callable[..., Any], *, before: str = "xp", drop: Iterable[str] = (), fused: bool = False,
                  returns: Any = None) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator: the implementation becomes ``loss_fn``'s gradient (``fused``: its
    value-and-gradient) with the signature :func:`with_cotangent` derives, registered for
    :func:`xce.value_and_grad`. See the module docstring."""
    signature = with_cotangent(loss_fn, before=before, drop=drop, returns=returns)

    def decorate(impl: Callable[..., R]) -> Callable[..., R]:
        _check_names(impl, signature)
        derived = functools.wraps(impl)(_forwarder(impl.__name__, signature, impl))
        derived.__signature__ = signature  # type: ignore[attr-defined]
        derived.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()
                                   if p.annotation is not inspect.Parameter.empty}
        derived.__annotations__["return"] = signature.return_annotation
        (register_value_and_grad if fused else register_gradient)(loss_fn, derived)
        return derived

    return decorate


def _forwarder(name: str, signature: inspect.Signature, impl: Callable[..., R]) -> Callable[..., R]:
    """``def name(<signature>): return impl(<every parameter by name>)``, compiled: Python binds
    the arguments (at a plain call's cost, with its own ``TypeError`` messages), as
    :mod:`dataclasses` builds ``__init__``. Defaults are passed in by reference, not as text."""
    scope: dict[str, Any] = {"_impl": impl}
    params, call, star = [], [], False
    for i, p in enumerate(signature.parameters.values()):
        if p.kind is p.KEYWORD_ONLY and not star:
            params.append("*")
            star = True
        if p.default is p.empty:
            params.append(p.name)
        else:
            scope[f"_default{i}"] = p.default
            params.append(f"{p.name}=_default{i}")
        call.append(f"{p.name}={p.name}")
    exec(f"def {name}({', '.join(params)}):\n    return _impl({', '.join(call)})\n", scope)
    return cast(Callable[..., R], scope[name])


def _check_names(impl: Callable[..., Any], signature: inspect.Signature) -> None:
    """The implementation takes exactly the derived parameters, in order, by name."""
    want = list(signature.parameters)
    params = inspect.signature(impl).parameters.values()
    got = [p.name for p in params]
    by_name = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
    if got != want or not by_name:
        raise TypeError(f"{impl.__qualname__} must take the parameters ({', '.join(want)}) by name, in this order; "
                        f"it takes ({', '.join(got)}).")

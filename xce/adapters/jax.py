"""JAX adapter: cross entropy's derivative rule registered with ``jax.custom_jvp``.

:func:`xce.cross_entropy` on JAX arrays runs through :func:`_ce`, whose JVP is the loss's own
rule (:func:`xce.losses.cross_entropy.jvp`): the tangent is linear in the input, target and
weight tangents, so ``jax.grad`` (its transpose), ``jax.jvp``, ``jacfwd``, ``jacrev``, ``vmap``
and higher orders all work, and ``jit(grad)`` computes the analytic gradient
``a·softmax - b·onehot - u·w`` instead of XLA's autodiff of the shifted formula. Gradients
flow to ``input``, to probability ``target`` s and to the class ``weight``.
``xce.config(delegate=False)`` runs the plain definition under JAX's autodiff instead.

:func:`xce.linear_cross_entropy` on JAX arrays takes its per-row sums from
:func:`xce.adapters.jax_scan.linear_row_sums`, a checkpointed ``lax.scan`` over vocabulary chunks
(eager and under ``jit`` alike: the ``(N, V)`` logits are never whole).

This module depends on the core and registers itself with it (:mod:`xce._registry`); no core
module imports it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from .. import _engine, _policy
from ..losses import cross_entropy as ce
from .jax_scan import linear_row_sums

__all__ = ["cross_entropy", "dispatch_cross_entropy", "linear_row_sums", "linear_scan", "wants_cross_entropy"]


def linear_scan(h: Any) -> Any:
    """:func:`linear_row_sums` (the scan over vocabulary chunks) where it serves, else None: a
    process with several devices keeps the formula, which GSPMD shards over a vocabulary-sharded
    head without gathering it (the scan would all-gather the head; its ``shard_map`` form is to come)."""
    return linear_row_sums if jax.device_count() == 1 else None


def dispatch_cross_entropy(input: Any, target: Any, weight: Any, options: ce.Options, axis: int | None,
                           where: Any = None) -> Any:
    """The custom-JVP cross entropy (None under ``xce.config(delegate=False)``)."""
    if not _engine.options().get("delegate", True):
        return None
    if _policy.ACTIVE:
        _policy.note(_policy.ANALYTIC_BACKWARD, "jax.custom_jvp: xce's derivative rule, no softmax-sized "
                     "intermediates kept for the backward")
    return _ce(input, target, weight, where, options.ignore_index, options.reduction, options.label_smoothing, axis,
               options.mode, options.z)


def wants_cross_entropy(input: Any, target: Any, weight: Any) -> bool:
    return False  # dispatch_cross_entropy already serves every call


def cross_entropy(*args: Any, **kwargs: Any) -> Any:
    """:func:`xce.cross_entropy` (same parameters) with its derivative rule registered as a
    custom JVP, whatever ``xce.config(delegate=)`` says."""
    input, target, weight, *options, where = ce.bind_arguments(args, kwargs)
    input, target = jnp.asarray(input), jnp.asarray(target)  # check_grads passes NumPy arrays
    weight = None if weight is None else jnp.asarray(weight)
    return _ce(input, target, weight, where, *options)


cross_entropy.__signature__ = ce.SIGNATURE  # type: ignore[attr-defined]


def _args(input: Any, target: Any, weight: Any, where: Any, ignore_index: int, reduction: str,
          label_smoothing: float, axis: int | None, mode: str, z_loss: float) -> ce.CrossEntropyArgs:
    return ce.check_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss,
                              where, xp=jnp)


@partial(jax.custom_jvp, nondiff_argnums=(4, 5, 6, 7, 8, 9))
def _ce(input: Any, target: Any, weight: Any, where: Any, ignore_index: int, reduction: str, label_smoothing: float,
        axis: int | None, mode: str, z_loss: float) -> Any:
    args = _args(input, target, weight, where, ignore_index, reduction, label_smoothing, axis, mode, z_loss)
    return ce.cross_entropy_with_stats(input, target, weight, args, xp=jnp)[0]


@_ce.defjvp
def _ce_jvp(ignore_index: int, reduction: str, label_smoothing: float, axis: int | None, mode: str, z_loss: float,
            primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
    input, target, weight, where = primals
    args = _args(input, target, weight, where, ignore_index, reduction, label_smoothing, axis, mode, z_loss)
    dx, dt, dw, _ = tangents  # the mask's tangent is float0
    if not jnp.issubdtype(target.dtype, jnp.floating):
        dt = None  # integer targets have float0 tangents
    return ce.jvp(input, target, weight, args, (dx, dt, dw), xp=jnp)


def stop_gradient(x: Any) -> Any:
    """``x`` as a constant of differentiation (the teacher of :func:`xce.linear_distillation_loss`,
    the max-shift of every logsumexp: ``xce._softmax.constant``). Only a tracer can be
    differentiated: a concrete array is returned as it is (an eager ``stop_gradient`` is one more
    dispatch for nothing)."""
    return jax.lax.stop_gradient(x) if isinstance(x, jax.core.Tracer) else x

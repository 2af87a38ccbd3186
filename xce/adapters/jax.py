"""``jax.custom_vjp`` registration of xce's analytic cross-entropy backward.

:func:`cross_entropy` is :func:`xce.cross_entropy` with a custom VJP: the forward saves the
inputs and the per-position logsumexp (O(N)); the backward is the loss's own gradient rule
(:func:`xce.losses.cross_entropy.gradient`, and for probability targets
:func:`~xce.losses.cross_entropy.probability_target_gradient`). It composes with ``jax.jit``,
``jax.grad``, ``jax.vmap`` and (through the backward formula, which is itself
differentiable) higher-order derivatives. The VJP is taken w.r.t. ``input`` and, for
probability targets, ``target``; class ``weight`` is treated as a constant (its cotangent is
zero; differentiate :func:`xce.cross_entropy` directly to learn weights).

This module depends on the core and registers itself with it (:mod:`xce._registry`); no core
module imports it.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from ..losses import cross_entropy as ce

__all__ = ["cross_entropy", "wants_cross_entropy"]


def wants_cross_entropy(input, target, weight) -> bool:
    """JAX arrays never take the adapter implicitly: ``jax.grad`` differentiates the definition."""
    return False


def cross_entropy(
    input,
    target,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    axis: int | None = None,
    label_smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
):
    """:func:`xce.cross_entropy` with the analytic backward registered as a custom VJP."""
    input, target = jnp.asarray(input), jnp.asarray(target)  # check_grads passes NumPy arrays
    weight = None if weight is None else jnp.asarray(weight)
    return _ce(input, target, weight, ignore_index, reduction, label_smoothing, axis, label_smoothing_mode, z_loss)


def _args(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss) -> ce.CrossEntropyArgs:
    return ce.check_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss,
                              xp=jnp)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _ce(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss):
    args = _args(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss)
    return ce.cross_entropy_with_stats(input, target, weight, args, xp=jnp)[0]


def _fwd(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss):
    args = _args(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss)
    # The loss and the per-position logsumexp from the same statistics: one softmax pass.
    loss, st = ce.cross_entropy_with_stats(input, target, weight, args, xp=jnp)
    return loss, (input, target, weight, jnp.expand_dims(st.shift + st.lse, args.ax))


def _bwd(ignore_index, reduction, label_smoothing, axis, mode, z_loss, residuals, g):
    input, target, weight, lse = residuals
    # The same checked arguments as the forward (the index rebuilt from the saved target).
    args = _args(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss)
    d_input = ce.gradient(input, target, weight, args, g, lse, xp=jnp)
    d_target = None
    if args.index is None:
        d_target = ce.probability_target_gradient(input, target, weight, args, g, lse, xp=jnp)
    d_weight = None if weight is None else jnp.zeros_like(weight)
    return d_input, d_target, d_weight


_ce.defvjp(_fwd, _bwd)

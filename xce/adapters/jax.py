"""``jax.custom_vjp`` registration of xce's analytic cross-entropy backward.

:func:`cross_entropy` is :func:`xce.cross_entropy` with a custom VJP: the forward saves the
inputs and the per-position logsumexp (O(N)); the backward is :func:`xce.grad.ce_backward`.
It composes with ``jax.jit``, ``jax.grad``, ``jax.vmap`` and (through the backward formula,
which is itself differentiable) higher-order derivatives. The VJP is taken w.r.t. ``input``
and, for probability targets, ``target``; class ``weight`` is treated as a constant (its
cotangent is zero; differentiate :func:`xce.cross_entropy` directly to learn weights).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .. import classification as _cls
from .._validate import check_choice, check_classes, check_fraction, check_integer, check_real, class_axis
from ..classification import _prepare_index
from ..grad import ce_backward
from ..labels import SMOOTHING_MODES, uniform_equivalent

__all__ = ["cross_entropy"]


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


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _ce(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss):
    return _cls.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, axis=axis,
                              label_smoothing_mode=mode, z_loss=z_loss)


def _fwd(input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss):
    args = _cls.check_cross_entropy_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis,
                                              mode, z_loss, xp=jnp)
    # The loss and the per-position logsumexp from the same statistics: one softmax pass.
    loss, st = _cls.cross_entropy_with_stats(input, target, weight, args, xp=jnp)
    return loss, (input, target, weight, jnp.expand_dims(st.shift + st.lse, args.ax))


def _bwd(ignore_index, reduction, label_smoothing, axis, mode, z_loss, residuals, g):
    input, target, weight, lse = residuals
    ax = class_axis(input, axis)
    n_classes = check_classes(input, ax)
    eps = uniform_equivalent(check_fraction(label_smoothing, "label_smoothing"),
                             check_choice(mode, "label_smoothing_mode", SMOOTHING_MODES), n_classes, "label_smoothing")
    z = check_real(z_loss, "z_loss")
    probabilities = tuple(target.shape) == tuple(input.shape)
    index = None if probabilities else _prepare_index(target, n_classes, check_integer(ignore_index, "ignore_index"),
                                                      xp=jnp, lazy=True)
    d_input = ce_backward(input, target, index, weight, reduction, eps, ax, z, g, lse, xp=jnp)
    d_target = None
    if probabilities:
        # ∂l/∂y_c = s·(1-ε)·w_c·(log Z - x_c), s the cotangent over the position count ("mean").
        work = input.astype(lse.dtype)
        neg_log_p = lse - work
        if weight is not None:
            shape = [1] * input.ndim
            shape[ax] = n_classes
            neg_log_p = neg_log_p * jnp.reshape(weight.astype(lse.dtype), shape)
        s = g
        if reduction == "mean":
            s = g / (input.size // n_classes)
        elif reduction == "none":
            s = jnp.expand_dims(g, ax)
        d_target = ((1.0 - eps) * s * neg_log_p).astype(target.dtype)
    d_weight = None if weight is None else jnp.zeros_like(weight)
    return d_input, d_target, d_weight


_ce.defvjp(_fwd, _bwd)

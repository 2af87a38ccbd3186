"""``linear_cross_entropy``'s per-row sums on JAX arrays: a ``lax.scan`` over vocabulary chunks.

Under ``jax.jit`` a Python loop over blocks unrolls and XLA keeps the whole ``(N, V)`` logits; a
scan is XLA's own loop, so only one ``(N, chunk)`` block of logits is live. The carry per row
is an online logsumexp (running max, running sum of exponentials), the target's logit (picked
by comparing class ids inside the chunk: a ``W[t]`` gather's derivative would be a ``(V, D)``
scatter) and, as asked, the class-weighted sum of the logits and the entropy's moment. The
body is ``jax.checkpoint``-ed: its backward recomputes the chunk's logits instead of saving
them, and plain autodiff through it keeps ``grad``, ``jvp``, ``jacfwd``, ``vmap`` and
Hessian-vector products working (a ``custom_vjp`` would break ``jvp``). The loss, mask and
reduction are the core's (:func:`xce.linear.loss_from_row_sums`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._scoring import scored_logits
from ..linear import RowSums

__all__ = ["linear_row_sums"]


@partial(jax.jit, static_argnames=("chunk", "class_sum", "moments"))
def linear_row_sums(h2: Any, weight: Any, bias: Any, y: Any, class_weight: Any, softcap: Any, temperature: Any, *,
                    chunk: int, class_sum: bool, moments: bool) -> RowSums:
    """Per-row sums of the scored logits ``cap(h2 @ weight.T + bias) / temperature`` (see
    :class:`xce.linear.RowSums`), ``chunk`` classes at a time, a narrower last chunk after the
    scan where ``chunk`` does not divide the vocabulary. Jitted: an eager call reuses the
    compiled loop (under an outer ``jit`` it is inlined)."""
    n = h2.shape[0]
    vocab = weight.shape[0]
    steps, rest = divmod(vocab, chunk)
    full = steps * chunk
    need_w = class_sum and class_weight is not None

    def chunks(a: Any) -> Any:
        return None if a is None else jnp.reshape(a[:full], (steps, chunk, *a.shape[1:]))

    def tail(a: Any) -> Any:
        return None if a is None else a[full:]

    dtype = jnp.promote_types(jnp.result_type(h2.dtype, weight.dtype), jnp.float32)  # the compute dtype
    target = jnp.expand_dims(y, 1)

    def step(carry: tuple[Any, ...], part: tuple[Any, ...]) -> tuple[tuple[Any, ...], None]:
        m, total, x_y, c_sum, moment = carry
        w, b, cw, v0 = part
        x = h2 @ w.T
        x = scored_logits(x if b is None else x + b, softcap, 1.0 if temperature is None else temperature, dtype,
                          xp=jnp)
        # The running max is a constant of differentiation (logsumexp does not depend on it).
        m_new = jnp.maximum(m, lax.stop_gradient(jnp.max(x, axis=1)))
        e = jnp.exp(x - jnp.expand_dims(m_new, 1))
        rescale = jnp.exp(m - m_new)
        cols = lax.broadcasted_iota(y.dtype, (1, w.shape[0]), 1) + v0
        x_y = x_y + jnp.sum(jnp.where(cols == target, x, 0.0), axis=1)
        if c_sum is not None:
            c_sum = c_sum + (jnp.sum(x, axis=1) if cw is None else x @ cw)
        if moment is not None:  # Σ e^(x-m)(x-m), moved to the new max
            moment = rescale * (moment + (m - m_new) * total) + jnp.sum(e * (x - jnp.expand_dims(m_new, 1)), axis=1)
        return (m_new, rescale * total + jnp.sum(e, axis=1), x_y, c_sum, moment), None

    body = jax.checkpoint(step)
    zeros = jnp.zeros((n,), dtype=dtype)
    # A finite start: (start - max)·0 must stay 0 in the moment's update.
    start = jnp.full((n,), jnp.finfo(dtype).min, dtype=dtype)
    init = (start, zeros, zeros, zeros if class_sum else None, zeros if moments else None)
    carry = init
    if steps:
        xs = (chunks(weight), chunks(bias), chunks(class_weight) if need_w else None,
              jnp.arange(steps, dtype=y.dtype) * chunk)
        carry, _ = lax.scan(body, carry, xs)
    if rest:  # the last, narrower chunk (no padding: that would copy the weight)
        carry, _ = body(carry, (tail(weight), tail(bias), tail(class_weight) if need_w else None, full))
    m, total, x_y, c_sum, moment = carry
    log_z = m + jnp.log(total)
    if moment is None:
        return RowSums(log_z, x_y, c_sum, None, None)
    return RowSums(log_z, x_y, c_sum, jnp.log(total) - moment / total, (x_y >= m).astype(dtype))

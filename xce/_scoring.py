r"""The scoring transform of the logits and its chain rule, in one place.

The losses that take ``softcap=`` (and ``temperature=``) score the logits as
:math:`y = \mathrm{cap}(x)/T` with :math:`\mathrm{cap}(x) = c\tanh(x/c)` (Gemma 2's soft cap)
before the softmax: :func:`xce.cross_entropy` (no temperature), the unfused formula of
:func:`xce.linear_cross_entropy` and the distillation losses (:mod:`xce.losses.distillation`,
also the fused linear one's blocks). Both the transform and its derivative run in the
**compute dtype**: half-precision logits are upcast first, so the cap's ``tanh``, the
division by ``T`` and the factor :math:`1 - \tanh^2(x/c)` are float32 arithmetic, as the rest
of the loss is (in bfloat16 the capped logits alone would carry an error of up to half a
bfloat16 ulp of ``c``, 0.06 at ``c = 30``, before any softmax).

The blocked sweep of :func:`xce.linear_cross_entropy` (``xce.linear._block_logits``) computes
the same transform in place in its reused buffers, also in the compute dtype.
"""

from __future__ import annotations

from typing import Any

from ._namespace import Array, Namespace, as_dtype

__all__ = ["is_unit", "scored_logits", "scored_logits_gradient"]


def is_unit(temperature: Any) -> bool:
    """``temperature`` is the Python number 1 (a traced one never is: it is divided by)."""
    return isinstance(temperature, float) and temperature == 1.0


def _scalar(v: Any, dtype: Any, *, xp: Namespace) -> Any:
    """A hyper-parameter in the compute dtype (a traced 0-d array would otherwise promote)."""
    return v if isinstance(v, float) else as_dtype(v, dtype, xp=xp)


def scored_logits(x: Array, softcap: Any, temperature: Any, dtype: Any, *, xp: Namespace) -> Array:
    r"""``cap(x) / T`` in ``dtype`` (``x`` upcast first): :math:`c\tanh(x/c)` with
    ``softcap=c`` (None: no cap), then divided by ``temperature`` (1.0: not divided)."""
    y = as_dtype(x, dtype, xp=xp)
    if softcap is not None:
        c = _scalar(softcap, dtype, xp=xp)
        y = c * xp.tanh(y / c)
    if not is_unit(temperature):
        y = y / _scalar(temperature, dtype, xp=xp)
    return y


def scored_logits_gradient(g: Array, x: Array, softcap: Any, temperature: Any, dtype: Any, *,
                           xp: Namespace) -> Array:
    r"""The chain rule of :func:`scored_logits`: ``g`` (the derivative w.r.t. the scored logits,
    in ``dtype``) times :math:`\partial y/\partial x = (1 - \tanh^2(x/c))/T`, with ``x`` the raw
    logits (upcast to ``dtype`` for the factor)."""
    if not is_unit(temperature):
        g = g / _scalar(temperature, dtype, xp=xp)
    if softcap is not None:
        c = _scalar(softcap, dtype, xp=xp)
        g = g * (1.0 - xp.tanh(as_dtype(x, dtype, xp=xp) / c) ** 2)
    return g

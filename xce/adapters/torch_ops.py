"""``linear_cross_entropy`` as two ``torch.library`` custom ops: the fused sweep under
``torch.compile`` and ``torch.export``.

A Python loop over blocks traced by Dynamo is unrolled, and Inductor fuses the unrolled
blocks back into whole ``(N, V)`` logits; a custom op is one opaque graph node, so compiled
code runs :func:`xce.linear.fused` (the eager sweep, unchanged) and keeps its memory.

``xce::linear_cross_entropy_fwd`` returns the loss, the :class:`xce.LossStats` fields and, when
gradients are wanted with a ``"mean"``/``"sum"`` reduction, the gradients for cotangent 1
(Liger's schedule, as the eager autograd Function: one sweep; the backward scales them).
``xce::linear_cross_entropy_bwd`` is the second sweep of ``reduction="none"``, with the
upstream gradient as cotangent. The options travel as op arguments (floats, ints, bools, a
string, optional tensors); absent outputs are empty tensors (a schema has a fixed arity).

Calls the ops do not serve (see :func:`serves`) keep the unfused formula: hyper-parameters
given as tensors other than ``normalizer`` (``label_smoothing``, ``z_loss``, ``softcap``,
``temperature``), and ``torch.func`` transforms (the ops have no vmap or forward-mode rule).
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as txp
import torch

from .. import linear as _linear
from .._namespace import compute_dtype
from ..losses.cross_entropy import LossStats

__all__ = ["linear_cross_entropy", "serves"]

# Outputs of the forward op, in order.
_LOSS, _LSE, _Z, _ACCURACY, _ENTROPY, _D_HIDDEN, _D_WEIGHT, _D_BIAS = range(8)


def serves(args: _linear.LinearArgs) -> bool:
    """Whether the ops can carry these checked arguments (every hyper-parameter but
    ``normalizer`` a Python number)."""
    return all(isinstance(v, (float, int)) or v is None for v in (args.eps, args.z, args.softcap, args.temperature))


def _args(reduction: str, ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
          temperature: float, normalizer: torch.Tensor | None, normalizer_value: float | None,
          return_stats: bool, block_rows: int | None) -> _linear.LinearArgs:
    """The op arguments back as :class:`xce.linear.LinearArgs` (targets already shift-prepared)."""
    norm: Any = normalizer if normalizer is not None else normalizer_value
    return _linear.LinearArgs(reduction, float(label_smoothing), float(z_loss), ignore_index,
                              None if softcap is None else float(softcap), float(temperature), norm, False, False,
                              block_rows, return_stats)


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


@torch.library.custom_op("xce::linear_cross_entropy_fwd", mutates_args=())
def _forward(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None,
             class_weight: torch.Tensor | None, sample_weight: torch.Tensor | None, normalizer: torch.Tensor | None,
             normalizer_value: float | None, reduction: str, ignore_index: int, label_smoothing: float,
             z_loss: float, softcap: float | None, temperature: float, return_stats: bool, block_rows: int | None,
             want_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                       torch.Tensor, torch.Tensor, torch.Tensor]:
    args = _args(reduction, ignore_index, label_smoothing, z_loss, softcap, temperature, normalizer,
                 normalizer_value, return_stats, block_rows)
    with torch.no_grad():
        out = _linear.fused(hidden, weight, target, bias, class_weight, sample_weight, args, cotangent=None,
                            want_grad=want_grad, xp=txp)
    assert out.loss is not None
    stats = tuple(_empty(hidden) for _ in range(4)) if out.stats is None else tuple(out.stats)
    grads = tuple(_empty(hidden) if g is None else g for g in (out.d_hidden, out.d_weight, out.d_bias))
    # Fresh outputs: never an input itself (a custom op's outputs may not alias its inputs).
    return out.loss, *stats, *grads


@_forward.register_fake
def _forward_fake(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None,
                  class_weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
                  normalizer: torch.Tensor | None, normalizer_value: float | None, reduction: str, ignore_index: int,
                  label_smoothing: float, z_loss: float, softcap: float | None, temperature: float,
                  return_stats: bool, block_rows: int | None, want_grad: bool) -> tuple[torch.Tensor, ...]:
    positions = tuple(hidden.shape[:-1])
    reduced = positions if reduction == "none" else ()
    loss = hidden.new_empty(reduced)
    stats: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...]
    if return_stats:
        accuracy = hidden.new_empty((), dtype=compute_dtype(hidden.dtype, xp=txp))
        stats = (hidden.new_empty(positions), hidden.new_empty(reduced), accuracy, hidden.new_empty(positions))
    else:
        stats = tuple(_empty(hidden) for _ in range(4))
    if want_grad:
        grads = (torch.empty_like(hidden), torch.empty_like(weight),
                 _empty(hidden) if bias is None else torch.empty_like(bias))
    else:
        grads = tuple(_empty(hidden) for _ in range(3))
    return loss, *stats, *grads


@torch.library.custom_op("xce::linear_cross_entropy_bwd", mutates_args=())
def _backward(grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
              bias: torch.Tensor | None, class_weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
              normalizer: torch.Tensor | None, normalizer_value: float | None, reduction: str, ignore_index: int,
              label_smoothing: float, z_loss: float, softcap: float | None, temperature: float,
              block_rows: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = _args(reduction, ignore_index, label_smoothing, z_loss, softcap, temperature, normalizer,
                 normalizer_value, False, block_rows)
    with torch.no_grad():
        out = _linear.fused(hidden, weight, target, bias, class_weight, sample_weight, args, cotangent=grad_loss,
                            want_grad=True, want_loss=False, xp=txp)
    assert out.d_hidden is not None and out.d_weight is not None
    return out.d_hidden, out.d_weight, _empty(hidden) if out.d_bias is None else out.d_bias


@_backward.register_fake
def _backward_fake(grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                   bias: torch.Tensor | None, class_weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
                   normalizer: torch.Tensor | None, normalizer_value: float | None, reduction: str,
                   ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None,
                   temperature: float, block_rows: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d_bias = _empty(hidden) if bias is None else torch.empty_like(bias)
    return torch.empty_like(hidden), torch.empty_like(weight), d_bias


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
    hidden, weight, target, bias, class_weight, sample_weight, normalizer, *options = inputs
    ctx.precomputed = options[-1]  # want_grad: the gradients for cotangent 1 are outputs
    ctx.has_bias = bias is not None
    if ctx.precomputed:  # O(inputs): dL/dh, dL/dW, dL/db; nothing of the logits
        ctx.save_for_backward(*output[_D_HIDDEN:])
    else:  # "none" (or no gradient wanted at the forward): the backward op sweeps again
        ctx.save_for_backward(hidden, weight, target, bias, class_weight, sample_weight, normalizer)
        ctx.options = (*options[:7], options[8])  # all but return_stats and want_grad


def _backward_rule(ctx: Any, grad_loss: torch.Tensor, *_grad_others: Any) -> tuple[Any, ...]:
    if ctx.precomputed:
        d_hidden, d_weight, d_bias = (g * grad_loss for g in ctx.saved_tensors)
    else:
        d_hidden, d_weight, d_bias = _backward(grad_loss, *ctx.saved_tensors, *ctx.options)
    return (d_hidden, d_weight, None, d_bias if ctx.has_bias else None, *([None] * 13))


_forward.register_autograd(_backward_rule, setup_context=_setup_context)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None,
                         class_weight: torch.Tensor | None, sample_weight: torch.Tensor | None,
                         args: _linear.LinearArgs, want_grad: bool) -> Any:
    """The fused loss of checked, shift-prepared arguments through the forward op (``args``
    must satisfy :func:`serves`); ``want_grad``: compute the gradients in the forward sweep."""
    norm = args.normalizer
    out = torch.ops.xce.linear_cross_entropy_fwd(
        hidden, weight, target, bias, class_weight, sample_weight, norm if isinstance(norm, torch.Tensor) else None,
        None if norm is None or isinstance(norm, torch.Tensor) else float(norm), args.reduction, args.ignore_index,
        float(args.eps), float(args.z), None if args.softcap is None else float(args.softcap),
        float(args.temperature), args.return_stats, args.block_rows, want_grad and args.reduction != "none")
    if args.return_stats:
        return out[_LOSS], LossStats(*out[_LSE:_D_HIDDEN])
    return out[_LOSS]

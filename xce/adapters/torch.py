"""PyTorch autograd registration of xce's analytic backward passes.

``cross_entropy`` and ``linear_cross_entropy`` here are :func:`xce.cross_entropy` and
:func:`xce.linear_cross_entropy` as ``torch.autograd.Function`` s: the forward runs the xce
loss under ``torch.no_grad`` and saves the inputs plus O(N) per-position statistics (the
logsumexp, from the same sweep over the logits as the loss); the backward is
:func:`xce.grad.ce_backward`, evaluated in blocks of rows written in place into the
gradient, so no softmax-sized intermediates live between forward and backward and the
backward's extra memory is the gradient plus one block.

Gradients flow to ``input`` (and ``hidden``/``weight``/``bias`` for the linear loss). When
a class ``weight`` or a probability ``target`` requires grad, the functions fall back to
plain autograd through the xce loss. Double backward (``create_graph=True``) differentiates
the backward formula itself (it then recomputes the logsumexp instead of using the saved one).
"""

from __future__ import annotations

from typing import Any

import torch

from .. import classification as _cls
from .. import linear as _linear
from .._namespace import namespace
from .._validate import check_integer
from ..classification import _prepare_index
from ..grad import ce_backward

__all__ = ["cross_entropy", "linear_cross_entropy", "needs_autograd", "wants_cross_entropy"]


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """True when autograd is recording and one of ``tensors`` requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def wants_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """Whether :func:`cross_entropy`'s autograd Function serves this call: ``input`` requires
    grad and neither the class ``weight`` nor a probability ``target`` does (the Function's
    backward gives d/d input only; those fall back to autograd through the definition)."""
    if not needs_autograd(input):
        return False
    return not needs_autograd(weight, target if target.is_floating_point() else None)


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss):
        xp = namespace(("input", "target", "weight"), input, target, weight)
        with torch.no_grad():
            args = _cls.check_cross_entropy_arguments(input, target, weight, ignore_index, reduction,
                                                      label_smoothing, axis, mode, z_loss, xp=xp)
            # One sweep over the logits: the loss and the per-position logsumexp it was built from.
            loss, st = _cls.cross_entropy_with_stats(input, target, weight, args, xp=xp)
            lse = (st.shift + st.lse).unsqueeze(args.ax)  # O(N): one value per position
        ctx.save_for_backward(input, target, weight, lse)
        ctx.args = (check_integer(ignore_index, "ignore_index"), args.reduction, args.eps, args.ax, args.z)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output):
        input, target, weight, lse = ctx.saved_tensors
        ignore_index, reduction, eps, ax, z = ctx.args
        xp = namespace(("input", "target", "weight"), input, target, weight)
        probabilities = tuple(target.shape) == tuple(input.shape)
        index = None if probabilities else _prepare_index(target, input.shape[ax], ignore_index, xp=xp, lazy=False)
        # Under create_graph the saved (detached) lse would cut the second derivative.
        second_order = torch.is_grad_enabled()
        grad = ce_backward(input, target, index, weight, reduction, eps, ax, z, grad_output,
                           None if second_order else lse, xp=xp, blocked=not second_order)
        return grad, None, None, None, None, None, None, None, None


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    axis: int | None = None,
    label_smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
) -> torch.Tensor:
    """:func:`xce.cross_entropy` with the analytic, memory-lean backward (see the module)."""
    if not wants_cross_entropy(input, target, weight):
        # Plain autograd through the definition (never back through the dispatching
        # xce.cross_entropy, which would route here again).
        xp = namespace(("input", "target", "weight"), input, target, weight)
        args = _cls.check_cross_entropy_arguments(input, target, weight, ignore_index, reduction, label_smoothing,
                                                  axis, label_smoothing_mode, z_loss, xp=xp)
        return _cls.cross_entropy_with_stats(input, target, weight, args, xp=xp)[0]
    return _CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing, axis,
                               label_smoothing_mode, z_loss)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss, block_rows):
        xp = namespace(("hidden", "weight", "target", "bias"), hidden, weight, target, bias)
        needs = ctx.needs_input_grad
        want = (needs[0] or needs[1] or needs[3]) and reduction != "none"
        with torch.no_grad():
            out = _linear.fused(hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss,
                                cotangent=None, want_grad=want, block_rows=block_rows, xp=xp)
        ctx.args = (ignore_index, reduction, label_smoothing, z_loss, block_rows)
        if want:  # Liger's schedule: gradients for cotangent 1 now, scaled in backward
            ctx.save_for_backward(out.d_hidden, out.d_weight, out.d_bias)
        else:
            ctx.save_for_backward(hidden, weight, target, bias)
        ctx.precomputed = want
        return out.loss

    @staticmethod
    def backward(ctx: Any, grad_output):
        if ctx.precomputed:
            d_hidden, d_weight, d_bias = ctx.saved_tensors
            # loss.backward() passes 1: hand the saved gradients over without a copy of dW.
            one = bool(grad_output == 1)
            grads = tuple(d if d is None or one else d * grad_output for d in (d_hidden, d_weight, d_bias))
            return grads[0], grads[1], None, grads[2], None, None, None, None, None
        hidden, weight, target, bias = ctx.saved_tensors
        ignore_index, reduction, label_smoothing, z_loss, block_rows = ctx.args
        xp = namespace(("hidden", "weight", "target", "bias"), hidden, weight, target, bias)
        out = _linear.fused(hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss,
                            cotangent=grad_output, want_grad=True, want_loss=False, block_rows=block_rows, xp=xp)
        return out.d_hidden, out.d_weight, None, out.d_bias, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    block_rows: int | None = None,
) -> torch.Tensor:
    """:func:`xce.linear_cross_entropy` whose ``.backward()`` never materialises the logits.

    With ``"mean"``/``"sum"`` and inputs that require grad, the gradients are computed during
    the forward pass (one sweep over the vocabulary, as Liger-Kernel does) and scaled by the
    upstream gradient in backward; with ``"none"`` the backward makes a second sweep.
    """
    return _LinearCrossEntropy.apply(hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss,
                                     block_rows)

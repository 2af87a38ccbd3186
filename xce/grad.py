r"""Analytic gradients of the losses, and ``value_and_grad`` for libraries without autodiff.

Each loss module holds its gradient beside its forward (:mod:`xce.losses`) and registers it;
this module gathers them under one name, ``xce.grad.<loss>_grad``, and gives
:func:`value_and_grad`. Every gradient is written once against the Array API (NumPy, CuPy,
array-api-strict, ... and also PyTorch and JAX, where :mod:`xce.adapters` register the same
code as the backward pass). The gradient is that of the *reduced* loss: ``"mean"`` divides by
the same denominator as the loss (the weighted count of non-ignored targets for index targets).

**Cotangent.** Each gradient takes ``cotangent=`` (default 1): the upstream gradient
:math:`g = \partial(\text{objective})/\partial L`. For ``"mean"`` and ``"sum"`` it is a
scalar; for ``"none"`` it has the loss's shape, and the default (ones) makes the result the
gradient of ``loss.sum()``. The result is :math:`g \cdot \partial L/\partial x` (a
vector-Jacobian product), in ``input``'s dtype; half precision is computed in float32.

**Conventions where the loss is not differentiable** match autodiff through the xce loss:
ignored positions, and (under JAX and Dask) positions with an out-of-range target, get a
zero gradient; zero-probability classes of probability targets at ``-inf`` logits contribute
nothing, so such logits give finite gradients.

With :math:`p = \mathrm{softmax}(x)` along the class axis, :math:`s_i` the per-position
scale (cotangent over the reduction's denominator) and :math:`e_y` the one-hot target:

* ``cross_entropy`` (index targets, smoothing ε in its uniform form, :math:`W = \sum_c w_c`):
  :math:`s_i\,[(1-\varepsilon)\,w_{y_i}(p - e_{y_i}) + \tfrac{\varepsilon}{C}(W p - w)]
  + s^z_i\, 2 z \log Z_i\, p` with :math:`s^z_i` the z-loss scale (count denominator).
* ``cross_entropy`` (probability targets, :math:`\tilde q = w \odot ((1-\varepsilon) y + \varepsilon/C)`):
  :math:`s_i\,[(\textstyle\sum_c \tilde q_c)\,p - \tilde q + 2 z \log Z_i\, p]`.
* ``nll_loss``: :math:`-s_i\,w_{y_i}\,e_{y_i}`.
* ``softmax_focal_loss`` / ``poly1_cross_entropy``: with :math:`\ell_y = \log p_y` and the
  per-position loss :math:`f(\ell_y)`, :math:`s_i\,w_{y_i}\,f'(\ell_y)\,(e_{y_i} - p)`;
  focal :math:`f' = -(1-p_y)^\gamma + \gamma\,p_y\,\ell_y (1-p_y)^{\gamma-1}`, poly-1
  :math:`f' = -1 - \varepsilon p_y`.
* ``binary_cross_entropy_with_logits``: :math:`s_i\,w_i\,[(1 + (p_w-1) y_i)\,\sigma(x_i) - p_w y_i]`.
* ``binary_cross_entropy``: :math:`s_i\,w_i\,[-y_i/p_i + (1-y_i)/(1-p_i)]`, each term 0
  where its log is clamped at -100 (the derivative of the clamped loss; PyTorch's native
  backward instead clamps the denominator :math:`p(1-p)` at 1e-12).
* ``multilabel_soft_margin_loss``: :math:`s_i\,w_c\,(\sigma(x_{i,c}) - y_{i,c}) / C`.
* ``sigmoid_focal_loss``: the product rule on :math:`\alpha_t (1-p_t)^\gamma\,\mathrm{BCE}`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, cast

from ._namespace import Array, on_input_device
from ._registry import gradient_of, register_gradient, registered_losses
from .losses.binary import (
    binary_cross_entropy_grad,
    binary_cross_entropy_with_logits_grad,
    multilabel_soft_margin_loss_grad,
    sigmoid_focal_loss_grad,
)
from .losses.cross_entropy import cross_entropy_grad
from .losses.distillation import generalized_jsd_grad, kl_div_with_logits_grad
from .losses.index import nll_loss_grad, poly1_cross_entropy_grad, softmax_focal_loss_grad

__all__ = [
    "binary_cross_entropy_grad",
    "binary_cross_entropy_with_logits_grad",
    "cross_entropy_grad",
    "generalized_jsd_grad",
    "kl_div_with_logits_grad",
    "multilabel_soft_margin_loss_grad",
    "nll_loss_grad",
    "poly1_cross_entropy_grad",
    "register",
    "sigmoid_focal_loss_grad",
    "softmax_focal_loss_grad",
    "value_and_grad",
]

register = register_gradient  # ``register(loss_fn, grad_fn)``: make value_and_grad(loss_fn) use grad_fn


def value_and_grad(loss_fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    r"""``loss_fn`` returning ``(loss, gradient)``, with the analytic gradient.

    For any namespace, including those without autodiff (NumPy, CuPy, array-api-strict).
    ``loss_fn`` is one of ``xce.cross_entropy``, ``nll_loss``, ``binary_cross_entropy``,
    ``binary_cross_entropy_with_logits``, ``multilabel_soft_margin_loss``,
    ``softmax_focal_loss``, ``sigmoid_focal_loss``, ``poly1_cross_entropy``,
    ``kl_div_with_logits``, ``generalized_jsd`` (looked up by identity),
    ``xce.linear_cross_entropy`` or ``xce.linear_distillation_loss``. The returned function takes the loss's
    arguments plus ``cotangent=`` (see the module docstring: for ``reduction="none"`` the
    default gives the gradient of ``loss.sum()``). The loss is the xce function's own
    result; the gradient :math:`g\,\partial L/\partial x` w.r.t. ``input`` has ``input``'s
    shape and dtype. For ``linear_cross_entropy`` the gradient is the tuple
    ``(d_input, d_linear_weight, d_linear_bias)`` (``d_linear_bias`` None without bias); for
    ``linear_distillation_loss`` the student's ``(d_hidden, d_weight, d_bias)`` (the teacher
    is a constant).

    Examples
    --------
    >>> import numpy as np, xce
    >>> f = xce.value_and_grad(xce.cross_entropy)
    >>> loss, dx = f(np.asarray([[0.0, 0.0]]), np.asarray([0]))
    >>> round(float(loss), 4), dx.tolist()
    (0.6931, [[-0.5, 0.5]])
    """
    found = gradient_of(loss_fn)
    if found is None:
        raise TypeError(
            f"value_and_grad has no analytic gradient for {getattr(loss_fn, '__name__', loss_fn)!r}; "
            f"it supports the xce functions {', '.join(registered_losses())}. Use your framework's autodiff "
            "(torch, jax) otherwise."
        )
    kind, fn = found
    if kind == "value_and_grad":  # one fused sweep gives both
        return fn

    # No named parameters but cotangent: the losses' own (``target`` may be the third one).
    @on_input_device
    def value_and_grad_fn(*args: Any, cotangent: Array | None = None, **kwargs: Any) -> tuple[Any, Any]:
        return loss_fn(*args, **kwargs), fn(*args, cotangent=cotangent, **kwargs)

    with contextlib.suppress(TypeError, ValueError):  # a registered callable may have no signature
        value_and_grad_fn.__signature__ = inspect.signature(fn).replace(
            return_annotation="tuple[Array, Array]")
    value_and_grad_fn.__name__ = f"value_and_grad_{loss_fn.__name__}"
    value_and_grad_fn.__doc__ = f"``(xce.{loss_fn.__name__}(...), its gradient w.r.t. input)``."
    return cast("Callable[..., tuple[Any, Any]]", value_and_grad_fn)

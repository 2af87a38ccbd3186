"""Binary and multi-label losses: BCE on probabilities and on logits, multi-label soft margin,
sigmoid focal loss; each with its gradient.

Every logit form is written with ``softplus`` (``-log σ(x) = softplus(-x)``), never as
``log(sigmoid(x))``, so it stays finite and accurate for any ``|x|``. Targets and weights are
elementwise: ``target`` has ``input``'s shape, ``weight`` (and ``pos_weight``) broadcast to it.
"""

from __future__ import annotations

from .._arrays import expand_at, like_input
from .._engine import reads_values
from .._namespace import Array, Namespace, compute_dtype, is_lazy, namespace
from .._reduce import reduce_loss, reduction_scale
from .._registry import register_gradient
from .._validate import (
    check_broadcastable,
    check_classes,
    check_floating,
    check_fraction,
    check_real,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_values_in,
)

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_grad",
    "check_alpha",
    "logistic_loss",
    "multilabel_soft_margin_loss",
    "multilabel_soft_margin_loss_grad",
    "sigmoid",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_grad",
    "softplus",
]

_GRAD_NAMES = ("input", "target", "weight", "cotangent")


def binary_cross_entropy(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    *,
    label_smoothing: float = 0.0,
    xp: Namespace | None = None,
) -> Array:
    r"""Binary cross entropy between probabilities and binary (or soft) targets.

    PyTorch's ``torch.nn.functional.binary_cross_entropy``: each log term is clamped at
    -100, as PyTorch does, so a probability of exactly 0 or 1 gives a finite loss:

    .. math::
       l_i = -w_i\,\bigl[y_i \max(\log p_i, -100) + (1-y_i)\max(\log(1-p_i), -100)\bigr].

    With ``label_smoothing`` ε the target is first replaced by :math:`y(1-\varepsilon) +
    \varepsilon/2` (Keras/TensorFlow's binary convention; ε = 0 is PyTorch). ``"mean"`` is
    over all elements (weights are not in the denominator). Cross entropy for binary
    outcomes goes back to Good, "Rational decisions" (1952); prefer
    :func:`binary_cross_entropy_with_logits` on logits for stability.

    Parameters
    ----------
    input : array
        Probabilities in [0, 1], any shape. Half precision is computed in float32.
    target : array
        ``input``'s shape; values in [0, 1] (integer or bool 0/1 targets are accepted and cast).
    weight : array, optional
        Elementwise weights that broadcast to ``input``'s shape.
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
    xp : namespace, optional

    Returns
    -------
    array
        ``input``'s library, device and dtype; ``input``'s shape for ``"none"``, else 0-d.

    Raises
    ------
    ValueError
        ``input`` outside [0, 1] (eager arrays). Under JAX and Dask such an element's loss is NaN.

    Examples
    --------
    >>> import numpy as np, xce
    >>> p, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> round(float(xce.binary_cross_entropy(p, y)), 4)
    1.5081
    """
    xp = namespace(("input", "target", "weight"), input, target, weight, xp=xp)
    reduction, work, y, lazy = _check(input, target, weight, None, reduction, label_smoothing, probabilities=True,
                                      xp=xp)
    # PyTorch's clamp at -100: p ∈ {0, 1} gives a finite loss and 0·log 0 = 0. The inner where
    # keeps log(0) from ever being evaluated (no warning, no inf in the gradient).
    pos, neg = work > 0.0, work < 1.0
    log_p = xp.where(pos, xp.log(xp.where(pos, work, 1.0)), -100.0)
    log_q = xp.where(neg, xp.log1p(-xp.where(neg, work, 0.0)), -100.0)
    log_p = xp.where(log_p < -100.0, -100.0, log_p)
    log_q = xp.where(log_q < -100.0, -100.0, log_q)
    loss = -(y * log_p + (1.0 - y) * log_q)
    if lazy:
        # Unread values: a probability outside [0, 1] must not give a plausible finite loss.
        loss = xp.where((work >= 0.0) & (work <= 1.0), loss, float("nan"))
    return _finish(loss, weight, reduction, input, xp=xp)


def binary_cross_entropy_with_logits(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    pos_weight: Array | None = None,
    *,
    label_smoothing: float = 0.0,
    xp: Namespace | None = None,
) -> Array:
    r"""Binary cross entropy on logits, numerically stable for any ``|x|``.

    PyTorch's ``torch.nn.functional.binary_cross_entropy_with_logits``. With
    :math:`\mathrm{softplus}(z) = \log(1 + e^z) = -\log\sigma(-z)` and :math:`p_w` the
    ``pos_weight``:

    .. math::
       l_i = w_i\,\bigl[(1-y_i)\,x_i + (1 + (p_w - 1)\,y_i)\,\mathrm{softplus}(-x_i)\bigr]
           = -w_i\,\bigl[p_w\,y_i\log\sigma(x_i) + (1-y_i)\log\sigma(-x_i)\bigr],

    where softplus is computed as :math:`\max(z, 0) + \log(1 + e^{-|z|})`. ``pos_weight``
    broadcasts over the last axis (one entry per class of a multi-label problem).
    ``label_smoothing`` ε replaces the target by :math:`y(1-\varepsilon) + \varepsilon/2`
    (Keras/TensorFlow). ``"mean"`` is over all elements. This is the negative log-likelihood
    of logistic regression (Cox, "The Regression Analysis of Binary Sequences", 1958).

    Parameters
    ----------
    input : array
        Logits, any shape. Half precision is computed in float32.
    target : array
        ``input``'s shape, values in [0, 1] (integer or bool targets are cast).
    weight : array, optional
        Elementwise weights that broadcast to ``input``'s shape.
    reduction : {"mean", "sum", "none"}, default "mean"
    pos_weight : array, optional
        Weight of the positive term, broadcast against ``input`` from the last axis, e.g. shape ``(C,)``.
    label_smoothing : float in [0, 1], default 0.0
    xp : namespace, optional

    Returns
    -------
    array
        ``input``'s library, device and dtype; ``input``'s shape for ``"none"``, else 0-d.

    Examples
    --------
    >>> import numpy as np, xce
    >>> x, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> round(float(xce.binary_cross_entropy_with_logits(x, y)), 4)
    0.8518
    >>> float(xce.binary_cross_entropy_with_logits(np.asarray([1e4]), np.asarray([0.0])))
    10000.0
    """
    xp = namespace(("input", "target", "weight", "pos_weight"), input, target, weight, pos_weight, xp=xp)
    reduction, work, y, _ = _check(input, target, weight, pos_weight, reduction, label_smoothing, xp=xp)
    pw = None if pos_weight is None else xp.astype(pos_weight, work.dtype)
    loss = logistic_loss(work, y, pw, xp=xp)
    return _finish(loss, weight, reduction, input, xp=xp)


def multilabel_soft_margin_loss(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    *,
    xp: Namespace | None = None,
) -> Array:
    r"""Multi-label one-versus-all logistic loss, averaged over classes.

    PyTorch's ``torch.nn.functional.multilabel_soft_margin_loss``: with classes along the
    last axis,

    .. math::
       l_i = -\frac{1}{C}\sum_c w_c\,\bigl[y_{i,c}\log\sigma(x_{i,c}) + (1-y_{i,c})\log\sigma(-x_{i,c})\bigr],

    computed in the stable softplus form of :func:`binary_cross_entropy_with_logits`, then
    ``reduction`` over the remaining axes (``"mean"`` divides by their number of positions).
    One-versus-all logistic regression: Rifkin and Klautau, "In Defense of One-Vs-All
    Classification" (JMLR 2004).

    Parameters
    ----------
    input : array
        Logits, shape ``(C,)`` or ``(N, C)`` (any leading axes are accepted).
    target : array
        ``input``'s shape, 0/1 labels (floating, integer or bool).
    weight : array, optional
        Per-class weights, broadcast to ``input`` (typically shape ``(C,)``).
    reduction : {"mean", "sum", "none"}, default "mean"
    xp : namespace, optional

    Returns
    -------
    array
        ``input``'s library, device and dtype; ``input``'s shape without the last axis for ``"none"``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> x, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> round(float(xce.multilabel_soft_margin_loss(x, y)), 4)
    0.8518
    """
    xp = namespace(("input", "target", "weight"), input, target, weight, xp=xp)
    reduction = check_reduction(reduction)
    if input.ndim == 0:
        raise ValueError("input must have a class axis (the last one); got a 0-d array. Pass shape (C,) or (N, C).")
    lazy = is_lazy(input)
    work, y = _prepare(input, target, 0.0, xp=xp, lazy=lazy)
    n_classes = check_classes(input, input.ndim - 1)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    loss = logistic_loss(work, y, None, xp=xp)
    if weight is not None:
        loss = xp.astype(weight, work.dtype) * loss
    loss = xp.sum(loss, axis=-1) / n_classes
    out = reduce_loss(loss, reduction, xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def sigmoid_focal_loss(
    input: Array,
    target: Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    xp: Namespace | None = None,
) -> Array:
    r"""Sigmoid focal loss for dense detection (torchvision's definition).

    Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017). With
    :math:`p = \sigma(x)` and :math:`p_t = p\,y + (1-p)(1-y)`:

    .. math::
       l_i = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{BCE}(x_i, y_i), \qquad
       \alpha_t = \alpha\,y + (1-\alpha)(1-y),

    and :math:`\alpha_t = 1` when ``alpha < 0`` (torchvision's switch). Computed stably:
    BCE in softplus form and :math:`1 - p_t = y\,\sigma(-x) + (1-y)\,\sigma(x)` with
    :math:`\sigma(z) = e^{-\mathrm{softplus}(-z)}`, never :math:`1 - \sigma`. Default reduction
    is ``"none"`` (torchvision); ``"mean"`` is over all elements.

    Parameters
    ----------
    input : array
        Logits, any shape. Half precision is computed in float32.
    target : array
        ``input``'s shape, 0/1 labels (soft labels in [0, 1] are accepted).
    alpha : float, default 0.25
        Weight of the positive class in [0, 1]; negative disables the α term.
    gamma : float >= 0, default 2.0
        Focusing exponent; 0 gives (α-weighted) BCE with logits.
    reduction : {"none", "mean", "sum"}, default "none"
    xp : namespace, optional

    Returns
    -------
    array
        ``input``'s library, device and dtype.

    Examples
    --------
    >>> import numpy as np, xce
    >>> x, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> np.round(xce.sigmoid_focal_loss(x, y), 4)
    array([[0.3244, 0.0364],
           [0.0251, 0.4181]])
    """
    xp = namespace(("input", "target"), input, target, xp=xp)
    reduction = check_reduction(reduction)
    alpha = check_alpha(alpha)
    gamma = check_real(gamma, "gamma", minimum=0.0)
    work, y = _prepare(input, target, 0.0, xp=xp, lazy=is_lazy(input))
    loss = logistic_loss(work, y, None, xp=xp)
    # 1 - p_t from the two sigmoids directly: no 1 - p cancellation when p ≈ 1.
    one_minus_pt = y * xp.exp(-softplus(work, xp=xp)) + (1.0 - y) * xp.exp(-softplus(-work, xp=xp))
    loss = loss * one_minus_pt**gamma
    if alpha >= 0.0:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    out = reduce_loss(loss, reduction, xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


# --- gradients -------------------------------------------------------------------------------


def binary_cross_entropy_grad(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    *,
    label_smoothing: float = 0.0,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.binary_cross_entropy`: :math:`s_i w_i [-y_i/p_i + (1-y_i)/(1-p_i)]`.

    Each term is 0 where its log is clamped at -100 (p = 0, or p = 1), the derivative of the
    clamped loss. Under JAX and Dask, elements outside [0, 1] get NaN (their loss is NaN).

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.binary_cross_entropy_grad(np.asarray([0.5, 0.5]), np.asarray([1.0, 0.0])).tolist()
    [-1.0, 1.0]
    """
    xp = namespace(_GRAD_NAMES, input, target, weight, cotangent, xp=xp)
    reduction, work, y, lazy = _check(input, target, weight, None, reduction, label_smoothing, probabilities=True,
                                      xp=xp)
    pos, neg = work > 0.0, work < 1.0
    p_safe = xp.where(pos, work, 1.0)
    q_safe = xp.where(neg, 1.0 - work, 1.0)
    d_log_p = xp.where(pos & (xp.log(p_safe) >= -100.0), 1.0 / p_safe, 0.0)
    d_log_q = xp.where(neg & (xp.log1p(-xp.where(neg, work, 0.0)) >= -100.0), -1.0 / q_safe, 0.0)
    g = -(y * d_log_p + (1.0 - y) * d_log_q)
    if lazy:
        g = xp.where((work >= 0.0) & (work <= 1.0), g, float("nan"))
    return _finish_elementwise(g, weight, reduction, cotangent, input, xp=xp)


def binary_cross_entropy_with_logits_grad(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    pos_weight: Array | None = None,
    *,
    label_smoothing: float = 0.0,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.binary_cross_entropy_with_logits`:
    :math:`s_i w_i\,[(1 + (p_w - 1) y_i)\,\sigma(x_i) - p_w y_i]`.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.binary_cross_entropy_with_logits_grad(np.asarray([0.0, 0.0]), np.asarray([1.0, 0.0])).tolist()
    [-0.25, 0.25]
    """
    xp = namespace(("input", "target", "weight", "pos_weight", "cotangent"), input, target, weight, pos_weight,
                   cotangent, xp=xp)
    reduction, work, y, _ = _check(input, target, weight, pos_weight, reduction, label_smoothing, xp=xp)
    sig = sigmoid(work, xp=xp)
    if pos_weight is None:
        g = sig - y
    else:
        pw = xp.astype(pos_weight, work.dtype)
        g = (1.0 + (pw - 1.0) * y) * sig - pw * y
    return _finish_elementwise(g, weight, reduction, cotangent, input, xp=xp)


def multilabel_soft_margin_loss_grad(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    *,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.multilabel_soft_margin_loss`: :math:`s_i\,w_c\,(\sigma(x_{i,c}) - y_{i,c})/C`.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.multilabel_soft_margin_loss_grad(np.asarray([[0.0, 0.0]]), np.asarray([[1.0, 0.0]])).tolist()
    [[-0.25, 0.25]]
    """
    xp = namespace(_GRAD_NAMES, input, target, weight, cotangent, xp=xp)
    reduction = check_reduction(reduction)
    if input.ndim == 0:
        raise ValueError("input must have a class axis (the last one); got a 0-d array. Pass shape (C,) or (N, C).")
    lazy = is_lazy(input)
    work, y = _prepare(input, target, 0.0, xp=xp, lazy=lazy)
    n_classes = check_classes(input, input.ndim - 1)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    g = (sigmoid(work, xp=xp) - y) / n_classes
    if weight is not None:
        g = xp.astype(weight, work.dtype) * g
    s = reduction_scale(cotangent, reduction, work[..., 0], None, work.dtype, xp=xp)
    return like_input(expand_at(s, -1, xp=xp) * g, input, xp=xp)


def sigmoid_focal_loss_grad(
    input: Array,
    target: Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.sigmoid_focal_loss`.

    With :math:`u = 1 - p_t` and :math:`b` the BCE on logits:
    :math:`s_i\,\alpha_t\,[u^\gamma(\sigma(x) - y) + \gamma u^{\gamma-1}(1-2y)\,\sigma(x)\sigma(-x)\,b]`.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.sigmoid_focal_loss_grad(np.asarray([0.0]), np.asarray([1.0]), alpha=-1.0, gamma=0.0).tolist()
    [-0.5]
    """
    xp = namespace(("input", "target", "cotangent"), input, target, cotangent, xp=xp)
    reduction = check_reduction(reduction)
    alpha = check_alpha(alpha)
    gamma = check_real(gamma, "gamma", minimum=0.0)
    work, y = _prepare(input, target, 0.0, xp=xp, lazy=is_lazy(input))
    bce = logistic_loss(work, y, None, xp=xp)
    sig, sig_neg = sigmoid(work, xp=xp), sigmoid(-work, xp=xp)
    u = y * sig_neg + (1.0 - y) * sig
    g = u**gamma * (sig - y)
    if gamma > 0.0:
        safe = xp.where(u > 0.0, u, 1.0)
        du = (1.0 - 2.0 * y) * sig * sig_neg
        g = g + xp.where(u > 0.0, gamma * safe ** (gamma - 1.0) * du * bce, 0.0)
    if alpha >= 0.0:
        g = (alpha * y + (1.0 - alpha) * (1.0 - y)) * g
    return _finish_elementwise(g, None, reduction, cotangent, input, xp=xp)


# --- shared pieces ---------------------------------------------------------------------------


def check_alpha(alpha: object) -> float:
    """torchvision's α: in [0, 1], or negative to switch the α term off."""
    out = check_real(alpha, "alpha")
    if out > 1.0:
        raise ValueError(f"alpha must be at most 1 (or negative to disable the alpha term); got {alpha!r}.")
    return out


def softplus(x: Array, *, xp: Namespace) -> Array:
    r""":math:`\log(1 + e^x)` as :math:`\max(x, 0) + \log(1 + e^{-|x|})`: no overflow, no underflow to 0."""
    return xp.where(x > 0.0, x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def logistic_loss(x: Array, y: Array, pos_weight: Array | None, *, xp: Namespace) -> Array:
    r""":math:`(1-y)\,x + (1 + (p_w-1)\,y)\,\mathrm{softplus}(-x)` (PyTorch's form)."""
    sp = softplus(-x, xp=xp)
    if pos_weight is None:
        return (1.0 - y) * x + sp
    return (1.0 - y) * x + (1.0 + (pos_weight - 1.0) * y) * sp


def _check(input: Array, target: Array, weight: Array | None, pos_weight: Array | None, reduction: object,
           label_smoothing: object, *, probabilities: bool = False, xp: Namespace) -> tuple[str, Array, Array, bool]:
    """The checks of the BCE pair (forward and gradient): ``(reduction, input, smoothed target,
    unread)``, the arrays in the compute dtype. ``probabilities``: ``input`` must lie in [0, 1]
    (checked where values may be read; ``unread``: they may not, so the caller marks NaN)."""
    reduction = check_reduction(reduction)
    eps = check_fraction(label_smoothing, "label_smoothing")
    lazy = is_lazy(input)
    work, y = _prepare(input, target, eps, xp=xp, lazy=lazy)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    check_broadcastable(pos_weight, input, "pos_weight", xp=xp, lazy=lazy,
                        hint=" pos_weight runs along the last axis, e.g. shape (C,) for (N, C) input.")
    unread = not reads_values(input)  # lazy, accelerator, traced: out-of-range values give NaN
    if probabilities and not unread:
        hint = " binary_cross_entropy takes probabilities; for logits use binary_cross_entropy_with_logits."
        check_values_in(input, 0.0, 1.0, "input", xp=xp, hint=hint)
    return reduction, work, y, unread


def _prepare(input: Array, target: Array, eps: float, *, xp: Namespace, lazy: bool) -> tuple[Array, Array]:
    """Checks shared by the elementwise losses; returns (input, smoothed target) in the compute dtype."""
    check_floating(input, "input", xp=xp)
    check_same_shape(target, input)
    if not (xp.isdtype(target.dtype, "real floating") or xp.isdtype(target.dtype, ("integral", "bool"))):
        raise TypeError(f"target must hold real values in [0, 1]; got dtype {target.dtype}.")
    if not lazy:
        check_same_device(input, target, "target")
    dtype = compute_dtype(input.dtype, xp=xp)
    work = input if input.dtype == dtype else xp.astype(input, dtype)
    y = xp.astype(target, dtype) if target.dtype != dtype else target
    if eps > 0.0:
        y = y * (1.0 - eps) + eps / 2.0  # Keras/TensorFlow binary label smoothing
    return work, y


def _finish(loss: Array, weight: Array | None, reduction: str, input: Array, *, xp: Namespace) -> Array:
    if weight is not None:
        loss = xp.astype(weight, loss.dtype) * loss
    out = reduce_loss(loss, reduction, xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def sigmoid(x: Array, *, xp: Namespace) -> Array:
    """σ(x) = exp(-softplus(-x)): never overflows, accurate in both tails."""
    return xp.exp(-softplus(-x, xp=xp))


def _finish_elementwise(g: Array, weight: Array | None, reduction: str, cotangent: Array | None, input: Array, *,
                        xp: Namespace) -> Array:
    if weight is not None:
        g = xp.astype(weight, g.dtype) * g
    s = reduction_scale(cotangent, reduction, g, None, g.dtype, xp=xp)
    return like_input(s * g, input, xp=xp)


register_gradient(binary_cross_entropy, binary_cross_entropy_grad)
register_gradient(binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_grad)
register_gradient(multilabel_soft_margin_loss, multilabel_soft_margin_loss_grad)
register_gradient(sigmoid_focal_loss, sigmoid_focal_loss_grad)

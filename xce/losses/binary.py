"""Binary and multi-label losses: BCE on probabilities and on logits, multi-label soft margin,
sigmoid focal loss; each with its gradient.

Every logit form is written with ``softplus`` (``-log σ(x) = softplus(-x)``), never as
``log(sigmoid(x))``, so it stays finite and accurate for any ``|x|``. Targets and weights are
elementwise: ``target`` has ``input``'s shape, ``weight`` (and ``pos_weight``) broadcast to it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._arrays import expand_at, like_input
from .._docs import fill_doc
from .._engine import reads_values
from .._namespace import Array, Namespace, compute_dtype, is_lazy, namespace, on_input_device
from .._reduce import reduce_loss, reduction_scale
from .._signatures import derivative_of
from .._validate import (
    check_broadcastable,
    check_classes,
    check_floating,
    check_fraction,
    check_mask,
    check_real,
    check_reduction,
    check_same_device,
    check_same_shape,
    check_values_in,
    lazy_range,
    maybe_nonzero,
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

_GRAD_NAMES = ("input", "target", "weight", "cotangent", "where")

# Shared parameter texts, filled in by fill_doc where a docstring says {traced} / {where}.
_TRACED = """\
May be a 0-d array, also one traced under ``jax.jit`` (a schedule compiles once); out of
range such an array gives NaN, where a Python number raises ``ValueError``."""

_WHERE = """\
A mask broadcastable to ``input``'s shape (optax's ``where``): elements where it is False
contribute 0, with a zero gradient, and leave the ``"mean"``'s denominator."""


@on_input_device
@fill_doc(traced=_TRACED, where=_WHERE)
def binary_cross_entropy(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    *,
    label_smoothing: float = 0.0,
    where: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Binary cross entropy between probabilities and binary (or soft) targets.

    PyTorch's ``torch.nn.functional.binary_cross_entropy``: each log term is clamped at
    -100, as PyTorch does, so a probability of exactly 0 or 1 gives a finite loss:

    .. math::
       l_i = -w_i\,\bigl[y_i \max(\log p_i, -100) + (1-y_i)\max(\log(1-p_i), -100)\bigr].

    With ``label_smoothing`` ε the target is first replaced by :math:`y(1-\varepsilon) +
    \varepsilon/2` (Keras/TensorFlow's binary convention; ε = 0 is PyTorch). ``"mean"`` is
    over all elements (weights are not in the denominator); with ``where``, over the kept
    elements, masked ones contributing 0 (and a zero gradient). Cross entropy for binary
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
    label_smoothing : float in [0, 1] or 0-d array, default 0.0
        {traced}
    where : bool array, optional
        {where}
    xp : namespace, optional

    Returns
    -------
    array
        ``input``'s library, device and dtype; ``input``'s shape for ``"none"``, else 0-d.

    Raises
    ------
    ValueError
        ``input`` outside [0, 1] (eager arrays; masked elements are not checked). Under JAX
        and Dask such an element's loss is NaN.

    Examples
    --------
    >>> import numpy as np, xce
    >>> p, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> round(float(xce.binary_cross_entropy(p, y)), 4)
    1.5081
    """
    xp = namespace(("input", "target", "weight", "where"), input, target, weight, where, xp=xp)
    args = _check(input, target, weight, None, reduction, label_smoothing, where, probabilities=True, xp=xp)
    work, y = args.work, args.y
    # PyTorch's clamp at -100: p ∈ {0, 1} gives a finite loss and 0·log 0 = 0. The inner where
    # keeps log(0) from ever being evaluated (no warning, no inf in the gradient).
    pos, neg = work > 0.0, work < 1.0
    log_p = xp.where(pos, xp.log(xp.where(pos, work, 1.0)), -100.0)
    log_q = xp.where(neg, xp.log1p(-xp.where(neg, work, 0.0)), -100.0)
    log_p = xp.where(log_p < -100.0, -100.0, log_p)
    log_q = xp.where(log_q < -100.0, -100.0, log_q)
    loss = -(y * log_p + (1.0 - y) * log_q)
    if args.unread:
        # Unread values: a probability outside [0, 1] must not give a plausible finite loss.
        loss = xp.where((work >= 0.0) & (work <= 1.0), loss, float("nan"))
    return _finish(loss, weight, args, input, xp=xp)


@on_input_device
@fill_doc(traced=_TRACED, where=_WHERE)
def binary_cross_entropy_with_logits(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    pos_weight: Array | None = None,
    *,
    label_smoothing: float = 0.0,
    where: Array | None = None,
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
    (Keras/TensorFlow). ``"mean"`` is over all elements, or with ``where`` over the kept ones
    (masked elements contribute 0). This is the negative log-likelihood
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
        Weight of the positive term, broadcast against ``input`` from the last axis, e.g. shape
        ``(C,)``, or a 0-d array (which may be traced under ``jax.jit``).
    label_smoothing : float in [0, 1] or 0-d array, default 0.0
        {traced}
    where : bool array, optional
        {where}
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
    xp = namespace(("input", "target", "weight", "pos_weight", "where"), input, target, weight, pos_weight, where,
                   xp=xp)
    args = _check(input, target, weight, pos_weight, reduction, label_smoothing, where, xp=xp)
    pw = None if pos_weight is None else xp.astype(pos_weight, args.work.dtype)
    loss = logistic_loss(args.work, args.y, pw, xp=xp)
    return _finish(loss, weight, args, input, xp=xp)


@on_input_device
@fill_doc(traced=_TRACED, where=_WHERE)
def multilabel_soft_margin_loss(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    *,
    where: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Multi-label one-versus-all logistic loss, averaged over classes.

    PyTorch's ``torch.nn.functional.multilabel_soft_margin_loss``: with classes along the
    last axis,

    .. math::
       l_i = -\frac{1}{C}\sum_c w_c\,\bigl[y_{i,c}\log\sigma(x_{i,c}) + (1-y_{i,c})\log\sigma(-x_{i,c})\bigr],

    computed in the stable softplus form of :func:`binary_cross_entropy_with_logits`, then
    ``reduction`` over the remaining axes (``"mean"`` divides by their number of positions,
    or with ``where`` by the number of kept positions). One-versus-all logistic regression:
    Rifkin and Klautau, "In Defense of One-Vs-All Classification" (JMLR 2004).

    Parameters
    ----------
    input : array
        Logits, shape ``(C,)`` or ``(N, C)`` (any leading axes are accepted).
    target : array
        ``input``'s shape, 0/1 labels (floating, integer or bool).
    weight : array, optional
        Per-class weights, broadcast to ``input`` (typically shape ``(C,)``).
    reduction : {"mean", "sum", "none"}, default "mean"
    where : bool array, optional
        A mask broadcastable to the per-position loss (``input``'s shape without the last
        axis): positions where it is False contribute 0 and leave the ``"mean"``'s
        denominator; their gradient is 0. To leave out single labels, give them weight 0.
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
    xp = namespace(("input", "target", "weight", "where"), input, target, weight, where, xp=xp)
    args, n_classes = _check_multilabel(input, target, weight, reduction, where, xp=xp)
    loss = logistic_loss(args.work, args.y, None, xp=xp)
    if weight is not None:
        loss = xp.astype(weight, loss.dtype) * loss
    return _finish(xp.sum(loss, axis=-1) / n_classes, None, args, input, xp=xp)


@on_input_device
@fill_doc(traced=_TRACED, where=_WHERE)
def sigmoid_focal_loss(
    input: Array,
    target: Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    where: Array | None = None,
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
    is ``"none"`` (torchvision); ``"mean"`` is over all elements (the kept ones with ``where``).

    Parameters
    ----------
    input : array
        Logits, any shape. Half precision is computed in float32.
    target : array
        ``input``'s shape, 0/1 labels (soft labels in [0, 1] are accepted).
    alpha : float or 0-d array, default 0.25
        Weight of the positive class in [0, 1]; negative disables the α term.
        {traced}
    gamma : float >= 0 or 0-d array, default 2.0
        Focusing exponent; 0 gives (α-weighted) BCE with logits.
        {traced}
    reduction : {"none", "mean", "sum"}, default "none"
    where : bool array, optional
        {where}
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
    xp = namespace(("input", "target", "where"), input, target, where, xp=xp)
    args, alpha, gamma = _check_focal(input, target, alpha, gamma, reduction, where, xp=xp)
    work, y = args.work, args.y
    loss = logistic_loss(work, y, None, xp=xp)
    # 1 - p_t from the two sigmoids directly: no 1 - p cancellation when p ≈ 1.
    one_minus_pt = y * xp.exp(-softplus(work, xp=xp)) + (1.0 - y) * xp.exp(-softplus(-work, xp=xp))
    loss = loss * one_minus_pt**gamma
    alpha_t = _alpha_weight(alpha, y, xp=xp)
    return _finish(loss if alpha_t is None else alpha_t * loss, None, args, input, xp=xp)


# --- gradients -------------------------------------------------------------------------------


@derivative_of(binary_cross_entropy)
def binary_cross_entropy_grad(input: Array, target: Array, weight: Array | None, reduction: str, *,
                              label_smoothing: float, where: Array | None, cotangent: Array | None,
                              xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.binary_cross_entropy`: :math:`s_i w_i [-y_i/p_i + (1-y_i)/(1-p_i)]`.

    Each term is 0 where its log is clamped at -100 (p = 0, or p = 1), the derivative of the
    clamped loss. Under JAX and Dask, elements outside [0, 1] get NaN (their loss is NaN).
    Elements masked by ``where`` get 0.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.binary_cross_entropy_grad(np.asarray([0.5, 0.5]), np.asarray([1.0, 0.0])).tolist()
    [-1.0, 1.0]
    """
    xp = namespace(_GRAD_NAMES, input, target, weight, cotangent, where, xp=xp)
    args = _check(input, target, weight, None, reduction, label_smoothing, where, probabilities=True, xp=xp)
    work, y = args.work, args.y
    pos, neg = work > 0.0, work < 1.0
    p_safe = xp.where(pos, work, 1.0)
    q_safe = xp.where(neg, 1.0 - work, 1.0)
    d_log_p = xp.where(pos & (xp.log(p_safe) >= -100.0), 1.0 / p_safe, 0.0)
    d_log_q = xp.where(neg & (xp.log1p(-xp.where(neg, work, 0.0)) >= -100.0), -1.0 / q_safe, 0.0)
    g = -(y * d_log_p + (1.0 - y) * d_log_q)
    if args.unread:
        g = xp.where((work >= 0.0) & (work <= 1.0), g, float("nan"))
    return _finish_elementwise(g, weight, args, cotangent, input, xp=xp)


@derivative_of(binary_cross_entropy_with_logits)
def binary_cross_entropy_with_logits_grad(input: Array, target: Array, weight: Array | None, reduction: str,
                                          pos_weight: Array | None, *, label_smoothing: float, where: Array | None,
                                          cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.binary_cross_entropy_with_logits`:
    :math:`s_i w_i\,[(1 + (p_w - 1) y_i)\,\sigma(x_i) - p_w y_i]`, 0 where ``where`` is False.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.binary_cross_entropy_with_logits_grad(np.asarray([0.0, 0.0]), np.asarray([1.0, 0.0])).tolist()
    [-0.25, 0.25]
    """
    xp = namespace(("input", "target", "weight", "pos_weight", "cotangent", "where"), input, target, weight,
                   pos_weight, cotangent, where, xp=xp)
    args = _check(input, target, weight, pos_weight, reduction, label_smoothing, where, xp=xp)
    work, y = args.work, args.y
    sig = sigmoid(work, xp=xp)
    if pos_weight is None:
        g = sig - y
    else:
        pw = xp.astype(pos_weight, work.dtype)
        g = (1.0 + (pw - 1.0) * y) * sig - pw * y
    return _finish_elementwise(g, weight, args, cotangent, input, xp=xp)


@derivative_of(multilabel_soft_margin_loss)
def multilabel_soft_margin_loss_grad(input: Array, target: Array, weight: Array | None, reduction: str, *,
                                     where: Array | None, cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.multilabel_soft_margin_loss`: :math:`s_i\,w_c\,(\sigma(x_{i,c}) - y_{i,c})/C`,
    0 at positions masked by ``where``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.multilabel_soft_margin_loss_grad(np.asarray([[0.0, 0.0]]), np.asarray([[1.0, 0.0]])).tolist()
    [[-0.25, 0.25]]
    """
    xp = namespace(_GRAD_NAMES, input, target, weight, cotangent, where, xp=xp)
    args, n_classes = _check_multilabel(input, target, weight, reduction, where, xp=xp)
    work = args.work
    g = (sigmoid(work, xp=xp) - args.y) / n_classes
    if weight is not None:
        g = xp.astype(weight, work.dtype) * g
    s = reduction_scale(cotangent, args.reduction, work[..., 0], _count(args, work.dtype, xp=xp), work.dtype, xp=xp)
    g = expand_at(s, -1, xp=xp) * g
    if args.keep is not None:
        g = xp.where(expand_at(args.keep, -1, xp=xp), g, 0.0)
    return like_input(g, input, xp=xp)


@derivative_of(sigmoid_focal_loss)
def sigmoid_focal_loss_grad(input: Array, target: Array, alpha: float, gamma: float, reduction: str, *,
                            where: Array | None, cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.sigmoid_focal_loss`.

    With :math:`u = 1 - p_t` and :math:`b` the BCE on logits:
    :math:`s_i\,\alpha_t\,[u^\gamma(\sigma(x) - y) + \gamma u^{\gamma-1}(1-2y)\,\sigma(x)\sigma(-x)\,b]`,
    0 where ``where`` is False.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.sigmoid_focal_loss_grad(np.asarray([0.0]), np.asarray([1.0]), alpha=-1.0, gamma=0.0).tolist()
    [-0.5]
    """
    xp = namespace(("input", "target", "cotangent", "where"), input, target, cotangent, where, xp=xp)
    args, alpha, gamma = _check_focal(input, target, alpha, gamma, reduction, where, xp=xp)
    work, y = args.work, args.y
    bce = logistic_loss(work, y, None, xp=xp)
    sig, sig_neg = sigmoid(work, xp=xp), sigmoid(-work, xp=xp)
    u = y * sig_neg + (1.0 - y) * sig
    g = u**gamma * (sig - y)
    if maybe_nonzero(gamma):
        safe = xp.where(u > 0.0, u, 1.0)
        du = (1.0 - 2.0 * y) * sig * sig_neg
        g = g + xp.where(u > 0.0, gamma * safe ** (gamma - 1.0) * du * bce, 0.0)
    alpha_t = _alpha_weight(alpha, y, xp=xp)
    return _finish_elementwise(g if alpha_t is None else alpha_t * g, None, args, cotangent, input, xp=xp)


# --- shared pieces ---------------------------------------------------------------------------


class _Args(NamedTuple):
    """Checked arguments of a loss of this module (shared by its forward and its gradient)."""

    reduction: str
    work: Array  #: input in the compute dtype; elements masked by ``where`` replaced by a safe value
    y: Array  #: the (smoothed) target in the compute dtype, 0 at masked elements
    unread: bool  #: values may not be read (lazy, accelerator, traced): out-of-range values give NaN
    keep: Array | None  #: ``where`` broadcast to the unreduced loss's shape; None: every element counts


def check_alpha(alpha: object, *, traced: bool = False) -> Any:
    """torchvision's α: in [0, 1], or negative to switch the α term off. With ``traced`` a 0-d
    traced array is accepted too, NaN where it is above 1 or not finite."""
    out = check_real(alpha, "alpha", traced=traced)
    if not isinstance(out, float):
        return lazy_range(out, out <= 1.0)
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
           label_smoothing: object, where: Array | None, *, probabilities: bool = False, xp: Namespace) -> _Args:
    """The checks of the BCE pair (forward and gradient). ``probabilities``: ``input`` must lie
    in [0, 1] (checked at the kept elements where values may be read; else ``unread`` and the
    caller marks NaN); masked probabilities become 1/2, masked logits 0."""
    reduction = check_reduction(reduction)
    # Numeric hyper-parameters may be traced (a smoothing schedule under jax.jit): out of range
    # they give NaN, as invalid values do; a Python number is checked here and raises.
    eps = check_fraction(label_smoothing, "label_smoothing", traced=True)
    lazy = is_lazy(input)
    work, y, keep = _prepare(input, target, eps, where, xp=xp, lazy=lazy, safe=0.5 if probabilities else 0.0)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    check_broadcastable(pos_weight, input, "pos_weight", xp=xp, lazy=lazy,
                        hint=" pos_weight runs along the last axis, e.g. shape (C,) for (N, C) input.")
    unread = not reads_values(input)  # lazy, accelerator, traced: out-of-range values give NaN
    if probabilities and not unread:
        hint = " binary_cross_entropy takes probabilities; for logits use binary_cross_entropy_with_logits."
        check_values_in(work, 0.0, 1.0, "input", xp=xp, hint=hint)
    return _Args(reduction, work, y, unread, keep)


def _check_multilabel(input: Array, target: Array, weight: Array | None, reduction: object, where: Array | None, *,
                      xp: Namespace) -> tuple[_Args, int]:
    """The checks of :func:`multilabel_soft_margin_loss` (and its gradient), and ``C``."""
    reduction = check_reduction(reduction)
    if input.ndim == 0:
        raise ValueError("input must have a class axis (the last one); got a 0-d array. Pass shape (C,) or (N, C).")
    lazy = is_lazy(input)
    work, y, keep = _prepare(input, target, 0.0, where, xp=xp, lazy=lazy, per_row=True)
    n_classes = check_classes(input, input.ndim - 1)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    return _Args(reduction, work, y, not reads_values(input), keep), n_classes


def _check_focal(input: Array, target: Array, alpha: object, gamma: object, reduction: object,
                 where: Array | None, *, xp: Namespace) -> tuple[_Args, Any, Any]:
    """The checks of :func:`sigmoid_focal_loss` (and its gradient): ``(args, alpha, gamma)``,
    α and γ Python floats or 0-d (traced) arrays in the compute dtype."""
    reduction = check_reduction(reduction)
    alpha = check_alpha(alpha, traced=True)
    gamma = check_real(gamma, "gamma", minimum=0.0, traced=True)
    lazy = is_lazy(input)
    work, y, keep = _prepare(input, target, 0.0, where, xp=xp, lazy=lazy)
    args = _Args(reduction, work, y, not reads_values(input), keep)
    return args, _number(alpha, work.dtype, xp=xp), _number(gamma, work.dtype, xp=xp)


def _prepare(input: Array, target: Array, eps: Any, where: Array | None, *, xp: Namespace, lazy: bool,
             safe: float = 0.0, per_row: bool = False) -> tuple[Array, Array, Array | None]:
    """Checks shared by the losses of this module; returns ``(input, smoothed target, keep)``
    in the compute dtype, with the elements masked by ``where`` replaced by ``safe`` and 0
    (before any arithmetic: an inf or NaN there reaches neither the loss nor its gradient).
    ``per_row``: ``where`` masks positions (``input``'s shape without the last axis)."""
    check_floating(input, "input", xp=xp)
    check_same_shape(target, input)
    if not (xp.isdtype(target.dtype, "real floating") or xp.isdtype(target.dtype, ("integral", "bool"))):
        raise TypeError(f"target must hold real values in [0, 1]; got dtype {target.dtype}.")
    if not lazy:
        check_same_device(input, target, "target")
    keep = None
    if where is not None:
        shape, what = ((tuple(input.shape[:-1]), "the per-position loss (input's shape without the last axis)")
                       if per_row else (tuple(input.shape), "the elementwise loss (input's shape)"))
        keep = check_mask(where, shape, input, xp=xp, lazy=lazy, loss=what)
    dtype = compute_dtype(input.dtype, xp=xp)
    work = input if input.dtype == dtype else xp.astype(input, dtype)
    y = xp.astype(target, dtype) if target.dtype != dtype else target
    if maybe_nonzero(eps):
        eps = _number(eps, dtype, xp=xp)
        y = y * (1.0 - eps) + eps / 2.0  # Keras/TensorFlow binary label smoothing
    if keep is not None:
        k = expand_at(keep, -1, xp=xp) if per_row else keep
        work, y = xp.where(k, work, safe), xp.where(k, y, 0.0)
    return work, y, keep


def _number(value: Any, dtype: Any, *, xp: Namespace) -> Any:
    """A numeric hyper-parameter for the math: a Python float as it is, a (traced) 0-d array in
    the compute dtype (a float64 schedule must not promote a float32 loss)."""
    return value if isinstance(value, float) else xp.astype(value, dtype)


def _alpha_weight(alpha: Any, y: Array, *, xp: Namespace) -> Array | None:
    r""":math:`\alpha_t = \alpha y + (1-\alpha)(1-y)`; None (no weighting) for a negative
    Python α, 1 where a traced α is negative (a NaN α stays NaN)."""
    if isinstance(alpha, float):
        return None if alpha < 0.0 else alpha * y + (1.0 - alpha) * (1.0 - y)
    return xp.where(alpha < 0.0, 1.0, alpha * y + (1.0 - alpha) * (1.0 - y))


def _count(args: _Args, dtype: Any, *, xp: Namespace) -> Array | None:
    """The ``"mean"``'s per-element (per-position) denominator weights under ``where``: 1 at
    kept elements, 0 at masked ones; None counts every element."""
    return None if args.keep is None or args.reduction != "mean" else xp.astype(args.keep, dtype)


def _finish(loss: Array, weight: Array | None, args: _Args, input: Array, *, xp: Namespace) -> Array:
    if weight is not None:
        loss = xp.astype(weight, loss.dtype) * loss
    if args.keep is not None:
        loss = xp.where(args.keep, loss, 0.0)
    out = reduce_loss(loss, args.reduction, denominator=_count(args, loss.dtype, xp=xp), xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def sigmoid(x: Array, *, xp: Namespace) -> Array:
    """σ(x) = exp(-softplus(-x)): never overflows, accurate in both tails."""
    return xp.exp(-softplus(-x, xp=xp))


def _finish_elementwise(g: Array, weight: Array | None, args: _Args, cotangent: Array | None, input: Array, *,
                        xp: Namespace) -> Array:
    if weight is not None:
        g = xp.astype(weight, g.dtype) * g
    s = reduction_scale(cotangent, args.reduction, g, _count(args, g.dtype, xp=xp), g.dtype, xp=xp)
    g = s * g
    if args.keep is not None:
        g = xp.where(args.keep, g, 0.0)
    return like_input(g, input, xp=xp)

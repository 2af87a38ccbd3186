r"""Losses of the target's log-probability: ``nll_loss``, ``softmax_focal_loss``,
``poly1_cross_entropy``; each with its gradient beside it.

Each is :math:`l_i = w_{y_i}\,f(\ell_{i,y_i})` of :math:`\ell_y` (the input itself for
``nll_loss``, :math:`\log\mathrm{softmax}(x)_y` for the others), reduced exactly like
:func:`xce.cross_entropy`'s index path (0 at ignored positions, ``"mean"`` over
:math:`\sum w_y`). Through the softmax, :math:`\partial l/\partial x = w_y f'(\ell_y)(e_y - p)`,
so a loss of this family is its pair :math:`(f, f')` and the shared code below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

from .._arrays import expand_at, like_input
from .._docs import fill_doc
from .._namespace import (
    Array,
    Namespace,
    as_compute,
    as_dtype,
    compute_dtype,
    is_lazy,
    namespace,
    on_input_device,
    take_along_class_axis,
)
from .._reduce import reduce_loss, reduction_scale
from .._signatures import derivative_of
from .._softmax import softmax_and_lse
from .._targets import IndexTarget, gather_weight, mask_loss, mean_weights, one_hot_like
from .._validate import check_index_target, check_real, check_reduction, class_axis, maybe_nonzero
from .cross_entropy import (
    CrossEntropyArgs,
    check_arguments,
    check_sample_weight,
    cross_entropy_with_stats,
    gradient,
    reduce_weighted,
    statistics,
    weighted_denominators,
    weighted_scale,
)

__all__ = [
    "nll_loss",
    "nll_loss_grad",
    "poly1_cross_entropy",
    "poly1_cross_entropy_grad",
    "softmax_focal_loss",
    "softmax_focal_loss_grad",
]


# The parameters both losses of log-softmax share (numpydoc text, filled in by fill_doc).
_INPUTS = """\
input : array
    Logits, classes along ``axis`` (PyTorch's rule when None). Half precision is computed in float32.
target : array
    Integer class indices, ``input``'s shape without the class axis."""
_OPTIONS = """\
weight : array, optional
    Per-class weights, shape ``(C,)``.
ignore_index : int, default -100
reduction : {"mean", "sum", "none"}, default "mean"
axis : int, optional
where : bool array, optional
    optax's mask of the per-position shape: positions where it is False count as ignored.
sample_weight : array, optional
    Per-position weights :math:`s_i` (the target's shape): each position's loss is multiplied by
    its weight and ``"mean"`` divides by :math:`\\sum_i s_i w_{y_i}` over kept positions.
xp : namespace, optional"""


class _Checked(NamedTuple):
    ax: int
    targets: IndexTarget
    w_y: Array | None  # class weight of each position's target, in the compute dtype
    sw: Array | None = None  # sample weights in the compute dtype (None: not given)
    den_w: Array | None = None  # with sample weights: the "mean" denominator's per-position weights


def _begin(input: Array, target: Array, weight: Array | None, reduction: object, xp: Namespace | None,
           sample_weight: Array | None = None, cotangent: Array | None = None) -> tuple[Namespace, str]:
    """The namespace of the call (with its ``sample_weight`` and a gradient's ``cotangent`` where
    given) and the checked ``reduction``."""
    named = [("input", input), ("target", target), ("weight", weight)]
    named += [(n, a) for n, a in (("sample_weight", sample_weight), ("cotangent", cotangent)) if a is not None]
    return namespace(tuple(n for n, _ in named), *(a for _, a in named), xp=xp), check_reduction(reduction)


def _sample_weights(input: Array, args: CrossEntropyArgs, weight: Array | None, sample_weight: Array | None, *,
                    xp: Namespace) -> tuple[Array | None, Array | None]:
    """Cross entropy's own: ``sample_weight`` checked and in the compute dtype, and the ``"mean"``
    denominator's per-position weights :math:`s_i w_{y_i}` at kept positions; None, None without."""
    if sample_weight is None:
        return None, None
    check_sample_weight(input, args.ax, sample_weight, xp=xp)
    dtype = compute_dtype(input.dtype, xp=xp)
    sw = as_dtype(sample_weight, dtype, xp=xp)
    return sw, weighted_denominators(input, args, weight, sw, dtype, xp=xp)[0]


def _check(input: Array, target: Array, weight: Array | None, ignore_index: int, axis: int | None, name: str | None,
           where: Array | None = None, sample_weight: Array | None = None, *, xp: Namespace) -> _Checked:
    """The checks of the family: cross entropy's own for index targets (:func:`check_arguments`);
    ``name`` refuses probability targets with that loss's name (``nll_loss``: None, the generic
    message). ``where`` (optax's mask of the per-position shape): positions outside it count as ignored.
    ``sample_weight``: checked, with its ``"mean"`` denominator (:func:`_sample_weights`)."""
    if tuple(target.shape) == tuple(input.shape):
        if name is None:
            check_index_target(target, input, class_axis(input, axis), xp=xp, lazy=True)  # raises
        raise ValueError(
            f"{name} takes class-index targets (input's shape without the class axis); got a target of input's "
            f"shape {tuple(input.shape)}. Convert probabilities with argmax, or use cross_entropy for soft targets."
        )
    args = check_arguments(input, target, weight, ignore_index, "none", 0.0, axis, "uniform", 0.0, where, xp=xp)
    index = cast(IndexTarget, args.index)  # index targets: never None
    dtype = compute_dtype(input.dtype, xp=xp)
    w_y = None if weight is None else gather_weight(xp.astype(weight, dtype), index.safe, xp=xp)
    return _Checked(args.ax, index, w_y, *_sample_weights(input, args, weight, sample_weight, xp=xp))


def _reduce(loss: Array, c: _Checked, reduction: str, input: Array, *, xp: Namespace) -> Array:
    """Weight, mask and reduce per-position losses exactly as cross_entropy's index path (with
    sample weights: its weighted reduction, :func:`reduce_weighted`)."""
    if c.w_y is not None:
        loss = c.w_y * loss
    loss = mask_loss(loss, c.targets, xp=xp)
    if c.sw is None:
        out = reduce_loss(loss, reduction, denominator=mean_weights(c.w_y, c.targets, xp=xp), xp=xp)
    else:
        out = reduce_weighted(loss, c.sw, cast(Array, c.den_w), reduction, None, xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def _scale(cotangent: Array | None, reduction: str, like: Array, c: _Checked, dtype: Any, *,
           xp: Namespace) -> Array | float:
    """Per-position derivative of :func:`_reduce` times the cotangent (``like``: an array of the
    per-position shape)."""
    if c.sw is None:
        return reduction_scale(cotangent, reduction, like, mean_weights(c.w_y, c.targets, xp=xp), dtype, xp=xp)
    return weighted_scale(cotangent, reduction, c.sw, cast(Array, c.den_w), None, xp=xp)


def _target_log_prob(input: Array, c: _Checked, *, xp: Namespace) -> Array:
    """``log softmax(x)_y`` per position, from the cross-entropy statistics (one sweep)."""
    st = statistics(input, c.ax, xp=xp, lazy=is_lazy(input), index=c.targets.safe,
                    dtype=compute_dtype(input.dtype, xp=xp))
    return st.target - st.lse


def _softmax_grad(input: Array, c: _Checked, reduction: str, cotangent: Array | None,
                  d_loss: Callable[[Array, Array], Array], *, xp: Namespace) -> Array:
    """Gradient of ``w_y f(log p_y)`` through the softmax: ``s w_y f'(log p_y) (e_y - p)``."""
    work = as_compute(input, xp=xp)
    p, lse = softmax_and_lse(work, c.ax, xp=xp)
    log_p = take_along_class_axis(work, c.targets.safe, c.ax, xp=xp) - xp.squeeze(lse, axis=c.ax)
    s = _scale(cotangent, reduction, log_p, c, work.dtype, xp=xp)
    coef = s * d_loss(log_p, xp.exp(log_p))
    if c.w_y is not None:
        coef = coef * c.w_y
    g = expand_at(coef, c.ax, xp=xp) * (one_hot_like(c.targets.safe, work, c.ax, xp=xp) - p)
    return like_input(_zero_dropped(g, c, xp=xp), input, xp=xp)


def _zero_dropped(g: Array, c: _Checked, *, xp: Namespace) -> Array:
    """Zero gradient at ignored (and, lazily, out-of-range) positions; ``where`` so that
    non-finite logits in a dropped row cannot leak NaN."""
    drop = c.targets.dropped
    return g if drop is None else xp.where(xp.expand_dims(drop, axis=c.ax), 0.0, g)


# --- nll_loss ---------------------------------------------------------------------------------


@on_input_device
def nll_loss(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    axis: int | None = None,
    where: Array | None = None,
    sample_weight: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Negative log-likelihood of class-index targets given log-probabilities.

    PyTorch's ``torch.nn.functional.nll_loss``:
    :math:`l_i = -w_{y_i}\,x_{i,y_i}`, 0 where :math:`y_i` equals ``ignore_index``;
    ``"mean"`` divides by :math:`\sum_{i \text{ not ignored}} w_{y_i}`.
    ``cross_entropy(x, y)`` equals ``nll_loss(log_softmax(x, axis=1), y)``.

    Parameters are those of :func:`cross_entropy` (index targets only), with ``input``
    holding log-probabilities (any real values are accepted, as in PyTorch). ``sample_weight``
    :math:`s_i` (the target's shape) multiplies each position's loss; ``"mean"`` then divides by
    :math:`\sum_{i \text{ not ignored}} s_i w_{y_i}`.

    Examples
    --------
    >>> import numpy as np, xce
    >>> float(xce.nll_loss(np.asarray([[2.0, 3.0, 1.0], [3.0, 7.0, 9.0]]), np.asarray([1, 2])))
    -6.0
    """
    xp, reduction = _begin(input, target, weight, reduction, xp, sample_weight)
    c = _check(input, target, weight, ignore_index, axis, None, where, sample_weight, xp=xp)
    loss = -take_along_class_axis(as_compute(input, xp=xp), c.targets.safe, c.ax, xp=xp)
    return _reduce(loss, c, reduction, input, xp=xp)


@derivative_of(nll_loss)
def nll_loss_grad(input: Array, target: Array, weight: Array | None, ignore_index: int, reduction: str, *,
                  axis: int | None, where: Array | None, sample_weight: Array | None, cotangent: Array | None,
                  xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.nll_loss`: :math:`-s_i\,w_{y_i}\,e_{y_i}` (0 at ignored positions;
    :math:`s_i` the reduction's scale times the cotangent and the sample weight).

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.nll_loss_grad(np.zeros((2, 2)), np.asarray([1, 0])).tolist()
    [[0.0, -0.5], [-0.5, 0.0]]
    """
    xp, reduction = _begin(input, target, weight, reduction, xp, sample_weight, cotangent)
    c = _check(input, target, weight, ignore_index, axis, None, where, sample_weight, xp=xp)
    work = as_compute(input, xp=xp)
    s = _scale(cotangent, reduction, c.targets.safe, c, work.dtype, xp=xp)
    coef = -s if c.w_y is None else -s * c.w_y
    g = expand_at(coef, c.ax, xp=xp) * one_hot_like(c.targets.safe, work, c.ax, xp=xp) + 0.0  # + 0.0: no -0.0
    g = xp.broadcast_to(g, work.shape) if tuple(g.shape) != tuple(work.shape) else g
    return like_input(_zero_dropped(g, c, xp=xp), input, xp=xp)


# --- softmax_focal_loss -----------------------------------------------------------------------


def _focal(log_p: Array, gamma: Any, *, xp: Namespace) -> Array:
    """:math:`f(\\ell) = -(1-p)^\\gamma \\ell`; ``1 - p = -expm1(ℓ)``, accurate as p → 1."""
    one_minus_p = -xp.expm1(log_p)
    # Rounding can leave log p a hair above 0; a negative base would make a fractional power NaN.
    one_minus_p = xp.where(one_minus_p > 0.0, one_minus_p, 0.0)
    return -(one_minus_p**gamma) * log_p


def _focal_derivative(log_p: Array, p_y: Array, gamma: Any, *, xp: Namespace) -> Array:
    """:math:`f' = -u^\\gamma + \\gamma\\,p\\,\\ell\\,u^{\\gamma-1}` with u = 1 - p (second term 0 at u = 0)."""
    u = -xp.expm1(log_p)
    u = xp.where(u > 0.0, u, 0.0)
    d = -(u**gamma)
    if maybe_nonzero(gamma):
        safe = xp.where(u > 0.0, u, 1.0)
        d = d + xp.where(u > 0.0, gamma * p_y * log_p * safe ** (gamma - 1.0), 0.0)
    return d


@on_input_device
@fill_doc(inputs=_INPUTS, options=_OPTIONS)
def softmax_focal_loss(input: Array, target: Array, gamma: float = 2.0, weight: Array | None = None,
        ignore_index: int = -100, reduction: str = "mean", *, axis: int | None = None,
        where: Array | None = None, sample_weight: Array | None = None, xp: Namespace | None = None) -> Array:
    r"""Multi-class (softmax) focal loss on logits and class-index targets.

    Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), with the softmax
    probability of the target class :math:`p_{i,y} = e^{\ell_{i,y_i}}`:

    .. math::
       l_i = -w_{y_i}\,(1 - p_{i,y})^\gamma\,\ell_{i,y_i},

    0 where :math:`y_i` equals ``ignore_index``; reduced exactly like :func:`cross_entropy`'s
    index path (``"mean"`` divides by :math:`\sum_{i \text{ not ignored}} w_{y_i}`; with
    ``sample_weight`` :math:`s_i`, :math:`s_i l_i` over :math:`\sum_{i \text{ not ignored}} s_i w_{y_i}`),
    so ``gamma=0`` gives ``cross_entropy``. :math:`1 - p` is computed as
    :math:`-\mathrm{expm1}(\ell)`, accurate when :math:`p \to 1`. Class-index targets only;
    per-class α is the ``weight`` argument.

    Parameters
    ----------
    {inputs}
    gamma : float >= 0, default 2.0
    {options}

    Returns
    -------
    array
        As :func:`cross_entropy`. Out-of-range targets raise ``IndexError`` on eager arrays
        and give NaN under JAX and Dask.

    Examples
    --------
    >>> import numpy as np, xce
    >>> logits = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]])
    >>> round(float(xce.softmax_focal_loss(logits, np.asarray([0, 2]))), 4)
    0.7966
    """
    xp, reduction = _begin(input, target, weight, reduction, xp, sample_weight)
    gamma = check_real(gamma, "gamma", minimum=0.0, traced=True)
    c = _check(input, target, weight, ignore_index, axis, "softmax_focal_loss", where, sample_weight, xp=xp)
    return _reduce(_focal(_target_log_prob(input, c, xp=xp), gamma, xp=xp), c, reduction, input, xp=xp)


@derivative_of(softmax_focal_loss)
def softmax_focal_loss_grad(input: Array, target: Array, gamma: float, weight: Array | None, ignore_index: int,
                            reduction: str, *, axis: int | None, where: Array | None,
                            sample_weight: Array | None, cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.softmax_focal_loss`.

    With :math:`u = 1 - p_y`: :math:`s_i w_{y_i} f'(\ell_y)(e_{y_i} - p)`,
    :math:`f' = -u^\gamma + \gamma\,p_y\,\ell_y\,u^{\gamma-1}` (the second term 0 where u = 0).

    Examples
    --------
    >>> import numpy as np, xce
    >>> x, y = np.asarray([[2.0, 0.0]]), np.asarray([0])  # a well-classified example: its gradient is damped
    >>> xce.grad.softmax_focal_loss_grad(x, y).round(4).tolist(), xce.grad.cross_entropy_grad(x, y).round(4).tolist()
    ([[-0.0049, 0.0049]], [[-0.1192, 0.1192]])
    """
    xp, reduction = _begin(input, target, weight, reduction, xp, sample_weight, cotangent)
    gamma = check_real(gamma, "gamma", minimum=0.0, traced=True)
    c = _check(input, target, weight, ignore_index, axis, "softmax_focal_loss", where, sample_weight, xp=xp)
    return _softmax_grad(input, c, reduction, cotangent,
                         lambda log_p, p_y: _focal_derivative(log_p, p_y, gamma, xp=xp), xp=xp)


# --- poly1_cross_entropy ----------------------------------------------------------------------


@on_input_device
@fill_doc(inputs=_INPUTS, options=_OPTIONS)
def poly1_cross_entropy(input: Array, target: Array, epsilon: float = 1.0, weight: Array | None = None,
        ignore_index: int = -100, reduction: str = "mean", *, axis: int | None = None,
        where: Array | None = None, sample_weight: Array | None = None, xp: Namespace | None = None) -> Array:
    r"""Poly-1 cross entropy: cross entropy plus ε times the first polynomial term.

    Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions" (ICLR 2022):

    .. math::
       l_i = w_{y_i}\,\bigl(-\ell_{i,y_i} + \varepsilon\,(1 - p_{i,y})\bigr),

    0 where :math:`y_i` equals ``ignore_index``, reduced like :func:`cross_entropy`'s index
    path. The class weight multiplies the whole per-position loss (so ``"mean"`` stays a
    weighted mean of Poly-1 losses). ``epsilon=0`` gives ``cross_entropy``; the paper
    recommends :math:`\varepsilon \ge -1` (any finite value is accepted). Probability targets
    (``input``'s shape, optax's ``poly_loss_cross_entropy``):
    :math:`l_i = -\sum_c y_{i,c}\,\ell_{i,c} + \varepsilon\,(1 - \sum_c y_{i,c}\,p_{i,c})`, ``"mean"``
    over the positions, no class ``weight``. ``sample_weight`` :math:`s_i` (the per-position
    shape) multiplies each position's loss; ``"mean"`` then divides by :math:`\sum_i s_i w_{y_i}`
    over kept positions (:math:`\sum_i s_i` for probability targets).

    Parameters
    ----------
    {inputs}
    epsilon : float, default 1.0
    {options}

    Returns
    -------
    array
        As :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, xce
    >>> logits = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]])
    >>> soft = np.asarray([[0.8, 0.1, 0.1], [0.0, 0.5, 0.5]])  # probability targets (optax's poly loss)
    >>> round(float(xce.poly1_cross_entropy(logits, soft)), 4)
    1.4579
    >>> round(float(xce.poly1_cross_entropy(logits, np.asarray([0, 2]))), 4)
    1.8343
    """
    xp, reduction = _begin(input, target, weight, reduction, xp, sample_weight)
    epsilon = check_real(epsilon, "epsilon", traced=True)
    if tuple(target.shape) == tuple(input.shape):  # probability targets: optax's poly_loss_cross_entropy
        args = _poly1_probability_args(input, target, weight, ignore_index, axis, where, xp=xp)
        return _poly1_probability_loss(input, target, epsilon, args, reduction, sample_weight, xp=xp)
    c = _check(input, target, weight, ignore_index, axis, "poly1_cross_entropy", where, sample_weight, xp=xp)
    log_p = _target_log_prob(input, c, xp=xp)
    return _reduce(epsilon * -xp.expm1(log_p) - log_p, c, reduction, input, xp=xp)


def _poly1_probability_args(input: Array, target: Array, weight: Array | None, ignore_index: int, axis: int | None,
                            where: Array | None, *, xp: Namespace) -> CrossEntropyArgs:
    """Checks (cross entropy's own) of poly-1 with probability targets; per-position
    arguments (``reduction="none"``)."""
    if weight is not None:
        raise ValueError("poly1_cross_entropy with probability targets takes no class weight (optax's "
                         "poly_loss_cross_entropy has none); weight the targets instead, or use class indices.")
    return check_arguments(input, target, None, ignore_index, "none", 0.0, axis, "uniform", 0.0, where, xp=xp)


def _poly1_probability_loss(input: Array, target: Array, epsilon: Any, args: CrossEntropyArgs, reduction: str,
                            sample_weight: Array | None, *, xp: Namespace) -> Array:
    """Poly-1 with probability targets: cross entropy's per-position loss plus ε(1 - Σ y p),
    reduced over the kept positions (with ``sample_weight``: cross entropy's weighted reduction)."""
    sw, den_w = _sample_weights(input, args, None, sample_weight, xp=xp)
    ce_part, st = cross_entropy_with_stats(input, target, None, args, xp=xp)
    # The target mass from the same statistics: log Z = shift + lse, no second sweep.
    lse = xp.expand_dims(st.shift + st.lse, axis=args.ax)
    loss = as_compute(ce_part, xp=xp) + epsilon * (1.0 - _target_mass(input, target, args, lse, xp=xp))
    kept = None if args.keep is None else xp.astype(args.keep, loss.dtype)
    loss = loss if kept is None else loss * kept
    if sw is None:
        out = reduce_loss(loss, reduction, denominator=kept, xp=xp)
    else:
        out = reduce_weighted(loss, sw, cast(Array, den_w), reduction, None, xp=xp)
    return out if out.dtype == input.dtype else xp.astype(out, input.dtype)


def _target_mass(input: Array, target: Array, args: CrossEntropyArgs, lse: Array, *, xp: Namespace) -> Array:
    """``Σ_c y_c p_c`` per position: the softmax mass on the target distribution."""
    work = as_compute(input, xp=xp)
    return xp.sum(as_compute(target, xp=xp) * xp.exp(work - lse), axis=args.ax)


@derivative_of(poly1_cross_entropy)
def poly1_cross_entropy_grad(input: Array, target: Array, epsilon: float, weight: Array | None, ignore_index: int,
                             reduction: str, *, axis: int | None, where: Array | None,
                             sample_weight: Array | None, cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.poly1_cross_entropy`: :math:`s_i w_{y_i} (1 + \varepsilon p_y)(p - e_{y_i})`
    (:math:`f' = -1 - \varepsilon p_y`).

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.poly1_cross_entropy_grad(np.zeros((1, 2)), np.asarray([0]), epsilon=0.0).tolist()
    [[-0.5, 0.5]]
    """
    xp, reduction = _begin(input, target, weight, reduction, xp, sample_weight, cotangent)
    epsilon = check_real(epsilon, "epsilon", traced=True)
    if tuple(target.shape) == tuple(input.shape):
        args = _poly1_probability_args(input, target, weight, ignore_index, axis, where, xp=xp)
        return _poly1_probability_grad(input, target, epsilon, args, reduction, sample_weight, cotangent, xp=xp)
    c = _check(input, target, weight, ignore_index, axis, "poly1_cross_entropy", where, sample_weight, xp=xp)
    return _softmax_grad(input, c, reduction, cotangent, lambda log_p, p_y: -1.0 - epsilon * p_y, xp=xp)


def _poly1_probability_grad(input: Array, target: Array, epsilon: Any, args: CrossEntropyArgs, reduction: str,
                            sample_weight: Array | None, cotangent: Array | None, *, xp: Namespace) -> Array:
    """d/dx [CE(q) + ε(1 - Σ y p)] = s[(Σ y) p - y] - s ε p ⊙ (y - Σ y p): cross entropy's own
    gradient rule for the first part; with ``sample_weight``, the weighted reduction's
    per-position scale is that rule's ``"none"`` cotangent."""
    work, y = as_compute(input, xp=xp), as_compute(target, xp=xp)
    p, lse = softmax_and_lse(work, args.ax, xp=xp)  # one softmax for both parts
    kept = None if args.keep is None else xp.astype(args.keep, work.dtype)
    sw, den_w = _sample_weights(input, args, None, sample_weight, xp=xp)
    if sw is None:
        args.reduction = reduction
        g_ce = gradient(input, target, None, args, cotangent, lse, xp=xp)
        s = reduction_scale(cotangent, reduction, xp.sum(p, axis=args.ax), kept, work.dtype, xp=xp)
    else:  # args.reduction stays "none"
        s = weighted_scale(cotangent, reduction, sw, cast(Array, den_w), None, xp=xp)
        g_ce = gradient(input, target, None, args, s, lse, xp=xp)
    s = s if kept is None else s * kept
    mass = xp.expand_dims(xp.sum(y * p, axis=args.ax), axis=args.ax)
    g = as_compute(g_ce, xp=xp) - expand_at(s, args.ax, xp=xp) * epsilon * p * (y - mass)
    return like_input(g, input, xp=xp)

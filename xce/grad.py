r"""Analytic gradients of the losses, and ``value_and_grad`` for libraries without autodiff.

Every function here returns :math:`\partial L / \partial x` for one loss :math:`L` of
:mod:`xce`, written once against the Array API (NumPy, CuPy, array-api-strict, ... and
also PyTorch and JAX, where the adapters in :mod:`xce.adapters` register the same code as
the backward pass). The gradient is that of the *reduced* loss: ``"mean"`` divides by the
same denominator as the loss (the weighted count of non-ignored targets for index targets).

**Cotangent.** Each gradient takes ``cotangent=`` (default 1): the upstream gradient
:math:`g = \partial(\text{objective})/\partial L`. For ``"mean"`` and ``"sum"`` it is a
scalar; for ``"none"`` it has the loss's shape, and the default (ones) makes the result the
gradient of ``loss.sum()``. The result is :math:`g \cdot \partial L/\partial x` (a
vector-Jacobian product), in ``input``'s dtype; half precision is computed in float32.

**Conventions where the loss is not differentiable** match autodiff through the xce loss:
ignored positions, and (under JAX and Dask) positions with an out-of-range target, get a
zero gradient; zero-probability classes of probability targets contribute nothing, so
``-inf`` logits give finite gradients.

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

import math
from collections.abc import Callable
from typing import Any

from . import _engine
from . import binary as _binary
from . import classification as _cls
from ._namespace import (
    Array,
    Namespace,
    as_compute,
    compute_dtype,
    device_of,
    index_dtype,
    is_lazy,
    namespace,
    take_along_class_axis,
    write_into,
    writes_into,
)
from ._softmax import finite_max
from ._validate import (
    check_broadcastable,
    check_classes,
    check_floating,
    check_fraction,
    check_index_target,
    check_integer,
    check_real,
    check_reduction,
    check_values_in,
    check_weight,
    class_axis,
)
from .classification import _denominator, _gather_weight, _Index, _prepare_index, check_cross_entropy_arguments

__all__ = [
    "binary_cross_entropy_grad",
    "binary_cross_entropy_with_logits_grad",
    "cross_entropy_grad",
    "multilabel_soft_margin_loss_grad",
    "nll_loss_grad",
    "poly1_cross_entropy_grad",
    "register",
    "sigmoid_focal_loss_grad",
    "softmax_focal_loss_grad",
    "value_and_grad",
]

_NAMES = ("input", "target", "weight", "cotangent")


# --- value_and_grad --------------------------------------------------------------------------

_REGISTRY: dict[Callable[..., Any], Callable[..., Any]] = {}


def register(loss_fn: Callable[..., Any], grad_fn: Callable[..., Any]) -> None:
    """Make ``value_and_grad(loss_fn)`` use ``grad_fn`` (same signature plus ``cotangent=``)."""
    _REGISTRY[loss_fn] = grad_fn


def value_and_grad(loss_fn: Callable[..., Any]) -> Callable[..., tuple[Any, Any]]:
    r"""``loss_fn`` returning ``(loss, gradient)``, with the analytic gradient.

    For any namespace, including those without autodiff (NumPy, CuPy, array-api-strict).
    ``loss_fn`` is one of ``xce.cross_entropy``, ``nll_loss``, ``binary_cross_entropy``,
    ``binary_cross_entropy_with_logits``, ``multilabel_soft_margin_loss``,
    ``softmax_focal_loss``, ``sigmoid_focal_loss``, ``poly1_cross_entropy`` (looked up by
    identity) or ``xce.linear_cross_entropy``. The returned function takes the loss's
    arguments plus ``cotangent=`` (see the module docstring: for ``reduction="none"`` the
    default gives the gradient of ``loss.sum()``). The loss is the xce function's own
    result; the gradient :math:`g\,\partial L/\partial x` w.r.t. ``input`` has ``input``'s
    shape and dtype. For ``linear_cross_entropy`` the gradient is the tuple
    ``(d_hidden, d_weight, d_bias)`` (``d_bias`` None without bias).

    Examples
    --------
    >>> import numpy as np, xce
    >>> f = xce.value_and_grad(xce.cross_entropy)
    >>> loss, dx = f(np.asarray([[0.0, 0.0]]), np.asarray([0]))
    >>> round(float(loss), 4), dx.tolist()
    (0.6931, [[-0.5, 0.5]])
    """
    try:
        grad_fn = _REGISTRY[loss_fn]
    except KeyError:
        known = ", ".join(sorted(getattr(f, "__name__", repr(f)) for f in _REGISTRY))
        raise TypeError(
            f"value_and_grad has no analytic gradient for {getattr(loss_fn, '__name__', loss_fn)!r}; "
            f"it supports the xce functions {known}. Use your framework's autodiff (torch, jax) otherwise."
        ) from None
    if loss_fn.__name__ == "linear_cross_entropy":  # its own fused value-and-grad
        return grad_fn

    def value_and_grad_fn(input: Array, target: Array, *args: Any, cotangent: Array | None = None, **kwargs: Any):
        loss = loss_fn(input, target, *args, **kwargs)
        return loss, grad_fn(input, target, *args, cotangent=cotangent, **kwargs)

    value_and_grad_fn.__name__ = f"value_and_grad_{loss_fn.__name__}"
    value_and_grad_fn.__doc__ = f"``(xce.{loss_fn.__name__}(...), its gradient w.r.t. input)``."
    return value_and_grad_fn


# --- multi-class losses ----------------------------------------------------------------------


def cross_entropy_grad(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    axis: int | None = None,
    label_smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.cross_entropy` w.r.t. ``input``.

    Index targets: :math:`s_i[(1-\varepsilon) w_{y_i}(p - e_{y_i}) + \frac{\varepsilon}{C}(Wp - w)]
    + s^z_i\,2z\log Z_i\,p`, with :math:`s_i` the cotangent over :math:`\sum w_{y}` (``"mean"``)
    and :math:`s^z_i` over the count of non-ignored positions; 0 at ignored positions.
    Probability targets: :math:`s_i[(\sum_c\tilde q_c)p - \tilde q + 2z\log Z_i\,p]`.
    Arguments are :func:`xce.cross_entropy`'s plus ``cotangent``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> dx = xce.grad.cross_entropy_grad(np.asarray([[0.0, 0.0], [0.0, 0.0]]), np.asarray([0, -100]))
    >>> dx.tolist()
    [[-0.5, 0.5], [0.0, 0.0]]
    """
    xp = namespace(_NAMES, input, target, weight, cotangent, xp=xp)
    args = check_cross_entropy_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis,
                                         label_smoothing_mode, z_loss, xp=xp)
    reduction, eps, z, ax, _, _, index = args
    return ce_backward(input, target, index, weight, reduction, eps, ax, z, cotangent, None, xp=xp)


def ce_backward(
    input: Array,
    target: Array,
    index: _Index | None,
    weight: Array | None,
    reduction: str,
    eps: float,
    ax: int,
    z: float,
    cotangent: Array | None,
    lse: Array | None,
    *,
    xp: Namespace,
    blocked: bool = True,
) -> Array:
    """The cross-entropy gradient from validated arguments (shared with the adapters).

    ``index`` is ``_prepare_index``'s result (None for probability targets), ``eps`` the
    uniform-equivalent smoothing, ``lse`` the per-position logsumexp in the compute dtype
    with the class axis kept (recomputed when None). On eager arrays with the classes off
    axis 0, large inputs are processed in blocks of rows (:func:`_ce_blocked`), each formed
    in place in the preallocated result, so the temporaries are O(block), not O(input), and
    none is allocated afresh per block where the library takes ``out=`` (``blocked=False``,
    used under ``create_graph``, turns that off: in-place writes would not be differentiable).
    """
    dtype = compute_dtype(input.dtype, xp=xp)
    w = None if weight is None else xp.astype(weight, dtype)
    per_position = tuple(input.shape[:ax]) + tuple(input.shape[ax + 1 :])
    like = xp.empty(per_position, dtype=dtype, device=device_of(input))
    if index is None:
        s = _scale(cotangent, reduction, like, None, dtype, xp=xp)
        s_z = s
    else:
        w_y = None if w is None else _gather_weight(w, index.safe, xp=xp)
        s = _scale(cotangent, reduction, like, _denominator(w_y, index, xp=xp), dtype, xp=xp)
        s_z = _scale(cotangent, reduction, like, _denominator(None, index, xp=xp), dtype, xp=xp) if z > 0.0 else 0.0
    if not blocked or is_lazy(input) or _block_rows(input, ax, xp=xp) is None:
        return _to_input(_ce_block(input, target, index, w, eps, ax, z, s, s_z, lse, xp=xp), input, xp=xp)
    return _ce_blocked(input, target, index, w, eps, ax, z, s, s_z, lse, dtype, xp=xp)


# Elements of one block of the blocked backward (16 MiB in float32): it fits a typical L3, so
# the in-place passes after the first re-read it from cache, and PyTorch splits each op over
# its intra-op threads. Float32/float64 blocks are formed in the result itself, so the size
# costs no memory there; half precision keeps one float32 buffer of this size. (On a CPU
# shared with other processes fewer, larger ops wait less for descheduled threads.) GPUs use
# the engine's larger blocks.
_BLOCK_ELEMENTS = 1 << 22


def _block_rows(input: Array, ax: int, *, xp: Namespace) -> int | None:
    """Rows per block of the blocked backward (None: not blocked, as under
    ``xce.config(enabled=False)``); ``xce.config(block_rows=)`` when set. Rows are the
    positions of ``(R, C)`` when the classes are the last axis, else slices along axis 0."""
    opts = _engine._options()
    if input.ndim < 2 or ax == 0 or opts.get("enabled") is False:
        return None
    rows = opts.get("block_rows")
    if rows is not None:
        return rows
    per_row = input.shape[-1] if ax == input.ndim - 1 else math.prod(input.shape[1:])
    itemsize = xp.finfo(compute_dtype(input.dtype, xp=xp)).bits // 8
    elements = _BLOCK_ELEMENTS
    if _engine.on_accelerator(input):  # a GPU: the engine's GPU block size
        elements = max(elements, _engine.block_bytes(input) // itemsize)
    return max(1, elements // max(per_row, 1))


def _rows(s: Array | float, i0: int, i1: int) -> Array | float:
    return s if isinstance(s, float) or s.ndim == 0 else s[i0:i1, ...]


def _ce_blocked(
    input: Array, target: Array, index: _Index | None, w: Array | None, eps: float, ax: int, z: float,
    s: Array | float, s_z: Array | float, lse: Array | None, dtype: Any, *, xp: Namespace,
) -> Array:
    """The cross-entropy gradient written block by block into one array of ``input``'s shape.

    Classes on the last axis: ``input`` is viewed as ``(R, C)``; otherwise blocks are slices
    along axis 0. Each block is formed in place, in the result's own block (compute dtype ==
    input dtype) or in one reused compute-dtype buffer (half precision), with ``out=`` where
    the library has it: ``a·p`` with ``p = exp(x - lse)`` and ``a`` the per-row coefficient
    (one exp pass, ``exp(x - (lse - log a))``, when every ``a > 0`` and ``lse`` was saved),
    then ``-c`` at the target positions only (no one-hot), the smoothing term, and zeros at
    dropped rows. Probability targets use a second buffer for ``q``.
    """
    shape = tuple(input.shape)
    last = ax == input.ndim - 1
    n_classes = shape[ax]
    if last:  # (R, C): per-position arrays flattened to (R,)
        n_rows = math.prod(shape[:-1])
        x = xp.reshape(input, (n_rows, n_classes))

        def flat(a: Any) -> Any:
            return a if a is None or isinstance(a, float) or a.ndim == 0 else xp.reshape(a, (n_rows,))

        t = None if index is not None else xp.reshape(target, (n_rows, n_classes))
        index = None if index is None else _Index(*(flat(a) for a in index))
        s, s_z = flat(s), flat(s_z)
        lse = None if lse is None else xp.reshape(lse, (n_rows, 1))
        cax = 1
    else:
        n_rows, x, t, cax = shape[0], input, target, ax
    rows = max(1, min(_block_rows(input, ax, xp=xp) or n_rows, n_rows))
    device = device_of(input)
    out = xp.empty(tuple(x.shape), dtype=input.dtype, device=device)
    inplace = writes_into(input)
    direct = inplace and dtype == input.dtype  # the result's block is the buffer
    buffers: dict[str, Array] = {}

    def buffer(name: str, n: int) -> Array | None:
        """A reused compute-dtype block (None where the library has no ``out=``)."""
        if not inplace:
            return None
        b = buffers.get(name)
        if b is None:
            b = buffers[name] = xp.empty((rows, *x.shape[1:]), dtype=dtype, device=device)
        return b if n == rows else b[:n, ...]

    w_c = None if w is None else _broadcast_classes(w, x.ndim, cax, xp=xp)
    if index is not None:
        w_sum = float(n_classes) if w is None else xp.sum(w)
        loop = last and n_classes >= _LOOP_CLASSES and not _engine.on_accelerator(input)
        classes = None
        if not loop:
            cshape = [1] * x.ndim
            cshape[cax] = n_classes
            classes = xp.reshape(xp.arange(n_classes, dtype=index.safe.dtype, device=device), tuple(cshape))
    for i0 in range(0, n_rows, rows):
        i1 = min(i0 + rows, n_rows)
        xb, ob = x[i0:i1, ...], out[i0:i1, ...]
        gb = ob if direct else buffer("g", i1 - i0)
        sb, szb = _rows(s, i0, i1), _rows(s_z, i0, i1)
        lse_b = None if lse is None else lse[i0:i1, ...]
        fresh = lse_b is None  # no saved lse: the softmax (and lse) of the block first
        if fresh:
            gb, lse_b = _softmax_into(gb, xb, None, cax, dtype, xp=xp)
        if index is None:  # probability targets: q = w ⊙ ((1-ε) y + ε/C)
            qb = write_into("multiply", buffer("q", i1 - i0), t[i0:i1, ...], 1.0 - eps, xp=xp)
            if qb.dtype != dtype:  # no out=: the product kept the target's dtype
                qb = xp.astype(qb, dtype)
            if eps > 0.0:
                qb = write_into("add", qb, qb, eps / n_classes, xp=xp)
            if w_c is not None:
                qb = write_into("multiply", qb, qb, w_c, xp=xp)
            coef = xp.sum(qb, axis=cax)
            if z > 0.0:
                coef = coef + 2.0 * z * xp.squeeze(lse_b, axis=cax)
            gb = _scaled_softmax_into(gb, xb, None if fresh else lse_b, _expand(sb * coef, cax, xp=xp), cax, dtype,
                                      xp=xp)
            if not (isinstance(sb, float) and sb == 1.0):
                qb = write_into("multiply", qb, qb, _expand(sb, cax, xp=xp), xp=xp)
            gb = write_into("subtract", gb, gb, qb, xp=xp)
        else:
            safe = index.safe[i0:i1, ...]
            w_y = None if w is None else _gather_weight(w, safe, xp=xp)
            wy = 1.0 if w_y is None else w_y
            coef_p = (1.0 - eps) * wy
            if eps > 0.0:
                coef_p = coef_p + (eps / n_classes) * w_sum
            coef_p = sb * coef_p
            if z > 0.0:
                coef_p = coef_p + szb * (2.0 * z) * xp.squeeze(lse_b, axis=cax)
            gb = _scaled_softmax_into(gb, xb, None if fresh else lse_b, _expand(coef_p, cax, xp=xp), cax, dtype,
                                      xp=xp)
            gb = _subtract_at(gb, safe, sb * (1.0 - eps) * wy, classes, cax, xp=xp)
            if eps > 0.0:
                sb_c = _expand(sb, cax, xp=xp)
                if w_c is None or isinstance(sb_c, float) or sb_c.ndim == 0:
                    u = sb_c * (eps / n_classes) if w_c is None else sb_c * ((eps / n_classes) * w_c)
                else:  # per-row scale times per-class weight: a block, formed in a second buffer
                    u = write_into("multiply", buffer("u", i1 - i0), sb_c, (eps / n_classes) * w_c, xp=xp)
                gb = write_into("subtract", gb, gb, u, xp=xp)
            gb = _zero_dropped(gb, index, i0, i1, cax, xp=xp)
        if gb is not ob:
            out[i0:i1, ...] = gb if inplace else _to_input(gb, xb, xp=xp)
    return out if tuple(out.shape) == shape else xp.reshape(out, shape)


# Classes per row from which the target positions of a CPU block are assigned one row at a
# time (a few µs each) rather than through a block-sized boolean mask (two passes over it).
_LOOP_CLASSES = 4096


def _softmax_into(
    buf: Array | None, x: Array, lse: Array | None, ax: int, dtype: Any, *, xp: Namespace
) -> tuple[Array, Array]:
    """``(softmax(x), logsumexp(x))`` along ``ax`` (kept), the softmax written into ``buf``
    (``buf`` None: allocated); as :func:`_softmax_and_lse`, reusing a saved ``lse``."""
    if lse is not None:
        buf = write_into("subtract", buf, x, lse, xp=xp)
        return write_into("exp", buf, buf, xp=xp), lse
    m = finite_max(x, ax, xp=xp)  # exact in half precision: taken before the upcast
    if m.dtype != dtype:
        m = xp.astype(m, dtype)
    buf = write_into("subtract", buf, x, m, xp=xp)
    if buf.dtype != dtype:
        buf = xp.astype(buf, dtype)
    buf = write_into("exp", buf, buf, xp=xp)
    total = xp.sum(buf, axis=ax, keepdims=True)
    some = total > 0.0  # False only for an all -inf slice (its loss is inf, or 0 if ignored)
    safe = xp.where(some, total, 1.0)
    return write_into("divide", buf, buf, safe, xp=xp), xp.where(some, xp.log(safe) + m, -float("inf"))


def _scaled_softmax_into(
    buf: Array | None, x: Array, lse: Array | None, a: Array | float, ax: int, dtype: Any, *, xp: Namespace
) -> Array:
    """``a · softmax(x)`` into ``buf``. ``lse`` None: ``buf`` already holds the softmax (from
    :func:`_softmax_into`). With a saved ``lse`` and ``a > 0`` in every row the scale enters
    the exponent, ``exp(x - (lse - log a))``: one pass over the block fewer."""
    if lse is not None:
        positive = a > 0.0 if isinstance(a, float) else bool(xp.all(a > 0.0))
        if positive:
            shift = lse - (math.log(a) if isinstance(a, float) else xp.log(a))
            buf = write_into("subtract", buf, x, shift, xp=xp)
            return write_into("exp", buf, buf, xp=xp)
        buf, _ = _softmax_into(buf, x, lse, ax, dtype, xp=xp)
    return write_into("multiply", buf, buf, a, xp=xp)


def _subtract_at(
    g: Array, index: Array, c: Array | float, classes: Array | None, ax: int, *, xp: Namespace
) -> Array:
    """``g - c·onehot(index)`` along ``ax``, changing only the target positions.

    The standard has no scatter. ``classes`` None (classes on the last axis, many of them):
    the targets are gathered, shifted and assigned back one row at a time, a few µs per row
    against two passes over the row's C elements. Otherwise a boolean mask (1 byte per
    element) selects them: boolean assignment takes values in row-major order, which is the
    order of the gathered targets when the classes are the last axis; else ``c`` is put in
    that order by indexing its broadcast with the same mask.
    """
    if ax == g.ndim - 1:
        picked = take_along_class_axis(g, index, ax, xp=xp) - c
        if classes is None:
            for k in range(g.shape[0]):
                g[k, int(index[k])] = picked[k]
        else:
            g[xp.expand_dims(index, axis=ax) == classes] = xp.reshape(picked, (-1,))
        return g
    mask = xp.expand_dims(index, axis=ax) == classes
    c_all = xp.broadcast_to(xp.asarray(c, dtype=g.dtype, device=device_of(g)) if isinstance(c, float) else
                            _expand(c, ax, xp=xp), tuple(g.shape))
    g[mask] = g[mask] - c_all[mask]
    return g


def _zero_dropped(g: Array, index: _Index, i0: int, i1: int, ax: int, *, xp: Namespace) -> Array:
    """Zero the gradient at ignored (and, lazily, out-of-range) positions of rows i0:i1
    (assigned, so non-finite logits in a dropped row cannot leak NaN)."""
    drop = index.ignored if index.invalid is None else index.invalid if index.ignored is None else (
        index.ignored | index.invalid)
    if drop is None:
        return g
    drop = drop[i0:i1, ...]
    if bool(xp.any(drop)):
        g[drop if ax == g.ndim - 1 else xp.broadcast_to(xp.expand_dims(drop, axis=ax), tuple(g.shape))] = 0.0
    return g


def _ce_block(
    input: Array, target: Array | None, index: _Index | None, w: Array | None, eps: float, ax: int, z: float,
    s: Array | float, s_z: Array | float, lse: Array | None, *, xp: Namespace,
) -> Array:
    """Cross-entropy gradient of a block of rows, given the per-position scales."""
    work = as_compute(input, xp=xp)
    p, lse = _softmax_and_lse(work, ax, lse, xp=xp)
    n_classes = work.shape[ax]
    lse_r = xp.squeeze(lse, axis=ax)
    if index is None:
        q = xp.astype(target, work.dtype)
        if eps > 0.0:
            q = (1.0 - eps) * q + eps / n_classes
        if w is not None:
            q = q * _broadcast_classes(w, work.ndim, ax, xp=xp)
        coef = xp.sum(q, axis=ax)
        if z > 0.0:
            coef = coef + 2.0 * z * lse_r
        # Zero-mass classes at -inf logits: p = 0 and q = 0, so g is 0 there already.
        return _expand(s * coef, ax, xp=xp) * p - _expand(s, ax, xp=xp) * q

    w_y = None if w is None else _gather_weight(w, index.safe, xp=xp)
    wy = 1.0 if w_y is None else w_y
    coef_p = (1.0 - eps) * wy
    if eps > 0.0:
        coef_p = coef_p + (eps / n_classes) * (float(n_classes) if w is None else xp.sum(w))
    coef_p = s * coef_p
    if z > 0.0:
        coef_p = coef_p + s_z * (2.0 * z) * lse_r
    onehot = _one_hot(index.safe, work, ax, xp=xp)
    g = _expand(coef_p, ax, xp=xp) * p - _expand(s * (1.0 - eps) * wy, ax, xp=xp) * onehot
    if eps > 0.0:
        u = eps / n_classes if w is None else (eps / n_classes) * _broadcast_classes(w, work.ndim, ax, xp=xp)
        g = g - _expand(s, ax, xp=xp) * u
    return _mask_rows(g, index, ax, xp=xp)


def nll_loss_grad(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    axis: int | None = None,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.nll_loss`: :math:`-s_i\,w_{y_i}\,e_{y_i}` (0 at ignored positions).

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.nll_loss_grad(np.zeros((2, 2)), np.asarray([1, 0])).tolist()
    [[0.0, -0.5], [-0.5, 0.0]]
    """
    xp = namespace(_NAMES, input, target, weight, cotangent, xp=xp)
    reduction = check_reduction(reduction)
    ignore_index = check_integer(ignore_index, "ignore_index")
    ax = class_axis(input, axis)
    check_floating(input, "input", xp=xp)
    n_classes = check_classes(input, ax)
    lazy = is_lazy(input)
    check_weight(weight, n_classes, input, xp=xp, lazy=lazy)
    check_index_target(target, input, ax, xp=xp, lazy=lazy)
    work = as_compute(input, xp=xp)
    index = _prepare_index(target, n_classes, ignore_index, xp=xp, lazy=lazy)
    w_y = None if weight is None else _gather_weight(xp.astype(weight, work.dtype), index.safe, xp=xp)
    s = _scale(cotangent, reduction, index.safe, _denominator(w_y, index, xp=xp), work.dtype, xp=xp)
    coef = -s if w_y is None else -s * w_y
    g = _expand(coef, ax, xp=xp) * _one_hot(index.safe, work, ax, xp=xp) + 0.0  # + 0.0: no -0.0 off target
    g = xp.broadcast_to(g, work.shape) if tuple(g.shape) != tuple(work.shape) else g
    return _to_input(_mask_rows(g, index, ax, xp=xp), input, xp=xp)


def softmax_focal_loss_grad(
    input: Array,
    target: Array,
    gamma: float = 2.0,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    axis: int | None = None,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.softmax_focal_loss`.

    With :math:`u = 1 - p_y`: :math:`s_i w_{y_i} f'(\ell_y)(e_{y_i} - p)`,
    :math:`f' = -u^\gamma + \gamma\,p_y\,\ell_y\,u^{\gamma-1}` (the second term 0 where u = 0).

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.softmax_focal_loss_grad(np.zeros((1, 2)), np.asarray([0]), gamma=0.0).tolist()
    [[-0.5, 0.5]]
    """
    xp = namespace(_NAMES, input, target, weight, cotangent, xp=xp)
    reduction = check_reduction(reduction)
    gamma = check_real(gamma, "gamma", minimum=0.0)

    def d_loss(log_p: Array, p_y: Array) -> Array:
        u = -xp.expm1(log_p)
        u = xp.where(u > 0.0, u, 0.0)
        d = -(u**gamma)
        if gamma > 0.0:
            safe = xp.where(u > 0.0, u, 1.0)
            d = d + xp.where(u > 0.0, gamma * p_y * log_p * safe ** (gamma - 1.0), 0.0)
        return d

    return _target_prob_grad(input, target, weight, ignore_index, reduction, axis, cotangent, d_loss,
                             "softmax_focal_loss", xp=xp)


def poly1_cross_entropy_grad(
    input: Array,
    target: Array,
    epsilon: float = 1.0,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    *,
    axis: int | None = None,
    cotangent: Array | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Gradient of :func:`xce.poly1_cross_entropy`: :math:`s_i w_{y_i} (1 + \varepsilon p_y)(p - e_{y_i})`.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.grad.poly1_cross_entropy_grad(np.zeros((1, 2)), np.asarray([0]), epsilon=0.0).tolist()
    [[-0.5, 0.5]]
    """
    xp = namespace(_NAMES, input, target, weight, cotangent, xp=xp)
    reduction = check_reduction(reduction)
    epsilon = check_real(epsilon, "epsilon")
    return _target_prob_grad(input, target, weight, ignore_index, reduction, axis, cotangent,
                             lambda log_p, p_y: -1.0 - epsilon * p_y, "poly1_cross_entropy", xp=xp)


def _target_prob_grad(
    input: Array, target: Array, weight: Array | None, ignore_index: int, reduction: str, axis: int | None,
    cotangent: Array | None, d_loss: Callable[[Array, Array], Array], name: str, *, xp: Namespace,
) -> Array:
    """Gradient of ``w_y f(log p_y)`` losses: ``s w_y f'(log p_y) (e_y - p)``."""
    ignore_index = check_integer(ignore_index, "ignore_index")
    ax = class_axis(input, axis)
    check_floating(input, "input", xp=xp)
    n_classes = check_classes(input, ax)
    lazy = is_lazy(input)
    check_weight(weight, n_classes, input, xp=xp, lazy=lazy)
    if tuple(target.shape) == tuple(input.shape):
        raise ValueError(f"{name} takes class-index targets (input's shape without the class axis); got a target "
                         f"of input's shape {tuple(input.shape)}.")
    check_index_target(target, input, ax, xp=xp, lazy=lazy)
    work = as_compute(input, xp=xp)
    index = _prepare_index(target, n_classes, ignore_index, xp=xp, lazy=lazy)
    p, lse = _softmax_and_lse(work, ax, None, xp=xp)
    onehot = _one_hot(index.safe, work, ax, xp=xp)
    log_p = take_along_class_axis(work, index.safe, ax, xp=xp) - xp.squeeze(lse, axis=ax)
    p_y = xp.exp(log_p)
    w_y = None if weight is None else _gather_weight(xp.astype(weight, work.dtype), index.safe, xp=xp)
    s = _scale(cotangent, reduction, log_p, _denominator(w_y, index, xp=xp), work.dtype, xp=xp)
    coef = s * d_loss(log_p, p_y)
    if w_y is not None:
        coef = coef * w_y
    g = _expand(coef, ax, xp=xp) * (onehot - p)
    return _to_input(_mask_rows(g, index, ax, xp=xp), input, xp=xp)


# --- binary losses ---------------------------------------------------------------------------


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
    xp = namespace(_NAMES, input, target, weight, cotangent, xp=xp)
    reduction = check_reduction(reduction)
    eps = check_fraction(label_smoothing, "label_smoothing")
    lazy = is_lazy(input)
    work, y = _binary._prepare(input, target, eps, xp=xp, lazy=lazy)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    if not lazy:
        check_values_in(input, 0.0, 1.0, "input", xp=xp)
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
    reduction = check_reduction(reduction)
    eps = check_fraction(label_smoothing, "label_smoothing")
    lazy = is_lazy(input)
    work, y = _binary._prepare(input, target, eps, xp=xp, lazy=lazy)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    check_broadcastable(pos_weight, input, "pos_weight", xp=xp, lazy=lazy)
    sig = _sigmoid(work, xp=xp)
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
    xp = namespace(_NAMES, input, target, weight, cotangent, xp=xp)
    reduction = check_reduction(reduction)
    if input.ndim == 0:
        raise ValueError("input must have a class axis (the last one); got a 0-d array. Pass shape (C,) or (N, C).")
    lazy = is_lazy(input)
    work, y = _binary._prepare(input, target, 0.0, xp=xp, lazy=lazy)
    n_classes = check_classes(input, input.ndim - 1)
    check_broadcastable(weight, input, "weight", xp=xp, lazy=lazy)
    g = (_sigmoid(work, xp=xp) - y) / n_classes
    if weight is not None:
        g = xp.astype(weight, work.dtype) * g
    s = _scale(cotangent, reduction, work[..., 0], None, work.dtype, xp=xp)
    return _to_input(_expand(s, -1, xp=xp) * g, input, xp=xp)


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
    alpha = _binary.check_alpha(alpha)
    gamma = check_real(gamma, "gamma", minimum=0.0)
    work, y = _binary._prepare(input, target, 0.0, xp=xp, lazy=is_lazy(input))
    bce = _binary.logistic_loss(work, y, None, xp=xp)
    sig, sig_neg = _sigmoid(work, xp=xp), _sigmoid(-work, xp=xp)
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


def _softmax_and_lse(work: Array, ax: int, lse: Array | None, *, xp: Namespace) -> tuple[Array, Array]:
    """``(softmax(work), logsumexp(work))`` along ``ax`` (kept), reusing a saved ``lse``."""
    if lse is None:
        m = finite_max(work, ax, xp=xp)
        e = xp.exp(work - m)
        total = xp.sum(e, axis=ax, keepdims=True)
        some = total > 0.0  # False only for an all -inf slice (its loss is inf, or 0 if ignored)
        safe = xp.where(some, total, 1.0)
        return e / safe, xp.where(some, xp.log(safe) + m, -float("inf"))
    return xp.exp(work - lse), lse


def _scale(cotangent: Array | None, reduction: str, per_position: Array, denominator: Array | None, dtype: Any,
           *, xp: Namespace) -> Array | float:
    """Per-position factor ``s`` with ``d(reduced loss) = sum_i s_i d l_i``, times the cotangent."""
    g: Array | float = 1.0 if cotangent is None else xp.astype(cotangent, dtype)
    if reduction != "mean":
        return g
    if denominator is None:
        count = 1
        for n in per_position.shape:
            count *= n
        den = xp.asarray(float(count), dtype=dtype, device=device_of(per_position))
    else:
        den = xp.astype(xp.sum(denominator), dtype)
    return g / den


def _expand(coef: Array | float, ax: int, *, xp: Namespace) -> Array | float:
    """A per-position factor with the class axis put back (scalars pass through)."""
    if isinstance(coef, float) or coef.ndim == 0:
        return coef
    return xp.expand_dims(coef, axis=ax)


def _one_hot(index: Array, like: Array, ax: int, *, xp: Namespace) -> Array:
    """One-hot of ``index`` along ``ax`` of ``like``, in ``like``'s dtype."""
    shape = [1] * like.ndim
    shape[ax] = like.shape[ax]
    classes = xp.reshape(xp.arange(like.shape[ax], dtype=index_dtype(xp), device=device_of(like)), tuple(shape))
    return xp.astype(xp.expand_dims(index, axis=ax) == classes, like.dtype)


def _mask_rows(g: Array, index: _Index, ax: int, *, xp: Namespace) -> Array:
    """Zero gradient at ignored (and, lazily, out-of-range) positions; ``where`` so that
    non-finite logits in a dropped row cannot leak NaN."""
    drop = index.ignored if index.invalid is None else index.invalid if index.ignored is None else (
        index.ignored | index.invalid)
    if drop is None:
        return g
    return xp.where(xp.expand_dims(drop, axis=ax), 0.0, g)


def _broadcast_classes(w: Array, ndim: int, ax: int, *, xp: Namespace) -> Array:
    """Per-class ``w`` shaped to broadcast along class axis ``ax`` of an ``ndim``-d array."""
    shape = [1] * ndim
    shape[ax] = w.shape[0]
    return xp.reshape(w, tuple(shape))


def _sigmoid(x: Array, *, xp: Namespace) -> Array:
    """σ(x) = exp(-softplus(-x)): never overflows, accurate in both tails."""
    return xp.exp(-_binary.softplus(-x, xp=xp))


def _finish_elementwise(g: Array, weight: Array | None, reduction: str, cotangent: Array | None, input: Array, *,
                        xp: Namespace) -> Array:
    if weight is not None:
        g = xp.astype(weight, g.dtype) * g
    s = _scale(cotangent, reduction, g, None, g.dtype, xp=xp)
    return _to_input(s * g, input, xp=xp)


def _to_input(g: Array, input: Array, *, xp: Namespace) -> Array:
    if tuple(g.shape) != tuple(input.shape):
        g = xp.broadcast_to(g, tuple(input.shape))
    return g if g.dtype == input.dtype else xp.astype(g, input.dtype)


register(_cls.cross_entropy, cross_entropy_grad)
register(_cls.nll_loss, nll_loss_grad)
register(_cls.softmax_focal_loss, softmax_focal_loss_grad)
register(_cls.poly1_cross_entropy, poly1_cross_entropy_grad)
register(_binary.binary_cross_entropy, binary_cross_entropy_grad)
register(_binary.binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_grad)
register(_binary.multilabel_soft_margin_loss, multilabel_soft_margin_loss_grad)
register(_binary.sigmoid_focal_loss, sigmoid_focal_loss_grad)

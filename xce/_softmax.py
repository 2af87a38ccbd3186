"""Numerically stable ``logsumexp``, ``log_softmax`` and ``softmax``.

All three shift by the maximum before exponentiating. A slice whose maximum is not
finite (all ``-inf``, or containing ``+inf``) is shifted by 0 instead, so that
``inf - inf`` never manufactures a NaN: ``logsumexp`` of an all ``-inf`` slice is
``-inf``, as in SciPy and PyTorch. Half-precision inputs are accumulated in float32
and the result is returned in the input's dtype.
"""

from __future__ import annotations

from ._namespace import Array, Namespace, as_compute, device_of, namespace
from ._validate import check_axes, check_floating

__all__ = ["log_softmax", "logsumexp", "softmax"]


def finite_max(x: Array, axis: int | tuple[int, ...] | None, *, xp: Namespace) -> Array:
    """Max over ``axis`` (kept), replaced by 0 where it is not finite."""
    if 0 in x.shape:  # an empty batch: no max to take (Dask's max refuses empty chunks)
        axes = range(x.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
        shape = tuple(1 if i in {a % x.ndim for a in axes} else n for i, n in enumerate(x.shape))
        return xp.zeros(shape, dtype=x.dtype, device=device_of(x))
    m = xp.max(x, axis=axis, keepdims=True)
    return xp.where(xp.isfinite(m), m, 0.0)


def shifted_logsumexp(x: Array, axis: int, *, xp: Namespace) -> tuple[Array, Array]:
    """``(x - m, log(sum(exp(x - m))))`` with ``m`` the finite max over ``axis`` (kept).

    Returning the shifted logits lets callers compute ``log_softmax = shifted - lse``
    and the target logit without redoing the subtraction.
    """
    shifted = x - finite_max(x, axis, xp=xp)
    return shifted, xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def logsumexp(
    x: Array, /, *, axis: int | tuple[int, ...] | None = None, keepdims: bool = False, xp: Namespace | None = None
) -> Array:
    r"""Stable :math:`\log \sum_i \exp x_i` over ``axis`` (all axes when ``None``).

    Computed as :math:`m + \log \sum_i \exp(x_i - m)` with :math:`m` the maximum, so it
    neither overflows for large logits nor returns NaN for a slice of ``-inf``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> float(xce.logsumexp(np.asarray([1000.0, 1000.0])))  # doctest: +ELLIPSIS
    1000.693...
    """
    xp = namespace(("x",), x, xp=xp)
    check_floating(x, "x", xp=xp)
    axis = check_axes(x, axis)
    work = as_compute(x, xp=xp)
    m = finite_max(work, axis, xp=xp)
    out = xp.log(xp.sum(xp.exp(work - m), axis=axis, keepdims=True)) + m
    if not keepdims:
        axes = tuple(range(x.ndim)) if axis is None else (axis,) if isinstance(axis, int) else axis
        out = xp.squeeze(out, axis=tuple(a % x.ndim for a in axes)) if x.ndim else out
    return xp.astype(out, x.dtype) if out.dtype != x.dtype else out


def log_softmax(x: Array, /, *, axis: int = -1, xp: Namespace | None = None) -> Array:
    r"""Stable :math:`x_i - \log \sum_j \exp x_j` along ``axis``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> np.round(xce.log_softmax(np.asarray([0.0, 0.0])), 4)
    array([-0.6931, -0.6931])
    """
    xp = namespace(("x",), x, xp=xp)
    check_floating(x, "x", xp=xp)
    axis = check_axes(x, axis)
    work = as_compute(x, xp=xp)
    shifted, lse = shifted_logsumexp(work, axis, xp=xp)
    out = shifted - lse
    return xp.astype(out, x.dtype) if out.dtype != x.dtype else out


def softmax(x: Array, /, *, axis: int = -1, xp: Namespace | None = None) -> Array:
    r"""Stable :math:`\exp x_i / \sum_j \exp x_j` along ``axis``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> xce.softmax(np.asarray([0.0, 0.0]))
    array([0.5, 0.5])
    """
    xp = namespace(("x",), x, xp=xp)
    check_floating(x, "x", xp=xp)
    axis = check_axes(x, axis)
    work = as_compute(x, xp=xp)
    e = xp.exp(work - finite_max(work, axis, xp=xp))
    out = e / xp.sum(e, axis=axis, keepdims=True)
    return xp.astype(out, x.dtype) if out.dtype != x.dtype else out

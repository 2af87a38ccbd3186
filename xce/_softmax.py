"""Numerically stable ``logsumexp``, ``log_softmax`` and ``softmax``.

All three shift by the maximum before exponentiating. A slice whose maximum is not
finite (all ``-inf``, or containing ``+inf``) is shifted by 0 instead, so that
``inf - inf`` never manufactures a NaN: ``logsumexp`` of an all ``-inf`` slice is
``-inf``, as in SciPy and PyTorch. Half-precision inputs are accumulated in float32
and the result is returned in the input's dtype. The shift is a constant of
differentiation (:func:`constant`): the value does not depend on it, and neither does the
derivative, which autodiff through ``max`` would otherwise perturb at each argmax.
"""

from __future__ import annotations

from typing import Any, cast

from ._namespace import Array, Namespace, as_compute, as_dtype, device_of, namespace, on_input_device, write_into
from ._registry import adapter_hook
from ._validate import check_axes, check_floating

__all__ = ["constant", "finite_max", "finite_or_zero", "log_softmax", "logsumexp", "shift_and_logsumexp",
           "shifted_logsumexp", "softmax", "softmax_and_lse"]


def finite_max(x: Array, axis: int | tuple[int, ...] | None, *, xp: Namespace) -> Array:
    """Max over ``axis`` (kept), replaced by 0 where it is not finite: a shift, constant under
    autodiff (:func:`finite_or_zero`)."""
    if 0 in x.shape:  # an empty batch: no max to take (Dask's max refuses empty chunks)
        axes = range(x.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
        shape = tuple(1 if i in {a % x.ndim for a in axes} else n for i, n in enumerate(x.shape))
        return xp.zeros(shape, dtype=x.dtype, device=device_of(x))
    return finite_or_zero(xp.max(x, axis=axis, keepdims=True), xp=xp)


def finite_or_zero(m: Array, *, xp: Namespace) -> Array:
    """A maximum made fit to shift by: ``m`` where finite, else 0 (so ``inf - inf`` never
    manufactures a NaN), and a constant of differentiation (:func:`constant`). The one shift
    rule of xce (softmax, engine, vocab-parallel)."""
    return constant(xp.where(xp.isfinite(m), m, 0.0))


def constant(x: Array) -> Array:
    """``x`` cut from autodiff where its library has one (PyTorch's ``detach``, JAX's
    ``stop_gradient``; other libraries: ``x`` itself).

    For a shift: ``m + log Σ_c exp(x_c - m)`` does not depend on ``m``, so its derivative in
    ``m`` is 0 exactly, but differentiated it is ``1 - Σ_c p_c``, the rounding error of the
    softmax's sum, and that lands on the argmax entry of the gradient (through ``max``): in
    float32 a relative error of up to ~3e-5 there instead of ~1e-7 (the gradient of
    ``cross_entropy(..., return_stats=True)``, ``logsumexp``, ``log_softmax``). Constant, the
    shift leaves the derivative exact, to every order."""
    stop = adapter_hook(x, "stop_gradient")
    return x if stop is None else stop(x)


def softmax_and_lse(x: Array, axis: int, *, lse: Array | None = None, out: Array | None = None, dtype: Any = None,
                    xp: Namespace) -> tuple[Array, Array]:
    """``(softmax(x), logsumexp(x))`` along ``axis`` (kept), in ``dtype`` (default ``x``'s).

    ``lse`` given (saved by a forward pass): ``exp(x - lse)``, one pass. ``out``: a buffer of
    ``x``'s shape in ``dtype`` to write the softmax into (where the library takes ``out=``).
    An all ``-inf`` slice has ``lse = -inf`` and a zero softmax, never NaN.
    """
    if lse is not None:
        out = write_into("subtract", out, x, lse, xp=xp)
        return write_into("exp", out, out, xp=xp), lse
    m = finite_max(x, axis, xp=xp)  # exact in half precision: taken before the upcast
    if dtype is not None:
        m = as_dtype(m, dtype, xp=xp)
    out = write_into("subtract", out, x, m, xp=xp)
    if dtype is not None:
        out = as_dtype(out, dtype, xp=xp)
    out = write_into("exp", out, out, xp=xp)
    total = xp.sum(out, axis=axis, keepdims=True)
    some = total > 0.0  # False only for an all -inf slice (its loss is inf, or 0 if ignored)
    safe = xp.where(some, total, 1.0)
    return write_into("divide", out, out, safe, xp=xp), xp.where(some, xp.log(safe) + m, -float("inf"))


def shifted_logsumexp(x: Array, axis: int, *, xp: Namespace) -> tuple[Array, Array]:
    """``(x - m, log(sum(exp(x - m))))`` with ``m`` the finite max over ``axis`` (kept).

    Returning the shifted logits lets callers compute ``log_softmax = shifted - lse``
    and the target logit without redoing the subtraction.
    """
    shifted, _, lse = shift_and_logsumexp(x, axis, xp=xp)
    return shifted, lse


def shift_and_logsumexp(x: Array, axis: int, *, xp: Namespace) -> tuple[Array, Array, Array]:
    """:func:`shifted_logsumexp` with the shift ``m`` too: ``(x - m, m, lse)``; ``m + lse`` is
    the logsumexp itself (what a backward pass saves to skip the reductions)."""
    m = finite_max(x, axis, xp=xp)
    shifted = x - m
    return shifted, m, xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


@on_input_device
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


@on_input_device
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
    axis = cast(int, check_axes(x, axis))  # an int in, an int out
    work = as_compute(x, xp=xp)
    shifted, lse = shifted_logsumexp(work, axis, xp=xp)
    out = shifted - lse
    return xp.astype(out, x.dtype) if out.dtype != x.dtype else out


@on_input_device
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
    axis = cast(int, check_axes(x, axis))  # an int in, an int out
    work = as_compute(x, xp=xp)
    e = xp.exp(work - finite_max(work, axis, xp=xp))
    out = e / xp.sum(e, axis=axis, keepdims=True)
    return xp.astype(out, x.dtype) if out.dtype != x.dtype else out

"""Argument checks. Every message names the argument, what was received and what to do.

Shape and dtype checks run on every backend (they are static, so they also raise at
``jax.jit`` trace time and at Dask graph-build time). Checks that need array values run
only on eager arrays; see :func:`xce._namespace.is_lazy`.
"""

from __future__ import annotations

import math
import operator
from typing import Any, cast

import array_api_compat

from ._namespace import Array, Namespace, device_of, has_values, same_device

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: object, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}; got {reduction!r}.")
    return reduction


def _as_float(value: object, name: str, what: str, traced: bool = False) -> Any:
    """``value`` as a Python float: numbers and 0-d arrays with a concrete value; ``what``
    describes the expected value in the messages. ``traced``: a 0-d traced array (a JAX
    tracer under ``jit``) is accepted and returned as it is."""
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
        raise TypeError(f"{name} must be a float{what}; got {type(value).__name__} {value!r}.")
    try:
        return float(value)
    except TypeError as e:  # a traced array
        if traced and getattr(value, "ndim", None) == 0:
            return value
        hint = "" if traced else f"; under jax.jit pass it as a static argument (static_argnames=('{name}',))"
        raise TypeError(f"{name} must be a Python float{what}, not an array{hint}.") from e


def lazy_range(value: Any, ok: Any) -> Any:
    """A traced hyper-parameter: NaN where it is out of range (its values are not read)."""
    xp = array_api_compat.array_namespace(value)
    return xp.where(ok, value, float("nan"))


def maybe_nonzero(value: Any) -> bool:
    """False only for a Python number equal to 0: terms of a traced hyper-parameter stay."""
    return not isinstance(value, (int, float)) or value != 0.0


def check_fraction(value: object, name: str, *, traced: bool = False) -> Any:
    """A Python number in [0, 1] (label smoothing and the like); with ``traced`` a 0-d traced
    array is accepted too, NaN where it is out of range."""
    out = _as_float(value, name, " in [0, 1]", traced)
    if not isinstance(out, float):
        return lazy_range(out, (out >= 0.0) & (out <= 1.0))
    if math.isnan(out) or not 0.0 <= out <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}.")
    return out


def check_integer(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer; got bool {value!r}.")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        if hasattr(value, "shape"):  # an array, e.g. a traced value under jax.jit
            raise TypeError(
                f"{name} must be a Python int, not an array ({type(value).__name__}); under jax.jit pass it "
                f"as a static argument (static_argnames=('{name}',))."
            ) from None
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}.") from None


def class_axis(x: Array, axis: int | None, name: str = "input") -> int:
    """Normalise the class axis: ``None`` is PyTorch's rule (0 for 1-D input, else 1)."""
    ndim: int = x.ndim
    if ndim == 0:
        raise ValueError(
            f"{name} must have a class axis; got a 0-d array. Pass logits of shape (C,), (N, C) or "
            "(N, C, d1, ..., dk)."
        )
    if axis is None:
        return 0 if ndim == 1 else 1
    axis = check_integer(axis, "axis")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for {name} with {ndim} dimensions (shape {tuple(x.shape)}).")
    return axis % ndim


def check_floating(x: Array, name: str, *, xp: Namespace) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must be a real floating-point array; got dtype {x.dtype}. Cast it first, e.g. "
            f"xp.astype({name}, xp.float32)."
        )


def check_classes(x: Array, axis: int, name: str = "input") -> int:
    n_classes: int | None = x.shape[axis]
    if n_classes is None or n_classes != n_classes:  # a symbolic dimension (None; NaN in Dask)
        raise ValueError(
            f"{name}'s class axis {axis} has no known length (shape {tuple(x.shape)}); xce needs the number of "
            "classes when the graph is built (label smoothing's ε/C, class ids, weights). Give that dimension a "
            "fixed size, e.g. ndx.argument(shape=('N', 1000), ...); other dimensions may stay symbolic."
        )
    if n_classes == 0:
        raise ValueError(f"{name} has zero classes along axis {axis} (shape {tuple(x.shape)}); need at least one.")
    return n_classes


def check_same_device(x: Array, other: Array, name: str) -> None:
    if not same_device(x, other):
        dx, do = device_of(x), device_of(other)
        raise ValueError(f"{name} is on device {do} but input is on device {dx}; move it to {dx}.")


def check_weight(weight: Array | None, n_classes: int, x: Array, *, xp: Namespace, lazy: bool) -> None:
    if weight is None:
        return
    if weight.ndim != 1 or weight.shape[0] != n_classes:
        raise ValueError(
            f"weight must be a 1-D array with one entry per class, shape ({n_classes},); got shape "
            f"{tuple(weight.shape)}."
        )
    check_floating(weight, "weight", xp=xp)
    if not lazy:
        check_same_device(x, weight, "weight")


def check_index_target(target: Array, x: Array, axis: int, *, xp: Namespace, lazy: bool) -> None:
    expected = tuple(x.shape[:axis]) + tuple(x.shape[axis + 1 :])
    if tuple(target.shape) == tuple(x.shape):
        # Only reached from functions without a probability-target path (nll_loss).
        raise ValueError(
            f"target has input's shape {tuple(x.shape)} (class probabilities or one-hot), which this "
            f"function does not accept; pass integer class indices of shape {expected} (dtype "
            f"{target.dtype} received)."
        )
    if xp.isdtype(target.dtype, "real floating"):
        raise ValueError(
            f"a floating-point target must have input's shape {tuple(x.shape)} (class probabilities); "
            f"got shape {tuple(target.shape)}. For class indices use an integer dtype with shape {expected}."
        )
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(
            f"target must hold integer class indices (shape {expected}) or floating-point class "
            f"probabilities (shape {tuple(x.shape)}); got dtype {target.dtype}."
        )
    if tuple(target.shape) != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match input shape {tuple(x.shape)} with the class "
            f"axis {axis} removed; expected {expected}."
        )
    if not lazy:
        check_same_device(x, target, "target")


def check_where(where: Array, per_position: tuple[int, ...], x: Array, *, xp: Namespace, lazy: bool) -> Array:
    """optax's ``where=``: a boolean mask broadcastable to the per-position loss (``input``'s
    shape without the class axis); returned broadcast to that shape."""
    if not xp.isdtype(where.dtype, "bool"):
        raise TypeError(f"where must be a boolean mask (True: the position counts); got dtype {where.dtype}.")
    shape = tuple(where.shape)
    ok = len(shape) <= len(per_position) and all(
        a in (1, b) for a, b in zip(reversed(shape), reversed(per_position)))
    if not ok:
        raise ValueError(
            f"where of shape {shape} does not broadcast to the per-position loss, shape {per_position} (input's "
            "shape without the class axis); a per-class mask is not supported: give masked classes -inf logits."
        )
    if not lazy:
        check_same_device(x, where, "where")
    return where if shape == per_position else xp.broadcast_to(where, per_position)


def check_probability_target(target: Array, x: Array, ignore_index: int, *, xp: Namespace, lazy: bool) -> None:
    if not xp.isdtype(target.dtype, "real floating"):
        raise TypeError(
            f"target has input's shape {tuple(x.shape)}, so it is read as class probabilities and must be "
            f"floating-point; got dtype {target.dtype}. For class indices drop the class axis."
        )
    if ignore_index != -100:
        raise ValueError(
            f"ignore_index={ignore_index} cannot be used with probability targets; give ignored positions "
            "zero probability mass or a zero weight instead."
        )
    if not lazy:
        check_same_device(x, target, "target")


def out_of_range(target: Array, n_classes: int, *, xp: Namespace) -> Array | None:
    """``(target < 0) | (target >= n_classes)``; None where the dtype cannot hold such a value
    (besides saving a pass, comparing a uint8 array with 300 overflows in array-api-strict and
    wraps in PyTorch)."""
    info = xp.iinfo(target.dtype)
    checks = []
    if info.min < 0:
        checks.append(target < 0)
    if info.max >= n_classes:
        checks.append(target >= n_classes)
    if not checks:
        return None
    return checks[0] if len(checks) == 1 else checks[0] | checks[1]


def check_target_range(target: Array, n_classes: int, ignored: Array | None, *, xp: Namespace) -> None:
    """Eager only: every non-ignored index lies in [0, n_classes).

    Comparisons a dtype cannot fail are skipped: besides saving a pass, comparing a uint8
    array with 300 overflows (array-api-strict) or wraps (PyTorch) the Python scalar.
    """
    if not has_values(target) or 0 in tuple(target.shape):
        return
    bad = out_of_range(target, n_classes, xp=xp)
    if bad is None:
        return
    if ignored is not None:
        bad = bad & ~ignored
    if bool(xp.any(bad)):
        value = _first(target, bad, xp=xp)
        raise IndexError(
            f"target contains class index {value}, outside [0, {n_classes - 1}] for {n_classes} classes "
            "(and not equal to ignore_index). Class indices must lie in [0, C); mark positions to skip "
            "with ignore_index."
        )


def check_axes(x: Array, axis: object, name: str = "axis") -> int | tuple[int, ...] | None:
    """Normalise a reduction axis (int, tuple of ints or None) for ``x``; non-negative result.

    Out-of-range or repeated axes raise ``ValueError`` naming the argument on every backend
    (the libraries' own errors differ: ``AxisError``, ``IndexError``, ``RuntimeError``, or
    silently a wrong shape on Dask). A 0-d ``x`` accepts axis 0 and -1, as NumPy and PyTorch do.
    """
    if axis is None:
        return None
    ndim = x.ndim
    span = max(ndim, 1)
    single = not isinstance(axis, tuple)
    axes = (axis,) if single else cast("tuple[object, ...]", axis)
    out = []
    for a in axes:
        a = check_integer(a, name)
        if not -span <= a < span:
            raise ValueError(
                f"{name}={axis} is out of range for an array with {ndim} dimensions (shape {tuple(x.shape)}); "
                f"expected an integer in [{-span}, {span - 1}]."
            )
        out.append(a % span if ndim else a)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axis} repeats an axis (shape {tuple(x.shape)}); list each axis once.")
    return out[0] if single else tuple(out)


def _first(values: Array, mask: Array, *, xp: Namespace) -> Any:
    flat_mask = xp.reshape(mask, (-1,))
    position = int(xp.argmax(xp.astype(flat_mask, xp.int32)))
    return int(xp.reshape(values, (-1,))[position])


# --- checks added for the binary / divergence / label helpers and the loss objects ----------


def check_real(value: object, name: str, *, minimum: float | None = None, hint: str = "", traced: bool = False) -> Any:
    """A finite Python number, at least ``minimum`` when given (focal γ, z-loss, poly ε...);
    with ``traced`` a 0-d traced array is accepted too, NaN where it is out of range."""
    bound = "" if minimum is None else f" >= {minimum}"
    out = _as_float(value, name, bound, traced)
    if not isinstance(out, float):
        xp = array_api_compat.array_namespace(out)
        ok = xp.isfinite(out) if minimum is None else xp.isfinite(out) & (out >= minimum)
        return lazy_range(out, ok)
    if not math.isfinite(out) or (minimum is not None and out < minimum):
        raise ValueError(f"{name} must be a finite float{bound}; got {value!r}.{hint}")
    return out


def check_positive(value: object, name: str, hint: str = "") -> Any:
    """A finite float > 0 (soft cap, temperature...); a 0-d traced array passes, NaN where it
    is not > 0 (the lazy contract: its value is not read)."""
    out = check_real(value, name, traced=True, hint=hint)
    if isinstance(out, float):
        if out <= 0.0:
            raise ValueError(f"{name} must be a finite float > 0; got {value!r}.{hint}")
        return out
    xp = array_api_compat.array_namespace(out)
    return xp.where(out > 0.0, out, float("nan"))


def check_normalizer(normalizer: Any, reduction: str) -> Any:
    """``normalizer=``: None, a number > 0 or a 0-d array (never read: no host sync), with
    ``reduction="mean"`` only (it replaces that reduction's denominator)."""
    if normalizer is None:
        return None
    if reduction != "mean":
        raise ValueError(f"normalizer= replaces the denominator of reduction='mean'; got reduction={reduction!r}. "
                         "Pass reduction='mean' with normalizer, or drop normalizer.")
    if hasattr(normalizer, "shape"):
        if tuple(normalizer.shape) != ():
            raise ValueError(f"normalizer must be a Python number or a 0-d array; got an array of shape "
                             f"{tuple(normalizer.shape)}. Pass e.g. the token count as a 0-d array.")
        return normalizer
    out = check_real(normalizer, "normalizer")
    if out <= 0.0:
        raise ValueError(f"normalizer must be > 0 (the number the summed loss is divided by); got {normalizer!r}.")
    return out


def check_choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
    return value


def check_same_shape(target: Array, x: Array, name: str = "target") -> None:
    if tuple(target.shape) != tuple(x.shape):
        raise ValueError(
            f"{name} must have input's shape {tuple(x.shape)} (one value per element); got shape "
            f"{tuple(target.shape)}."
        )


def check_broadcastable(arr: Array | None, x: Array, name: str, *, xp: Namespace, lazy: bool, hint: str = "") -> None:
    """``arr`` is floating and broadcasts to ``x``'s shape without changing it (elementwise weights)."""
    if arr is None:
        return
    check_floating(arr, name, xp=xp)
    shape = tuple(x.shape)
    ok = arr.ndim <= len(shape) and all(a in (1, s) for a, s in zip(reversed(tuple(arr.shape)), reversed(shape)))
    if not ok:
        raise ValueError(f"{name} of shape {tuple(arr.shape)} does not broadcast to input's shape {shape}.{hint}")
    if not lazy:
        check_same_device(x, arr, name)


def check_values_in(x: Array, low: float, high: float, name: str, *, xp: Namespace, error: type = ValueError,
                    hint: str = "") -> None:
    """Eager only: every value of ``x`` lies in ``[low, high]`` (NaN counts as outside)."""
    bad = ~((x >= low) & (x <= high))
    if bool(xp.any(bad)):
        flat = xp.reshape(bad, (-1,))
        position = int(xp.argmax(xp.astype(flat, xp.int32)))
        value = xp.reshape(x, (-1,))[position]
        value = float(value) if xp.isdtype(x.dtype, "real floating") else int(value)
        raise error(f"{name} must lie in [{low}, {high}]; got {value}.{hint}")


def check_linear_shapes(hidden: Array, weight: Array, target: Array, bias: Array | None, *, xp: Namespace) -> bool:
    """``linear_cross_entropy``: input ``(..., D)``, linear_weight ``(V, D)``, linear_bias ``(V,)``, target
    ``input.shape[:-1]`` (class indices) or ``(*input.shape[:-1], V)`` (floating probabilities).
    Returns True for probability targets."""
    check_floating(hidden, "input", xp=xp)
    check_floating(weight, "linear_weight", xp=xp)
    if hidden.ndim < 1:
        raise ValueError("input must have a feature axis (the last one); got a 0-d array. Pass shape (N, D).")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"linear_weight must have shape (V, D) = (vocabulary, {hidden.shape[-1]}) to match input's last axis; "
            f"got shape {tuple(weight.shape)}. It is the (out_features, in_features) matrix of a linear layer "
            "(K-dimensional linear weights are not supported)."
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(f"input ({hidden.dtype}) and linear_weight ({weight.dtype}) must have the same dtype; "
                        "cast one.")
    if bias is not None:
        check_floating(bias, "linear_bias", xp=xp)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"linear_bias must have shape ({weight.shape[0]},), one entry per class; got "
                             f"{tuple(bias.shape)}.")
    expected = tuple(hidden.shape[:-1])
    probs = (*expected, weight.shape[0])
    if tuple(target.shape) == probs and xp.isdtype(target.dtype, "real floating"):
        return True
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(f"target must hold integer class indices of shape {expected} (or floating class "
                        f"probabilities of shape {probs}); got dtype {target.dtype}, shape {tuple(target.shape)}.")
    if tuple(target.shape) != expected:
        raise ValueError(f"target shape {tuple(target.shape)} does not match input's shape {tuple(hidden.shape)} "
                         f"without its last axis; expected {expected} (class indices) or {probs} (probabilities).")
    return False


def check_mask(where: Array, shape: tuple[int, ...], x: Array, *, xp: Namespace, lazy: bool, loss: str) -> Array:
    """``where=`` of a loss whose unreduced shape is ``shape`` (``loss`` names that shape in the
    message, e.g. "the elementwise loss"): a boolean mask that broadcasts to it, without
    changing it; returned broadcast to ``shape``."""
    if not xp.isdtype(where.dtype, "bool"):
        raise TypeError(f"where must be a boolean mask (True: the element counts); got dtype {where.dtype}.")
    got = tuple(where.shape)
    if len(got) > len(shape) or any(a not in (1, b) for a, b in zip(reversed(got), reversed(shape))):
        raise ValueError(f"where of shape {got} does not broadcast to {loss}, shape {shape}.")
    if not lazy:
        check_same_device(x, where, "where")
    return where if got == shape else xp.broadcast_to(where, shape)

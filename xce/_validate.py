"""Argument checks. Every message names the argument, what was received and what to do.

Shape and dtype checks run on every backend (they are static, so they also raise at
``jax.jit`` trace time and at Dask graph-build time). Checks that need array values run
only on eager arrays; see :func:`xce._namespace.is_lazy`.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from ._namespace import Array, Namespace, device_of

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: object, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, allowed))}; got {reduction!r}.")
    return reduction  # type: ignore[return-value]


def check_fraction(value: object, name: str) -> float:
    """A Python number in [0, 1] (label smoothing and the like)."""
    if isinstance(value, bool) or (not isinstance(value, (int, float)) and not hasattr(value, "__float__")):
        raise TypeError(f"{name} must be a float in [0, 1]; got {type(value).__name__} {value!r}.")
    try:
        out = float(value)  # type: ignore[arg-type]
    except TypeError as e:  # a traced array: hyper-parameters are static
        raise TypeError(
            f"{name} must be a Python float in [0, 1], not an array; under jax.jit pass it as a "
            f"static argument (static_argnames=('{name}',))."
        ) from e
    if math.isnan(out) or not 0.0 <= out <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; got {value!r}.")
    return out


def check_integer(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer; got bool {value!r}.")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}.") from None


def class_axis(x: Array, axis: int | None, name: str = "input") -> int:
    """Normalise the class axis: ``None`` is PyTorch's rule (0 for 1-D input, else 1)."""
    ndim = x.ndim
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
    n_classes = x.shape[axis]
    if n_classes == 0:
        raise ValueError(f"{name} has zero classes along axis {axis} (shape {tuple(x.shape)}); need at least one.")
    return n_classes


def check_same_device(x: Array, other: Array, name: str) -> None:
    dx, do = device_of(x), device_of(other)
    if dx != do:
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


def check_target_range(target: Array, n_classes: int, ignored: Array | None, *, xp: Namespace) -> None:
    """Eager only: every non-ignored index lies in [0, n_classes)."""
    bad = (target < 0) | (target >= n_classes)
    if ignored is not None:
        bad = bad & ~ignored
    if bool(xp.any(bad)):
        value = _first(target, bad, xp=xp)
        raise IndexError(
            f"target contains class index {value}, outside [0, {n_classes - 1}] for {n_classes} classes "
            "(and not equal to ignore_index)."
        )


def _first(values: Array, mask: Array, *, xp: Namespace) -> Any:
    flat_mask = xp.reshape(mask, (-1,))
    position = int(xp.argmax(xp.astype(flat_mask, xp.int32)))
    return int(xp.reshape(values, (-1,))[position])

"""optax's classification losses by their optax names and signatures, computed by xce (JAX).

For JAX code written against ``optax.losses``: ``from xce import optax as xo`` and
``xo.softmax_cross_entropy_with_integer_labels(logits, labels)`` is optax's per-example loss
(classes on the last axis, or optax's int ``axis``; ``where=`` as optax) computed by
:func:`xce.cross_entropy`. optax's own classification test file (0.2.8) runs against this
module in xce's test suite. Requires JAX, not optax; ``import xce`` does not import it.

optax's conventions, translated: per-example losses (``reduction="none"``), the class axis
last; any array-like in, a ``jax.Array`` out (arguments become JAX arrays first); binary
labels cast to the logits' dtype; ``softmax_cross_entropy``'s labels are probabilities
whatever their dtype. Traced hyper-parameters (the focal loss's ``gamma`` / ``alpha``, the
poly loss's ``epsilon`` under ``jax.jit``) pass through as 0-d arrays.

Where an optax argument has no xce counterpart (a tuple of axes, a concrete negative
``alpha``, broadcast labels, ...), the function raises ``NotImplementedError`` naming the
argument: nothing is dropped silently. optax's losses that xce does not have (margin,
sparsemax, CTC and generalised-KL losses) are not here.

:data:`MAPPED` says which xce call each name runs.
"""

from __future__ import annotations

import numbers
from typing import Any, cast

import jax
import jax.numpy as jnp

from .losses.binary import binary_cross_entropy_with_logits
from .losses.binary import sigmoid_focal_loss as _sigmoid_focal_loss
from .losses.cross_entropy import cross_entropy
from .losses.divergence import kl_div
from .losses.index import poly1_cross_entropy

__all__ = [
    "MAPPED",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "poly_loss_cross_entropy",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]

#: Which xce call each optax name runs.
MAPPED: dict[str, str] = {
    "softmax_cross_entropy": (
        'xce.cross_entropy(logits, labels, reduction="none", axis=axis, where=where) (a per-logit where: masked '
        "logits -inf with no label mass, empty examples masked)"
    ),
    "safe_softmax_cross_entropy": 'xce.cross_entropy(logits, labels, reduction="none", axis=-1)',
    "softmax_cross_entropy_with_integer_labels": (
        'xce.cross_entropy(logits, labels, reduction="none", axis=axis, where=where) (per-logit where as above)'
    ),
    "sigmoid_binary_cross_entropy": 'xce.binary_cross_entropy_with_logits(logits, labels, reduction="none")',
    "sigmoid_focal_loss": (
        'xce.sigmoid_focal_loss(logits, labels, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="none") '
        "(gamma and alpha may be traced)"
    ),
    "poly_loss_cross_entropy": (
        'xce.poly1_cross_entropy(logits, labels, epsilon=epsilon, reduction="none", axis=axis) (probability or '
        "class-index labels; where as for softmax_cross_entropy, empty examples zeroed)"
    ),
    "kl_divergence": 'xce.kl_div(log_predictions, targets, reduction="none", where=where).sum(axis)',
    "kl_divergence_with_log_targets": (
        'xce.kl_div(log_predictions, log_targets, reduction="none", log_target=True, where=where).sum(axis)'
    ),
}

# ---------------------------------------------------------------------------------------
# Argument checks: what xce cannot express raises NotImplementedError naming the argument.


def _per_position_where(fn: str, where: Any, logits: jax.Array) -> jax.Array | None:
    """With class-index labels only a mask of the per-example shape maps (xce's ``where=``)."""
    if where is None:
        return None
    where = jnp.asarray(where, dtype=bool)
    if where.ndim >= logits.ndim:
        raise NotImplementedError(
            f"optax.losses.{fn}(where= of the logits' rank) with class-index labels: xce masks positions, "
            "not classes, for class-index targets"
        )
    return cast("jax.Array", where)


def _masked(where: Any, logits: jax.Array, labels: jax.Array | None, axis: int) -> tuple[Any, Any, Any]:
    """optax's ``where=`` onto xce: a mask of the per-example shape is xce's ``where=``; a
    per-logit mask (logits' rank) takes the masked logits out of the softmax (-inf, with no
    label mass there), and an example with no logit left is masked as a whole."""
    if where is None:
        return logits, labels, None
    where = jnp.asarray(where, dtype=bool)
    if where.ndim < logits.ndim:
        return logits, labels, where
    per_logit = jnp.broadcast_to(where, logits.shape)
    logits = jnp.where(per_logit, logits, -jnp.inf)
    if labels is not None:
        labels = jnp.where(per_logit, labels, 0.0)
    return logits, labels, jnp.any(per_logit, axis=axis)


def _class_axis(fn: str, axis: Any) -> int:
    if isinstance(axis, numbers.Integral) and not isinstance(axis, bool):
        return int(axis)
    raise NotImplementedError(
        f"optax.losses.{fn}(axis={axis!r}): xce takes one int class axis; "
        "a tuple of axes (or None, all axes) does not map"
    )


def _hyperparameter(value: Any) -> Any:
    """A hyper-parameter as xce takes it: a Python float, or a 0-d (possibly traced) JAX array."""
    if isinstance(value, numbers.Real):
        return float(value)
    return jnp.asarray(value)


def _same_shape(fn: str, name: str, labels: jax.Array, logits: jax.Array) -> None:
    if labels.shape != logits.shape:
        raise NotImplementedError(
            f"optax.losses.{fn}({name} of shape {labels.shape}): optax broadcasts {name} against "
            f"logits of shape {logits.shape}; xce takes {name} of the logits' shape"
        )


def _floating_like(labels: jax.Array, logits: jax.Array) -> jax.Array:
    """optax's labels are probabilities / binary values: cast integer labels to the logits' dtype."""
    if jnp.issubdtype(labels.dtype, jnp.floating):
        return labels
    return labels.astype(logits.dtype)


# ---------------------------------------------------------------------------------------
# The mapped names.


def _no_classes(logits: jax.Array, axis: int) -> jax.Array | None:
    """optax sums over an empty class axis (a random mask in its test file may keep no class): 0.
    xce wants at least one class (PyTorch refuses class indices without one)."""
    if logits.shape[axis] != 0:
        return None
    return jnp.zeros(tuple(n for i, n in enumerate(logits.shape) if i != axis % logits.ndim), logits.dtype)


def softmax_cross_entropy(logits: Any, labels: Any, axis: Any = -1, where: Any = None) -> jax.Array:
    axis = _class_axis("softmax_cross_entropy", axis)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    labels = _floating_like(labels, logits)
    _same_shape("softmax_cross_entropy", "labels", labels, logits)
    empty = _no_classes(logits, axis)
    if empty is not None:
        return empty
    logits, labels, where = _masked(where, logits, labels, axis)
    loss: jax.Array = cross_entropy(logits, labels, reduction="none", axis=axis, where=where)
    return loss


def safe_softmax_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    labels = _floating_like(labels, logits)
    _same_shape("safe_softmax_cross_entropy", "labels", labels, logits)
    # xce counts 0 * log(0) as 0 already: no separate "safe" variant.
    loss: jax.Array = cross_entropy(logits, labels, reduction="none", axis=-1)
    return loss


def softmax_cross_entropy_with_integer_labels(logits: Any, labels: Any, axis: Any = -1, where: Any = None) -> jax.Array:
    axis = _class_axis("softmax_cross_entropy_with_integer_labels", axis)
    logits, _, where = _masked(where, jnp.asarray(logits), None, axis)
    loss: jax.Array = cross_entropy(logits, jnp.asarray(labels), reduction="none", axis=axis, where=where)
    return loss


def sigmoid_binary_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    labels = _floating_like(labels, logits)
    _same_shape("sigmoid_binary_cross_entropy", "labels", labels, logits)
    loss: jax.Array = binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss


def sigmoid_focal_loss(logits: Any, labels: Any, *, alpha: Any = None, gamma: Any = 2.0) -> jax.Array:
    gamma = _hyperparameter(gamma)
    if alpha is None:
        alpha = -1.0  # xce (like torchvision) disables the alpha weighting with a negative alpha
    else:
        # A traced alpha is passed on as it is: optax documents alpha in (0, 1), where the two agree.
        alpha = _hyperparameter(alpha)
        if isinstance(alpha, float) and alpha < 0:
            raise NotImplementedError(
                f"optax.losses.sigmoid_focal_loss(alpha={alpha}): xce reads a negative alpha as 'no weighting'"
            )
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    labels = _floating_like(labels, logits)
    _same_shape("sigmoid_focal_loss", "labels", labels, logits)
    loss: jax.Array = _sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma, reduction="none")
    return loss


def poly_loss_cross_entropy(
    logits: Any, labels: Any, *, epsilon: Any = 2.0, axis: Any = -1, where: Any = None
) -> jax.Array:
    axis = _class_axis("poly_loss_cross_entropy", axis)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape != logits.shape:  # class indices
        where = _per_position_where("poly_loss_cross_entropy", where, logits)
        loss: jax.Array = poly1_cross_entropy(logits, labels, epsilon=epsilon, reduction="none", axis=axis,
                                              where=where)
        return loss
    labels = _floating_like(labels, logits)
    _same_shape("poly_loss_cross_entropy", "labels", labels, logits)
    empty = _no_classes(logits, axis)
    if empty is not None:
        return empty
    logits, labels, kept = _masked(where, logits, labels, axis)
    loss = poly1_cross_entropy(logits, labels, epsilon=epsilon, reduction="none", axis=axis)
    return loss if kept is None else jnp.where(kept, loss, 0.0)


def kl_divergence(log_predictions: Any, targets: Any, axis: Any = -1, where: Any = None) -> jax.Array:
    log_predictions, targets = jnp.asarray(log_predictions), jnp.asarray(targets)
    _same_shape("kl_divergence", "targets", targets, log_predictions)
    # xce.kl_div is elementwise with reduction="none"; optax sums over the class axis (or axes),
    # leaving out the masked elements (xce's where= gives them exactly 0).
    return jnp.sum(kl_div(log_predictions, targets, reduction="none", where=_mask(where)), axis=axis)


def kl_divergence_with_log_targets(
    log_predictions: Any, log_targets: Any, axis: Any = -1, where: Any = None
) -> jax.Array:
    log_predictions, log_targets = jnp.asarray(log_predictions), jnp.asarray(log_targets)
    _same_shape("kl_divergence_with_log_targets", "log_targets", log_targets, log_predictions)
    kl = kl_div(log_predictions, log_targets, reduction="none", log_target=True, where=_mask(where))
    return jnp.sum(kl, axis=axis)


def _mask(where: Any) -> jax.Array | None:
    return None if where is None else jnp.asarray(where, dtype=bool)



"""optax's classification-loss names (``optax.losses``, optax 0.2.8), mapped onto xce.

Issue 15, item 6: the vendored ``optax_classification_test.py`` imports this module in
place of ``optax.losses._classification``, so optax's own tests run against xce.

Every name in ``MAPPED`` is a thin wrapper that calls the xce function written next to it,
with optax's conventions translated:

* optax returns per-example losses and puts the classes on the last axis, so the
  wrappers call xce with ``reduction="none"`` and ``axis=-1`` (or optax's int ``axis``);
* optax takes any ``jax.typing.ArrayLike`` and returns a ``jax.Array``, so the wrappers
  turn their array arguments into JAX arrays (``jnp.asarray``) before calling xce, which
  then runs its JAX path (and mixing NumPy and JAX arrays, which xce refuses, is fine);
* optax casts binary labels to the logits' dtype and treats the labels of
  ``softmax_cross_entropy`` as probabilities whatever their dtype; the wrappers do the
  same before calling xce, which reads integer targets as class indices.

Traced hyper-parameters (``gamma`` / ``alpha`` of the focal loss, ``epsilon`` of the poly
loss under ``jax.jit``) pass through to xce, which takes them as 0-d arrays.

Where an optax argument has no xce counterpart (a tuple of axes, a concrete negative
``alpha``, broadcast labels, ...), the wrapper raises ``NotImplementedError`` naming the
argument; nothing is dropped silently and nothing falls back to optax.

Every name in ``NOT_MAPPED`` has no xce counterpart at all and is optax's own function,
re-exported unchanged so that the rest of the test file still runs; the reason is the value.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax.losses as _optax_losses

import xce

# ---------------------------------------------------------------------------------------
# Which optax name runs what.

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
        "class-index labels; where as for softmax_cross_entropy, empty examples zeroed in the shim)"
    ),
    "kl_divergence": 'xce.kl_div(log_predictions, targets, reduction="none", where=where).sum(axis)',
    "kl_divergence_with_log_targets": (
        'xce.kl_div(log_predictions, log_targets, reduction="none", log_target=True, where=where).sum(axis)'
    ),
}

_NO_MARGIN = "xce has cross-entropy-family losses only; no margin (hinge / perceptron) losses"
_NO_SPARSEMAX = "xce has no sparsemax (Fenchel-Young) losses; its losses normalise with softmax / sigmoid"
_NO_CTC = "xce has no CTC loss (a sum over alignments, not a per-position cross entropy)"
_NO_GKL = (
    "xce.kl_div is the KL divergence of normalised distributions (PyTorch's kl_div); the generalised KL "
    "of unnormalised measures adds sum(exp(log_p) - q), which no xce argument expresses"
)

NOT_MAPPED: dict[str, str] = {
    "hinge_loss": _NO_MARGIN,
    "perceptron_loss": _NO_MARGIN,
    "multiclass_hinge_loss": _NO_MARGIN,
    "multiclass_perceptron_loss": _NO_MARGIN,
    "sparsemax_loss": _NO_SPARSEMAX,
    "multiclass_sparsemax_loss": _NO_SPARSEMAX,
    "generalized_kl_divergence": _NO_GKL,
    "convex_kl_divergence": "deprecated optax alias of generalized_kl_divergence; " + _NO_GKL,
    "ctc_loss": _NO_CTC,
    "ctc_loss_with_forward_probs": _NO_CTC,
}

# The not-mapped names are optax's own functions.
hinge_loss = _optax_losses.hinge_loss
perceptron_loss = _optax_losses.perceptron_loss
multiclass_hinge_loss = _optax_losses.multiclass_hinge_loss
multiclass_perceptron_loss = _optax_losses.multiclass_perceptron_loss
sparsemax_loss = _optax_losses.sparsemax_loss
multiclass_sparsemax_loss = _optax_losses.multiclass_sparsemax_loss
generalized_kl_divergence = _optax_losses.generalized_kl_divergence
convex_kl_divergence = _optax_losses.convex_kl_divergence
ctc_loss = _optax_losses.ctc_loss
ctc_loss_with_forward_probs = _optax_losses.ctc_loss_with_forward_probs


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
    return where


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
    return xce.cross_entropy(logits, labels, reduction="none", axis=axis, where=where)


def safe_softmax_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    labels = _floating_like(labels, logits)
    _same_shape("safe_softmax_cross_entropy", "labels", labels, logits)
    # xce counts 0 * log(0) as 0 already: no separate "safe" variant.
    return xce.cross_entropy(logits, labels, reduction="none", axis=-1)


def softmax_cross_entropy_with_integer_labels(logits: Any, labels: Any, axis: Any = -1, where: Any = None) -> jax.Array:
    axis = _class_axis("softmax_cross_entropy_with_integer_labels", axis)
    logits, _, where = _masked(where, jnp.asarray(logits), None, axis)
    return xce.cross_entropy(logits, jnp.asarray(labels), reduction="none", axis=axis, where=where)


def sigmoid_binary_cross_entropy(logits: Any, labels: Any) -> jax.Array:
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    labels = _floating_like(labels, logits)
    _same_shape("sigmoid_binary_cross_entropy", "labels", labels, logits)
    return xce.binary_cross_entropy_with_logits(logits, labels, reduction="none")


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
    return xce.sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma, reduction="none")


def poly_loss_cross_entropy(
    logits: Any, labels: Any, *, epsilon: Any = 2.0, axis: Any = -1, where: Any = None
) -> jax.Array:
    axis = _class_axis("poly_loss_cross_entropy", axis)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape != logits.shape:  # class indices
        where = _per_position_where("poly_loss_cross_entropy", where, logits)
        return xce.poly1_cross_entropy(logits, labels, epsilon=epsilon, reduction="none", axis=axis, where=where)
    labels = _floating_like(labels, logits)
    _same_shape("poly_loss_cross_entropy", "labels", labels, logits)
    empty = _no_classes(logits, axis)
    if empty is not None:
        return empty
    logits, labels, kept = _masked(where, logits, labels, axis)
    loss = xce.poly1_cross_entropy(logits, labels, epsilon=epsilon, reduction="none", axis=axis)
    return loss if kept is None else jnp.where(kept, loss, 0.0)


def kl_divergence(log_predictions: Any, targets: Any, axis: Any = -1, where: Any = None) -> jax.Array:
    log_predictions, targets = jnp.asarray(log_predictions), jnp.asarray(targets)
    _same_shape("kl_divergence", "targets", targets, log_predictions)
    # xce.kl_div is elementwise with reduction="none"; optax sums over the class axis (or axes),
    # leaving out the masked elements (xce's where= gives them exactly 0).
    return jnp.sum(xce.kl_div(log_predictions, targets, reduction="none", where=_mask(where)), axis=axis)


def kl_divergence_with_log_targets(
    log_predictions: Any, log_targets: Any, axis: Any = -1, where: Any = None
) -> jax.Array:
    log_predictions, log_targets = jnp.asarray(log_predictions), jnp.asarray(log_targets)
    _same_shape("kl_divergence_with_log_targets", "log_targets", log_targets, log_predictions)
    kl = xce.kl_div(log_predictions, log_targets, reduction="none", log_target=True, where=_mask(where))
    return jnp.sum(kl, axis=axis)


def _mask(where: Any) -> jax.Array | None:
    return None if where is None else jnp.asarray(where, dtype=bool)


__all__ = sorted([*MAPPED, *NOT_MAPPED, "MAPPED", "NOT_MAPPED"])

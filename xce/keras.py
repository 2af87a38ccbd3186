"""Keras 3 losses: ``keras.losses.Loss`` subclasses computed by xce (``from xce import keras as xk``).

``model.compile(loss=xk.SparseCategoricalCrossentropy(from_logits=True))`` where Keras's own
``keras.losses.SparseCategoricalCrossentropy(from_logits=True)`` would go: the same names,
arguments, argument order and defaults as Keras's (``from_logits=False``: ``y_pred`` holds
probabilities), the same results, plus xce's ``z_loss`` and ``softcap`` on logits. ``call``
returns the per-sample losses and Keras applies ``reduction``, ``sample_weight`` and masks, as
for its own losses; ``get_config`` / ``from_config`` round-trip, and the classes are registered
for ``keras.saving`` (package ``"xce"``).

The loss runs on the backend's own arrays (``jax.Array`` under ``jax.jit``, ``torch.Tensor``),
so the ``jax``, ``torch`` and ``numpy`` Keras backends are supported; ``tensorflow`` is not (xce
does not take ``tf.Tensor`` s).

Keras chooses its backend when it is imported, so this module imports keras only when one of
its classes is first used: ``import xce.keras`` alone needs neither keras nor a backend.
"""

from __future__ import annotations

from typing import Any

from ._validate import check_fraction, check_integer, check_positive, check_real
from .labels import smooth_labels
from .losses.binary import binary_cross_entropy, binary_cross_entropy_with_logits
from .losses.cross_entropy import cross_entropy
from .losses.index import nll_loss

# Defined on first use, by __getattr__ (building them imports keras).
__all__ = ["BinaryCrossentropy", "CategoricalCrossentropy", "SparseCategoricalCrossentropy"]  # noqa: F822

BACKENDS = ("jax", "torch", "numpy")  # Keras backends whose arrays xce takes


def __getattr__(name: str) -> Any:
    if name in __all__:
        globals().update(_define())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _check_logit_options(from_logits: object, z_loss: object, softcap: object) -> tuple[bool, Any, Any]:
    if not isinstance(from_logits, bool):
        raise TypeError(f"from_logits must be True or False; got {from_logits!r}.")
    z = check_real(z_loss, "z_loss", minimum=0.0)
    cap = None if softcap is None else check_positive(softcap, "softcap", " Pass softcap=None for uncapped logits.")
    if not from_logits and (z or cap is not None):
        raise ValueError("z_loss and softcap act on logits: pass from_logits=True (y_pred then holds logits, not "
                         "probabilities).")
    return from_logits, z, cap


def _define() -> dict[str, type]:
    """The loss classes, built on the installed keras (imported here, with its backend)."""
    import keras
    from keras import ops

    # How Keras's own sparse loss tells the reduction which positions ignore_class dropped.
    from keras.src.backend import set_keras_mask

    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise ImportError(f"xce.keras needs a Keras backend whose arrays xce takes ({', '.join(BACKENDS)}); "
                          f"KERAS_BACKEND is {backend!r}. Set KERAS_BACKEND=jax or torch before importing keras.")

    def same_rank(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """Keras's ``squeeze_or_expand_to_same_rank``: labels (N,) against predictions (N, 1)."""
        if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
            return (ops.squeeze(y_true, -1), y_pred) if y_pred.ndim != 1 else (y_true, ops.expand_dims(y_pred, -1))
        if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
            return (ops.expand_dims(y_true, -1), y_pred) if y_true.ndim == 1 else (y_true, ops.squeeze(y_pred, -1))
        return y_true, y_pred

    def log_probabilities(y_pred: Any, axis: int) -> Any:
        """Keras's log of probabilities: normalised along the class axis, clipped to [ε, 1 - ε]."""
        eps = keras.backend.epsilon()
        return ops.log(ops.clip(y_pred / ops.sum(y_pred, axis=axis, keepdims=True), eps, 1.0 - eps))

    @keras.saving.register_keras_serializable(package="xce")
    class SparseCategoricalCrossentropy(keras.losses.Loss):
        """``keras.losses.SparseCategoricalCrossentropy`` computed by :func:`xce.cross_entropy`
        (``from_logits=True``) or :func:`xce.nll_loss` of the clipped log-probabilities.

        Integer labels, or Keras's float labels (cast to integers); ``ignore_class`` positions
        are dropped from the mean as in Keras. ``z_loss`` and ``softcap`` (logits only) as in
        :func:`xce.cross_entropy`."""

        def __init__(self, from_logits: bool = False, ignore_class: int | None = None,
                     reduction: str | None = "sum_over_batch_size", axis: int = -1,
                     name: str = "sparse_categorical_crossentropy", dtype: Any = None, *, z_loss: float = 0.0,
                     softcap: float | None = None) -> None:
            super().__init__(name=name, reduction=reduction, dtype=dtype)
            self.from_logits, self.z_loss, self.softcap = _check_logit_options(from_logits, z_loss, softcap)
            self.ignore_class = None if ignore_class is None else check_integer(ignore_class, "ignore_class")
            self.axis = check_integer(axis, "axis")

        def call(self, y_true: Any, y_pred: Any) -> Any:
            y_pred, y_true = ops.convert_to_tensor(y_pred), ops.convert_to_tensor(y_true)
            if y_true.ndim == y_pred.ndim and y_true.shape[self.axis] == 1:
                y_true = ops.squeeze(y_true, self.axis)
            labels = ops.cast(y_true, "int32")  # Keras hands labels over in the loss's float dtype
            ignore = -100 if self.ignore_class is None else self.ignore_class
            if self.from_logits:
                loss = cross_entropy(y_pred, labels, ignore_index=ignore, reduction="none", axis=self.axis,
                                     z_loss=self.z_loss, softcap=self.softcap)
            else:
                loss = nll_loss(log_probabilities(y_pred, self.axis), labels, ignore_index=ignore, reduction="none",
                                axis=self.axis)
            if self.ignore_class is not None:
                set_keras_mask(loss, ops.not_equal(labels, self.ignore_class))
            return loss

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "from_logits": self.from_logits, "ignore_class": self.ignore_class,
                    "axis": self.axis, "z_loss": self.z_loss, "softcap": self.softcap}

    @keras.saving.register_keras_serializable(package="xce")
    class CategoricalCrossentropy(keras.losses.Loss):
        """``keras.losses.CategoricalCrossentropy`` computed by :func:`xce.cross_entropy` with
        probability (one-hot) targets (``from_logits=True``), or the negative log-likelihood of
        the clipped probabilities. ``z_loss`` and ``softcap`` (logits only) as in
        :func:`xce.cross_entropy`."""

        def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1,
                     reduction: str | None = "sum_over_batch_size", name: str = "categorical_crossentropy",
                     dtype: Any = None, *, z_loss: float = 0.0, softcap: float | None = None) -> None:
            super().__init__(name=name, reduction=reduction, dtype=dtype)
            self.from_logits, self.z_loss, self.softcap = _check_logit_options(from_logits, z_loss, softcap)
            self.label_smoothing = check_fraction(label_smoothing, "label_smoothing")
            self.axis = check_integer(axis, "axis")

        def call(self, y_true: Any, y_pred: Any) -> Any:
            y_pred, y_true = ops.convert_to_tensor(y_pred), ops.convert_to_tensor(y_true)
            y_true = ops.cast(y_true, y_pred.dtype)
            if self.from_logits:
                return cross_entropy(y_pred, y_true, reduction="none", label_smoothing=self.label_smoothing,
                                     axis=self.axis, z_loss=self.z_loss, softcap=self.softcap)
            if self.label_smoothing:
                y_true = smooth_labels(y_true, self.label_smoothing, axis=self.axis)
            # The negative log-likelihood of probability targets, Keras's formula on the clipped log.
            return -ops.sum(y_true * log_probabilities(y_pred, self.axis), axis=self.axis)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing,
                    "axis": self.axis, "z_loss": self.z_loss, "softcap": self.softcap}

    @keras.saving.register_keras_serializable(package="xce")
    class BinaryCrossentropy(keras.losses.Loss):
        """``keras.losses.BinaryCrossentropy`` computed by
        :func:`xce.binary_cross_entropy_with_logits` (``from_logits=True``) or
        :func:`xce.binary_cross_entropy` of the probabilities clipped to [ε, 1 - ε]; the mean
        over ``axis`` as in Keras."""

        def __init__(self, from_logits: bool = False, label_smoothing: float = 0.0, axis: int = -1,
                     reduction: str | None = "sum_over_batch_size", name: str = "binary_crossentropy",
                     dtype: Any = None) -> None:
            super().__init__(name=name, reduction=reduction, dtype=dtype)
            self.from_logits = _check_logit_options(from_logits, 0.0, None)[0]
            self.label_smoothing = check_fraction(label_smoothing, "label_smoothing")
            self.axis = check_integer(axis, "axis")

        def call(self, y_true: Any, y_pred: Any) -> Any:
            y_pred, y_true = ops.convert_to_tensor(y_pred), ops.convert_to_tensor(y_true)
            y_true, y_pred = same_rank(ops.cast(y_true, y_pred.dtype), y_pred)
            if self.from_logits:
                loss = binary_cross_entropy_with_logits(y_pred, y_true, reduction="none",
                                                        label_smoothing=self.label_smoothing)
            else:
                eps = keras.backend.epsilon()
                loss = binary_cross_entropy(ops.clip(y_pred, eps, 1.0 - eps), y_true, reduction="none",
                                            label_smoothing=self.label_smoothing)
            return ops.mean(loss, axis=self.axis)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "from_logits": self.from_logits, "label_smoothing": self.label_smoothing,
                    "axis": self.axis}

    classes: dict[str, type] = {"SparseCategoricalCrossentropy": SparseCategoricalCrossentropy,
                                "CategoricalCrossentropy": CategoricalCrossentropy,
                                "BinaryCrossentropy": BinaryCrossentropy}
    for name, cls in classes.items():
        cls.__module__, cls.__qualname__ = __name__, name  # found again by pickle and help()
    return classes

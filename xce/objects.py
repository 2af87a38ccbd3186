"""Loss objects: the functions' configuration held in a callable, ``nn.CrossEntropyLoss`` style.

Framework-agnostic: an object is not a ``torch.nn.Module`` and holds no parameters, only the
keyword arguments of its function. The scalar configuration is validated when the object is
built, with the same checks the function runs; arrays (``weight``, ``pos_weight``) are checked
against the input at call time, when its shape is known.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from ._namespace import Array
from ._validate import (
    REDUCTIONS,
    check_choice,
    check_fraction,
    check_integer,
    check_positive,
    check_real,
    check_reduction,
)
from .linear_distillation import LOSSES as LINEAR_DISTILLATION_LOSSES
from .linear_distillation import linear_distillation_loss
from .losses.binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    check_alpha,
    multilabel_soft_margin_loss,
    sigmoid_focal_loss,
)
from .losses.cross_entropy import check_options, cross_entropy
from .losses.distillation import DIRECTIONS, generalized_jsd, kl_div_with_logits
from .losses.distillation import REDUCTIONS as DISTILLATION_REDUCTIONS
from .losses.divergence import kl_div
from .losses.index import nll_loss, softmax_focal_loss

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "GeneralizedJSDLoss",
    "KLDivLoss",
    "KLDivWithLogitsLoss",
    "LinearDistillationLoss",
    "MultiLabelSoftMarginLoss",
    "NLLLoss",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
]


class _Loss:
    """``__call__(input, target)`` forwards to ``_function`` with the stored keyword arguments.

    A subclass's constructor passes its arguments by name; the ones every loss shares
    (``ignore_index``, ``reduction`` among ``_reductions``, ``label_smoothing``, ``axis``) are
    checked here with the functions' own checks, the others are checked by the subclass."""

    _function: ClassVar[Callable[..., Array]]
    _reductions: ClassVar[tuple[str, ...]] = REDUCTIONS

    def __init__(self, **config: Any) -> None:
        checks: dict[str, Callable[[Any], Any]] = {
            "ignore_index": lambda v: check_integer(v, "ignore_index"),
            "reduction": lambda v: check_reduction(v, self._reductions),
            "label_smoothing": lambda v: check_fraction(v, "label_smoothing", traced=True),
            "axis": lambda v: None if v is None else check_integer(v, "axis"),
        }
        self._config = {name: checks[name](v) if name in checks else v for name, v in config.items()}

    def __call__(self, input: Array, target: Array) -> Array:
        return type(self)._function(input, target, **self._config)

    def __getattr__(self, name: str) -> Any:
        # Read-only access to the configuration: loss.reduction, loss.weight, ...
        config = self.__dict__.get("_config", {})
        if name in config:
            return config[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={_show(v)}' for k, v in self._config.items())})"


def _show(value: Any) -> str:
    """Arrays as library, shape and dtype (their values would flood the repr)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__module__.partition('.')[0]} array shape={tuple(value.shape)} dtype={value.dtype}>"
    return repr(value)


class CrossEntropyLoss(_Loss):
    """:func:`xce.cross_entropy` with its configuration held.

    Examples
    --------
    >>> import numpy as np, xce
    >>> loss = xce.CrossEntropyLoss(label_smoothing=0.05)
    >>> loss
    CrossEntropyLoss(weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.05, axis=None, \
label_smoothing_mode='uniform', z_loss=0.0)
    >>> round(float(loss(np.asarray([[1.0, 8.0, 1.0], [1.0, 1.0, 8.0]]), np.asarray([1, 2]))), 4)
    0.2352
    """

    _function = staticmethod(cross_entropy)

    def __init__(self, weight: Array | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, *, axis: int | None = None, label_smoothing_mode: str = "uniform",
                 z_loss: float = 0.0, softcap: float | None = None) -> None:
        opts = check_options(ignore_index, reduction, label_smoothing, label_smoothing_mode, z_loss)
        # softcap is held (and shown) only when given: the default configuration stays PyTorch's.
        cap = {} if softcap is None else {"softcap": check_positive(softcap, "softcap")}
        super().__init__(weight=weight, ignore_index=opts.ignore_index, reduction=opts.reduction,
                         label_smoothing=opts.label_smoothing, axis=axis, label_smoothing_mode=opts.mode, z_loss=opts.z,
                         **cap)

    def __call__(self, input: Array, target: Array, *, sample_weight: Array | None = None,
                 normalizer: Any = None, where: Array | None = None, return_stats: bool = False) -> Any:
        """The loss of one batch; the per-batch arrays (``sample_weight``, ``normalizer``,
        ``where``) and ``return_stats`` as in :func:`xce.cross_entropy`."""
        return cross_entropy(input, target, **self._config, sample_weight=sample_weight, normalizer=normalizer,
                             where=where, return_stats=return_stats)


class _IndexLoss(_Loss):
    """A loss of class-index targets that takes per-position weights per batch."""

    def __call__(self, input: Array, target: Array, *, sample_weight: Array | None = None) -> Array:
        """The loss of one batch; ``sample_weight`` (the target's shape) as in the function."""
        return type(self)._function(input, target, **self._config, sample_weight=sample_weight)


class NLLLoss(_IndexLoss):
    """:func:`xce.nll_loss` with its configuration held.

    Examples
    --------
    >>> import numpy as np, xce
    >>> float(xce.NLLLoss()(np.asarray([[2.0, 3.0, 1.0], [3.0, 7.0, 9.0]]), np.asarray([1, 2])))
    -6.0
    >>> float(xce.NLLLoss()(np.asarray([[2.0, 3.0, 1.0], [3.0, 7.0, 9.0]]), np.asarray([1, 2]),
    ...                     sample_weight=np.asarray([1.0, 3.0])))  # (1·3 + 3·9) / (1 + 3)
    -7.5
    """

    _function = staticmethod(nll_loss)

    def __init__(self, weight: Array | None = None, ignore_index: int = -100, reduction: str = "mean", *,
                 axis: int | None = None) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction, axis=axis)


class BCELoss(_Loss):
    """:func:`xce.binary_cross_entropy` with its configuration held.

    Examples
    --------
    >>> import numpy as np, xce
    >>> p, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> round(float(xce.BCELoss()(p, y)), 4)
    1.5081
    """

    _function = staticmethod(binary_cross_entropy)

    def __init__(self, weight: Array | None = None, reduction: str = "mean", *, label_smoothing: float = 0.0) -> None:
        super().__init__(weight=weight, reduction=reduction, label_smoothing=label_smoothing)


class BCEWithLogitsLoss(_Loss):
    """:func:`xce.binary_cross_entropy_with_logits` with its configuration held.

    Examples
    --------
    >>> import numpy as np, xce
    >>> x, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> round(float(xce.BCEWithLogitsLoss()(x, y)), 4)
    0.8518
    """

    _function = staticmethod(binary_cross_entropy_with_logits)

    def __init__(self, weight: Array | None = None, reduction: str = "mean", pos_weight: Array | None = None, *,
                 label_smoothing: float = 0.0) -> None:
        super().__init__(weight=weight, reduction=reduction, pos_weight=pos_weight, label_smoothing=label_smoothing)


class MultiLabelSoftMarginLoss(_Loss):
    """:func:`xce.multilabel_soft_margin_loss` with its configuration held.

    Examples
    --------
    >>> import numpy as np, xce
    >>> x, y = np.asarray([[0.6, 0.1], [0.3, 0.8]]), np.asarray([[0.0, 1.0], [1.0, 0.0]])
    >>> round(float(xce.MultiLabelSoftMarginLoss()(x, y)), 4)
    0.8518
    """

    _function = staticmethod(multilabel_soft_margin_loss)

    def __init__(self, weight: Array | None = None, reduction: str = "mean") -> None:
        super().__init__(weight=weight, reduction=reduction)


class KLDivLoss(_Loss):
    """:func:`xce.kl_div` with its configuration held.

    Examples
    --------
    >>> import numpy as np, xce
    >>> loss = xce.KLDivLoss(reduction="batchmean")
    >>> loss
    KLDivLoss(reduction='batchmean', log_target=False)
    >>> float(loss(np.log(np.asarray([[0.5, 0.5]])), np.asarray([[0.5, 0.5]])))
    0.0
    """

    _function = staticmethod(kl_div)
    _reductions = (*REDUCTIONS, "batchmean")

    def __init__(self, reduction: str = "mean", log_target: bool = False) -> None:
        if not isinstance(log_target, bool):
            raise TypeError(f"log_target must be a bool; got {type(log_target).__name__} {log_target!r}.")
        super().__init__(reduction=reduction, log_target=log_target)


class SigmoidFocalLoss(_Loss):
    """:func:`xce.sigmoid_focal_loss` with its configuration held (default reduction ``"none"``).

    Examples
    --------
    >>> import numpy as np, xce
    >>> loss = xce.SigmoidFocalLoss(reduction="sum")
    >>> loss
    SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='sum')
    >>> round(float(loss(np.asarray([0.0]), np.asarray([1.0]))), 4)
    0.0433
    """

    _function = staticmethod(sigmoid_focal_loss)

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none") -> None:
        super().__init__(alpha=check_alpha(alpha, traced=True),
                         gamma=check_real(gamma, "gamma", minimum=0.0, traced=True), reduction=reduction)


class SoftmaxFocalLoss(_IndexLoss):
    """:func:`xce.softmax_focal_loss` with its configuration held.

    Examples
    --------
    >>> import numpy as np, xce
    >>> loss = xce.SoftmaxFocalLoss(gamma=0.0)
    >>> round(float(loss(np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]]), np.asarray([0, 2]))), 4)
    1.2288
    """

    _function = staticmethod(softmax_focal_loss)

    def __init__(self, gamma: float = 2.0, weight: Array | None = None, ignore_index: int = -100,
                 reduction: str = "mean", *, axis: int | None = None) -> None:
        super().__init__(gamma=check_real(gamma, "gamma", minimum=0.0), weight=weight, ignore_index=ignore_index,
                         reduction=reduction, axis=axis)


class _DistillationLoss(_Loss):
    """``__call__(student_logits, teacher_logits, target=None)`` with the stored configuration."""

    _reductions = DISTILLATION_REDUCTIONS

    def __call__(self, student_logits: Array, teacher_logits: Array, target: Array | None = None) -> Array:  # type: ignore[override]
        return type(self)._function(student_logits, teacher_logits, target, **self._config)


def _distillation_config(temperature: float, ignore_index: int, reduction: str, axis: int | None,
                         softcap: float | None) -> dict[str, Any]:
    """The distillation losses' shared configuration; temperature and softcap checked here."""
    if softcap is not None:
        softcap = check_real(softcap, "softcap", hint=" softcap must be positive (None: no capping).")
        if softcap <= 0.0:
            raise ValueError(f"softcap must be positive (None: no capping); got {softcap!r}.")
    temperature = check_real(temperature, "temperature")
    if temperature <= 0.0:
        raise ValueError(f"temperature must be positive; got {temperature!r}.")
    return {"temperature": temperature, "ignore_index": ignore_index, "reduction": reduction, "axis": axis,
            "softcap": softcap}


class KLDivWithLogitsLoss(_DistillationLoss):
    """:func:`xce.kl_div_with_logits` with its configuration held; called as
    ``loss(student_logits, teacher_logits, target=None)``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> loss = xce.KLDivWithLogitsLoss(temperature=2.0)
    >>> loss
    KLDivWithLogitsLoss(direction='forward', temperature=2.0, ignore_index=-100, reduction='mean', axis=None, \
softcap=None)
    >>> float(loss(np.zeros((2, 3)), np.zeros((2, 3))))
    0.0
    """

    _function = staticmethod(kl_div_with_logits)

    def __init__(self, direction: str = "forward", *, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "mean", axis: int | None = None, softcap: float | None = None) -> None:
        super().__init__(direction=check_choice(direction, "direction", DIRECTIONS),
                         **_distillation_config(temperature, ignore_index, reduction, axis, softcap))


class GeneralizedJSDLoss(_DistillationLoss):
    """:func:`xce.generalized_jsd` with its configuration held; called as
    ``loss(student_logits, teacher_logits, target=None)``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> loss = xce.GeneralizedJSDLoss(beta=0.5)
    >>> loss
    GeneralizedJSDLoss(beta=0.5, temperature=1.0, ignore_index=-100, reduction='mean', axis=None, softcap=None)
    >>> abs(float(loss(np.zeros((2, 3)), np.zeros((2, 3))))) < 1e-12  # identical models
    True
    """

    _function = staticmethod(generalized_jsd)

    def __init__(self, beta: float = 0.5, *, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "mean", axis: int | None = None, softcap: float | None = None) -> None:
        super().__init__(beta=check_fraction(beta, "beta"),
                         **_distillation_config(temperature, ignore_index, reduction, axis, softcap))


class LinearDistillationLoss(_Loss):
    """:func:`xce.linear_distillation_loss` with its configuration held (Liger-Kernel's
    ``LigerFusedLinearJSD(jsd_beta, ignore_index, temperature)`` is
    ``LinearDistillationLoss(beta=jsd_beta, ignore_index=..., temperature=...)``); called as
    ``loss(student_hidden, student_weight, teacher_hidden, teacher_weight, target=None, *,
    student_bias=None, teacher_bias=None)``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> loss = xce.LinearDistillationLoss("forward_kl", temperature=2.0)
    >>> loss
    LinearDistillationLoss(loss='forward_kl', beta=0.5, temperature=2.0, ignore_index=-100, reduction='mean', \
softcap=None, block_rows=None)
    >>> float(loss(np.ones((2, 3)), np.zeros((4, 3)), np.ones((2, 5)), np.zeros((4, 5))))
    0.0
    """

    _function = staticmethod(linear_distillation_loss)
    _reductions = DISTILLATION_REDUCTIONS

    def __init__(self, loss: str = "jsd", *, beta: float = 0.5, temperature: float = 1.0, ignore_index: int = -100,
                 reduction: str = "mean", softcap: float | None = None, block_rows: int | None = None) -> None:
        config = _distillation_config(temperature, ignore_index, reduction, None, softcap)
        del config["axis"]  # the class axis of the heads' logits is always the last
        super().__init__(loss=check_choice(loss, "loss", tuple(LINEAR_DISTILLATION_LOSSES)),
                         beta=check_fraction(beta, "beta"), **config,
                         block_rows=None if block_rows is None else check_integer(block_rows, "block_rows"))

    def __call__(self, student_hidden: Array, student_weight: Array, teacher_hidden: Array,  # type: ignore[override]
                 teacher_weight: Array, target: Array | None = None, *, student_bias: Array | None = None,
                 teacher_bias: Array | None = None) -> Array:
        return linear_distillation_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, target,
                                        student_bias=student_bias, teacher_bias=teacher_bias, **self._config)

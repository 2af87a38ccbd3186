"""PyTorch modules: xce's loss objects as ``torch.nn.Module`` s (``from xce import nn as xnn``).

``xce.CrossEntropyLoss`` and the other loss objects of :mod:`xce.objects` are framework-agnostic
callables: they hold no buffers, so ``.to(device)``, ``state_dict()`` and ``nn.ModuleDict`` do not
know them. Each class here has the same name, constructor arguments, checks and call as its
object, as a ``torch.nn.Module``: the array arguments (``weight``, ``pos_weight``) are buffers
(``None`` when not given, as in ``torch.nn``), so they follow ``.to()`` / ``.double()``, are saved
by ``state_dict()`` and copied by ``copy.deepcopy``; the modules pickle and trace under
``torch.compile(fullgraph=True)``. The scalar configuration is plain attributes (``loss.reduction``).

Importing this module imports torch; ``import xce`` does not.

Examples
--------
>>> import torch
>>> from xce import nn as xnn
>>> loss = xnn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 1.0]), label_smoothing=0.1)
>>> loss
CrossEntropyLoss(weight=<torch array shape=(3,) dtype=torch.float32>, ignore_index=-100, reduction='mean', \
label_smoothing=0.1, axis=None, label_smoothing_mode='uniform', z_loss=0.0)
>>> sorted(loss.double().state_dict())
['weight']
>>> loss.weight.dtype
torch.float64
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from . import objects
from ._validate import check_fraction, check_integer, check_positive, check_real, check_reduction
from .linear import _check_block_rows, linear_cross_entropy

__all__ = [*objects.__all__, "LinearCrossEntropyLoss"]

# The configuration entries that are arrays: held as buffers, so they move and are saved with the module.
_ARRAYS = ("weight", "pos_weight")


class _Module(torch.nn.Module):
    """A loss object's configuration as a module; ``forward`` is the object's ``__call__``.

    The constructor builds the object (its checks run there, once) and keeps its configuration:
    arrays as buffers, the rest as attributes; ``_config`` reassembles it for the call."""

    _object: ClassVar[Any]  # the xce.objects class this module wraps
    _function: ClassVar[Any]  # the object's function, which its __call__ reads from type(self)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_object" not in cls.__dict__:
            return
        obj = cls._object
        if hasattr(obj, "_function"):
            cls._function = staticmethod(obj._function)
        cls.forward = obj.__call__  # the object's call, its signature and docstring
        # The constructor is the object's: same parameters, shown by help() and inspect.signature.

        def __init__(self: _Module, *args: Any, **kwargs: Any) -> None:
            _Module.__init__(self, *args, **kwargs)

        __init__.__signature__ = inspect.signature(obj.__init__)  # type: ignore[attr-defined]
        __init__.__doc__ = f"Arguments and checks of :class:`xce.{obj.__name__}`."
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._hold(type(self)._object(*args, **kwargs)._config)

    def _hold(self, config: dict[str, Any]) -> None:
        self._names = tuple(config)
        for name, value in config.items():
            if name in _ARRAYS:
                self.register_buffer(name, None if value is None else torch.as_tensor(value))
            else:
                setattr(self, name, value)

    @property
    def _config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._names}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={objects._show(value)}" for name, value in self._config.items())


class CrossEntropyLoss(_Module):
    """:class:`xce.CrossEntropyLoss` as a ``torch.nn.Module`` (``weight`` a buffer)."""

    _object = objects.CrossEntropyLoss


class NLLLoss(_Module):
    """:class:`xce.NLLLoss` as a ``torch.nn.Module`` (``weight`` a buffer)."""

    _object = objects.NLLLoss


class BCELoss(_Module):
    """:class:`xce.BCELoss` as a ``torch.nn.Module`` (``weight`` a buffer)."""

    _object = objects.BCELoss


class BCEWithLogitsLoss(_Module):
    """:class:`xce.BCEWithLogitsLoss` as a ``torch.nn.Module`` (``weight`` and ``pos_weight`` buffers)."""

    _object = objects.BCEWithLogitsLoss


class MultiLabelSoftMarginLoss(_Module):
    """:class:`xce.MultiLabelSoftMarginLoss` as a ``torch.nn.Module`` (``weight`` a buffer)."""

    _object = objects.MultiLabelSoftMarginLoss


class KLDivLoss(_Module):
    """:class:`xce.KLDivLoss` as a ``torch.nn.Module``."""

    _object = objects.KLDivLoss


class SigmoidFocalLoss(_Module):
    """:class:`xce.SigmoidFocalLoss` as a ``torch.nn.Module``."""

    _object = objects.SigmoidFocalLoss


class SoftmaxFocalLoss(_Module):
    """:class:`xce.SoftmaxFocalLoss` as a ``torch.nn.Module`` (``weight`` a buffer)."""

    _object = objects.SoftmaxFocalLoss


class KLDivWithLogitsLoss(_Module):
    """:class:`xce.KLDivWithLogitsLoss` as a ``torch.nn.Module``; ``forward(student_logits, teacher_logits,
    target=None)``."""

    _object = objects.KLDivWithLogitsLoss


class GeneralizedJSDLoss(_Module):
    """:class:`xce.GeneralizedJSDLoss` as a ``torch.nn.Module``; ``forward(student_logits, teacher_logits,
    target=None)``."""

    _object = objects.GeneralizedJSDLoss


class LinearDistillationLoss(_Module):
    """:class:`xce.LinearDistillationLoss` as a ``torch.nn.Module``; holds no head: ``forward(student_hidden,
    student_weight, teacher_hidden, teacher_weight, target=None, *, student_bias=None, teacher_bias=None)``."""

    _object = objects.LinearDistillationLoss


class LinearCrossEntropyLoss(_Module):
    """:func:`xce.linear_cross_entropy` with its configuration held (``weight``, the class weight, a buffer).

    Holds no head, unlike ``torch.nn.LinearCrossEntropyLoss`` (which owns a ``Linear``): the head is
    the model's (often tied to the embedding), passed to ``forward(input, linear_weight, target, *,
    linear_bias=None, sample_weight=None, normalizer=None)``, as Liger-Kernel's
    ``LigerFusedLinearCrossEntropyLoss`` takes it.

    Examples
    --------
    >>> import torch
    >>> from xce import nn as xnn
    >>> loss = xnn.LinearCrossEntropyLoss(z_loss=1e-4, shift=True)
    >>> hidden, head = torch.zeros(2, 5, 8), torch.zeros(11, 8)
    >>> round(float(loss(hidden, head, torch.zeros(2, 5, dtype=torch.long))), 4)  # log 11 + 1e-4 (log 11)²
    2.3985
    """

    def __init__(self, weight: torch.Tensor | None = None, reduction: str = "mean", ignore_index: int | None = None,
                 label_smoothing: float = 0.0, *, z_loss: float = 0.0, softcap: float | None = None,
                 temperature: float = 1.0, shift: bool = False, block_rows: int | None = None) -> None:
        super(_Module, self).__init__()
        if not isinstance(shift, bool):
            raise TypeError(f"shift must be True or False; got {shift!r}.")
        # The checks linear_cross_entropy runs on these arguments (the array-dependent ones run at call time).
        self._hold({
            "weight": weight, "reduction": check_reduction(reduction),
            "ignore_index": None if ignore_index is None else check_integer(ignore_index, "ignore_index"),
            "label_smoothing": check_fraction(label_smoothing, "label_smoothing", traced=True),
            "z_loss": check_real(z_loss, "z_loss", minimum=0.0, traced=True),
            "softcap": None if softcap is None else check_positive(softcap, "softcap",
                                                                    " Pass softcap=None for uncapped logits."),
            "temperature": check_positive(temperature, "temperature", " Pass 1.0 for the plain logits."),
            "shift": shift, "block_rows": _check_block_rows(block_rows, None),
        })

    def forward(self, input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                linear_bias: torch.Tensor | None = None, sample_weight: torch.Tensor | None = None,
                normalizer: Any = None) -> torch.Tensor:
        """The loss of ``input @ linear_weight.T + linear_bias`` against ``target``, never
        materialising the logits; the per-batch arrays as in :func:`xce.linear_cross_entropy`."""
        loss: torch.Tensor = linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                                  sample_weight=sample_weight, normalizer=normalizer, **self._config)
        return loss

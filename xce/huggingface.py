"""Hugging Face Transformers entry points: xce computes a causal LM's training loss.

Two ways in, both optional (``pip install 'xce[huggingface]'``):

* :func:`causal_lm_loss` has the signature and result of Transformers'
  ``ForCausalLMLoss(logits, labels, vocab_size, num_items_in_batch=None, ignore_index=-100,
  shift_labels=None, **kwargs)``; set it as ``model.loss_function`` (or register it with
  :func:`register_loss`). The model still forms its ``(batch, time, vocab)`` logits.
* :func:`patch` makes the model compute its loss from the final hidden states and the output
  embedding with :func:`xce.linear_cross_entropy`, without ever forming the logits, whenever
  ``labels`` are passed (Liger-Kernel's ``apply_liger_kernel_to_*`` and Cut Cross-Entropy's
  ``cce_patch`` do the same). The output then carries ``loss`` and ``logits=None``.
  :func:`unpatch` undoes it.

Usage (offline: a randomly initialised model from a config)::

    import torch, transformers, xce.huggingface
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4)
    model = transformers.LlamaForCausalLM(config)
    xce.huggingface.patch(model)
    ids = torch.randint(0, 256, (2, 16))
    out = model(input_ids=ids, labels=ids)          # out.loss; out.logits is None
    out.loss.backward()

Importing this module imports neither torch nor transformers (they are imported on first use);
``import xce`` does not import this module.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from .linear import linear_cross_entropy
from .losses.cross_entropy import cross_entropy

__all__ = ["causal_lm_loss", "is_patched", "patch", "register_loss", "unpatch"]

# Config attributes that transform the logits after the output embedding in some architectures
# (Cohere's scale, Granite's divisor, ...): the fused loss would silently drop them, so patch refuses.
_UNSUPPORTED_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "output_multiplier_scale", "logit_scaling")
# Keyword arguments that Transformers' heads hand to the loss function, not to the decoder.
_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")


def causal_lm_loss(
    logits: Any,
    labels: Any,
    vocab_size: int,
    num_items_in_batch: Any = None,
    ignore_index: int = -100,
    shift_labels: Any = None,
    **kwargs: Any,
) -> Any:
    """Transformers' ``ForCausalLMLoss``, computed by :func:`xce.cross_entropy`.

    Position ``t`` of ``logits (..., T, vocab_size)`` predicts ``labels[..., t + 1]`` (the last
    position has no target), unless ``shift_labels`` (already shifted, ``logits``' leading shape)
    is given. Positions whose target is ``ignore_index`` are left out. The result is the sum over
    the other positions divided by ``num_items_in_batch`` when given (a Python number or a 0-d
    tensor, which is never read on the host), else their mean (NaN when every position is
    ignored, as in Transformers).

    Half-precision logits are upcast to float32 as in Transformers; float64 logits stay float64
    (Transformers' ``logits.float()`` rounds them to float32). Extra keyword arguments are
    accepted and ignored, as Transformers' loss functions do.

    Parameters
    ----------
    logits : torch.Tensor
        Shape ``(..., T, vocab_size)``.
    labels : torch.Tensor
        Integer class indices, shape ``(..., T)``.
    vocab_size : int
    num_items_in_batch : int or 0-d torch.Tensor, optional
        The denominator (Transformers' ``Trainer`` passes the number of non-ignored targets of
        the whole gradient-accumulation step).
    ignore_index : int, default -100
    shift_labels : torch.Tensor, optional
        Targets already aligned with ``logits`` (no shift is made).

    Returns
    -------
    torch.Tensor
        0-d.
    """
    import torch

    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # Transformers' upcast: the softmax of half-precision logits in float32
    if shift_labels is None:
        # Pad-then-drop keeps every logit position; the last one's target is ignored.
        labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = labels[..., 1:]
    logits = logits.reshape(-1, vocab_size)
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(logits.device)
    return cross_entropy(logits, shift_labels, ignore_index=ignore_index, axis=-1, normalizer=num_items_in_batch)


def register_loss(name: str = "XCEForCausalLM") -> str:
    """Register :func:`causal_lm_loss` in Transformers' ``LOSS_MAPPING`` under ``name``.

    A model whose ``loss_type`` (or ``config.loss_type``) is ``name`` then uses it. Returns
    ``name``.
    """
    from transformers.loss.loss_utils import LOSS_MAPPING

    LOSS_MAPPING[name] = causal_lm_loss
    return name


class _FusedForward:
    """The patched ``forward`` of a causal LM, held on the instance (so ``unpatch`` removes it).

    A callable object rather than a closure: ``copy.deepcopy`` and pickling of the model copy it
    with the model (a closure would keep calling the original model)."""

    def __init__(self, model: Any, previous: Any, options: dict[str, Any]) -> None:
        self.model = model
        self.previous = previous  # an instance-level forward set before patching (e.g. by accelerate), or None
        self.options = options

    def original(self) -> Any:
        if self.previous is not None:
            return self.previous
        return type(self.model).forward.__get__(self.model)

    @property
    def __signature__(self) -> inspect.Signature:
        # Trainer reads the forward's parameters (dataset columns, **kwargs for num_items_in_batch).
        return inspect.signature(self.original())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        original = self.original()
        bound = inspect.signature(original).bind(*args, **kwargs)
        if bound.arguments.get("labels") is None:
            return original(*args, **kwargs)
        return _fused_forward(self.model, bound, self.options)


def _fused_forward(model: Any, bound: inspect.BoundArguments, options: dict[str, Any]) -> Any:
    import torch
    from transformers.modeling_outputs import CausalLMOutputWithPast
    from transformers.modeling_utils import slice_logits_to_keep
    from transformers.utils import ModelOutput

    arguments = dict(bound.arguments)
    parameters = bound.signature.parameters
    extra: dict[str, Any] = {}
    for name, parameter in parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            extra = dict(arguments.pop(name, {}))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and arguments.pop(name, ()):
            raise TypeError(f"xce.huggingface.patch: {type(model).__name__}.forward takes *args; not supported")
    labels = arguments.pop("labels")
    logits_to_keep = arguments.pop("logits_to_keep", 0)
    loss_kwargs = {name: extra.pop(name) for name in _LOSS_KWARGS if name in extra}
    return_dict = extra.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", True)

    outputs = model.base_model(**arguments, **extra)
    hidden = outputs[0]  # last_hidden_state, for a ModelOutput or a tuple
    if not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
        hidden = slice_logits_to_keep(hidden, logits_to_keep)

    head = model.get_output_embeddings()
    ignore_index = loss_kwargs.get("ignore_index", -100)
    normalizer = loss_kwargs.get("num_items_in_batch")
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.to(hidden.device)
    shift_labels = loss_kwargs.get("shift_labels")
    if shift_labels is not None:
        # Targets already aligned with the kept positions (context parallelism, logits_to_keep).
        hidden, target, shift = hidden.reshape(-1, hidden.shape[-1]), shift_labels.reshape(-1), False
    else:
        if tuple(labels.shape) != tuple(hidden.shape[:-1]):
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match the kept positions {tuple(hidden.shape[:-1])}"
                " (logits_to_keep): pass shift_labels for them"
            )
        target, shift = labels, True
    loss = linear_cross_entropy(
        hidden,
        head.weight,
        target.to(hidden.device),
        linear_bias=getattr(head, "bias", None),
        ignore_index=ignore_index,
        normalizer=normalizer,
        shift=shift,
        **options,
    )

    output_class = bound.signature.return_annotation
    if not (isinstance(output_class, type) and issubclass(output_class, ModelOutput)):
        output_class = CausalLMOutputWithPast
    fields = {f.name for f in dataclasses.fields(output_class)} - {"loss", "logits"}
    result = output_class(
        loss=loss,
        logits=None,
        **{name: outputs.get(name) for name in fields if isinstance(outputs, ModelOutput) and name in outputs},
    )
    return result if return_dict else result.to_tuple()


def patch(model: Any, **options: Any) -> Any:
    """Make ``model`` compute its training loss with :func:`xce.linear_cross_entropy`.

    The instance's ``forward`` is wrapped (the class and other instances are untouched). A call
    with ``labels`` runs the base model (``model.base_model``: GPT-2's ``transformer``, Llama's
    ``model``) for the final hidden states, keeps the positions ``logits_to_keep`` selects, and
    scores them against the output embedding (``model.get_output_embeddings()``: its ``weight``,
    tied or not, and ``bias`` if any) with ``linear_cross_entropy(hidden, weight, labels,
    shift=True, ignore_index=-100, normalizer=num_items_in_batch)``, so the loss and every
    gradient equal the unpatched model's, without the ``(batch, time, vocab)`` logits in memory.
    ``shift_labels`` and ``ignore_index`` keyword arguments are honoured as by Transformers' loss.

    The output is the class the model's ``forward`` returns (e.g. ``CausalLMOutputWithPast``)
    with ``loss`` set and ``logits=None``: evaluation that needs the logits with labels
    (``Trainer`` with ``prediction_loss_only=False`` computing metrics) must :func:`unpatch`
    first. A call without ``labels`` is the original ``forward`` (generation is unchanged).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM whose ``forward`` computes ``lm_head(base_model(...).last_hidden_state)``.
        Models that transform the logits after the head (``config.logit_scale``,
        ``logits_scaling``, ...) are refused; ``config.final_logit_softcapping`` (Gemma 2) is
        passed as ``softcap``.
    **options
        Passed to :func:`xce.linear_cross_entropy` (``z_loss``, ``label_smoothing``,
        ``block_rows``, ...).

    Returns
    -------
    model
        The same model, patched. Patching twice raises ``ValueError``.
    """
    if is_patched(model):
        raise ValueError("the model is already patched by xce.huggingface.patch")
    config = getattr(model, "config", None)
    for name in _UNSUPPORTED_LOGIT_TRANSFORMS:
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"xce.huggingface.patch: config.{name} transforms the logits; not supported")
    if getattr(model, "base_model", model) is model:
        raise TypeError(f"xce.huggingface.patch: {type(model).__name__} has no base model under its head")
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None or head.weight.ndim != 2:
        raise TypeError(f"xce.huggingface.patch: {type(model).__name__} has no linear output embedding")
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap is not None:
        options = {"softcap": float(softcap), **options}
    model.__dict__["forward"] = _FusedForward(model, model.__dict__.get("forward"), options)
    return model


def unpatch(model: Any) -> Any:
    """Undo :func:`patch`: the model's ``forward`` is the one it had before. Returns ``model``."""
    fused = model.__dict__.get("forward")
    if not isinstance(fused, _FusedForward):
        raise ValueError("the model is not patched by xce.huggingface.patch")
    if fused.previous is None:
        del model.__dict__["forward"]
    else:
        model.__dict__["forward"] = fused.previous
    return model


def is_patched(model: Any) -> bool:
    """Whether :func:`patch` is in effect on ``model``."""
    return isinstance(getattr(model, "__dict__", {}).get("forward"), _FusedForward)

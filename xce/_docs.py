"""Shared parameter descriptions for docstrings: written once, filled into every function
that takes the same arguments (``{parameters}`` in the docstring)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import TypeVar

__all__ = ["CROSS_ENTROPY_PARAMETERS", "fill_doc"]

F = TypeVar("F", bound=Callable[..., object])

CROSS_ENTROPY_PARAMETERS = """\
input : array
    Logits, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)`` (classes along
    ``axis``). Half-precision inputs are computed in float32.
target : array
    Class indices (any integer dtype) or class probabilities (see above).
weight : array, optional
    Per-class weights, shape ``(C,)``.
ignore_index : int, default -100
    Index targets equal to it contribute nothing (index targets only). It may be a
    real class; that class still takes part in the softmax.
reduction : {"mean", "sum", "none"}, default "mean"
    ``"none"``: the per-position losses; ``"sum"``: their sum; ``"mean"``: the sum divided by
    ``Σ w_y`` over the kept positions (index targets; their count without ``weight``) or by the
    number of positions (probability targets), as above.
label_smoothing : float in [0, 1], default 0.0
    ε of the smoothing (see above and ``label_smoothing_mode``).
axis : int, optional
    The class axis. ``None`` is PyTorch's rule: 0 for 1-D ``input``, else 1. Use
    ``axis=-1`` for ``(batch, time, vocab)`` logits.
label_smoothing_mode : {"uniform", "off_target"}, default "uniform"
    How ``label_smoothing`` spreads its mass (see above). ``"off_target"`` needs C >= 2.
z_loss : float >= 0, default 0.0
    Coefficient of the PaLM z-loss on :math:`\\log Z = \\mathrm{logsumexp}(x)`.
where : bool array, optional
    optax's mask: broadcastable to the per-position loss (``input``'s shape without the class
    axis). Positions where it is False contribute 0 and leave the ``"mean"``'s denominator,
    exactly like ignored positions (index targets: ``Σ w_y`` over the kept ones).
softcap : float > 0, optional
    Soft-cap the logits to :math:`c\\tanh(x/c)` before the softmax (Gemma 2 uses 30).
sample_weight : array, optional
    Per-position weights (the per-position loss's shape): each position's loss is multiplied
    by its weight and ``"mean"`` divides by ``Σ sample_weight · w_y`` over kept positions.
normalizer : float or 0-d array, optional
    ``reduction="mean"`` only: the loss is the (weighted) sum over positions divided by it,
    e.g. the token count of the whole accumulated batch. An array is never read (no sync)."""


def fill_doc(parameters: str | None = None, /, **fragments: str) -> Callable[[F], F]:
    """Put ``parameters`` where the docstring says ``{parameters}``, and each keyword's text
    where it says ``{keyword}`` (every occurrence, indented to match)."""
    texts = fragments if parameters is None else {"parameters": parameters, **fragments}

    def decorate(fn: F) -> F:
        doc = fn.__doc__ or ""
        for name, text in texts.items():
            marker, at = "{" + name + "}", doc.find("{" + name + "}")
            while at >= 0:
                indent = doc[doc.rfind("\n", 0, at) + 1 : at]
                body = textwrap.indent(text, indent)[len(indent) :]
                doc = doc[:at] + body + doc[at + len(marker) :]
                at = doc.find(marker, at + len(body))
        if fn.__doc__:
            fn.__doc__ = doc
        return fn

    return decorate

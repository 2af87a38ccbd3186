r"""``linear_distillation_loss``: distillation between two LM heads, without either model's logits.

The student's logits :math:`s = h_s W_s^\top + b_s` and the teacher's
:math:`t = h_t W_t^\top + b_t` are each ``(N, V)``; for a language model's vocabulary they
dwarf everything else. Here the rows are taken in blocks: each block's two logits live only
while their log-softmaxes, the per-row divergence and the gradient :math:`G` w.r.t. the
block's student logits are formed, and with gradients requested the same sweep gives
:math:`\partial L/\partial h_s = G W_s`, :math:`\partial L/\partial W_s \mathrel{+}= G^\top h_s`
and :math:`\partial L/\partial b_s \mathrel{+}= \sum_i G_i` (the approach of Liger-Kernel's
fused linear JSD, Hsu et al., 2024). The teacher is a constant: no gradient reaches
:math:`h_t`, :math:`W_t` or :math:`b_t`.

The divergence, its reduction and its gradient rule are those of
:mod:`xce.losses.distillation` (:func:`~xce.losses.distillation.log_probs`,
:func:`~xce.losses.distillation.pointwise`, :func:`~xce.losses.distillation.logits_gradient`,
:func:`~xce.losses.distillation.reduce_divergence`), applied to one block at a time; this
module only orchestrates.

Memory: a block's rows are chosen so that its two ``(rows, V)`` logits fill the engine's
matmul block (:func:`xce._engine.block_bytes`, 64 MiB; ``xce.config(block_rows=)`` or
``block_rows=`` override it); the log-softmaxes and the divergence's temporaries bring the
peak to about sixteen ``(rows, V)`` arrays, and ``dW`` is accumulated a vocabulary chunk at a
time, so the extra memory is O(rows·V + V_chunk·D), not O(N·V). (Inputs whose logits fit in
one block take one.)

Eager arrays (NumPy, PyTorch, CuPy, array-api-strict) take the blocked path; PyTorch tensors
that require grad go through a ``torch.autograd.Function`` (:mod:`xce.adapters.torch`) that
computes the gradients during the forward sweep. JAX, Dask and traced PyTorch
(``torch.compile``, ``torch.func``) take the unfused formula ``generalized_jsd(h_s W_s^T + b_s,
h_t W_t^T + b_t, ...)`` with the teacher's logits cut from autodiff; XLA and Dask schedule it
themselves (and may materialise the logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from . import _engine
from ._namespace import (
    Array,
    Namespace,
    as_dtype,
    compute_dtype,
    device_of,
    is_lazy,
    is_traced,
    namespace,
    on_input_device,
)
from ._policy import TABLE
from ._registry import adapter_hook
from ._signatures import derivative_of
from ._validate import check_choice, check_floating, check_fraction, check_integer, check_same_device
from .losses.distillation import (
    DistillationArgs,
    check_hyperparameters,
    divergence,
    gradient,
    ignore_mask,
    log_mixture,
    log_probs,
    logits_gradient,
    pointwise,
    position_scale,
    reduce_divergence,
)

__all__ = ["LOSSES", "Checked", "Heads", "fused", "linear_distillation_loss",
           "value_and_grad_linear_distillation_loss"]

#: ``loss=`` choices and the ``beta`` each stands for (None: the ``beta`` argument).
LOSSES: dict[str, float | None] = {"jsd": None, "forward_kl": 0.0, "reverse_kl": 1.0}
# Elements of one (v_chunk, D) slice of a block's dW product (8 MiB in float32).
_CHUNK_ELEMENTS = TABLE["vocab_chunk_elements"].value


class Heads(NamedTuple):
    """The two models' last hidden states and output layers (biases may be None)."""

    student_hidden: Array
    student_weight: Array
    student_bias: Array | None
    teacher_hidden: Array
    teacher_weight: Array
    teacher_bias: Array | None


class Checked(NamedTuple):
    """The checked arguments: the distillation's own (class axis last), the divergence's
    ``beta`` (0: forward KL, 1: reverse KL) and the ``"batchmean"`` divisor."""

    args: DistillationArgs
    beta: Any
    batch: int


class Result(NamedTuple):
    loss: Array | None
    d_hidden: Array | None
    d_weight: Array | None
    d_bias: Array | None


# --- the functions ---------------------------------------------------------------------------


@on_input_device
def linear_distillation_loss(
    student_hidden: Array,
    student_weight: Array,
    teacher_hidden: Array,
    teacher_weight: Array,
    target: Array | None = None,
    *,
    loss: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    softcap: float | None = None,
    student_bias: Array | None = None,
    teacher_bias: Array | None = None,
    block_rows: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Distillation loss between two linear heads, never materialising either model's logits.

    Equal to ``generalized_jsd(student_hidden @ student_weight.T + student_bias,
    teacher_hidden @ teacher_weight.T + teacher_bias, target, beta=beta, axis=-1, ...)``
    with the teacher held constant. With :math:`P = \mathrm{softmax}(\mathrm{cap}(t)/T)`
    (teacher), :math:`Q = \mathrm{softmax}(\mathrm{cap}(s)/T)` (student) and
    :math:`M = \beta P + (1-\beta) Q`, per position

    .. math::
       \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(P\,\|\,M) + (1-\beta)\,\mathrm{KL}(Q\,\|\,M),

    the generalized JSD of Agarwal et al., "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes" (GKD, 2024); ``loss="forward_kl"`` is
    :math:`\mathrm{KL}(P\|Q)` (Hinton et al., "Distilling the Knowledge in a Neural
    Network", 2015; also ``beta=0``) and ``loss="reverse_kl"`` :math:`\mathrm{KL}(Q\|P)`
    (also ``beta=1``). Eager arrays are evaluated in blocks of rows, so the extra memory is
    O(block_rows · V), not O(N · V); on PyTorch tensors that require grad, ``.backward()``
    fills the student's gradients from the same sweep. Gradients reach the student's
    hidden states, weight and bias only; the teacher is a constant on every backend.

    Parameters
    ----------
    student_hidden : array
        Shape ``(..., D_s)``: the student's last hidden states (``(N, D_s)`` or ``(B, T, D_s)``).
    student_weight : array
        Shape ``(V, D_s)``, ``student_hidden``'s dtype (a linear layer's ``(out_features,
        in_features)``).
    teacher_hidden : array
        Shape ``(..., D_t)``: the same leading shape as ``student_hidden``; ``D_t`` may differ.
    teacher_weight : array
        Shape ``(V, D_t)``: the same vocabulary ``V``. Both models share one dtype.
    target : array, optional
        Integer labels of shape ``student_hidden.shape[:-1]``, only used to mask: positions
        equal to ``ignore_index`` contribute 0 and are left out of ``"mean"``.
    loss : {"jsd", "forward_kl", "reverse_kl"}, default "jsd"
    beta : float in [0, 1], default 0.5
        The teacher's weight in the mixture of ``loss="jsd"`` (0 and 1 are the two KL
        divergences, as in :func:`xce.generalized_jsd`); checked but unused by the KL losses.
    temperature : float > 0, default 1.0
        Both distributions are taken at this temperature; the loss is not multiplied by
        ``temperature**2``.
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none", "batchmean"}, default "mean"
        ``"mean"``: over the non-ignored positions (all positions without ``target``);
        ``"none"``: ``student_hidden.shape[:-1]``; ``"batchmean"``: the sum over the logits'
        ``shape[0]`` (``B`` for ``(B, T, D)`` hidden states), as :func:`xce.generalized_jsd`.
    softcap : float > 0, optional
        Both models' logits become ``softcap * tanh(logits / softcap)`` before the temperature.
    student_bias, teacher_bias : array, optional
        Shape ``(V,)``.
    block_rows : int, optional
        Rows per block on eager backends (default: from ``xce.config`` / the engine's policy).
    xp : namespace, optional

    Returns
    -------
    array
        ``student_hidden``'s library, device and dtype: 0-d, or ``student_hidden.shape[:-1]``
        for ``"none"``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> hs, Ws = np.asarray([[1.0, 0.0], [0.0, 1.0]]), np.asarray([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> ht, Wt = np.asarray([[1.0], [-1.0]]), np.asarray([[1.0], [0.0], [-1.0]])
    >>> fused = xce.linear_distillation_loss(hs, Ws, ht, Wt, loss="forward_kl", temperature=2.0)
    >>> unfused = xce.kl_div_with_logits(hs @ Ws.T, ht @ Wt.T, temperature=2.0)
    >>> bool(np.isclose(fused, unfused))
    True
    """
    heads = Heads(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias)
    xp, heads, checked = _prepare(heads, target, None, (loss, beta, temperature, ignore_index, reduction, softcap,
                                                        block_rows), xp)
    if is_lazy(student_hidden) or is_traced(student_hidden):  # JAX, Dask, torch.compile / torch.func
        return divergence(*_logits(heads, xp=xp), checked.args, checked.beta, xp=xp)
    wants = adapter_hook(student_hidden, "wants_linear_distillation")
    if wants is not None and wants(student_hidden, student_weight, student_bias):
        return adapter_hook(student_hidden, "linear_distillation_loss")(heads, checked, block_rows)
    return fused(heads, checked, cotangent=None, wants=None, block_rows=block_rows, xp=xp).loss


@derivative_of(linear_distillation_loss, before="block_rows", fused=True,
               returns="tuple[Array, tuple[Array, Array, Array | None]]")
@on_input_device
def value_and_grad_linear_distillation_loss(
        student_hidden: Array, student_weight: Array, teacher_hidden: Array, teacher_weight: Array,
        target: Array | None, *, loss: str, beta: float, temperature: float, ignore_index: int, reduction: str,
        softcap: float | None, student_bias: Array | None, teacher_bias: Array | None, cotangent: Array | None,
        block_rows: int | None, xp: Namespace | None) -> tuple[Array, tuple[Array, Array, Array | None]]:
    r"""``(loss, (d_student_hidden, d_student_weight, d_student_bias))`` of
    :func:`linear_distillation_loss`, in one blocked sweep.

    With :math:`G` the gradient w.r.t. the student's logits (the rule of
    :func:`xce.losses.distillation.generalized_jsd_grad`, formed block by block):
    :math:`\partial L/\partial h_s = G W_s`, :math:`\partial L/\partial W_s = G^\top h_s`,
    :math:`\partial L/\partial b_s = \sum_i G_i` (None without ``student_bias``). The
    teacher gets none. ``cotangent`` as in :mod:`xce.grad`. JAX and Dask use the unfused
    formula.

    Examples
    --------
    >>> import numpy as np, xce
    >>> h, W = np.ones((2, 3)), np.zeros((4, 3))
    >>> loss, (dh, dW, db) = xce.value_and_grad(xce.linear_distillation_loss)(h, W, h, W)
    >>> abs(float(loss)) < 1e-12, dh.shape, dW.shape, db is None  # identical heads
    (True, (2, 3), (4, 3), True)
    """
    heads = Heads(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias)
    xp, heads, checked = _prepare(heads, target, cotangent, (loss, beta, temperature, ignore_index, reduction,
                                                             softcap, block_rows), xp)
    if is_lazy(student_hidden) or is_traced(student_hidden):
        return _unfused_value_and_grad(heads, checked, cotangent, xp=xp)
    out = fused(heads, checked, cotangent=cotangent, wants=(True, True, True), block_rows=block_rows, xp=xp)
    return out.loss, (out.d_hidden, out.d_weight, out.d_bias)


# --- checks ----------------------------------------------------------------------------------


def _prepare(heads: Heads, target: Array | None, cotangent: Array | None, options: tuple[Any, ...],
             xp: Namespace | None) -> tuple[Namespace, Heads, Checked]:
    """The namespace, the heads with the teacher made a constant, and the checked ``options``
    (``loss, beta, temperature, ignore_index, reduction, softcap, block_rows``)."""
    arrays = {**heads._asdict(), "target": target, "cotangent": cotangent}
    # Only present arrays are named: "target" may not be None in namespace().
    present = {name: a for name, a in arrays.items() if a is not None}
    xp = namespace(tuple(present), *present.values(), xp=xp)
    checked = check_arguments(heads, target, *options, xp=xp)
    return xp, _constant_teacher(heads), checked


def check_arguments(heads: Heads, target: Array | None, loss: object, beta: object, temperature: object,
                    ignore_index: object, reduction: object, softcap: object, block_rows: object, *,
                    xp: Namespace) -> Checked:
    """Every check of :func:`linear_distillation_loss`'s arguments; the hyper-parameters and the
    target by the distillation module's own checks."""
    kind = check_choice(loss, "loss", tuple(LOSSES))
    b = check_fraction(beta, "beta", traced=True)
    reduction, ignore_index, temperature, softcap = check_hyperparameters(temperature, ignore_index, reduction,
                                                                          softcap, xp=xp)
    if block_rows is not None and check_integer(block_rows, "block_rows") < 1:
        raise ValueError(f"block_rows must be a positive integer or None (the default policy); got {block_rows!r}.")
    sh, sw = heads.student_hidden, heads.student_weight
    _check_head("student", sh, sw, heads.student_bias, xp=xp)
    _check_head("teacher", heads.teacher_hidden, heads.teacher_weight, heads.teacher_bias, xp=xp)
    _check_pair(heads)
    lead = tuple(sh.shape[:-1])
    described = f"student_hidden's shape {tuple(sh.shape)} without its last axis"
    ignore = ignore_mask(target, ignore_index, lead, described, sh, xp=xp)
    args = DistillationArgs(reduction, sh.ndim - 1, temperature, softcap, ignore)
    fixed = LOSSES[kind]
    return Checked(args, b if fixed is None else fixed, (*lead, sw.shape[0])[0])


def _check_head(who: str, hidden: Array, weight: Array, bias: Array | None, *, xp: Namespace) -> None:
    """One model's hidden states ``(..., D)``, weight ``(V, D)`` and bias ``(V,)``: one dtype, one device."""
    h, w, b = f"{who}_hidden", f"{who}_weight", f"{who}_bias"
    check_floating(hidden, h, xp=xp)
    check_floating(weight, w, xp=xp)
    if hidden.ndim < 1:
        raise ValueError(f"{h} must have a feature axis (the last one); got a 0-d array. Pass shape (N, D).")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"{w} must have shape (V, D) = (vocabulary, {hidden.shape[-1]}) with V >= 1, to match {h}'s last "
            f"axis; got shape {tuple(weight.shape)}. It is the (out_features, in_features) matrix of a linear layer."
        )
    arrays = [(w, weight)] if bias is None else [(w, weight), (b, bias)]
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{b} must have shape ({weight.shape[0]},), one entry per class; got {tuple(bias.shape)}.")
    for name, a in arrays:
        if a.dtype != hidden.dtype:
            raise TypeError(f"{h} ({hidden.dtype}) and {name} ({a.dtype}) must have the same dtype; cast one.")
        if not is_lazy(hidden):
            check_same_device(hidden, a, name)


def _check_pair(heads: Heads) -> None:
    """Teacher and student: the same positions (leading shape), vocabulary and dtype; D may differ."""
    sh, th = heads.student_hidden, heads.teacher_hidden
    if tuple(th.shape[:-1]) != tuple(sh.shape[:-1]):
        raise ValueError(
            f"teacher_hidden of shape {tuple(th.shape)} and student_hidden of shape {tuple(sh.shape)} must have the "
            "same leading shape (the same positions N); only the last axis, the hidden size D, may differ."
        )
    vs, vt = heads.student_weight.shape[0], heads.teacher_weight.shape[0]
    if vt != vs:
        raise ValueError(
            f"teacher_weight has {vt} rows (classes) but student_weight has {vs}: both heads must score the same "
            "vocabulary V (pad or slice the larger one)."
        )
    if th.dtype != sh.dtype:
        raise TypeError(
            f"student_hidden ({sh.dtype}) and teacher_hidden ({th.dtype}) must have the same dtype; cast the teacher "
            "(hidden states, weight and bias)."
        )
    if not is_lazy(sh):
        check_same_device(sh, th, "teacher_hidden")


# --- the unfused formula (JAX, Dask, traced PyTorch) -------------------------------------------


def _constant_teacher(heads: Heads) -> Heads:
    """The teacher's arrays cut from autodiff where the library has one (``stop_gradient``)."""
    stop = adapter_hook(heads.teacher_hidden, "stop_gradient")
    if stop is None:
        return heads
    tb = heads.teacher_bias
    return heads._replace(teacher_hidden=stop(heads.teacher_hidden), teacher_weight=stop(heads.teacher_weight),
                          teacher_bias=None if tb is None else stop(tb))


def _affine(h: Array, w: Array, b: Array | None, *, xp: Namespace) -> Array:
    x = h @ xp.matrix_transpose(w)
    return x if b is None else x + b


def _logits(heads: Heads, *, xp: Namespace) -> tuple[Array, Array]:
    """Both models' whole logits, ``(..., V)``."""
    return (_affine(heads.student_hidden, heads.student_weight, heads.student_bias, xp=xp),
            _affine(heads.teacher_hidden, heads.teacher_weight, heads.teacher_bias, xp=xp))


def _unfused_value_and_grad(heads: Heads, checked: Checked, cotangent: Array | None, *,
                            xp: Namespace) -> tuple[Array, tuple[Array, Array, Array | None]]:
    """The loss and the student's gradients through the whole logits (the chain rule by hand)."""
    s, t = _logits(heads, xp=xp)
    loss = divergence(s, t, checked.args, checked.beta, xp=xp)
    g = gradient(s, t, checked.args, checked.beta, cotangent, xp=xp)
    h = heads.student_hidden
    g2 = xp.reshape(g, (-1, g.shape[-1]))
    d_weight = xp.matrix_transpose(g2) @ xp.reshape(h, (-1, h.shape[-1]))
    d_bias = None if heads.student_bias is None else xp.sum(g2, axis=0)
    return loss, (xp.reshape(g2 @ heads.student_weight, tuple(h.shape)), d_weight, d_bias)


# --- the blocked sweep (eager arrays) ----------------------------------------------------------


@dataclass
class _Sweep:
    """One blocked sweep: the heads as 2-D arrays, the block arguments and what accumulates."""

    hs: Array  # student_hidden as (N, D_s)
    ht: Array  # teacher_hidden as (N, D_t)
    heads: Heads
    args: DistillationArgs  # class axis 1 (a block's (rows, V) logits), no mask
    beta: Any
    dtype: Any  # the compute dtype
    rows: int
    v_chunk: int
    ignored: Any = None  # (N,) mask, or None
    scale: Any = None  # per-row gradient scale (N,) or a scalar; None without gradients
    per_row: Any = None  # (N,) divergences; None without the loss
    d_hidden: Any = None
    d_weight: Any = None  # in the compute dtype
    d_bias: Any = None  # in the compute dtype


def fused(heads: Heads, checked: Checked, *, cotangent: Array | None, wants: tuple[bool, bool, bool] | None,
          want_loss: bool = True, block_rows: int | None = None, xp: Namespace) -> Result:
    """The blocked sweep (eager arrays, checked arguments): the loss and/or the student's
    gradients. ``wants``: which of ``(d_hidden, d_weight, d_bias)`` to form (None: none)."""
    sw = _start(heads, checked, cotangent, wants, want_loss, block_rows, xp=xp)
    n = sw.hs.shape[0]
    for i0 in range(0, n, sw.rows):
        _block(sw, i0, min(i0 + sw.rows, n), xp=xp)
    return _finish(sw, checked, xp=xp)


def _block_rows(hidden: Array, n: int, vocab: int, dtype: Any, block_rows: int | None, *, xp: Namespace) -> int:
    rows = block_rows if block_rows is not None else _engine.options().get("block_rows")
    if rows is None:  # the engine's matmul block holds the block's two (rows, V) logits
        rows = _engine.block_bytes(hidden, "matmul") // (2 * vocab * (xp.finfo(dtype).bits // 8))
    return max(1, min(int(rows), n))


def _start(heads: Heads, checked: Checked, cotangent: Array | None, wants: tuple[bool, bool, bool] | None,
           want_loss: bool, block_rows: int | None, *, xp: Namespace) -> _Sweep:
    sh, sw_ = heads.student_hidden, heads.student_weight
    (vocab, d_s), dtype, dev = sw_.shape, compute_dtype(sh.dtype, xp=xp), device_of(sh)
    hs = xp.reshape(sh, (-1, d_s))
    ht = xp.reshape(heads.teacher_hidden, (-1, heads.teacher_hidden.shape[-1]))
    n, args = hs.shape[0], checked.args
    beta = checked.beta if isinstance(checked.beta, float) else as_dtype(checked.beta, dtype, xp=xp)
    sweep = _Sweep(hs, ht, heads, args._replace(ax=1, ignore=None), beta, dtype,
                   _block_rows(sh, n, vocab, dtype, block_rows, xp=xp), max(1, _CHUNK_ELEMENTS // max(d_s, 1)))
    if args.ignore is not None:
        sweep.ignored = xp.reshape(args.ignore.ignored, (-1,))
    if want_loss:
        sweep.per_row = xp.zeros((n,), dtype=dtype, device=dev)
    if wants is not None and any(wants):
        cot = cotangent if cotangent is None or args.reduction != "none" else xp.reshape(cotangent, (-1,))
        sweep.scale = position_scale(cot, args, xp.empty((n,), dtype=dtype, device=dev), checked.batch, dtype,
                                     xp=xp)
        if wants[0]:
            sweep.d_hidden = xp.empty((n, d_s), dtype=sh.dtype, device=dev)
        if wants[1]:
            sweep.d_weight = xp.zeros((vocab, d_s), dtype=dtype, device=dev)
        if wants[2] and heads.student_bias is not None:
            sweep.d_bias = xp.zeros((vocab,), dtype=dtype, device=dev)
    return sweep


def _block(sw: _Sweep, i0: int, i1: int, *, xp: Namespace) -> None:
    """Rows i0:i1: both models' logits and log-softmaxes, the divergence, the student's gradients."""
    h = sw.heads
    hs = sw.hs[i0:i1, ...]
    s = as_dtype(_affine(hs, h.student_weight, h.student_bias, xp=xp), sw.dtype, xp=xp)
    t = as_dtype(_affine(sw.ht[i0:i1, ...], h.teacher_weight, h.teacher_bias, xp=xp), sw.dtype, xp=xp)
    log_p = log_probs(t, sw.args, sw.dtype, xp=xp)
    del t
    log_q = log_probs(s, sw.args, sw.dtype, xp=xp)
    log_m = log_mixture(log_p, log_q, sw.beta, xp=xp)  # once for the loss and the gradient
    if sw.per_row is not None:  # masked at the end, with the whole mask
        sw.per_row[i0:i1] = xp.sum(pointwise(log_p, log_q, sw.beta, xp=xp, log_m=log_m), axis=1)
    if sw.scale is None:
        return
    scale = sw.scale if isinstance(sw.scale, float) or sw.scale.ndim == 0 else xp.expand_dims(sw.scale[i0:i1], axis=1)
    ignored = None if sw.ignored is None else sw.ignored[i0:i1]
    g = logits_gradient(s, log_p, log_q, sw.args, sw.beta, scale, ignored, sw.dtype, xp=xp, log_m=log_m)
    del s, log_p, log_q, log_m
    if sw.d_bias is not None:
        sw.d_bias += xp.sum(g, axis=0)
    g = as_dtype(g, hs.dtype, xp=xp)  # the products in the input dtype, as the unfused backward's
    if sw.d_hidden is not None:
        sw.d_hidden[i0:i1, ...] = g @ h.student_weight
    if sw.d_weight is not None:  # a vocabulary chunk at a time: (v_chunk, D) temporaries, not (V, D)
        vocab = g.shape[1]
        for v0 in range(0, vocab, sw.v_chunk):
            v1 = min(v0 + sw.v_chunk, vocab)
            part = as_dtype(xp.matrix_transpose(g[:, v0:v1]) @ hs, sw.dtype, xp=xp)
            sw.d_weight[v0:v1, ...] = sw.d_weight[v0:v1, ...] + part


def _finish(sw: _Sweep, checked: Checked, *, xp: Namespace) -> Result:
    """The reduced loss (masked with the whole mask) and the gradients in their inputs' dtypes."""
    sh = sw.heads.student_hidden
    loss = None
    if sw.per_row is not None:
        per_row = xp.reshape(sw.per_row, tuple(sh.shape[:-1]))
        loss = reduce_divergence(per_row, checked.args, checked.batch, sh.dtype, xp=xp)
    d_hidden = None if sw.d_hidden is None else xp.reshape(sw.d_hidden, tuple(sh.shape))
    d_weight = None if sw.d_weight is None else as_dtype(sw.d_weight, sh.dtype, xp=xp)
    d_bias = None if sw.d_bias is None else as_dtype(sw.d_bias, sh.dtype, xp=xp)
    return Result(loss, d_hidden, d_weight, d_bias)

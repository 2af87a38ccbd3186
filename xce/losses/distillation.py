r"""Distillation losses on logits: ``kl_div_with_logits`` and ``generalized_jsd``, their checks,
their per-position divergence and their gradient rule, in one place.

Notation: ``s`` student logits, ``t`` teacher logits, classes along ``axis``; ``T`` the
temperature; :math:`\mathrm{cap}(x) = c\,\tanh(x/c)` the optional soft cap;
:math:`P = \mathrm{softmax}(\mathrm{cap}(t)/T)` the teacher's distribution,
:math:`Q = \mathrm{softmax}(\mathrm{cap}(s)/T)` the student's, and with :math:`0 < \beta < 1`
the mixture :math:`M = \beta P + (1-\beta) Q`. Per position:

* forward KL :math:`\sum_c P_c(\log P_c - \log Q_c)`; gradient w.r.t. the scaled student
  logits :math:`Q - P`;
* reverse KL :math:`\sum_c Q_c(\log Q_c - \log P_c)`; gradient :math:`Q \odot (r - \sum_k Q_k r_k)`
  with :math:`r = \log Q - \log P`;
* generalized JSD :math:`\beta\,\mathrm{KL}(P\|M) + (1-\beta)\,\mathrm{KL}(Q\|M)`; since
  :math:`\partial/\partial Q_c = (1-\beta)(\log Q_c - \log M_c)`, the gradient is
  :math:`(1-\beta)\,Q \odot (r - \sum_k Q_k r_k)` with :math:`r = \log Q - \log M`.

Everything is computed from the two log-softmaxes (``log M`` as a two-term logsumexp), and a
class whose weighting probability is 0 contributes exactly 0, also where the other
log-probability is ``-inf`` (a masked vocabulary), in the value and in the gradient. The
gradient w.r.t. ``s`` is the above times :math:`1/T` and, with a soft cap,
:math:`1 - \tanh^2(s/c)`.

The same pieces (:func:`check_hyperparameters`, :func:`ignore_mask`, :func:`log_probs`,
:func:`pointwise`, :func:`reduce_divergence`, :func:`position_scale`, :func:`logits_gradient`)
serve the fused linear loss (:mod:`xce.linear_distillation`), one block of rows at a time.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .. import _engine
from .._arrays import axis_length, expand_at, like_input, positions_like
from .._docs import fill_doc
from .._namespace import Array, Namespace, as_dtype, compute_dtype, device_of, is_lazy, namespace, on_input_device
from .._reduce import per_count, reduce_loss, reduction_scale
from .._registry import adapter_hook
from .._scoring import scored_logits, scored_logits_gradient
from .._signatures import derivative_of
from .._softmax import finite_or_zero, shift_and_logsumexp
from .._targets import IndexTarget, mask_loss, mean_weights
from .._validate import (
    check_choice,
    check_classes,
    check_floating,
    check_fraction,
    check_integer,
    check_real,
    check_reduction,
    check_same_device,
    class_axis,
)

__all__ = [
    "DistillationArgs",
    "check_arguments",
    "check_hyperparameters",
    "divergence",
    "generalized_jsd",
    "generalized_jsd_grad",
    "gradient",
    "gradients",
    "ignore_mask",
    "kl_div_with_logits",
    "kl_div_with_logits_grad",
    "log_mixture",
    "log_probs",
    "log_probs_and_norm",
    "logits_gradient",
    "pointwise",
    "position_scale",
    "reduce_divergence",
]

REDUCTIONS = ("none", "mean", "sum", "batchmean")
DIRECTIONS = ("forward", "reverse")

DISTILLATION_PARAMETERS = """\
student_logits : array
    The student's logits, shape ``(C,)``, ``(N, C)``, ``(N, C, d1, ..., dk)`` or, with
    ``axis=-1``, ``(B, T, V)``. Half precision is computed in float32 and the result
    returned in the input dtype.
teacher_logits : array
    The teacher's logits: ``student_logits``'s shape, dtype and library. Gradients flow into
    it too under autodiff unless you detach it (``.detach()``, ``jax.lax.stop_gradient``).
target : array, optional
    Integer labels of shape ``student_logits.shape`` without the class axis. Only used to
    mask: positions equal to ``ignore_index`` contribute 0 and are left out of ``"mean"``.
    The values are not range-checked (they are never gathered).
temperature : float > 0, default 1.0
    Both distributions are taken at this temperature. The loss is **not** multiplied by
    ``temperature**2`` (Hinton et al., "Distilling the Knowledge in a Neural Network",
    2015, do, to keep the gradient's scale independent of ``T``): multiply the result
    yourself. May be a traced JAX 0-d array (then a value <= 0 gives NaN).
ignore_index : int, default -100
reduction : {"mean", "sum", "none", "batchmean"}, default "mean"
    ``"mean"``: the average over the non-ignored positions (NaN when every position is
    ignored); ``"sum"``; ``"none"``: one value per position (0 at ignored ones);
    ``"batchmean"``: the sum divided by ``student_logits.shape[0]``, as in
    :func:`xce.kl_div` and PyTorch (for ``(B, T, V)`` logits that is ``B``, not ``B·T``).
axis : int, optional
    The class axis. ``None`` is PyTorch's rule: 0 for 1-D logits, else 1. Use ``axis=-1``
    for ``(batch, time, vocab)`` logits.
softcap : float > 0, optional
    When given, both logits are first replaced by ``softcap * tanh(logits / softcap)``
    (Gemma 2's final-logit soft-capping), before the temperature. May be traced.
xp : namespace, optional
    The array namespace, to skip inference."""


# --- arguments ------------------------------------------------------------------------------


class DistillationArgs(NamedTuple):
    """The checked arguments shared by the losses and their gradients."""

    reduction: str
    ax: int  #: the class axis, non-negative
    temperature: Any  #: a float > 0, or a traced 0-d array (NaN where <= 0)
    softcap: Any  #: None, a float > 0, or a traced 0-d array
    ignore: IndexTarget | None  #: positions equal to ignore_index; None without ``target``


def _namespace(student: Array, teacher: Array, target: Array | None, cotangent: Array | None,
               xp: Namespace | None) -> Namespace:
    names = ["student_logits", "teacher_logits"]
    arrays = [student, teacher]
    # Only present optional arrays are named: "target" may not be None in namespace().
    for name, a in (("target", target), ("cotangent", cotangent)):
        if a is not None:
            names.append(name)
            arrays.append(a)
    return namespace(tuple(names), *arrays, xp=xp)


def _positive(value: object, name: str, hint: str, *, xp: Namespace) -> Any:
    """A finite float > 0; a traced 0-d array passes, NaN where it is not > 0."""
    out = check_real(value, name, traced=True, hint=hint)
    if isinstance(out, float):
        if out <= 0.0:
            raise ValueError(f"{name} must be a finite float > 0; got {value!r}.{hint}")
        return out
    return xp.where(out > 0.0, out, float("nan"))


def check_hyperparameters(temperature: object, ignore_index: object, reduction: object, softcap: object, *,
                          xp: Namespace) -> tuple[str, int, Any, Any]:
    """``(reduction, ignore_index, temperature, softcap)`` checked (shared with the fused linear loss)."""
    reduction = check_reduction(reduction, REDUCTIONS)
    ignore_index = check_integer(ignore_index, "ignore_index")
    temperature = _positive(temperature, "temperature", " Pass 1.0 for the plain distributions.", xp=xp)
    if softcap is not None:
        softcap = _positive(softcap, "softcap", " Pass softcap=None to leave the logits uncapped.", xp=xp)
    return reduction, ignore_index, temperature, softcap


def ignore_mask(target: Array | None, ignore_index: int, expected: tuple[int, ...], described: str, like: Array, *,
                xp: Namespace) -> IndexTarget | None:
    """The positions of ``target`` equal to ``ignore_index`` (None without a target, or where
    none can be). ``expected``: the positions' shape; ``described``: the array it comes from,
    for the error message; ``like``: an array on the expected device."""
    if target is None:
        return None
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(
            f"target must hold integer labels of shape {expected} (only the positions equal to ignore_index "
            f"are used, to mask them); got dtype {target.dtype}."
        )
    if tuple(target.shape) != expected:
        raise ValueError(f"target shape {tuple(target.shape)} does not match {described}; expected {expected}.")
    if not is_lazy(like):
        check_same_device(like, target, "target")
    info = xp.iinfo(target.dtype)
    # A uint8 target can never equal -100 (and comparing would overflow in strict namespaces).
    if info.min <= ignore_index <= info.max:
        return IndexTarget(target, target == ignore_index, None)
    return None


def check_arguments(student: Array, teacher: Array, target: Array | None, temperature: object, ignore_index: object,
                    reduction: object, axis: int | None, softcap: object, *, xp: Namespace) -> DistillationArgs:
    """Every check of the distillation losses' arguments (shared with their gradients)."""
    reduction, ignore_index, temperature, softcap = check_hyperparameters(temperature, ignore_index, reduction,
                                                                          softcap, xp=xp)
    check_floating(student, "student_logits", xp=xp)
    check_floating(teacher, "teacher_logits", xp=xp)
    if tuple(teacher.shape) != tuple(student.shape):
        raise ValueError(
            f"teacher_logits of shape {tuple(teacher.shape)} must have student_logits's shape "
            f"{tuple(student.shape)} (the same positions and the same classes)."
        )
    if teacher.dtype != student.dtype:
        raise TypeError(
            f"student_logits ({student.dtype}) and teacher_logits ({teacher.dtype}) must have the same dtype; "
            "cast one, e.g. xp.astype(teacher_logits, student_logits.dtype)."
        )
    ax = class_axis(student, axis, "student_logits")
    check_classes(student, ax, "student_logits")
    if not is_lazy(student):
        check_same_device(student, teacher, "teacher_logits")
    expected = tuple(student.shape[:ax]) + tuple(student.shape[ax + 1 :])
    described = f"student_logits shape {tuple(student.shape)} with the class axis {ax} removed"
    ignore = ignore_mask(target, ignore_index, expected, described, student, xp=xp)
    return DistillationArgs(reduction, ax, temperature, softcap, ignore)


# --- the divergence -------------------------------------------------------------------------


def _scalar(v: Any, dtype: Any, *, xp: Namespace) -> Any:
    """A hyper-parameter in the compute dtype (a traced one would otherwise promote)."""
    return v if isinstance(v, float) else as_dtype(v, dtype, xp=xp)


def log_probs(x: Array, args: DistillationArgs, dtype: Any, *, xp: Namespace, norm: Array | None = None) -> Array:
    """``log_softmax(cap(x) / T)`` along the class axis, in ``dtype``. ``norm``: its per-position
    log-normaliser (the class axis kept) from :func:`log_probs_and_norm`, saved by a forward
    pass: then no reduction over the classes is made."""
    if norm is None:
        return log_probs_and_norm(x, args, dtype, xp=xp)[0]
    return _capped_scaled(x, args, dtype, xp=xp) - norm


def log_probs_and_norm(x: Array, args: DistillationArgs, dtype: Any, *, xp: Namespace) -> tuple[Array, Array]:
    """``(log_softmax(z), logsumexp(z))`` with ``z = cap(x) / T``, along the class axis (kept
    in the second: O(positions), what a backward pass needs to skip the reductions)."""
    shifted, m, lse = shift_and_logsumexp(_capped_scaled(x, args, dtype, xp=xp), args.ax, xp=xp)
    return shifted - lse, m + lse


def _capped_scaled(x: Array, args: DistillationArgs, dtype: Any, *, xp: Namespace) -> Array:
    """``cap(x) / T`` in ``dtype`` (``x`` upcast first)."""
    return scored_logits(x, args.softcap, args.temperature, dtype, xp=xp)


def _xlog_ratio(w: Array, log_w: Array, log_other: Array, *, xp: Namespace) -> Array:
    """``w·(log w - log other)``, exactly 0 where ``w = 0`` (whatever ``log other``). Double
    ``where``, before the product: neither the value nor its derivative meets ``0·inf`` or
    ``-inf - (-inf)``."""
    zero = w == 0.0
    return w * xp.where(zero, 0.0, log_w - xp.where(zero, 0.0, log_other))


def _log_mixture(log_p: Array, log_q: Array, beta: Any, *, xp: Namespace) -> Array:
    """``log(β P + (1-β) Q)`` as an elementwise two-term logsumexp of ``log β + log P`` and
    ``log(1-β) + log Q``. Where both terms are ``-inf`` (P = Q = 0) the value is finite and
    meaningless (every use of it there is masked), so no ``log 0`` enters a derivative."""
    if isinstance(beta, float):
        a, b = log_p + math.log(beta), log_q + math.log1p(-beta)
    else:
        a, b = log_p + xp.log(beta), log_q + xp.log1p(-beta)
    m = finite_or_zero(xp.maximum(a, b), xp=xp)
    u = xp.exp(a - m) + xp.exp(b - m)
    return m + xp.log(xp.where(u == 0.0, 1.0, u))


def _is(beta: Any, value: float) -> bool:
    """``beta`` is the Python number ``value`` (a traced beta never is: general formula)."""
    return isinstance(beta, float) and beta == value


def log_mixture(log_p: Array, log_q: Array, beta: Any, *, xp: Namespace) -> Array | None:
    """``log M`` where the divergence uses the mixture (``0 < beta < 1``), else None: computed
    once, it may be passed to both :func:`pointwise` and :func:`logits_gradient`."""
    return None if _is(beta, 0.0) or _is(beta, 1.0) else _log_mixture(log_p, log_q, beta, xp=xp)


def pointwise(log_p: Array, log_q: Array, beta: Any, *, xp: Namespace, log_m: Array | None = None) -> Array:
    """Per-class terms of the divergence (sum them over the class axis): forward KL(P‖Q) for
    ``beta == 0``, reverse KL(Q‖P) for ``beta == 1``, else the generalized JSD (``log_m``: the
    mixture's :func:`log_mixture`, computed here when not given)."""
    p, q = xp.exp(log_p), xp.exp(log_q)
    if _is(beta, 0.0):
        return _xlog_ratio(p, log_p, log_q, xp=xp)
    if _is(beta, 1.0):
        return _xlog_ratio(q, log_q, log_p, xp=xp)
    if log_m is None:
        log_m = _log_mixture(log_p, log_q, beta, xp=xp)
    return beta * _xlog_ratio(p, log_p, log_m, xp=xp) + (1.0 - beta) * _xlog_ratio(q, log_q, log_m, xp=xp)


def divergence(student: Array, teacher: Array, args: DistillationArgs, beta: Any, *, xp: Namespace,
               blocked: bool = False) -> Array:
    """The reduced loss, in ``student``'s dtype. ``blocked``: on eager arrays, the per-position
    divergences are formed a block of rows at a time (temporaries O(block), not O(input))."""
    return divergence_and_norms(student, teacher, args, beta, xp=xp, blocked=blocked)[0]


def divergence_and_norms(student: Array, teacher: Array, args: DistillationArgs, beta: Any, *, xp: Namespace,
                         blocked: bool = False) -> tuple[Array, tuple[Array, Array]]:
    """The reduced loss and the per-position log-normalisers of the student's and the teacher's
    log-softmaxes (:func:`log_probs_and_norm`; the class axis kept, size 1), for
    :func:`gradients`. ``blocked`` as in :func:`divergence`."""
    dtype = compute_dtype(student.dtype, xp=xp)
    beta = _scalar(beta, dtype, xp=xp)
    view = _Rows.of(student, teacher, args, blocked, xp=xp)
    if view is None:
        loss, norm_q, norm_p = _position_divergence(student, teacher, args, beta, dtype, xp=xp)
    else:
        loss, norm_q, norm_p = _blocked_divergence(view, beta, dtype, xp=xp)
        kept = (*student.shape[: args.ax], 1, *student.shape[args.ax + 1:])
        loss = xp.reshape(loss, kept[: args.ax] + kept[args.ax + 1:])
        norm_q, norm_p = xp.reshape(norm_q, kept), xp.reshape(norm_p, kept)
    out = reduce_divergence(loss, args, axis_length(student, 0, xp=xp), student.dtype, xp=xp)
    return out, (norm_q, norm_p)


def _blocked_divergence(view: _Rows, beta: Any, dtype: Any, *, xp: Namespace) -> tuple[Array, Array, Array]:
    """:func:`_position_divergence` a block of rows at a time, into buffers in the view's shape."""
    ax, shape = view.args.ax, tuple(view.student.shape)
    dev = device_of(view.student)
    out = [xp.empty((*shape[:ax], *kept, *shape[ax + 1:]), dtype=dtype, device=dev) for kept in ((), (1,), (1,))]
    for i0, i1 in view.blocks():
        block = _position_divergence(view.student[i0:i1, ...], view.teacher[i0:i1, ...], view.args, beta, dtype, xp=xp)
        for buffer, part in zip(out, block):
            buffer[i0:i1, ...] = part
    return out[0], out[1], out[2]


def _position_divergence(student: Array, teacher: Array, args: DistillationArgs, beta: Any, dtype: Any, *,
                         xp: Namespace) -> tuple[Array, Array, Array]:
    """Per-position divergences (the class axis summed), unmasked, in ``dtype``, and the two
    log-normalisers."""
    log_q, norm_q = log_probs_and_norm(student, args, dtype, xp=xp)
    log_p, norm_p = log_probs_and_norm(teacher, args, dtype, xp=xp)
    return xp.sum(pointwise(log_p, log_q, beta, xp=xp), axis=args.ax), norm_q, norm_p


class _Rows(NamedTuple):
    """Both logits viewed as blocks of rows for the blocked rules: ``(R, C)`` when the classes
    are the last axis of a 3-d or higher array (a row is a position), else the arrays as given,
    sliced along axis 0 (the classes are elsewhere). Per-position arrays come in the view's
    positions shape: ``ignored``, ``scale`` (or a scalar) and ``norms`` (the class axis kept)."""

    student: Array
    teacher: Array
    args: DistillationArgs  #: the view's class axis; ``ignore`` left to the caller
    rows: int  #: rows per block
    ignored: Array | None
    scale: Any
    norms: tuple[Array, Array] | None

    @staticmethod
    def of(student: Array, teacher: Array, args: DistillationArgs, blocked: bool, *, xp: Namespace,
           scale: Any = None, norms: tuple[Array, Array] | None = None) -> _Rows | None:
        """The view, or None where the rule takes the whole arrays (not ``blocked``, lazy or
        traced arrays, classes on axis 0, ``xce.config(enabled=False)``)."""
        rows = _engine.gradient_rows(student, args.ax, xp=xp) if blocked and not is_lazy(student) else None
        if rows is None:
            return None
        ignored = None if args.ignore is None else args.ignore.ignored
        if args.ax == student.ndim - 1 and student.ndim > 2:
            def flat(a: Any, shape: tuple[int, ...] = (-1,)) -> Any:
                return a if a is None or isinstance(a, float) or a.ndim == 0 else xp.reshape(a, shape)

            student, teacher = flat(student, (-1, student.shape[-1])), flat(teacher, (-1, student.shape[-1]))
            ignored, scale = flat(ignored), flat(scale)
            norms = None if norms is None else (flat(norms[0], (-1, 1)), flat(norms[1], (-1, 1)))
            args = args._replace(ax=1)
        return _Rows(student, teacher, args._replace(ignore=None), rows, ignored, scale, norms)

    def blocks(self) -> list[tuple[int, int]]:
        n = self.student.shape[0]
        return [(i0, min(i0 + self.rows, n)) for i0 in range(0, n, self.rows)]

    def block(self, i0: int, i1: int, *, xp: Namespace) -> tuple[Any, Array | None, tuple[Array, Array] | None]:
        """Rows ``i0:i1``'s gradient scale (the class axis put back), ignored positions and norms."""
        s, rows = self.scale, slice(i0, i1)
        scale = s if isinstance(s, float) or s.ndim == 0 else xp.expand_dims(s[rows, ...], axis=self.args.ax)
        ignored = None if self.ignored is None else self.ignored[rows, ...]
        norms = None if self.norms is None else (self.norms[0][rows, ...], self.norms[1][rows, ...])
        return scale, ignored, norms


def reduce_divergence(loss: Array, args: DistillationArgs, batch: Any, dtype: Any, *, xp: Namespace) -> Array:
    """Per-position divergences ``loss`` masked and reduced, in ``dtype``. ``batch``: the
    ``"batchmean"`` divisor (the logits' ``shape[0]``)."""
    if args.ignore is not None:
        loss = mask_loss(loss, args.ignore, xp=xp)
    if args.reduction == "batchmean":
        # PyTorch's kl_div: the sum over student_logits.shape[0] (ignored positions still count).
        out = per_count(xp.sum(loss), batch, xp=xp)
    else:
        denominator = None if args.ignore is None else mean_weights(None, args.ignore, xp=xp)
        out = reduce_loss(loss, args.reduction, denominator=denominator, xp=xp)
    return out if out.dtype == dtype else xp.astype(out, dtype)


# --- the gradient rule ----------------------------------------------------------------------


def position_scale(cotangent: Array | None, args: DistillationArgs, like: Array, batch: Any, dtype: Any, *,
                   xp: Namespace) -> Array | float:
    """Per-position factor ``s`` with ``d(reduced loss) = Σ_i s_i dl_i``, times the cotangent
    (``like``: an array of the positions' shape; ``batch``: the ``"batchmean"`` divisor)."""
    if args.reduction == "batchmean":
        return per_count(reduction_scale(cotangent, "sum", like, None, dtype, xp=xp), batch, xp=xp, dtype=dtype)
    denominator = None if args.ignore is None else mean_weights(None, args.ignore, xp=xp)
    return reduction_scale(cotangent, args.reduction, like, denominator, dtype, xp=xp)


def _divergence_gradient(log_p: Array, log_q: Array, beta: Any, ax: int, log_m: Array | None, *,
                         xp: Namespace) -> Array:
    """d divergence / d (scaled student logits) per class: forward ``Q - P``, else
    ``c·Q ⊙ (r - Σ_k Q_k r_k)`` (see the module docstring)."""
    q = xp.exp(log_q)
    if _is(beta, 0.0):
        return q - xp.exp(log_p)
    if log_m is None and not _is(beta, 1.0):
        log_m = _log_mixture(log_p, log_q, beta, xp=xp)
    log_ref = log_p if _is(beta, 1.0) else log_m
    zero = q == 0.0
    r = xp.where(zero, 0.0, log_q - xp.where(zero, 0.0, log_ref))
    d = q * (r - xp.sum(q * r, axis=ax, keepdims=True))
    return d if _is(beta, 1.0) else (1.0 - beta) * d


def logits_gradient(student: Array, log_p: Array, log_q: Array, args: DistillationArgs, beta: Any, scale: Any,
                    ignored: Array | None, dtype: Any, *, xp: Namespace, log_m: Array | None = None) -> Array:
    """d loss / d ``student`` in ``dtype`` from the two log-softmaxes: ``scale`` (per position,
    the class axis kept, or a scalar) times the divergence's gradient, through the temperature
    and the soft cap; 0 at ``ignored`` positions (``log_m`` as in :func:`pointwise`). Also the
    rule of one block of rows of the fused linear loss (:mod:`xce.linear_distillation`)."""
    g = scale * _divergence_gradient(log_p, log_q, beta, args.ax, log_m, xp=xp)
    g = scored_logits_gradient(g, student, args.softcap, args.temperature, dtype, xp=xp)
    if ignored is not None:  # a where, not a product: non-finite ignored rows cannot leak NaN
        g = xp.where(xp.expand_dims(ignored, axis=args.ax), 0.0, g)
    return g


def pair_gradients(student: Array, teacher: Array, args: DistillationArgs, beta: Any, scale: Any,
                   ignored: Array | None, dtype: Any, wants: tuple[bool, bool], *, xp: Namespace,
                   norms: tuple[Array, Array] | None = None) -> tuple[Array | None, Array | None]:
    r"""``(d loss/d student, d loss/d teacher)`` in ``dtype`` from the logits (None for one not
    in ``wants``; ``scale``, ``ignored`` as in :func:`logits_gradient`; ``norms``: the two
    log-normalisers of :func:`divergence_and_norms`, or None to compute them).

    The teacher's is the student's rule with the two roles swapped and ``beta`` replaced by
    ``1 - beta``: the divergence is symmetric under that swap (:math:`\mathrm{JSD}_\beta(P, Q)
    = \mathrm{JSD}_{1-\beta}(Q, P)`, the same mixture :math:`M`; forward KL(P‖Q) is the swapped
    reverse KL). So w.r.t. the scaled teacher logits: forward KL :math:`P \odot (r - \sum_k P_k
    r_k)` with :math:`r = \log P - \log Q`, reverse KL :math:`P - Q`, the JSD
    :math:`\beta\,P \odot (r - \sum_k P_k r_k)` with :math:`r = \log P - \log M`."""
    log_q = log_probs(student, args, dtype, xp=xp, norm=None if norms is None else norms[0])
    log_p = log_probs(teacher, args, dtype, xp=xp, norm=None if norms is None else norms[1])
    log_m = log_mixture(log_p, log_q, beta, xp=xp)
    g_s = g_t = None
    if wants[0]:
        g_s = logits_gradient(student, log_p, log_q, args, beta, scale, ignored, dtype, xp=xp, log_m=log_m)
    if wants[1]:
        g_t = logits_gradient(teacher, log_q, log_p, args, 1.0 - beta, scale, ignored, dtype, xp=xp, log_m=log_m)
    return g_s, g_t


def gradients(student: Array, teacher: Array, args: DistillationArgs, beta: Any, cotangent: Array | None, *,
              xp: Namespace, wants: tuple[bool, bool] = (True, False), blocked: bool = False,
              norms: tuple[Array, Array] | None = None) -> tuple[Array | None, Array | None]:
    """``(d loss/d student, d loss/d teacher)``, vector-Jacobian products with ``cotangent``
    (default 1); None for one not in ``wants``. ``blocked``: on eager arrays, formed a block of
    rows at a time into the preallocated results (temporaries O(block), not O(input); not
    differentiable: off under ``create_graph``). ``norms``: the log-normalisers saved by
    :func:`divergence_and_norms` (constants: not under ``create_graph`` either)."""
    dtype = compute_dtype(student.dtype, xp=xp)
    ax = args.ax
    like = positions_like(student, ax, dtype, xp=xp)
    scale = position_scale(cotangent, args, like, axis_length(student, 0, xp=xp), dtype, xp=xp)
    beta = _scalar(beta, dtype, xp=xp)
    view = _Rows.of(student, teacher, args, blocked, xp=xp, scale=scale, norms=norms)
    if view is None:
        ignored = None if args.ignore is None else args.ignore.ignored
        g_s, g_t = pair_gradients(student, teacher, args, beta, expand_at(scale, ax, xp=xp), ignored, dtype, wants,
                                  xp=xp, norms=norms)
        return (None if g_s is None else like_input(g_s, student, xp=xp),
                None if g_t is None else like_input(g_t, teacher, xp=xp))
    out = [xp.empty(tuple(view.student.shape), dtype=student.dtype, device=device_of(student)) if w else None
           for w in wants]
    for i0, i1 in view.blocks():
        scale_i, ignored_i, norms_i = view.block(i0, i1, xp=xp)
        pair = pair_gradients(view.student[i0:i1, ...], view.teacher[i0:i1, ...], view.args, beta, scale_i,
                              ignored_i, dtype, wants, xp=xp, norms=norms_i)
        for g, part in zip(out, pair):
            if g is not None:
                g[i0:i1, ...] = as_dtype(part, g.dtype, xp=xp)
    g_s, g_t = (None if g is None else xp.reshape(g, tuple(student.shape)) for g in out)
    return g_s, g_t


def gradient(student: Array, teacher: Array, args: DistillationArgs, beta: Any, cotangent: Array | None, *,
             xp: Namespace) -> Array:
    """d loss / d ``student`` (a vector-Jacobian product with ``cotangent``; default 1)."""
    g, _ = gradients(student, teacher, args, beta, cotangent, xp=xp)
    assert g is not None
    return g


# --- the losses -----------------------------------------------------------------------------


@on_input_device
@fill_doc(DISTILLATION_PARAMETERS)
def kl_div_with_logits(
    student_logits: Array,
    teacher_logits: Array,
    target: Array | None = None,
    *,
    direction: str = "forward",
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: int | None = None,
    softcap: float | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Kullback-Leibler divergence between the teacher's and the student's softmax, from logits.

    With :math:`P = \mathrm{softmax}(t/T)` (teacher) and :math:`Q = \mathrm{softmax}(s/T)`
    (student) over the class axis, per position

    .. math::
       \text{forward: } \mathrm{KL}(P\,\|\,Q) = \sum_c P_c(\log P_c - \log Q_c), \qquad
       \text{reverse: } \mathrm{KL}(Q\,\|\,P) = \sum_c Q_c(\log Q_c - \log P_c).

    Forward KL (the default; Hinton et al.'s distillation loss, mean-seeking) equals
    ``F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), log_target=True)``
    summed over the classes; reverse KL (mode-seeking, as in MiniLLM) swaps the two.
    Computed from the two log-softmaxes, never from probabilities: large logits do not
    overflow, and a class where the weighting probability is 0 contributes exactly 0, also
    where the other distribution's log-probability is ``-inf`` (a vocabulary masked in both
    models), with a finite gradient. Gradients come from your framework's autodiff (both
    arguments are differentiable: detach the teacher yourself), or from
    :func:`kl_div_with_logits_grad` / :func:`xce.value_and_grad` on libraries without one.

    Parameters
    ----------
    {parameters}
    direction : {"forward", "reverse"}, default "forward"

    Returns
    -------
    array
        ``student_logits``'s library, device and dtype: 0-d, or one value per position for
        ``"none"`` (``student_logits``'s shape without the class axis).

    Examples
    --------
    >>> import numpy as np
    >>> from xce.losses.distillation import kl_div_with_logits
    >>> s = np.asarray([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    >>> t = np.asarray([[1.0, 1.0, -1.0], [0.0, 3.0, 0.0]])
    >>> round(float(kl_div_with_logits(s, t)), 4)
    0.262
    >>> round(float(kl_div_with_logits(s, t, direction="reverse", temperature=2.0)), 4)
    0.091
    >>> kl_div_with_logits(s, t, np.asarray([5, -100]), reduction="none").round(4)
    array([0.2485, 0.    ])
    """
    xp = _namespace(student_logits, teacher_logits, target, None, xp)
    direction = check_choice(direction, "direction", DIRECTIONS)
    args = check_arguments(student_logits, teacher_logits, target, temperature, ignore_index, reduction, axis, softcap,
                           xp=xp)
    return _loss(student_logits, teacher_logits, args, 0.0 if direction == "forward" else 1.0, xp=xp)


@on_input_device
@fill_doc(DISTILLATION_PARAMETERS)
def generalized_jsd(
    student_logits: Array,
    teacher_logits: Array,
    target: Array | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    axis: int | None = None,
    softcap: float | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Generalized Jensen-Shannon divergence between the teacher's and the student's softmax.

    With :math:`P = \mathrm{softmax}(t/T)` (teacher), :math:`Q = \mathrm{softmax}(s/T)`
    (student) and the mixture :math:`M = \beta P + (1-\beta) Q`, per position

    .. math::
       \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(P\,\|\,M) + (1-\beta)\,\mathrm{KL}(Q\,\|\,M),

    the generalized JSD of Agarwal et al., "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes" (GKD, 2024), eq. (1). ``beta=0.5`` is the
    symmetric Jensen-Shannon divergence. The endpoints are *defined* as the two KL
    divergences: ``beta=0`` is forward :math:`\mathrm{KL}(P\|Q)` and ``beta=1`` reverse
    :math:`\mathrm{KL}(Q\|P)` (:func:`kl_div_with_logits` with ``direction="forward"`` /
    ``"reverse"``). The formula itself tends to 0 there (like :math:`\beta\,\mathrm{KL}(P\|Q)`
    as :math:`\beta \to 0`), so the endpoints are a convention, taken on the Python value of
    ``beta``; a traced ``beta`` always takes the general formula.

    This is the convention of TRL's ``GKDTrainer.generalized_jsd_loss`` and of Liger-Kernel's
    ``LigerJSD`` / ``LigerFusedLinearJSD`` (``jsd_beta``): ``beta`` weights the teacher
    in the mixture, and the same ``beta`` maps across unchanged. Liger's loss, like
    ``reduction="mean"`` here, averages over the non-ignored positions; TRL's default
    ``"batchmean"`` divides by ``B·T`` (this function's ``"mean"`` on ``(B, T, V)`` logits
    without ignored positions). Neither multiplies by ``temperature**2``.

    ``log M`` is an elementwise two-term logsumexp of :math:`\log\beta + \log P` and
    :math:`\log(1-\beta) + \log Q`, so no probability is formed in the mixture's logarithm;
    terms with zero weight count as 0 (see :func:`kl_div_with_logits`).

    Parameters
    ----------
    {parameters}
    beta : float in [0, 1], default 0.5
        The teacher's weight in the mixture. May be a traced JAX 0-d array (NaN outside
        [0, 1]).

    Returns
    -------
    array
        ``student_logits``'s library, device and dtype: 0-d, or one value per position for
        ``"none"``.

    Examples
    --------
    >>> import numpy as np
    >>> from xce.losses.distillation import generalized_jsd
    >>> s = np.asarray([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    >>> t = np.asarray([[1.0, 1.0, -1.0], [0.0, 3.0, 0.0]])
    >>> round(float(generalized_jsd(s, t)), 4)
    0.0669
    >>> round(float(generalized_jsd(s, t, beta=0.0)), 4)  # forward KL
    0.262
    """
    xp = _namespace(student_logits, teacher_logits, target, None, xp)
    b = check_fraction(beta, "beta", traced=True)
    args = check_arguments(student_logits, teacher_logits, target, temperature, ignore_index, reduction, axis, softcap,
                           xp=xp)
    return _loss(student_logits, teacher_logits, args, b, xp=xp)


def _loss(student: Array, teacher: Array, args: DistillationArgs, beta: Any, *, xp: Namespace) -> Array:
    """The loss of checked arguments: through the adapter's autograd registration where autodiff
    must see the call (large eager PyTorch tensors that require grad: a Function that saves the
    inputs and calls :func:`gradients` back), else the definition."""
    wants = adapter_hook(student, "wants_distillation")
    if wants is not None and wants(student, teacher):
        return adapter_hook(student, "distillation")(student, teacher, args, beta)
    return divergence(student, teacher, args, beta, xp=xp)


# --- the analytic gradients -----------------------------------------------------------------


@fill_doc(DISTILLATION_PARAMETERS)
@derivative_of(kl_div_with_logits)
def kl_div_with_logits_grad(student_logits: Array, teacher_logits: Array, target: Array | None, *, direction: str,
                            temperature: float, ignore_index: int, reduction: str, axis: int | None,
                            softcap: float | None, cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`kl_div_with_logits` w.r.t. ``student_logits``.

    With :math:`Q`, :math:`P` the student's and teacher's distributions at temperature
    :math:`T` and :math:`s_i` the cotangent over the reduction's denominator: forward
    :math:`s_i (Q - P)/T`; reverse :math:`s_i\,Q \odot (r - \sum_k Q_k r_k)/T` with
    :math:`r = \log Q - \log P` (0 where :math:`Q = 0`); times :math:`1 - \tanh^2(x/c)` with
    ``softcap=c``; 0 at ignored positions. The teacher is a constant here.

    Parameters
    ----------
    {parameters}
    direction : {"forward", "reverse"}, default "forward"
    cotangent : array, optional
        The upstream gradient (see :mod:`xce.grad`).

    Examples
    --------
    >>> import numpy as np
    >>> from xce.losses.distillation import kl_div_with_logits_grad
    >>> kl_div_with_logits_grad(np.zeros((1, 2)), np.asarray([[0.0, np.log(3.0)]])).tolist()
    [[0.25, -0.25]]
    """
    xp = _namespace(student_logits, teacher_logits, target, cotangent, xp)
    direction = check_choice(direction, "direction", DIRECTIONS)
    args = check_arguments(student_logits, teacher_logits, target, temperature, ignore_index, reduction, axis, softcap,
                           xp=xp)
    return gradient(student_logits, teacher_logits, args, 0.0 if direction == "forward" else 1.0, cotangent, xp=xp)


@fill_doc(DISTILLATION_PARAMETERS)
@derivative_of(generalized_jsd)
def generalized_jsd_grad(student_logits: Array, teacher_logits: Array, target: Array | None, *, beta: float,
                         temperature: float, ignore_index: int, reduction: str, axis: int | None,
                         softcap: float | None, cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`generalized_jsd` w.r.t. ``student_logits``.

    For :math:`0 < \beta < 1`, :math:`\partial\,\mathrm{JSD}_\beta/\partial Q_c = (1-\beta)(\log Q_c - \log M_c)`,
    so through the softmax the gradient is :math:`s_i (1-\beta)\,Q \odot (r - \sum_k Q_k r_k)/T`
    with :math:`r = \log Q - \log M`; ``beta=0`` and ``beta=1`` are those of
    :func:`kl_div_with_logits_grad` (forward and reverse). Soft cap, ignored positions and
    ``cotangent`` as there.

    Parameters
    ----------
    {parameters}
    beta : float in [0, 1], default 0.5
    cotangent : array, optional
        The upstream gradient (see :mod:`xce.grad`).

    Examples
    --------
    >>> import numpy as np
    >>> from xce.losses.distillation import generalized_jsd_grad
    >>> generalized_jsd_grad(np.zeros((1, 2)), np.zeros((1, 2))).tolist()
    [[0.0, 0.0]]
    """
    xp = _namespace(student_logits, teacher_logits, target, cotangent, xp)
    b = check_fraction(beta, "beta", traced=True)
    args = check_arguments(student_logits, teacher_logits, target, temperature, ignore_index, reduction, axis, softcap,
                           xp=xp)
    return gradient(student_logits, teacher_logits, args, b, cotangent, xp=xp)

r"""Cross entropy: its checks, its statistics, its loss and its gradient rule, in one place.

Notation: ``x`` logits with classes along ``axis``, ``C`` classes, :math:`L = \log\sum_c e^{x_c}`,
``w`` class weights (:math:`W = \sum_c w_c`), ``ε`` label smoothing in its uniform form and
``z`` the z-loss coefficient. :func:`smoothing_coefficients` gives the two numbers label
smoothing puts on the classes, :math:`(1-\varepsilon,\ \varepsilon/C)`; every path of cross
entropy (this module's forward and gradient, :mod:`xce.linear`, :mod:`xce.parallel`) takes
them from there. Per position, with ``a = 1-ε`` on the target and ``u = ε/C`` on every class,

* index targets: :math:`l = a\,w_y (L - x_y) + u\,(W L - \sum_c w_c x_c)`, and
  :math:`\partial l/\partial x = (a\,w_y + u\,W)\,p - a\,w_y\,e_y - u\,w`;
* probability targets, :math:`\tilde q = w \odot (a\,y + u)`:
  :math:`l = (\sum_c \tilde q_c) L - \sum_c \tilde q_c x_c`, and
  :math:`\partial l/\partial x = (\sum_c \tilde q_c)\,p - \tilde q`;
* z-loss: :math:`z L^2`, gradient :math:`2 z L\,p`, with its own ``"mean"`` scale (the count).

The statistics are one sweep over the logits (:func:`xce._engine.softmax_sums`, blocked on
eager arrays); the loss needs only per-position arithmetic on them; the gradient rule
(:func:`gradient`) is one function applied to the whole array or block by block in place.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import _engine, _policy
from .._arrays import along_classes, expand_at, like_input, positions_like
from .._docs import CROSS_ENTROPY_PARAMETERS, fill_doc
from .._namespace import (
    Array,
    Namespace,
    as_dtype,
    compute_dtype,
    device_of,
    is_lazy,
    is_traced,
    known_size,
    library_name,
    namespace,
    on_input_device,
    put_along_class_axis,
    take_along_class_axis,
    write_into,
    writes_into,
)
from .._namespace import compute_dtype as default_compute_dtype
from .._reduce import reduce_loss, reduction_scale
from .._registry import adapter_for, fast_paths
from .._scoring import scored_logits, scored_logits_gradient
from .._signatures import derivative_of
from .._softmax import logsumexp, softmax_and_lse
from .._targets import IndexTarget, class_ids, gather_weight, mask_loss, mean_weights, prepare_index
from .._validate import (
    check_choice,
    check_classes,
    check_floating,
    check_fraction,
    check_index_target,
    check_integer,
    check_normalizer,
    check_positive,
    check_probability_target,
    check_real,
    check_reduction,
    check_same_device,
    check_weight,
    check_where,
    class_axis,
    maybe_nonzero,
)
from ..labels import SMOOTHING_MODES, smoothing_coefficients, uniform_equivalent

__all__ = [
    "SIGNATURE",
    "CrossEntropyArgs",
    "Extras",
    "LossStats",
    "Options",
    "RowStats",
    "bind_arguments",
    "check_arguments",
    "check_extras",
    "check_options",
    "check_sample_weight",
    "cross_entropy",
    "cross_entropy_extras",
    "cross_entropy_grad",
    "cross_entropy_with_stats",
    "extras_gradient",
    "fused_stats",
    "gradient",
    "gradient_coefficients",
    "index_loss",
    "index_loss_from_stats",
    "jvp",
    "probability_target_gradient",
    "reduce_weighted",
    "row_stats",
    "smoothing_coefficients",
    "softcap_logits",
    "weighted_denominators",
    "weighted_scale",
    "z_loss_part",
]

_NAMES = ("input", "target", "weight")
_ALL_NAMES = (*_NAMES, "where", "sample_weight")


# --- arguments ------------------------------------------------------------------------------


@dataclass(slots=True)
class CrossEntropyArgs:
    """:func:`cross_entropy`'s arguments, checked once and shared by the loss, its gradient
    and the adapters."""

    reduction: str
    eps: Any  #: label smoothing in the uniform convention (off_target converted); a float or a traced 0-d array
    z: Any  #: z-loss coefficient; a float or a traced 0-d array
    ax: int  #: the class axis, non-negative
    n_classes: int
    lazy: bool  #: a lazy array (JAX, Dask): one fused formula, no blocks
    ignore_index: int
    index: IndexTarget | None  #: None for probability targets
    reads: bool = True  #: values may be read (eager, CPU, not traced): else invalid values become NaN
    #: probability targets: the positions kept by ``where`` (None: all); index targets fold
    #: ``where`` into ``index.ignored``
    keep: Array | None = None


class Options(NamedTuple):
    """:func:`cross_entropy`'s hyper-parameters, checked (they do not depend on the arrays)."""

    ignore_index: int
    reduction: str
    label_smoothing: Any  #: as given, in its ``mode`` (a float, or a traced 0-d array)
    mode: str
    z: Any


def check_options(ignore_index: object, reduction: object, label_smoothing: object, label_smoothing_mode: object,
                  z_loss: object) -> Options:
    """The checks of :func:`cross_entropy`'s hyper-parameters, cached per distinct call (they
    depend on no array, and small calls are dispatch-bound). Shared with the loss object."""
    try:
        return _cached_options(ignore_index, reduction, label_smoothing, label_smoothing_mode, z_loss)
    except TypeError as e:
        if "unhashable" not in str(e):
            raise
        return _check_options(ignore_index, reduction, label_smoothing, label_smoothing_mode, z_loss)


def _check_options(ignore_index: object, reduction: object, label_smoothing: object, label_smoothing_mode: object,
                   z_loss: object) -> Options:
    reduction = check_reduction(reduction)
    # Numeric hyper-parameters may be traced (a smoothing schedule under jax.jit): out of
    # range they give NaN, as invalid targets do; the structural ones stay Python values.
    eps = check_fraction(label_smoothing, "label_smoothing", traced=True)
    mode = check_choice(label_smoothing_mode, "label_smoothing_mode", SMOOTHING_MODES)
    z = check_real(z_loss, "z_loss", minimum=0.0, traced=True)
    return Options(check_integer(ignore_index, "ignore_index"), reduction, eps, mode, z)


# typed: 1, 1.0 and True are different calls (True is refused, 1 is a valid ignore_index).
_cached_options = functools.lru_cache(maxsize=1024, typed=True)(_check_options)


def check_arguments(
    input: Array, target: Array, weight: Array | None, ignore_index: int, reduction: str, label_smoothing: float,
    axis: int | None, label_smoothing_mode: str, z_loss: float, where: Array | None = None, *, xp: Namespace,
) -> CrossEntropyArgs:
    """Every check of :func:`cross_entropy`'s arguments (shared with its gradient)."""
    options = check_options(ignore_index, reduction, label_smoothing, label_smoothing_mode, z_loss)
    ax, n_classes, eps, probabilities = _structure(input, target, weight, options, axis, xp=xp)
    lazy = is_lazy(input)
    if not lazy:
        for other, name in ((target, "target"), (weight, "weight")):
            if other is not None:
                check_same_device(input, other, name)
    index = keep = None
    reads = _engine.reads_values(input)  # else invalid targets become NaN (no sync, no graph break)
    if where is not None:
        per_position = tuple(input.shape[:ax]) + tuple(input.shape[ax + 1 :])
        keep = check_where(where, per_position, input, xp=xp, lazy=lazy)
    if not probabilities:
        # Positions outside ``where`` count as ignored: no loss, not in the mean, no range check.
        index = prepare_index(target, n_classes, options.ignore_index, xp=xp, lazy=not reads, keep=keep)
        keep = None
    return CrossEntropyArgs(options.reduction, eps, options.z, ax, n_classes, lazy, options.ignore_index, index,
                            reads, keep)


# The checks that depend on shapes, dtypes and hyper-parameters only, cached per call
# signature (small calls are dispatch-bound); device and value checks run on every call.
_STRUCTURES: dict[tuple[Any, ...], tuple[int, int, Any, bool]] = {}
_SCALARS = (int, float)


def _structure(input: Array, target: Array, weight: Array | None, options: Options, axis: int | None, *,
               xp: Namespace) -> tuple[int, int, Any, bool]:
    """``(class axis, number of classes, ε in the uniform convention, probability targets?)``."""
    key = None
    # Not for traced or array hyper-parameters, nor under torch.compile / torch.func (which
    # trace the checks once anyway, and whose tracer cannot compare this dict's keys).
    if type(options.label_smoothing) in _SCALARS and type(options.z) in _SCALARS and not is_traced(input):
        key = (id(xp), tuple(input.shape), input.dtype, tuple(target.shape), target.dtype,
               None if weight is None else (tuple(weight.shape), weight.dtype), type(axis), axis, options)
        try:
            return _STRUCTURES[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable axis (class_axis names it)
            key = None
    ax = class_axis(input, axis)
    check_floating(input, "input", xp=xp)
    n_classes = check_classes(input, ax)
    eps = uniform_equivalent(options.label_smoothing, options.mode, n_classes, "label_smoothing")
    check_weight(weight, n_classes, input, xp=xp, lazy=True)  # (lazy: the device is checked per call)
    probabilities = tuple(target.shape) == tuple(input.shape)
    if probabilities:
        check_probability_target(target, input, options.ignore_index, xp=xp, lazy=True)
    else:
        check_index_target(target, input, ax, xp=xp, lazy=True)
    result = (ax, n_classes, eps, probabilities)
    if key is not None and None not in key[1] + key[3]:  # (symbolic shapes: not a signature)
        if len(_STRUCTURES) >= 512:
            _STRUCTURES.clear()
        _STRUCTURES[key] = result
    return result


def index_loss(lse: Array, target: Array, class_sum: Array | None, w_y: Array | None, w_sum: Array | float,
               eps: float, n_classes: int) -> Array:
    """Per-position index-target cross entropy from statistics taken against a common per-row
    shift (any: the shift cancels): ``lse = log Σ_c e^(x_c - shift)``, ``target = x_y - shift``,
    ``class_sum = Σ_c w_c (x_c - shift)`` (needed when ``eps > 0``). Unmasked, unreduced."""
    loss = lse - target  # -ℓ[y]
    if w_y is not None:
        loss = w_y * loss
    if maybe_nonzero(eps):
        # -Σ_c w_c ℓ_c = Σ_c w_c (lse - s_c) = W·lse - class_sum: per-position sums only.
        on, off = smoothing_coefficients(eps, n_classes)
        loss = on * loss + off * (w_sum * lse - class_sum)
    return loss


def gradient_coefficients(s: Any, s_z: Any, log_z: Array | None, w_y: Array | float, w_sum: Array | float,
                          eps: float, z: float, n_classes: int) -> tuple[Any, Any, Any]:
    """Per-row ``(a, b, u)`` of the index-target gradient ``a·p - b·e_y - u·w``.

    ``s``/``s_z`` are the rows' scales of the loss and of the z term (cotangent over the
    reduction's denominators), ``log_z`` the full logsumexp (used only when ``z > 0``),
    ``w_y``/``w_sum`` the target's class weight and ``Σ_c w_c`` (1 and C without weights):
    ``b = s·(1-ε)·w_y``, ``u = s·ε/C``, ``a = b + u·W + s_z·2z·log Z``. Shared by
    :func:`gradient_rows`, :mod:`xce.linear` and :mod:`xce.parallel`.
    """
    on, off = smoothing_coefficients(eps, n_classes)
    b = s * (on * w_y)  # one array operation where w_y is a number (no class weights)
    a = s * (on * w_y + off * w_sum) if maybe_nonzero(off) else b
    if maybe_nonzero(z):
        a = a + s_z * (2.0 * z) * log_z
    return a, b, s * off


# --- statistics -----------------------------------------------------------------------------


class RowStats(NamedTuple):
    """Per-row statistics, in the compute dtype (float32 for half-precision input).

    With ``s = x - shift`` (``shift`` the row's finite maximum, 0 where it is not finite):

    * ``shift``: the shift itself;
    * ``lse``: ``log Σ_c exp(s_c)`` (add ``shift`` for the logsumexp of ``x``);
    * ``target``: ``s[index]`` (None without ``index``);
    * ``class_sum``: ``Σ_c w_c s_c`` (``w = 1`` without ``weight``; None unless requested);
    * ``prob_dot``: ``Σ_c q̃_c s_c`` with 0 where ``q̃_c = 0`` and ``s_c`` is not finite;
    * ``prob_mass``: ``Σ_c q̃_c`` (probability targets), ``q̃ = w ⊙ ((1-ε) q + ε/C)``.

    Cross entropy then needs only (N,)-sized arithmetic: ``-ℓ_y = lse - target``,
    ``-Σ_c w_c ℓ_c = W·lse - class_sum``, ``-Σ_c q̃_c ℓ_c = mass·lse - prob_dot``.
    """

    shift: Array
    lse: Array
    target: Array | None = None
    class_sum: Array | None = None
    prob_dot: Array | None = None
    prob_mass: Array | None = None
    moment: Array | None = None  #: ``Σ_c p_c s_c`` (when asked for): the entropy is ``lse - moment``


def _smoothed(q: Array, w: Array | None, eps: float, n_classes: int, dtype: Any, *, xp: Namespace) -> Array:
    """``q̃ = w ⊙ ((1-ε) q + ε/C)`` in the compute dtype."""
    q = as_dtype(q, dtype, xp=xp)
    if maybe_nonzero(eps):
        on, off = smoothing_coefficients(eps, n_classes)
        q = on * q + off
    return q if w is None else q * w


def _prob_dot(s: Array, q: Array, *, xp: Namespace) -> Array:
    """``Σ_c q_c s_c`` over axis 1 (kept). Where ``q_c = 0`` and ``s_c = -inf`` the term is 0:
    the logit is masked there and only there; masking the product wherever ``q = 0`` would
    also cut d/dq, whose true value at 0 is ``-ℓ_c`` (one-hot and distillation targets)."""
    s = xp.where((q == 0.0) & ~xp.isfinite(s), 0.0, s)
    return xp.sum(q * s, axis=1, keepdims=True)


def _terms(weight: Array | None, probs: Array | None, *, ndim: int, class_sum: bool, smoothing: float,
           n_classes: int, dtype: Any, xp: Namespace) -> _engine.Terms | None:
    """The engine callback for cross entropy's linear statistics: ``Σ w s`` and ``Σ q̃ s``."""
    if not class_sum and probs is None:
        return None
    w_all = None if weight is None else along_classes(weight, ndim, 1, xp=xp)

    def terms(s: Array, rows: slice, classes: slice) -> list[tuple[Array, Array | float]]:
        w_c = None if w_all is None else w_all[:, classes, ...]
        out: list[tuple[Array, Array | float]] = []
        if class_sum:
            mass = float(s.shape[1]) if w_c is None else xp.sum(w_c)
            out.append((xp.sum(s if w_c is None else s * w_c, axis=1, keepdims=True), mass))
        if probs is not None:
            q = _smoothed(probs[rows, classes, ...], w_c, smoothing, n_classes, dtype, xp=xp)
            out.append((_prob_dot(s, q, xp=xp), xp.sum(q, axis=1, keepdims=True)))
        return out

    return terms


def _stats(x: Array, index: Array | None, *, xp: Namespace, weight: Array | None, class_sum: bool,
           probs: Array | None, smoothing: float, dtype: Any, blocked: bool, moment: bool = False) -> RowStats:
    terms = _terms(weight, probs, ndim=x.ndim, class_sum=class_sum, smoothing=smoothing, n_classes=x.shape[1],
                   dtype=dtype, xp=xp)
    st = _engine.softmax_sums(x, xp=xp, terms=terms, compute_dtype=dtype, blocked=blocked, moment=moment)
    target = None
    if index is not None:
        # Gathered from x, not from the shifted logits: O(N), and XLA then fuses the shift
        # into reductions without materialising it.
        target = as_dtype(take_along_class_axis(x, index, 1, xp=xp), dtype, xp=xp) - st.shift
    csum = st.sums[0] if class_sum else None
    pdot, pmass = (st.sums[-1], st.masses[-1]) if probs is not None else (None, None)
    return RowStats(st.shift, st.lse, target, csum, pdot, pmass, st.moment)


def row_stats(x: Array, index: Array | None = None, *, xp: Namespace, weight: Array | None = None,
              class_sum: bool = False, probs: Array | None = None, smoothing: float = 0.0,
              compute_dtype: Any = None, moment: bool = False) -> RowStats:
    """Blocked cross-entropy statistics of ``x`` (``(A, C)`` or ``(A, C, B)``, classes on axis 1).

    ``index``: valid class indices (``(A,)`` / ``(A, B)``) for ``RowStats.target``; ``weight``:
    class weights in the compute dtype; ``class_sum``: also ``Σ_c w_c s_c``; ``probs``:
    probability targets shaped like ``x`` (smoothed by ``smoothing`` first). Fields not asked
    for are None.
    """
    dtype = compute_dtype if compute_dtype is not None else default_compute_dtype(x.dtype, xp=xp)
    return _stats(x, index, xp=xp, weight=weight, class_sum=class_sum, probs=probs, smoothing=smoothing,
                  dtype=dtype, blocked=True, moment=moment)


def fused_stats(x: Array, index: Array | None = None, *, xp: Namespace, weight: Array | None = None,
                class_sum: bool = False, probs: Array | None = None, smoothing: float = 0.0,
                compute_dtype: Any = None) -> RowStats:
    """:func:`row_stats` as one block: the fused formula, for lazy backends and small inputs."""
    dtype = compute_dtype if compute_dtype is not None else default_compute_dtype(x.dtype, xp=xp)
    return _stats(x, index, xp=xp, weight=weight, class_sum=class_sum, probs=probs, smoothing=smoothing,
                  dtype=dtype, blocked=False)


def statistics(x: Array, ax: int, *, xp: Namespace, lazy: bool, index: Array | None = None,
               weight: Array | None = None, class_sum: bool = False, probs: Array | None = None,
               smoothing: float = 0.0, dtype: Any, moment: bool = False) -> RowStats:
    """Per-position statistics of ``x`` along ``ax``, shaped like ``x`` without ``ax``.

    ``x`` is viewed as ``(A, C)`` or ``(A, C, B)`` (the axes before and after the class axis
    flattened) so one engine serves every layout; eager arrays large enough go through the
    blocked engine, the rest (JAX, Dask, small inputs) through the same math as one block.
    Symbolic shapes (a ``None`` dimension) are not reshaped: :func:`_symbolic_statistics`.
    """
    if known_size(tuple(x.shape)) is None:
        return _symbolic_statistics(x, ax, xp=xp, index=index, weight=weight, class_sum=class_sum, probs=probs,
                                    smoothing=smoothing, dtype=dtype)
    # Eager arrays large enough: the blocked engine; else the fused formula (JAX, Dask, small).
    blocked = not lazy and _engine.supports(x)
    if _policy.ACTIVE:
        _note_statistics(x, lazy, blocked)

    def stats(x: Array, index: Array | None, probs: Array | None) -> RowStats:
        if blocked:
            return row_stats(x, index, xp=xp, weight=weight, class_sum=class_sum, probs=probs, smoothing=smoothing,
                             compute_dtype=dtype, moment=moment)
        return _stats(x, index, xp=xp, weight=weight, class_sum=class_sum, probs=probs, smoothing=smoothing,
                      dtype=dtype, blocked=False, moment=moment)

    if x.ndim == 2 and ax == 1:  # (N, C): the engine's own layout, no view to take or undo
        return stats(x, index, probs)
    n_classes = x.shape[ax]
    outer, inner = math.prod(x.shape[:ax]), math.prod(x.shape[ax + 1 :])
    shape = (outer, n_classes) if inner == 1 else (outer, n_classes, inner)
    out_shape = tuple(x.shape[:ax]) + tuple(x.shape[ax + 1 :])

    def view(a: Array | None, s: tuple[int, ...]) -> Array | None:
        return a if a is None or tuple(a.shape) == s else xp.reshape(a, s)

    st = stats(view(x, shape), view(index, shape[:1] + shape[2:]), view(probs, shape))
    return RowStats(*(view(f, out_shape) for f in st))


def _note_statistics(x: Array, lazy: bool, blocked: bool) -> None:
    if blocked:
        opts = _engine.options()
        least = opts.get("min_elements", _policy.TABLE["definition_blocks_min_elements"].value)
        why = f"eager {library_name(x)} array of {math.prod(x.shape)} elements " + (
            "(xce.config(enabled=True))" if opts.get("enabled") else f">= min_elements {least}")
        _policy.note(_policy.DEFINITION_BLOCKS, why)
    else:
        _policy.note(_policy.DEFINITION, "lazy array: one fused formula" if lazy else str(_engine.refusal(x)))


def _symbolic_statistics(x: Array, ax: int, *, xp: Namespace, index: Array | None, weight: Array | None,
                         class_sum: bool, probs: Array | None, smoothing: float, dtype: Any) -> RowStats:
    """:func:`statistics` of an array with a symbolic dimension, as one fused block.

    ``reshape`` cannot merge dimensions it does not know, so the class axis is brought to
    axis 1 without merging any: a new leading axis when it is axis 0, a transpose when it
    lies further in (the other axes keep their order, so ``index`` needs no change).
    """
    order = (0, ax, *(i for i in range(1, x.ndim) if i != ax))

    def move(a: Array | None) -> Array | None:
        if a is None or ax == 1:
            return a
        return xp.expand_dims(a, axis=0) if ax == 0 else xp.permute_dims(a, order)

    lead = index if index is None or ax != 0 else xp.expand_dims(index, axis=0)
    st = _stats(move(x), lead, xp=xp, weight=weight, class_sum=class_sum, probs=move(probs), smoothing=smoothing,
                dtype=dtype, blocked=False)
    return st if ax != 0 else RowStats(*(None if f is None else f[0, ...] for f in st))


# --- the loss -------------------------------------------------------------------------------


@on_input_device
@fill_doc(CROSS_ENTROPY_PARAMETERS)
def cross_entropy(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    axis: int | None = None,
    label_smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    where: Array | None = None,
    softcap: float | None = None,
    sample_weight: Array | None = None,
    normalizer: float | Array | None = None,
    return_stats: bool = False,
    xp: Namespace | None = None,
) -> Array:
    r"""Cross entropy between logits and class-index or class-probability targets.

    PyTorch's ``torch.nn.functional.cross_entropy``, argument for argument, on any Array
    API library. With :math:`\ell = \mathrm{log\_softmax}(x)` over the class axis:

    * **Index targets** (integer ``target`` with ``input``'s shape minus the class axis):

      .. math::
         l_i = (1-\varepsilon)\,\bigl(-w_{y_i}\,\ell_{i,y_i}\bigr)
               + \frac{\varepsilon}{C}\,\Bigl(-\sum_c w_c\,\ell_{i,c}\Bigr),

      and :math:`l_i = 0` where :math:`y_i` equals ``ignore_index``. ``"mean"`` divides
      :math:`\sum_i l_i` by :math:`\sum_{i \text{ not ignored}} w_{y_i}` (the count when
      ``weight`` is None), so it is *not* ``reduction="none"`` followed by ``.mean()``.
      Every target ignored gives NaN for ``"mean"`` (0/0) and 0 for ``"sum"``.
    * **Probability targets** (floating ``target`` with ``input``'s shape): with
      :math:`q = (1-\varepsilon)\,y + \varepsilon/C`,
      :math:`l_i = -\sum_c w_c\,q_{i,c}\,\ell_{i,c}` (a term with :math:`w_c q_{i,c} = 0`
      at a ``-inf`` logit counts as 0, so such logits stay finite);
      ``"mean"`` divides by the number of positions.

    Label smoothing follows Szegedy et al., "Rethinking the Inception Architecture for
    Computer Vision" (2016). ``label_smoothing_mode="uniform"`` is PyTorch's convention
    (ε/C to every class, as above). ``"off_target"`` (fairseq, Megatron-LM) puts 1-ε on
    the target and ε/(C-1) on every other class; it is the uniform formula with
    :math:`\varepsilon' = \varepsilon\,C/(C-1)`, so weights, ``ignore_index`` and the
    ``"mean"`` denominator behave identically in both modes (for probability targets,
    :math:`q = (1-\varepsilon')\,y + \varepsilon'/C`).

    **z-loss** (PaLM, Chowdhery et al. 2022): ``z_loss=z > 0`` adds
    :math:`z\,(\log\sum_c e^{x_{i,c}})^2` to every position that is not ignored (0 at
    ignored ones, in ``"none"`` too). It is *not* multiplied by the class weights: with
    ``"mean"`` the cross-entropy part is divided by :math:`\sum w_{y_i}` as above and the
    z part by the **number** of non-ignored positions (probability targets: the number of
    positions, like the cross-entropy part), so ``z`` means the same with or without
    ``weight``. ``"sum"`` adds the two sums.

    **For LLM training** (all off by default, so the default is PyTorch's answer):
    ``softcap=c`` replaces the logits by :math:`c\tanh(x/c)` first (Gemma 2);
    ``sample_weight`` :math:`s_i` multiplies each position's loss (z term included) and
    ``"mean"`` then divides by :math:`\sum_i s_i w_{y_i}` over kept positions (the z part by
    :math:`\sum_i s_i`); ``normalizer=n`` makes the loss :math:`\sum_i s_i l_i / n`, whatever
    the batch holds (gradient accumulation, data parallelism: HF's ``num_items_in_batch``);
    ``return_stats=True`` returns ``(loss, LossStats)`` from the same pass over the logits.

    Parameters
    ----------
    {parameters}

    return_stats : bool, default False
        Return ``(loss, stats)``, ``stats`` an :class:`xce.LossStats` (per-position logsumexp,
        the z term alone, accuracy, per-position entropy), from the same pass over the logits.
    xp : namespace, optional
        The array namespace, to skip inference.

    Returns
    -------
    array
        In ``input``'s library, device and dtype: 0-d for ``"mean"``/``"sum"``, the
        target's shape (index targets) or ``input``'s shape without the class axis for
        ``"none"``. With ``return_stats=True``, ``(loss, LossStats)``.

    Raises
    ------
    IndexError
        An index outside ``[0, C)`` that is not ``ignore_index`` (eager arrays). Under JAX
        and Dask, whose values are not read, that position's loss is NaN instead.

    Examples
    --------
    >>> import numpy as np, xce
    >>> logits = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]])
    >>> round(float(xce.cross_entropy(logits, np.asarray([0, 2]))), 4)
    1.2288
    >>> x8 = np.asarray([[1.0, 8.0, 1.0], [1.0, 1.0, 8.0]])
    >>> round(float(xce.cross_entropy(x8, np.asarray([1, 2]), label_smoothing=0.05,
    ...                               label_smoothing_mode="off_target")), 4)
    0.3518
    """
    fast = _FAST.get(type(input))
    if fast is not None and where is None and xp is None and softcap is None and sample_weight is None \
            and normalizer is None and return_stats is False:
        # The library's own kernel, before any namespace or argument work (see _registry).
        out = fast(input, target, weight, ignore_index, reduction, label_smoothing, axis, label_smoothing_mode, z_loss)
        if out is not None:
            if _policy.ACTIVE:
                _policy.note(_policy.NATIVE, "the library's kernel through the fast path (no class weight, "
                             "int64 targets, float32/64, within the one-piece limit)")
            return out
    xp = namespace(_ALL_NAMES, input, target, weight, where, sample_weight, xp=xp)
    if softcap is not None or sample_weight is not None or normalizer is not None or return_stats is not False:
        given = (ignore_index, reduction, label_smoothing, axis, label_smoothing_mode, z_loss)
        extras = _extras(input, given, softcap, sample_weight, normalizer, return_stats, xp=xp)
        return cross_entropy_extras(input, target, weight, given, where, extras, xp=xp)
    adapter = adapter_for(input)
    if adapter is not None:
        # The library's own kernel where it computes exactly this function and measures faster.
        options = check_options(ignore_index, reduction, label_smoothing, label_smoothing_mode, z_loss)
        out = adapter.dispatch_cross_entropy(input, target, weight, options, axis, where)
        if out is not None:
            return out
        # Large eager inputs under autograd: the adapter's analytic backward saves O(N), not
        # the blocked forward's temporaries (torch; other libraries have no such adapter).
        if _engine.supports(input) and adapter.wants_cross_entropy(input, target, weight):
            return adapter.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, axis=axis,
                                         label_smoothing_mode=label_smoothing_mode, z_loss=z_loss, where=where)
    args = check_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis,
                           label_smoothing_mode, z_loss, where, xp=xp)
    return cross_entropy_with_stats(input, target, weight, args, xp=xp)[0]


_FAST = fast_paths("cross_entropy")


def _extras(input: Array, options: tuple[Any, ...], softcap: object, sample_weight: Array | None,
            normalizer: object, return_stats: object, *, xp: Namespace) -> Extras:
    return check_extras(input, class_axis(input, options[3]), check_reduction(options[1]), softcap, sample_weight,
                        normalizer, return_stats, xp=xp)


# cross_entropy's parameters without ``xp`` and the LLM extras: what the adapters' wrappers take.
_EXTRAS = ("softcap", "sample_weight", "normalizer", "return_stats", "xp")
SIGNATURE = inspect.signature(cross_entropy).replace(
    parameters=[p for name, p in inspect.signature(cross_entropy).parameters.items() if name not in _EXTRAS])


def bind_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """``(input, target, weight, ignore_index, reduction, label_smoothing, axis,
    label_smoothing_mode, z_loss, where)`` from a call with :func:`cross_entropy`'s parameters."""
    bound = SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def _kept_count(args: CrossEntropyArgs, *, xp: Namespace) -> Array | None:
    """Probability targets: the ``"mean"`` denominator's per-position weights under ``where``
    (None: count every position)."""
    return None if args.keep is None else xp.astype(args.keep, xp.float32)


def cross_entropy_with_stats(
    input: Array, target: Array, weight: Array | None, args: CrossEntropyArgs, *, xp: Namespace,
    moment: bool = False,
) -> tuple[Array, RowStats]:
    """:func:`cross_entropy` of checked arguments (the definition, never dispatched), and the
    per-position statistics it was computed from (``st.shift + st.lse`` is the logsumexp an
    analytic backward needs; ``moment``: also ``st.moment``, for the entropy)."""
    dtype = compute_dtype(input.dtype, xp=xp)
    w = None if weight is None else xp.astype(weight, dtype)
    index, eps, z = args.index, args.eps, args.z
    if index is None:  # probability targets
        st = statistics(input, args.ax, xp=xp, lazy=args.lazy, weight=w, probs=target, smoothing=eps, dtype=dtype,
                        moment=moment)
        loss = st.prob_mass * st.lse - st.prob_dot  # -Σ_c q̃_c ℓ_c
        if maybe_nonzero(z):
            loss = loss + z * (st.lse + st.shift) ** 2  # same count denominator as the cross-entropy part
        if args.keep is not None:  # where=: masked positions add nothing and leave the mean's count
            loss = xp.where(args.keep, loss, 0.0)
        out = reduce_loss(loss, args.reduction, denominator=_kept_count(args, xp=xp), xp=xp)
    else:
        st = statistics(input, args.ax, xp=xp, lazy=args.lazy, index=index.safe, weight=w, class_sum=maybe_nonzero(eps),
                        dtype=dtype, moment=moment)
        out = index_loss_from_stats(st, w, args, xp=xp)
    return (out if out.dtype == input.dtype else xp.astype(out, input.dtype)), st


def index_loss_from_stats(st: RowStats, w: Array | None, args: CrossEntropyArgs, *, xp: Namespace) -> Array:
    """The reduced index-target loss from per-position statistics (``st.target`` and, with
    smoothing, ``st.class_sum``, against any common shift), ``w`` the class weights in the
    compute dtype: masked, reduced over ``mean_weights``, plus the z part. The statistics may
    come from the engine or from a library's own kernel (the torch adapter's log-softmax
    blocks, whose shift is the logsumexp itself)."""
    index = args.index
    assert index is not None  # (index targets)
    w_y = None if w is None else gather_weight(w, index.safe, xp=xp)
    w_sum = args.n_classes if w is None else xp.sum(w)
    loss = mask_loss(index_loss(st.lse, st.target, st.class_sum, w_y, w_sum, args.eps, args.n_classes), index, xp=xp)
    out = reduce_loss(loss, args.reduction, denominator=mean_weights(w_y, index, xp=xp), xp=xp)
    if maybe_nonzero(args.z):
        out = out + z_loss_part(st.lse + st.shift, args.z, index, args.reduction, xp=xp)
    return out


def z_loss_part(log_z: Array, z: float, index: IndexTarget, reduction: str, *, xp: Namespace) -> Array:
    r"""The z-loss part of the index-target loss, reduced: :math:`z\,(\log Z_i)^2` at every
    kept position (0 at ignored ones, NaN at lazily invalid ones), ``"mean"`` over the
    **number** of kept positions: unweighted, so ``z`` means the same with or without class
    weights. ``log_z``: the per-position logsumexp (any source: the statistics, or a library's
    own ``logsumexp`` where the adapters delegate the cross-entropy part)."""
    z_term = mask_loss(z * log_z**2, index, xp=xp)
    return reduce_loss(z_term, reduction, denominator=mean_weights(None, index, xp=xp), xp=xp)


# --- the gradient rule ----------------------------------------------------------------------


class _Rule(NamedTuple):
    """Per-call constants of the gradient rule (one block or many)."""

    eps: float  # label smoothing, uniform convention
    n_classes: int
    on: float  # 1 - ε
    off: float  # ε / C
    z: float
    w: Array | None  # class weights in the compute dtype, shaped along the class axis
    w_sum: Array | float  # Σ_c w_c
    cax: int  # the class axis of the (viewed) array
    dtype: Any
    classes: Array | None  # class ids along cax (None: assign per row)
    inplace: bool  # blocks may be formed in place (out= buffers)
    reads: bool  # values may be read: masked setitem, per-row loops, tests of a value
    exp_trick: bool  # a·softmax as exp(x - (lse - log a)) where every a > 0 (reads a value)


def gradient(
    input: Array, target: Array, weight: Array | None, args: CrossEntropyArgs, cotangent: Array | None,
    lse: Array | None, *, xp: Namespace, blocked: bool = True,
) -> Array:
    """The gradient of :func:`cross_entropy` w.r.t. ``input`` from checked arguments.

    ``lse`` is the per-position logsumexp in the compute dtype with the class axis kept
    (recomputed when None). On eager arrays with the classes off axis 0, large inputs are
    processed in blocks of rows, each formed in place in the preallocated result, so the
    temporaries are O(block), not O(input) (``blocked=False``, used under ``create_graph``,
    turns that off: in-place writes would not be differentiable). Everything else (JAX,
    Dask, small inputs) is the same rule applied once to the whole array.
    """
    dtype = compute_dtype(input.dtype, xp=xp)
    w = None if weight is None else xp.astype(weight, dtype)
    ax, index = args.ax, args.index
    # The per-position shape, for the mean's count (index targets: the targets themselves, so a
    # masked target of a masked array leaves the count as it leaves the loss).
    like = positions_like(input, ax, dtype, xp=xp) if index is None else index.safe
    w_y = None if w is None or index is None else gather_weight(w, index.safe, xp=xp)
    s = reduction_scale(cotangent, args.reduction, like,
                        _kept_count(args, xp=xp) if index is None else mean_weights(w_y, index, xp=xp), dtype, xp=xp)
    s_z: Array | float = s
    if index is not None:
        s_z = reduction_scale(cotangent, args.reduction, like, mean_weights(None, index, xp=xp), dtype,
                              xp=xp) if maybe_nonzero(args.z) else 0.0
    # Classes last: viewed as (R, C) so blocks are runs of positions; else slices along axis 0.
    # A symbolic shape is neither viewed nor blocked: the rule applies to the array as it is.
    n_rows = known_size(tuple(like.shape))
    last = ax == input.ndim - 1 and n_rows is not None
    rows = _engine.gradient_rows(input, ax, xp=xp) if blocked and not args.lazy and n_rows is not None else None
    x = xp.reshape(input, (n_rows, args.n_classes)) if last else input
    cax = 1 if last else ax

    def flat(a: Any) -> Any:
        return a if a is None or isinstance(a, float) or a.ndim == 0 or not last else xp.reshape(a, (n_rows,))

    t = None if index is None else flat(index.safe)
    drop = flat(index.dropped) if index is not None else None if args.keep is None else flat(~args.keep)
    probs = None if index is not None else (xp.reshape(target, (n_rows, args.n_classes)) if last else target)
    s, s_z = flat(s), flat(s_z)
    lse = None if lse is None else (xp.reshape(lse, (n_rows, 1)) if last else lse)
    on, off = smoothing_coefficients(args.eps, args.n_classes)
    device = device_of(input)
    inplace = rows is not None and writes_into(input)
    reads = inplace and args.reads
    loop = reads and last and args.n_classes >= _LOOP_CLASSES
    classes = None
    if t is not None and not loop:
        classes = class_ids(args.n_classes, x.ndim, cax, xp=xp, device=device, dtype=t.dtype)
    rule = _Rule(args.eps, args.n_classes, on, off, args.z, None if w is None else along_classes(w, x.ndim, cax, xp=xp),
                 float(args.n_classes) if w is None else xp.sum(w), cax, dtype, classes, inplace, reads, reads)
    if rows is None:
        g = gradient_rows(x, lse, s, s_z, t, drop, probs, rule, xp=xp)
        return like_input(xp.reshape(g, tuple(input.shape)) if last else g, input, xp=xp)
    return _gradient_blocked(input, x, lse, s, s_z, t, drop, probs, rule, rows, xp=xp)


def _gradient_blocked(
    input: Array, x: Array, lse: Array | None, s: Any, s_z: Any, t: Array | None, drop: Array | None,
    probs: Array | None, rule: _Rule, rows: int, *, xp: Namespace,
) -> Array:
    """:func:`gradient_rows` block by block into one array of ``input``'s shape: each block is
    formed in the result's own block (compute dtype == input dtype) or in one reused
    compute-dtype buffer (half precision), with ``out=`` where the library has it."""
    n_rows = x.shape[0]
    rows = max(1, min(rows, n_rows))
    out = xp.empty(tuple(x.shape), dtype=input.dtype, device=device_of(input))
    direct = rule.inplace and rule.dtype == input.dtype  # the result's block is the buffer
    buffers: dict[str, Array] = {}

    def buffer(name: str, n: int) -> Array | None:
        """A reused compute-dtype block (None where the library has no ``out=``)."""
        if not rule.inplace:
            return None
        b = buffers.get(name)
        if b is None:
            b = buffers[name] = xp.empty((rows, *x.shape[1:]), dtype=rule.dtype, device=device_of(input))
        return b if n == rows else b[:n, ...]

    def part(a: Any, i0: int, i1: int) -> Any:
        return a if a is None or isinstance(a, float) or a.ndim == 0 else a[i0:i1, ...]

    for i0 in range(0, n_rows, rows):
        i1 = min(i0 + rows, n_rows)
        ob = out[i0:i1, ...]
        gb = gradient_rows(x[i0:i1, ...], part(lse, i0, i1), part(s, i0, i1), part(s_z, i0, i1), part(t, i0, i1),
                           part(drop, i0, i1), part(probs, i0, i1), rule, xp=xp,
                           out=ob if direct else buffer("g", i1 - i0), buffer=lambda name, n=i1 - i0: buffer(name, n))
        if gb is not ob:
            out[i0:i1, ...] = gb if rule.inplace else like_input(gb, ob, xp=xp)
    return out if tuple(out.shape) == tuple(input.shape) else xp.reshape(out, tuple(input.shape))


# Classes per row from which the target positions of a CPU block are assigned one row at a
# time (a few µs each) rather than through a block-sized boolean mask (two passes over it).
_LOOP_CLASSES = _policy.TABLE["gradient_loop_classes"].value


def gradient_rows(
    x: Array, lse: Array | None, s: Any, s_z: Any, t: Array | None, drop: Array | None, probs: Array | None,
    rule: _Rule, *, xp: Namespace, out: Array | None = None, buffer: Any = None,
) -> Array:
    """The cross-entropy gradient rule on rows ``x`` (classes along ``rule.cax``).

    ``s``/``s_z``: the per-row scales of the loss and of the z term; ``t``/``drop``: index
    targets and the rows that contribute nothing (None for probability targets, given as
    ``probs``). Computes ``a·p - b·e_t - s·u·w`` (index) or ``a·p - s·q̃`` (probabilities) with
    ``a = s·mass + s_z·2zL`` and ``b = s·(1-ε)·w_t``, written into ``out`` (and the buffers
    ``buffer(name)`` gives) in place where ``rule.inplace``, else as new arrays.
    """
    cax = rule.cax
    fresh = lse is None  # no saved lse: the softmax (and lse) of the block first
    g = out
    if fresh:
        g, lse = softmax_and_lse(x, cax, out=g, dtype=rule.dtype, xp=xp)
    lse_r = xp.squeeze(lse, axis=cax)
    if probs is not None:  # q̃ = w ⊙ ((1-ε) y + ε/C), in a buffer where there is one
        q = write_into("multiply", None if buffer is None else buffer("q"), probs, rule.on, xp=xp)
        q = as_dtype(q, rule.dtype, xp=xp)  # no out=: the product kept the target's dtype
        if maybe_nonzero(rule.off):
            q = write_into("add", q if rule.inplace else None, q, rule.off, xp=xp)
        if rule.w is not None:
            q = write_into("multiply", q if rule.inplace else None, q, rule.w, xp=xp)
        a = xp.sum(q, axis=cax)
        if maybe_nonzero(rule.z):
            a = a + 2.0 * rule.z * lse_r
        g = _scaled_softmax(g, x, None if fresh else lse, expand_at(s * a, cax, xp=xp), rule, xp=xp)
        if not (isinstance(s, float) and s == 1.0):
            q = write_into("multiply", q if rule.inplace else None, q, expand_at(s, cax, xp=xp), xp=xp)
        return _zero_rows(write_into("subtract", g if rule.inplace else None, g, q, xp=xp), drop, rule, xp=xp)
    w_t = 1.0 if rule.w is None else gather_weight(xp.reshape(rule.w, (-1,)), t, xp=xp)
    a, b, u = gradient_coefficients(s, s_z, lse_r, w_t, rule.w_sum, rule.eps, rule.z, rule.n_classes)
    g = _scaled_softmax(g, x, None if fresh else lse, expand_at(a, cax, xp=xp), rule, xp=xp)
    g = _subtract_at(g, t, b, rule, xp=xp)
    if maybe_nonzero(rule.eps):
        u = expand_at(u, cax, xp=xp)
        if rule.w is None or isinstance(u, float) or u.ndim == 0:
            u = u if rule.w is None else u * rule.w
        else:  # per-row scale times per-class weight: a block, formed in a second buffer
            u = write_into("multiply", None if buffer is None else buffer("u"), u, rule.w, xp=xp)
        g = write_into("subtract", g if rule.inplace else None, g, u, xp=xp)
    return _zero_rows(g, drop, rule, xp=xp)


def _scaled_softmax(g: Array | None, x: Array, lse: Array | None, a: Array | float, rule: _Rule, *,
                    xp: Namespace) -> Array:
    """``a · softmax(x)``. ``lse`` None: ``g`` already holds the softmax. With a saved ``lse``
    and ``a > 0`` in every row the scale enters the exponent, ``exp(x - (lse - log a))``: one
    pass over the block fewer (in place only: it reads a value to decide)."""
    if lse is not None:
        positive = rule.exp_trick and (a > 0.0 if isinstance(a, float) else bool(xp.all(a > 0.0)))
        if positive:
            shift = lse - (math.log(a) if isinstance(a, float) else xp.log(a))
            g = write_into("subtract", g, x, shift, xp=xp)
            return write_into("exp", g, g, xp=xp)
        g, _ = softmax_and_lse(x, rule.cax, lse=lse, out=g, dtype=rule.dtype, xp=xp)
    return write_into("multiply", g if rule.inplace else None, g, a, xp=xp)


def _subtract_at(g: Array, t: Array, c: Array | float, rule: _Rule, *, xp: Namespace) -> Array:
    """``g - c·onehot(t)`` along the class axis, changing only the target positions.

    The standard has no scatter. In place with the classes last, the targets are gathered,
    shifted and put back by the library's scatter where the namespace seam has one
    (:func:`put_along_class_axis`: PyTorch, NumPy, CuPy), values read or not. Otherwise, not in
    place or where values are not read: a comparison with the class ids. In place,
    ``rule.classes`` None (classes last, many of them): the targets are gathered, shifted and
    assigned back one row at a time, a few µs per row against two passes over the row's C
    elements; else a boolean mask (1 byte per element) selects them: boolean assignment takes
    values in row-major order, which is the order of the gathered targets when the classes
    are the last axis; else ``c`` is put in that order by indexing its broadcast with the mask.
    """
    cax = rule.cax
    last = cax == g.ndim - 1
    # In place (``rule.reads`` implies it), classes last: the targets gathered and shifted.
    picked = take_along_class_axis(g, t, cax, xp=xp) - c if rule.inplace and last else None
    if picked is not None and put_along_class_axis(g, t, picked, cax):
        # The library's scatter: no pass over the block, and no value read on the host (so
        # also where ``rule.reads`` is False: an accelerator).
        return g
    if not rule.reads:
        hit = xp.expand_dims(t, axis=cax) == rule.classes
        return xp.where(hit, g - expand_at(c, cax, xp=xp), g)
    if picked is not None:
        if rule.classes is None:
            for k in range(g.shape[0]):
                g[k, int(t[k])] = picked[k]
        else:
            g[xp.expand_dims(t, axis=cax) == rule.classes] = xp.reshape(picked, (-1,))
        return g
    mask = xp.expand_dims(t, axis=cax) == rule.classes
    c_all = xp.broadcast_to(xp.asarray(c, dtype=g.dtype, device=device_of(g)) if isinstance(c, float) else
                            expand_at(c, cax, xp=xp), tuple(g.shape))
    g[mask] = g[mask] - c_all[mask]
    return g


def _zero_rows(g: Array, drop: Array | None, rule: _Rule, *, xp: Namespace) -> Array:
    """Zero gradient at dropped rows (ignored, or lazily out of range): a ``where`` or an
    assignment, never a product, so non-finite logits in a dropped row cannot leak NaN."""
    if drop is None:
        return g
    mask = xp.expand_dims(drop, axis=rule.cax)
    if not rule.reads:
        return xp.where(mask, 0.0, g)
    if bool(xp.any(drop)):
        g[drop if rule.cax == g.ndim - 1 else xp.broadcast_to(mask, tuple(g.shape))] = 0.0
    return g


def _contract(g: Array, d: Array, args: CrossEntropyArgs, *, xp: Namespace) -> Array:
    """``Σ g·d``: over everything for a reduced loss, over the class axis for ``"none"``."""
    prod = g * d
    return xp.sum(prod, axis=args.ax) if args.reduction == "none" else xp.sum(prod)


def _weighted_numerator(neg_log_p: Array, target: Array, v: Array, args: CrossEntropyArgs, *,
                        xp: Namespace) -> tuple[Array, Array | None]:
    """Per-position cross-entropy numerator with class weights ``v`` (linear in ``v``), and for
    index targets the ``"mean"`` denominator terms ``v_y`` at kept positions."""
    on, off = smoothing_coefficients(args.eps, args.n_classes)
    v_c = along_classes(v, neg_log_p.ndim, args.ax, xp=xp)
    if args.index is None:
        q = _smoothed(target, None, args.eps, args.n_classes, neg_log_p.dtype, xp=xp)
        # 0 where q = 0: no mass on a class at a -inf logit contributes nothing.
        n = xp.sum(xp.where(q == 0.0, 0.0, v_c * q * neg_log_p), axis=args.ax)
        return (n if args.keep is None else xp.where(args.keep, n, 0.0)), None
    index = args.index
    nll = take_along_class_axis(neg_log_p, index.safe, args.ax, xp=xp)
    v_y = gather_weight(v, index.safe, xp=xp)
    n = on * v_y * nll
    if maybe_nonzero(off):
        n = n + off * xp.sum(v_c * neg_log_p, axis=args.ax)
    drop = index.dropped
    if drop is not None:
        n, v_y = xp.where(drop, 0.0, n), xp.where(drop, 0.0, v_y)
    return n, v_y


def jvp(input: Array, target: Array, weight: Array | None, args: CrossEntropyArgs,
        tangents: tuple[Array, Array | None, Array | None], *, xp: Namespace) -> tuple[Array, Array]:
    """``(loss, its directional derivative)`` along ``tangents = (d_input, d_target, d_weight)``
    (``d_target`` used for probability targets only, ``d_weight`` when ``weight`` is given).

    The derivative is linear in the tangents (so reverse mode is its transpose): ``Σ g·dx`` with
    ``g`` the gradient rule's result, ``Σ (∂l/∂q)·dq`` (:func:`probability_target_gradient`), and
    for the class weights, in which the per-position loss is linear, the numerator evaluated at
    ``dw`` (the ``"mean"`` denominator ``Σ w_y`` differentiated too). The derivative rule of
    :func:`cross_entropy` beside its forward (registered by :mod:`xce.adapters.jax`).
    """
    dx, dt, dw = tangents
    loss, st = cross_entropy_with_stats(input, target, weight, args, xp=xp)
    lse = xp.expand_dims(st.shift + st.lse, axis=args.ax)
    # Lazy arrays (XLA): the softmax recomputed from x repeats the forward's max-shift and exp
    # exactly, which the compiler merges into one exp pass; exp(x - lse) would be a second one.
    g = gradient(input, target, weight, args, None, None if args.lazy else lse, xp=xp)
    tangent = _contract(g, dx, args, xp=xp)
    if args.index is None and dt is not None:
        tangent = tangent + _contract(probability_target_gradient(input, target, weight, args, None, lse, xp=xp),
                                      as_dtype(dt, lse.dtype, xp=xp), args, xp=xp)
    if weight is not None and dw is not None:
        neg_log_p = lse - as_dtype(input, lse.dtype, xp=xp)
        dn, dv_y = _weighted_numerator(neg_log_p, target, as_dtype(dw, lse.dtype, xp=xp), args, xp=xp)
        if args.reduction == "none":
            dl = dn
        elif args.reduction == "sum" or args.index is None:
            dl = reduce_loss(dn, args.reduction, denominator=_kept_count(args, xp=xp), xp=xp)
        else:  # d(N/D) = (dN - (N/D)·dD) / D
            n, v_y = _weighted_numerator(neg_log_p, target, as_dtype(weight, lse.dtype, xp=xp), args, xp=xp)
            den = xp.sum(v_y)
            dl = (xp.sum(dn) - xp.sum(n) / den * xp.sum(dv_y)) / den
        tangent = tangent + dl
    return loss, as_dtype(tangent, loss.dtype, xp=xp)


def probability_target_gradient(input: Array, target: Array, weight: Array | None, args: CrossEntropyArgs,
                                cotangent: Array | None, lse: Array, *, xp: Namespace) -> Array:
    """d loss / d target for probability targets: ``-s·(1-ε)·w_c·ℓ_c`` with ``ℓ = x - log Z``
    (``lse`` the full logsumexp, class axis kept) and ``s`` the reduction's scale. True at
    zero-probability entries too; ``-inf`` logits give ``+inf`` there, as the derivative is."""
    dtype = lse.dtype
    neg_log_p = lse - as_dtype(input, dtype, xp=xp)
    if weight is not None:
        neg_log_p = neg_log_p * along_classes(xp.astype(weight, dtype), input.ndim, args.ax, xp=xp)
    s = reduction_scale(cotangent, args.reduction, positions_like(input, args.ax, dtype, xp=xp),
                        _kept_count(args, xp=xp), dtype, xp=xp)
    on, _ = smoothing_coefficients(args.eps, args.n_classes)
    g = expand_at(s, args.ax, xp=xp) * (on * neg_log_p)
    if args.keep is not None:
        g = xp.where(xp.expand_dims(args.keep, axis=args.ax), g, 0.0)
    return like_input(g, target, xp=xp)


@derivative_of(cross_entropy, drop=("return_stats",))
@fill_doc(CROSS_ENTROPY_PARAMETERS)
def cross_entropy_grad(input: Array, target: Array, weight: Array | None, ignore_index: int, reduction: str,
                       label_smoothing: float, *, axis: int | None, label_smoothing_mode: str, z_loss: float,
                       where: Array | None, softcap: float | None, sample_weight: Array | None,
                       normalizer: float | Array | None, cotangent: Array | None, xp: Namespace | None) -> Array:
    r"""Gradient of :func:`xce.cross_entropy` w.r.t. ``input``.

    Index targets: :math:`s_i[(1-\varepsilon) w_{y_i}(p - e_{y_i}) + \frac{\varepsilon}{C}(Wp - w)]
    + s^z_i\,2z\log Z_i\,p`, with :math:`s_i` the cotangent over :math:`\sum w_{y}` (``"mean"``)
    and :math:`s^z_i` over the count of non-ignored positions; 0 at ignored positions.
    Probability targets: :math:`s_i[(\sum_c\tilde q_c)p - \tilde q + 2z\log Z_i\,p]`.

    Parameters
    ----------
    {parameters}
    cotangent : array, optional
        The upstream gradient (see :mod:`xce.grad`).
    xp : namespace, optional
        The array namespace, to skip inference.

    Examples
    --------
    >>> import numpy as np, xce
    >>> dx = xce.grad.cross_entropy_grad(np.asarray([[0.0, 0.0], [0.0, 0.0]]), np.asarray([0, -100]))
    >>> dx.tolist()
    [[-0.5, 0.5], [0.0, 0.0]]
    """
    xp = namespace((*_NAMES, "cotangent", "where", "sample_weight"), input, target, weight, cotangent, where,
                   sample_weight, xp=xp)
    if softcap is not None or sample_weight is not None or normalizer is not None:
        given = (ignore_index, reduction, label_smoothing, axis, label_smoothing_mode, z_loss)
        extras = _extras(input, given, softcap, sample_weight, normalizer, False, xp=xp)
        return extras_gradient(input, target, weight, given, where, extras, cotangent, xp=xp)
    args = check_arguments(input, target, weight, ignore_index, reduction, label_smoothing, axis,
                           label_smoothing_mode, z_loss, where, xp=xp)
    return gradient(input, target, weight, args, cotangent, None, xp=xp)


# --- LLM extras: soft-capping, per-position weights, a global normaliser, statistics ----------


class LossStats(NamedTuple):
    r"""What the pass that computed the loss also gives (``return_stats=True``).

    * ``lse``: :math:`\log\sum_c e^{x_c}` of the (soft-capped) logits per position (the target's
      shape; every position, ignored ones too; from :func:`xce.linear_cross_entropy`, 0 at the
      ignored ones, whose logits are never formed). **Differentiable** from both losses, on
      every library with autodiff, so a loss term of your own built from it (a z-loss
      ``c·mean(lse²)`` over the kept positions, as Cut Cross-Entropy's users write) trains:
      from ``linear_cross_entropy`` on PyTorch its gradient takes a sweep of its own in
      ``backward`` (when it is used), still without the ``(N, V)`` logits;
    * ``z_loss``: the z term :math:`z\,\mathrm{lse}^2` alone, reduced like the loss (0 when
      ``z_loss=0``), for logging;
    * ``accuracy``: 0-d, the fraction of kept positions whose largest logit is the target's
      (probability targets: the target's largest entry); a tie with the target counts as a hit;
    * ``entropy``: per position, :math:`-\sum_c p_c \log p_c` of the softmax.

    ``z_loss``, ``accuracy`` and ``entropy`` are for logging: from the fused sweep of
    ``linear_cross_entropy`` on PyTorch they are non-differentiable outputs (``z_loss=`` puts
    the z term in the loss itself).

    Examples
    --------
    >>> import numpy as np, xce
    >>> logits = np.asarray([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    >>> loss, stats = xce.cross_entropy(logits, np.asarray([0, 1, -100]), z_loss=1e-4, return_stats=True)
    >>> float(stats.accuracy), stats.lse.round(4), stats.entropy.round(4)
    (1.0, array([2.2395, 1.0986, 3.1698]), array([0.6656, 1.0986, 0.5243]))
    >>> round(float(stats.z_loss), 6)
    0.000311
    """

    lse: Array
    z_loss: Array
    accuracy: Array
    entropy: Array


@dataclass(frozen=True, slots=True)
class Extras:
    """:func:`cross_entropy`'s LLM-training arguments, checked."""

    softcap: Any = None  #: None, a float > 0 or a 0-d (traced) array
    sample_weight: Array | None = None  #: per-position weights, the per-position loss's shape
    normalizer: Any = None  #: None, a float > 0 or a 0-d array: replaces the "mean" denominator
    return_stats: bool = False


def check_extras(input: Array, ax: int, reduction: str, softcap: object, sample_weight: Array | None,
                 normalizer: object, return_stats: object, *, xp: Namespace) -> Extras:
    """Checks of ``softcap``, ``sample_weight``, ``normalizer`` and ``return_stats`` (errors name
    the argument and the fix; array values are never read)."""
    cap = None if softcap is None else check_positive(softcap, "softcap", " Gemma 2 uses 30.0; None: no cap.")
    if sample_weight is not None:
        check_sample_weight(input, ax, sample_weight, xp=xp)
    normalizer = check_normalizer(normalizer, reduction)
    if not isinstance(return_stats, bool):
        raise TypeError(f"return_stats must be True or False; got {return_stats!r}.")
    return Extras(cap, sample_weight, normalizer, return_stats)


def check_sample_weight(input: Array, ax: int, sample_weight: Array, *, xp: Namespace) -> None:
    """``sample_weight``: a real floating array of the per-position loss's shape (``input``'s
    without the class axis ``ax``); the error names the argument and the expected shape."""
    check_floating(sample_weight, "sample_weight", xp=xp)
    per_position = tuple(input.shape[:ax]) + tuple(input.shape[ax + 1 :])
    if tuple(sample_weight.shape) != per_position:
        raise ValueError(f"sample_weight must have the per-position loss's shape {per_position} (the target's "
                         f"shape for class indices); got shape {tuple(sample_weight.shape)}.")


def softcap_logits(x: Array, cap: Any, *, xp: Namespace) -> Array:
    """``cap·tanh(x/cap)`` (Gemma 2's soft-capping) in the compute dtype: half-precision ``x``
    is upcast first (:func:`xce._scoring.scored_logits`), as every loss computes it."""
    return scored_logits(x, cap, 1.0, compute_dtype(x.dtype, xp=xp), xp=xp)


def _z_apart(args: CrossEntropyArgs, weight: Array | None, extras: Extras) -> bool:
    """Whether the z term is reduced apart: under a class-weighted "mean" its denominator (Σ
    sample weights) differs from the cross-entropy part's (Σ sample weight · w_y)."""
    return maybe_nonzero(args.z) and weight is not None and args.reduction == "mean" and extras.normalizer is None


def weighted_denominators(x: Array, args: CrossEntropyArgs, weight: Array | None, sw: Array | None, dtype: Any,
                          *, xp: Namespace) -> tuple[Array, Array]:
    """Per-position weights of the "mean" denominators, times the sample weight: the
    cross-entropy part's (``w_y`` at kept positions; 1 at kept ones for probability targets)
    and the z term's (1 at kept positions)."""
    per_position = tuple(x.shape[: args.ax]) + tuple(x.shape[args.ax + 1 :])
    kept = xp.ones(per_position, dtype=dtype, device=device_of(x))
    ce_w = kept
    if args.index is None:
        kept = ce_w = kept if args.keep is None else xp.where(args.keep, kept, 0.0)
    else:
        if args.index.ignored is not None:
            kept = ce_w = xp.where(args.index.ignored, 0.0, kept)
        if weight is not None:
            ce_w = kept * gather_weight(xp.astype(weight, dtype), args.index.safe, xp=xp)
    return (ce_w, kept) if sw is None else (ce_w * sw, kept * sw)


def reduce_weighted(per: Array, sw: Array | None, den_w: Array, reduction: str, normalizer: Any, *,
                    xp: Namespace) -> Array:
    """``Σ sw·l`` over ``Σ den_w`` (or over ``normalizer``) for "mean", the sum, or ``sw·l``."""
    v = per if sw is None else per * sw
    if reduction == "none":
        return v
    total = xp.sum(v)
    if reduction == "sum":
        return total
    return total / (xp.sum(den_w) if normalizer is None else normalizer)


def weighted_scale(cotangent: Array | None, reduction: str, sw: Array | None, den_w: Array, normalizer: Any, *,
                   xp: Namespace) -> Array:
    """The per-position derivative of :func:`reduce_weighted` times the cotangent."""
    s = xp.ones_like(den_w) if cotangent is None else xp.astype(cotangent, den_w.dtype) * xp.ones_like(den_w)
    if sw is not None:
        s = s * sw
    if reduction == "mean":
        s = s / (xp.sum(den_w) if normalizer is None else normalizer)
    return s


class _Prepared(NamedTuple):
    x: Array  # the (soft-capped) logits
    args: CrossEntropyArgs  # checked, reduction "none", the z term left out when it is reduced apart
    z: Any  # the checked z coefficient
    apart: bool  # the z term reduced apart (its own "mean" denominator)
    sw: Array | None
    ce_w: Array  # the cross-entropy part's "mean" denominator weights (sample weights included)
    kept: Array  # the z term's
    normalizer: Any


def _prepare(input: Array, target: Array, weight: Array | None, options: tuple[Any, ...], where: Array | None,
             extras: Extras, *, xp: Namespace) -> _Prepared:
    ignore_index, reduction, label_smoothing, axis, mode, z_loss = options
    if extras.softcap is None:
        x = input
    else:  # capped in the compute dtype (float32 for half precision), the loss computed there
        check_floating(input, "input", xp=xp)
        x = softcap_logits(input, extras.softcap, xp=xp)
    args = check_arguments(x, target, weight, ignore_index, reduction, label_smoothing, axis, mode, z_loss, where,
                           xp=xp)
    apart, z = _z_apart(args, weight, extras), args.z
    dtype = compute_dtype(input.dtype, xp=xp)
    sw = None if extras.sample_weight is None else as_dtype(extras.sample_weight, dtype, xp=xp)
    ce_w, kept = weighted_denominators(x, args, weight, sw, dtype, xp=xp)
    norm = extras.normalizer
    norm = norm if norm is None or isinstance(norm, float) else as_dtype(norm, dtype, xp=xp)
    args.reduction, args.z = "none", (0.0 if apart else z)
    return _Prepared(x, args, z, apart, sw, ce_w, kept, norm)


def _z_term(lse: Array, z: Any, kept: Array, *, xp: Namespace) -> Array:
    """``z·lse²`` at kept positions, 0 elsewhere (whatever ``lse`` is there)."""
    return xp.where(kept != 0.0, z * lse**2, 0.0)


def _accuracy(x: Array, target: Array, st: RowStats, args: CrossEntropyArgs, kept: Array, *, xp: Namespace) -> Array:
    """Fraction of kept positions whose largest logit is the target's (``st.target`` is
    ``x_y - max``: 0 exactly at a hit)."""
    if args.index is None:
        top = xp.argmax(target, axis=args.ax)
        gap = as_dtype(take_along_class_axis(x, top, args.ax, xp=xp), st.shift.dtype, xp=xp) - st.shift
    else:
        gap = st.target
    on = kept != 0.0
    return xp.sum(xp.astype(on & (gap >= 0.0), kept.dtype)) / xp.sum(xp.astype(on, kept.dtype))


def cross_entropy_extras(input: Array, target: Array, weight: Array | None, options: tuple[Any, ...],
                         where: Array | None, extras: Extras, *, xp: Namespace) -> Array | tuple[Array, LossStats]:
    """:func:`cross_entropy` with ``softcap``, ``sample_weight``, ``normalizer`` or
    ``return_stats``: the per-position loss (through the adapters, so each framework's fast
    derivative serves; with ``return_stats`` the definition, whose one pass also gives the
    statistics), then the weighted reduction in plain array operations (differentiable
    everywhere, in ``sample_weight`` and an array ``normalizer`` too)."""
    reduction = options[1]
    pr = _prepare(input, target, weight, options, where, extras, xp=xp)
    args, st, lse = pr.args, None, None
    if extras.return_stats:
        per, st = cross_entropy_with_stats(pr.x, target, weight, args, xp=xp, moment=True)
        lse = st.shift + st.lse
    else:
        per = cross_entropy(pr.x, target, weight, args.ignore_index, "none", args.eps, axis=args.ax, z_loss=args.z,
                            where=where, xp=xp)
        if pr.apart:
            lse = logsumexp(as_dtype(pr.x, pr.kept.dtype, xp=xp), axis=args.ax, xp=xp)
    loss = reduce_weighted(per, pr.sw, pr.ce_w, reduction, pr.normalizer, xp=xp)
    if pr.apart:
        loss = loss + reduce_weighted(_z_term(lse, pr.z, pr.kept, xp=xp), pr.sw, pr.kept, reduction, pr.normalizer,
                                       xp=xp)
    loss = as_dtype(loss, input.dtype, xp=xp)
    if st is None:
        return loss
    z_stat = reduce_weighted(_z_term(lse, pr.z, pr.kept, xp=xp), pr.sw, pr.kept, reduction, pr.normalizer, xp=xp)
    stats = LossStats(as_dtype(lse, input.dtype, xp=xp), as_dtype(z_stat, input.dtype, xp=xp),
                      _accuracy(pr.x, target, st, args, pr.kept, xp=xp),
                      as_dtype(st.lse - st.moment, input.dtype, xp=xp))
    return loss, stats


def extras_gradient(input: Array, target: Array, weight: Array | None, options: tuple[Any, ...],
                    where: Array | None, extras: Extras, cotangent: Array | None, *, xp: Namespace) -> Array:
    r"""The gradient of :func:`cross_entropy_extras` w.r.t. ``input``: the rule of
    :func:`gradient` for ``"none"`` with the weighted reduction's per-position scale as its
    cotangent, the z term's own scale where it is reduced apart, and the soft cap's chain
    factor :math:`1 - \tanh^2(x/c)` (:func:`xce._scoring.scored_logits_gradient`), all in the compute
    dtype."""
    pr = _prepare(input, target, weight, options, where, extras, xp=xp)
    s = weighted_scale(cotangent, options[1], pr.sw, pr.ce_w, pr.normalizer, xp=xp)
    g = gradient(pr.x, target, weight, pr.args, s, None, xp=xp)
    if pr.apart:
        p, lse = softmax_and_lse(pr.x, pr.args.ax, dtype=pr.kept.dtype, xp=xp)
        s_z = weighted_scale(cotangent, options[1], pr.sw, pr.kept, pr.normalizer, xp=xp)
        coef = xp.where(pr.kept != 0.0, s_z * (2.0 * pr.z) * xp.squeeze(lse, axis=pr.args.ax), 0.0)
        g = g + as_dtype(expand_at(coef, pr.args.ax, xp=xp) * p, g.dtype, xp=xp)
    if extras.softcap is not None:
        g = scored_logits_gradient(g, input, extras.softcap, 1.0, g.dtype, xp=xp)
    return like_input(g, input, xp=xp)


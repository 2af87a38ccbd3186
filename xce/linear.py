r"""``linear_cross_entropy``: a linear layer followed by cross entropy, without the logits.

For language-model heads the ``(N, V)`` logits dwarf everything else (N = 8192 tokens and a
32k vocabulary is 1 GiB in float32, twice that with their gradient). Here the rows are taken
in blocks: each block's logits ``h @ W.T + b`` live only while their logsumexp, loss and
gradient are formed, the approach of Cut Cross-Entropy (Wijmans et al., 2024) and
Liger-Kernel's fused linear cross entropy (Hsu et al., 2024). With gradients requested, the
same sweep produces :math:`\partial L/\partial h`, :math:`\partial L/\partial W` and
:math:`\partial L/\partial b`, so forward plus backward costs the three matrix products of
the unfused computation.

Memory: one ``(block_rows, V)`` buffer (by default 16M elements, 64 MiB in float32: tall
blocks keep the ``dW`` updates efficient) holds a block's logits, then in place their
exponentials, whose rows are scaled into the gradient only inside the products (the row
scales go on the ``(rows, D)`` operands); one ``(v_chunk, D)`` buffer (2M elements) holds a slice of
the block's ``dW`` update, and ``dL/dh`` is written block by block into its final array.
Where the library has ``out=`` and views (NumPy, PyTorch, CuPy) both buffers are allocated
once per call. The gradient's one-hot part :math:`-c_1 e_y` never touches a block: its
``dL/dh`` term is :math:`-c_1 W_y` (a gather), and its ``dW`` term, a scatter-add the
standard lacks, is summed over the rows sorted by target. For N = 8192, D = 1024, V = 32000
the extra memory beyond the gradients is about a tenth of the logits
(``benchmarks/linear_ce.py``).

Eager arrays (NumPy, PyTorch, CuPy, array-api-strict) take the blocked path, and so does
PyTorch under ``torch.compile`` / ``torch.export`` (as custom ops, opaque to the compiler). JAX
arrays (eager and under ``jax.jit`` alike) take the JAX adapter's checkpointed ``lax.scan`` over
vocabulary chunks (a Python loop over blocks would unroll into the trace): it gives the per-row
sums (:class:`RowSums`), from which :func:`loss_from_row_sums` forms the loss, and JAX's autodiff
its derivatives. Dask arrays take the unfused formula ``cross_entropy(h @ W.T + b, ...)``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from . import _engine, _policy
from ._namespace import (
    Array,
    Namespace,
    add_at_rows,
    as_dtype,
    compute_dtype,
    device_of,
    has_values,
    is_lazy,
    is_traced,
    mutable_like_numpy,
    namespace,
    on_input_device,
    take_along_class_axis,
    write_into,
)
from ._policy import TABLE
from ._registry import adapter_for, adapter_hook, register_value_and_grad
from ._scoring import scored_logits, scored_logits_gradient
from ._signatures import derivative_of
from ._softmax import finite_max
from ._targets import IndexTarget, mask_loss, prepare_index
from ._validate import (
    check_floating,
    check_fraction,
    check_integer,
    check_linear_shapes,
    check_normalizer,
    check_positive,
    check_real,
    check_reduction,
    maybe_nonzero,
)
from .losses.cross_entropy import LossStats, cross_entropy, cross_entropy_grad, gradient_coefficients, index_loss

__all__ = ["LinearArgs", "check_arguments", "linear_cross_entropy", "value_and_grad_linear_cross_entropy"]

_NAMES = ("input", "linear_weight", "target", "linear_bias", "weight", "sample_weight")
# Elements of one (v_chunk, D) slice of a block's dW product (8 MiB in float32).
_VOCAB_CHUNK_ELEMENTS = TABLE["vocab_chunk_elements"].value
_ALIASING: dict[int, bool] = {}
_SCATTERS: dict[int, bool] = {}
_MAX_BLOCK_FRACTION = 12
# The smallest vocabulary chunk of a library's loop (fewer classes make each step's product thin).
_MIN_VOCAB_CHUNK = 128
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


class Fused(NamedTuple):
    loss: Array | None
    d_hidden: Array | None
    d_weight: Array | None
    d_bias: Array | None
    stats: LossStats | None = None


@dataclass(frozen=True)
class LinearArgs:
    """:func:`linear_cross_entropy`'s hyper-parameters, checked once (shared by the sweep, the
    unfused formula and the torch adapter)."""

    reduction: str
    eps: Any  #: label smoothing (uniform); a float or a traced 0-d array
    z: Any  #: z-loss coefficient; a float or a traced 0-d array
    ignore_index: int
    softcap: Any = None  #: None, a float > 0 or a traced 0-d array
    temperature: Any = 1.0  #: a float > 0 or a traced 0-d array
    normalizer: Any = None  #: None, a float > 0 or a 0-d array (never read)
    shift: bool = False
    probs: bool = False  #: probability targets
    block_rows: int | None = None  #: ``block_rows=``, else ``options.batch_chunk_size``
    return_stats: bool = False  #: also :class:`xce.LossStats` from the same sweep

    @property
    def scaled(self) -> bool:
        """A temperature other than the Python number 1."""
        return not (isinstance(self.temperature, float) and self.temperature == 1.0)


# --- migration from the pre-PyTorch-2.13 signature -----------------------------------------------

_OLD_POSITIONAL = ("linear_bias", "ignore_index", "reduction", "label_smoothing")
_RENAMED = {"hidden": "input", "bias": "linear_bias"}


def _shown(value: Any) -> str:
    return "<array>" if hasattr(value, "shape") else repr(value)


def _migrate(fn: _Fn) -> _Fn:
    """Accept the old calls where they are unambiguous, refuse the others with the rewrite.

    Old: ``f(hidden, weight, target, bias=None, ignore_index=-100, reduction="mean",
    label_smoothing=0.0, *, ...)`` with ``weight`` the linear layer's matrix. New (PyTorch
    2.13): three positional arguments, the rest keyword-only, ``weight`` the class weights.
    """
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if len(args) > 3:
            extra = ", ".join(f"{k}={_shown(v)}" for k, v in zip(_OLD_POSITIONAL, args[3:]))
            raise TypeError(
                f"{name} takes input, linear_weight and target positionally; the other arguments are keyword-only "
                f"since xce 0.1.0 (PyTorch 2.13's F.linear_cross_entropy signature). Rewrite the call as "
                f"{name}(input, linear_weight, target, {extra})."
            )
        for old, new in _RENAMED.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{name} got both {old}= (its old name) and {new}=; pass only {new}=.")
                warnings.warn(f"{name}({old}=...) is deprecated; pass {new}=... (PyTorch 2.13's name).",
                              DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        weight = kwargs.get("weight")
        if len(args) < 2 and "linear_weight" not in kwargs and getattr(weight, "ndim", 1) == 2:
            raise TypeError(
                f"{name}(weight=<{tuple(getattr(weight, 'shape', ()))} matrix>) without linear_weight: weight= now "
                "means the class weights of F.cross_entropy (shape (V,)), as in PyTorch 2.13. Pass the linear "
                f"layer's (V, D) matrix as linear_weight=..., e.g. {name}(input, linear_weight, target)."
            )
        return fn(*args, **kwargs)

    return cast(_Fn, wrapper)


# --- checks ---------------------------------------------------------------------------------------


def _check_block_rows(block_rows: Any, options: Any) -> int | None:
    """``block_rows=``, else ``options.batch_chunk_size`` (PyTorch's LinearCrossEntropyOptions)."""
    if block_rows is None and options is not None:
        if not hasattr(options, "batch_chunk_size"):
            raise TypeError(f"options must be a torch.nn.LinearCrossEntropyOptions (or None); got "
                            f"{type(options).__name__}.")
        block_rows = options.batch_chunk_size
    if block_rows is None:
        return None
    rows = check_integer(block_rows, "block_rows")
    if rows < 1:
        raise ValueError(f"block_rows must be a positive number of rows; got {rows}.")
    return rows


def _check_weights(input: Array, linear_weight: Array, weight: Array | None, sample_weight: Array | None, *,
                   xp: Namespace) -> None:
    vocab, positions = linear_weight.shape[0], tuple(input.shape[:-1])
    if weight is not None:
        if weight.ndim == 2:
            raise TypeError(f"weight= is the class weight of F.cross_entropy, shape ({vocab},); got a matrix of shape "
                            f"{tuple(weight.shape)}. The linear layer's matrix is linear_weight=.")
        check_floating(weight, "weight", xp=xp)
        if tuple(weight.shape) != (vocab,):
            raise ValueError(f"weight must have shape ({vocab},), one entry per class; got {tuple(weight.shape)}.")
    if sample_weight is not None:
        check_floating(sample_weight, "sample_weight", xp=xp)
        if tuple(sample_weight.shape) != positions:
            raise ValueError(f"sample_weight must have one weight per position, shape {positions} (target's shape "
                             f"for class indices); got {tuple(sample_weight.shape)}.")


def check_arguments(input: Array, linear_weight: Array, target: Array, linear_bias: Array | None,
                    weight: Array | None, sample_weight: Array | None, *, reduction: object, ignore_index: object,
                    label_smoothing: object, options: Any, z_loss: object, softcap: object, temperature: object,
                    normalizer: object, shift: object, block_rows: object, xp: Namespace,
                    return_stats: object = False) -> LinearArgs:
    """Every check of :func:`linear_cross_entropy`'s arguments (shared with its gradient)."""
    reduction = check_reduction(reduction)
    probs = check_linear_shapes(input, linear_weight, target, linear_bias, xp=xp)
    if probs and ignore_index is not None:
        raise ValueError(f"ignore_index cannot be given with probability targets (target of shape "
                         f"{tuple(target.shape)}); got ignore_index={ignore_index!r}. Leave it None.")
    ii = -100 if ignore_index is None else check_integer(ignore_index, "ignore_index")
    for name, flag in (("shift", shift), ("return_stats", return_stats)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False; got {flag!r}.")
    if shift and (input.ndim < 2 or input.shape[-2] < 2):
        raise ValueError(f"shift=True needs input of shape (..., T, D) with T >= 2 positions (position t predicts "
                         f"target t + 1); got input of shape {tuple(input.shape)}.")
    _check_weights(input, linear_weight, weight, sample_weight, xp=xp)
    return LinearArgs(
        reduction, check_fraction(label_smoothing, "label_smoothing", traced=True),
        check_real(z_loss, "z_loss", minimum=0.0, traced=True), ii,
        None if softcap is None else check_positive(softcap, "softcap", " Pass softcap=None for uncapped logits."),
        check_positive(temperature, "temperature", " Pass 1.0 for the plain logits."),
        check_normalizer(normalizer, reduction), bool(shift), probs, _check_block_rows(block_rows, options),
        bool(return_stats))


# --- the public functions ---------------------------------------------------------------------


@on_input_device
@_migrate
def linear_cross_entropy(
    input: Array,
    linear_weight: Array,
    target: Array,
    *,
    linear_bias: Array | None = None,
    weight: Array | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    sample_weight: Array | None = None,
    normalizer: Any = None,
    shift: bool = False,
    return_stats: bool = False,
    block_rows: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Cross entropy of the logits ``input @ linear_weight.T + linear_bias``, never materialising them.

    PyTorch 2.13's ``torch.nn.functional.linear_cross_entropy``, argument for argument (``weight``
    is the *class* weight, as in ``cross_entropy``), plus LLM-training options. With
    :math:`x = h W^\top + b`, the logits actually scored are
    :math:`y = \mathrm{cap}(x)/T`, :math:`\mathrm{cap}(x) = c\tanh(x/c)` (``softcap=c``, Gemma 2;
    identity when None) and ``T`` the ``temperature``. With :math:`\log Z = \mathrm{logsumexp}(y)`
    and class weights :math:`w` (1 when None), for each position not ignored

    .. math::
       l_i = s_i\Bigl[(1-\varepsilon)\,w_{t_i}(\log Z_i - y_{i,t_i})
             + \frac{\varepsilon}{V}\sum_c w_c(\log Z_i - y_{i,c}) + z\,(\log Z_i)^2\Bigr],

    :math:`s_i` the ``sample_weight`` (1 when None). ``"mean"`` divides the cross-entropy part
    by :math:`\sum_i s_i w_{t_i}` and the z part by :math:`\sum_i s_i` (non-ignored positions),
    or both by ``normalizer`` when given (e.g. Hugging Face's ``num_items_in_batch``). Without the
    new options this equals ``cross_entropy(input @ linear_weight.T + linear_bias, target, weight,
    ignore_index, reduction, label_smoothing, axis=-1, z_loss=z_loss)``.

    Eager arrays (NumPy, PyTorch, CuPy, array-api-strict) with class-index targets take the
    blocked sweep: rows in blocks of ``block_rows`` (default about 16M logits per block), so the
    extra memory is O(block_rows · V), not O(N · V); rows whose target is ``ignore_index`` are
    dropped before the matrix product (padding and prompt tokens cost no FLOPs) where values
    may be read; on a GPU (and under ``xce.config(check_values=False)``) finding them would be
    a device-to-host sync, so every row is swept and the ignored ones are masked (their
    FLOPs are spent; ``check_values=True`` checks the targets and drops them, for at most five
    host reads per call, forward or backward, whatever the size). On PyTorch
    tensors that require grad, ``.backward()`` goes through
    :func:`xce.adapters.torch.linear_cross_entropy` (blocked as well);
    ``xce.value_and_grad(xce.linear_cross_entropy)`` gives ``(d_input, d_linear_weight,
    d_linear_bias)`` on any backend. Under ``torch.compile`` and ``torch.export`` the same sweep
    runs as the custom ops ``xce::linear_cross_entropy_fwd`` / ``_bwd``
    (:mod:`xce.adapters.torch_ops`: one opaque graph node, the logits never whole). JAX arrays
    take a ``lax.scan`` over vocabulary chunks (one ``(N, chunk)`` block of logits live, under
    ``jax.jit`` too; derivatives by JAX's autodiff through the checkpointed scan: ``grad``,
    ``jvp``, ``vmap``, Hessian-vector products). Dask, ``torch.func`` transforms and probability
    targets use the unfused formula.

    Parameters
    ----------
    input : array
        Shape ``(..., D)``; with ``shift=True``, ``(..., T, D)``.
    linear_weight : array
        Shape ``(V, D)`` (a linear layer's ``(out_features, in_features)``), ``input``'s dtype.
    target : array
        Integer class indices of shape ``input.shape[:-1]``, or floating class probabilities of
        shape ``(*input.shape[:-1], V)`` (unfused formula).
    linear_bias : array, optional
        Shape ``(V,)``.
    weight : array, optional
        Class weights, shape ``(V,)``, as in ``F.cross_entropy`` (not differentiated by the
        blocked sweep; a PyTorch tensor that requires grad takes the unfused formula).
    reduction : {"mean", "sum", "none"}, default "mean"
    ignore_index : int, optional
        None means -100 for class indices; must stay None for probability targets.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's uniform smoothing.
    options : torch.nn.LinearCrossEntropyOptions, optional
        Accepted for PyTorch compatibility: its ``batch_chunk_size`` is used as ``block_rows``
        (when that is None); the other fields are PyTorch's kernel choices and are ignored (xce
        always blocks eager inputs and accumulates half precision in float32).
    z_loss : float >= 0, default 0.0
        PaLM's z-loss coefficient (not class-weighted; sample-weighted).
    softcap : float > 0, optional
        Soft cap ``c``: the logits become ``c·tanh(x/c)`` before the temperature.
    temperature : float > 0, default 1.0
        The capped logits are divided by it.
    sample_weight : array, optional
        One floating weight per position (``target``'s shape for class indices), multiplying
        the position's loss (z term included). Not differentiated (a PyTorch tensor that
        requires grad takes the unfused formula).
    normalizer : float or 0-d array, optional
        With ``reduction="mean"`` only: the summed loss is divided by it instead of the mean's
        denominator. A 0-d array is never read on the host (no sync).
    shift : bool, default False
        Causal LM: position ``t`` of ``input (..., T, D)`` predicts ``target[..., t + 1]``; the
        last position is dropped (no shifted copy of ``input`` is made). ``"none"`` returns
        shape ``(..., T - 1)``. ``sample_weight`` is shifted with ``target``.
    return_stats : bool, default False
        Return ``(loss, stats)``, ``stats`` an :class:`xce.LossStats` of the scored logits from
        the same sweep (no ``(N, V)`` logits): per-position logsumexp and entropy (0 at positions
        whose target is ignored: their logits are never formed), the z term alone reduced like
        the loss, and the accuracy over kept positions. ``stats.lse`` is differentiable (a z-loss
        of your own from it trains, as from :func:`xce.cross_entropy`'s); the others are for
        logging.
    block_rows : int, optional
        Rows per block on eager backends.
    xp : namespace, optional

    Returns
    -------
    array
        0-d for ``"mean"``/``"sum"``; the per-position shape for ``"none"``. With
        ``return_stats=True``, ``(loss, LossStats)``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> h, W = np.asarray([[1.0, 0.0], [0.0, 1.0]]), np.asarray([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> t = np.asarray([0, 2])
    >>> round(float(xce.linear_cross_entropy(h, W, t)), 6) == round(float(xce.cross_entropy(h @ W.T, t)), 6)
    True
    >>> w = np.asarray([1.0, 2.0, 0.5])
    >>> a = xce.linear_cross_entropy(h, W, t, weight=w, softcap=30.0, temperature=0.7)
    >>> b = xce.cross_entropy(30.0 * np.tanh(h @ W.T / 30.0) / 0.7, t, w)
    >>> bool(np.isclose(a, b))
    True
    """
    xp = namespace(_NAMES, input, linear_weight, target, linear_bias, weight, sample_weight, xp=xp)
    args = check_arguments(input, linear_weight, target, linear_bias, weight, sample_weight, reduction=reduction,
                           ignore_index=ignore_index, label_smoothing=label_smoothing, options=options, z_loss=z_loss,
                           softcap=softcap, temperature=temperature, normalizer=normalizer, shift=shift,
                           block_rows=block_rows, xp=xp, return_stats=return_stats)
    h, t, sw = _prepare(input, target, sample_weight, args, xp=xp)
    scan = None if args.probs else adapter_hook(h, "linear_scan")
    row_sums = None if scan is None else scan(h)
    adapter = None if row_sums is not None or args.probs or is_lazy(h) else adapter_for(h)
    if row_sums is not None:  # JAX: the library's own loop over vocabulary chunks
        if _policy.ACTIVE:
            _policy.note(_policy.SCAN, "JAX arrays: a checkpointed lax.scan over vocabulary chunks")
        out = loss_from_row_sums(h, linear_weight, t, linear_bias, weight, sw, args, row_sums, xp=xp)
    elif adapter is not None and adapter.wants_linear_cross_entropy(h, linear_weight, linear_bias, weight, sw,
                                                                    args.normalizer):
        # autograd, or torch.compile / torch.export: the fused sweep as the adapter registers it
        out = adapter.linear_cross_entropy(h, linear_weight, t, linear_bias, weight, sw, args)
    elif args.probs or is_lazy(h) or is_traced(h):  # Dask, torch.func, probability targets: one formula
        if _policy.ACTIVE:
            _policy.note(_policy.DEFINITION, "the unfused formula: probability targets, a lazy array or a "
                         "torch.func transform")
        out = unfused_loss(h, linear_weight, t, linear_bias, weight, sw, args, xp=xp)
    else:
        if _policy.ACTIVE:
            _policy.note(_policy.FUSED_SWEEP, "eager, no autograd: the head's matmul and the loss in blocks of rows")
        res = fused(h, linear_weight, t, linear_bias, weight, sw, args, cotangent=None, want_grad=False, xp=xp)
        out = res.loss if res.stats is None else (res.loss, res.stats)
    if not args.return_stats:
        return _trim(out, args, xp=xp)
    loss, stats = out
    z_stat = _trim(stats.z_loss, args, xp=xp)
    return _trim(loss, args, xp=xp), LossStats(_trim(stats.lse, args, xp=xp, always=True), z_stat, stats.accuracy,
                                               _trim(stats.entropy, args, xp=xp, always=True))


@_migrate
@derivative_of(linear_cross_entropy, before="block_rows", drop=("return_stats",), fused=True,
               returns="tuple[Array, tuple[Array, Array, Array | None]]")
@on_input_device
def value_and_grad_linear_cross_entropy(
    input: Array, linear_weight: Array, target: Array, *, linear_bias: Array | None, weight: Array | None,
    reduction: str, ignore_index: int | None, label_smoothing: float, options: Any, z_loss: float,
    softcap: float | None, temperature: float, sample_weight: Array | None, normalizer: Any, shift: bool,
    cotangent: Array | None, block_rows: int | None, xp: Namespace | None,
) -> tuple[Array, tuple[Array, Array, Array | None]]:
    r"""``(loss, (d_input, d_linear_weight, d_linear_bias))`` of :func:`linear_cross_entropy`, in one sweep.

    With :math:`G = \partial L/\partial x` the gradient w.r.t. the raw logits (formed block by
    block, never whole): :math:`\partial L/\partial h = G W`, :math:`\partial L/\partial W =
    G^\top h`, :math:`\partial L/\partial b = \sum_i G_i`; per row, with :math:`\sigma_i` the
    reduction's scale (sample weight and cotangent over the mean's denominator),
    :math:`G_i = \frac{\sigma_i}{T}[(1-\varepsilon)w_{t_i}(p_i - e_{t_i}) + \frac{\varepsilon}{V}(Wp_i - w)
    + 2z\log Z_i\,p_i] \odot (1 - \tanh^2(x_i/c))` (the last factor only with ``softcap``).
    ``cotangent`` as in :mod:`xce.grad` (shape ``(..., T - 1)`` for ``"none"`` with ``shift``).
    Lazy backends (JAX, Dask) and probability targets use the unfused formula. Class weights,
    ``sample_weight`` and ``normalizer`` are constants here.

    Examples
    --------
    >>> import numpy as np, xce
    >>> h, W = np.ones((2, 3)), np.zeros((4, 3))
    >>> loss, (dh, dW, db) = xce.value_and_grad(xce.linear_cross_entropy)(h, W, np.asarray([0, 1]))
    >>> round(float(loss), 4), dh.shape, dW.shape, db is None
    (1.3863, (2, 3), (4, 3), True)
    """
    xp = namespace((*_NAMES, "cotangent"), input, linear_weight, target, linear_bias, weight, sample_weight,
                   cotangent, xp=xp)
    args = check_arguments(input, linear_weight, target, linear_bias, weight, sample_weight, reduction=reduction,
                           ignore_index=ignore_index, label_smoothing=label_smoothing, options=options, z_loss=z_loss,
                           softcap=softcap, temperature=temperature, normalizer=normalizer, shift=shift,
                           block_rows=block_rows, xp=xp)
    h, t, sw = _prepare(input, target, sample_weight, args, xp=xp)
    cot = cotangent
    if cot is not None and args.shift and not args.probs and args.reduction == "none":
        cot = _pad_position(cot, -1, xp=xp)  # the dropped last position gets no cotangent
    if args.probs or is_lazy(h) or is_traced(h):
        loss, grads = unfused_value_and_grad(h, linear_weight, t, linear_bias, weight, sw, args, cot, xp=xp)
    else:
        out = fused(h, linear_weight, t, linear_bias, weight, sw, args, cotangent=cot, want_grad=True, xp=xp)
        loss, grads = out.loss, (out.d_hidden, out.d_weight, out.d_bias)
    d_input = grads[0]
    if args.shift and args.probs:  # the input was sliced: its last position has no gradient
        d_input = _pad_position(d_input, -2, xp=xp)
    return _trim(loss, args, xp=xp), (d_input, grads[1], grads[2])


# --- causal shift -----------------------------------------------------------------------------


def _prepare(input: Array, target: Array, sample_weight: Array | None, args: LinearArgs, *,
             xp: Namespace) -> tuple[Array, Array, Array | None]:
    """``shift=True`` without a shifted copy of ``input``: class indices move one position to
    the left and the last position becomes ``ignore_index`` (a dropped row); ``"none"`` is then
    trimmed by :func:`_trim`. Probability targets (unfused anyway) are sliced instead."""
    if not args.shift:
        return input, target, sample_weight
    if args.probs:
        sw = None if sample_weight is None else sample_weight[..., 1:]
        return input[..., :-1, :], target[..., 1:, :], sw
    t = target
    info = xp.iinfo(t.dtype)
    if not info.min <= args.ignore_index <= info.max:  # e.g. uint8 targets and -100
        t = xp.astype(t, xp.int64)
    last = xp.full((*t.shape[:-1], 1), args.ignore_index, dtype=t.dtype, device=device_of(t))
    t = xp.concat([t[..., 1:], last], axis=-1)
    sw = None if sample_weight is None else _pad_position(sample_weight[..., 1:], -1, xp=xp)
    return input, t, sw


def _pad_position(a: Array, axis: int, *, xp: Namespace) -> Array:
    """``a`` with one zero position appended along ``axis``."""
    shape = list(a.shape)
    shape[axis] = 1
    return xp.concat([a, xp.zeros(tuple(shape), dtype=a.dtype, device=device_of(a))], axis=axis)


def _trim(loss: Array, args: LinearArgs, *, xp: Namespace, always: bool = False) -> Array:
    """Per-position results of a shifted call without their last position (``always``: per
    position whatever the reduction, e.g. the statistics)."""
    per_position = always or args.reduction == "none"
    return loss[..., :-1] if args.shift and not args.probs and per_position else loss


# --- reductions (both paths) -------------------------------------------------------------------


def _times(a: Any, b: Any) -> Any:
    return a if b is None else b if a is None else a * b


def _denominators(sw: Array | None, w_y: Array | None, kept: Array | None, count: int, args: LinearArgs, dtype: Any,
                  device: Any, *, xp: Namespace) -> tuple[Any, Any]:
    """The ``"mean"`` denominators of the cross-entropy and z parts: Σ s·w_t and Σ s over kept
    positions (``kept`` a 0/1 mask, None: all ``count`` rows), or ``normalizer`` for both."""
    if args.normalizer is not None:
        n = args.normalizer
        return (n, n) if isinstance(n, float) else (as_dtype(n, dtype, xp=xp),) * 2
    v_z = _times(sw, kept)
    den_z = xp.asarray(float(count), dtype=dtype, device=device) if v_z is None else xp.sum(v_z)
    return (den_z if w_y is None else xp.sum(_times(v_z, w_y))), den_z


def _reduce(ce: Array, zt: Array | None, sw: Array | None, den: Any, den_z: Any, args: LinearArgs, *,
            xp: Namespace) -> Array:
    """Per-position cross-entropy and z terms (0 where dropped) -> the reduced loss."""
    ce, zt = _times(ce, sw), None if zt is None else _times(zt, sw)
    if args.reduction == "none":
        return ce if zt is None else ce + zt
    num = xp.sum(ce)
    num_z = None if zt is None else xp.sum(zt)
    if args.reduction == "sum":
        return num if num_z is None else num + num_z
    return num / den if num_z is None else num / den + num_z / den_z


def _scales(cot: Any, sw: Any, den: Any, den_z: Any, args: LinearArgs, dtype: Any, *, xp: Namespace) -> tuple[Any, Any]:
    """Per-row scales ``(s, s_z)`` of the cross-entropy and z parts' gradients w.r.t. the
    capped logits, times 1/T (so that they are w.r.t. ``cap(x)``)."""
    g = 1.0 if cot is None else as_dtype(cot, dtype, xp=xp)
    g = _times(g, sw)
    if args.scaled:
        g = g / args.temperature
    if args.reduction != "mean":
        return g, g
    return g / den, g / den_z


# --- the unfused formula (JAX, Dask, traced, probability targets) ------------------------------


def _logits(hidden: Array, weight: Array, bias: Array | None, *, xp: Namespace) -> Array:
    x = hidden @ xp.matrix_transpose(weight)
    return x if bias is None else x + bias


def unfused_loss(h: Array, lw: Array, t: Array, lb: Array | None, cw: Array | None, sw: Array | None,
                 args: LinearArgs, *, xp: Namespace) -> Any:
    """The definition on the whole logits (checked, shift-prepared arguments): cross entropy's
    own loss of the scored logits ``cap(x)/T``, its sample weights, normaliser and (with
    ``return_stats``) ``(loss, LossStats)`` included."""
    x = _scored(h, lw, lb, args, xp=xp)
    out = cross_entropy(x, t, cw, args.ignore_index, args.reduction, args.eps, axis=-1, z_loss=args.z,
                        sample_weight=sw, normalizer=args.normalizer, return_stats=args.return_stats, xp=xp)
    if args.return_stats:
        return as_dtype(out[0], h.dtype, xp=xp), LossStats(*(as_dtype(f, h.dtype, xp=xp) for f in out[1]))
    return as_dtype(out, h.dtype, xp=xp)


def _scored(h: Array, lw: Array, lb: Array | None, args: LinearArgs, *, xp: Namespace) -> Array:
    """The whole logits, soft-capped and tempered in the compute dtype (as they are)."""
    x = _logits(h, lw, lb, xp=xp)
    if args.softcap is None and not args.scaled:
        return x
    return scored_logits(x, args.softcap, args.temperature, compute_dtype(h.dtype, xp=xp), xp=xp)


def unfused_value_and_grad(h: Array, lw: Array, t: Array, lb: Array | None, cw: Array | None, sw: Array | None,
                           args: LinearArgs, cot: Array | None, *,
                           xp: Namespace) -> tuple[Array, tuple[Array, Array, Array | None]]:
    """Loss and gradients from the whole logits: cross entropy's own gradient rule
    (:func:`xce.losses.cross_entropy.cross_entropy_grad`, sample weights, normaliser and z term
    included) w.r.t. the scored logits, then the chain through ``/T`` and the soft cap's
    ``1 - tanh²``, then the three matrix products."""
    dtype = compute_dtype(h.dtype, xp=xp)
    raw = as_dtype(_logits(h, lw, lb, xp=xp), dtype, xp=xp)
    x = scored_logits(raw, args.softcap, args.temperature, dtype, xp=xp)
    ce_args = dict(axis=-1, z_loss=args.z, sample_weight=sw, normalizer=args.normalizer, xp=xp)
    loss = as_dtype(cross_entropy(x, t, cw, args.ignore_index, args.reduction, args.eps, **ce_args), h.dtype, xp=xp)
    g = cross_entropy_grad(x, t, cw, args.ignore_index, args.reduction, args.eps, cotangent=cot, **ce_args)
    g = scored_logits_gradient(g, raw, args.softcap, args.temperature, dtype, xp=xp)
    g2 = xp.reshape(g, (-1, g.shape[-1]))
    h2 = as_dtype(xp.reshape(h, (-1, h.shape[-1])), dtype, xp=xp)
    d_bias = None if lb is None else as_dtype(xp.sum(g2, axis=0), lb.dtype, xp=xp)
    d_h = as_dtype(xp.reshape(g2 @ as_dtype(lw, dtype, xp=xp), tuple(h.shape)), h.dtype, xp=xp)
    return loss, (d_h, as_dtype(xp.matrix_transpose(g2) @ h2, lw.dtype, xp=xp), d_bias)


# --- per-row sums from a library's loop (JAX: a scan over vocabulary chunks) --------------------


class RowSums(NamedTuple):
    """Per-row sums of the scored logits ``y = cap(x)/T`` (``(N,)`` each): all the loss needs."""

    log_z: Array  #: logsumexp of the row
    target: Array  #: the target's scored logit (any class's at dropped rows)
    class_sum: Array | None  #: Σ_c w_c y_c (label smoothing), else None
    entropy: Array | None  #: -Σ p log p (``return_stats``), else None
    hit: Array | None  #: 1.0 where the target's logit is a largest one (``return_stats``), else None


def vocab_chunk(hidden: Array, n: int, vocab: int, dtype: Any, *, xp: Namespace) -> int:
    """Classes per chunk of a loop over the vocabulary: an ``(n, chunk)`` block of the engine's
    matmul block size (``xce.config(class_chunk=)`` overrides), never more than a twelfth of the
    vocabulary (the block stays a small part of the logits it replaces), and a divisor of the
    vocabulary where one is at least half that (padding to whole chunks copies the weight)."""
    chunk = _engine.options().get("class_chunk")
    if chunk is None:
        chunk = _engine.block_bytes(hidden, "matmul") // (xp.finfo(dtype).bits // 8 * max(n, 1))
        chunk = min(chunk, -(-vocab // _MAX_BLOCK_FRACTION))
        chunk = _divisor_near(vocab, max(chunk, min(vocab, _MIN_VOCAB_CHUNK)))
    return max(1, min(int(chunk), vocab))


@functools.lru_cache(maxsize=64)
def _divisor_near(vocab: int, chunk: int) -> int:
    """The largest divisor of ``vocab`` in ``[chunk / 2, chunk]``, else ``chunk``."""
    return next((k for k in range(min(chunk, vocab), max(1, chunk // 2) - 1, -1) if vocab % k == 0), chunk)


def loss_from_row_sums(h: Array, lw: Array, t: Array, lb: Array | None, cw: Array | None, sw: Array | None,
                       args: LinearArgs, row_sums: Callable[..., RowSums], *, xp: Namespace) -> Any:
    """:func:`linear_cross_entropy` of checked, shift-prepared arguments from the per-row sums that
    ``row_sums(h2, lw, lb, y, w, softcap, temperature, chunk=, class_sum=, moments=)`` returns
    (``y`` the safe targets, ``w`` the class weights in the compute dtype, ``softcap`` and
    ``temperature`` for the scoring transform, None where not applied): the loss, mask,
    denominators and reduction of the blocked sweep, differentiable by the library's autodiff.
    Every position's statistics are returned (as the unfused formula does), the accuracy over
    kept ones."""
    dtype, dev, vocab = compute_dtype(h.dtype, xp=xp), device_of(h), lw.shape[0]
    shape = tuple(h.shape[:-1])
    h2 = xp.reshape(h, (-1, h.shape[-1]))
    index = prepare_index(xp.reshape(t, (-1,)), vocab, args.ignore_index, xp=xp, lazy=True)
    w = None if cw is None else as_dtype(cw, dtype, xp=xp)
    w_y = None if w is None else xp.take(w, index.safe)
    s = None if sw is None else as_dtype(xp.reshape(sw, (-1,)), dtype, xp=xp)
    kept = None if index.ignored is None else xp.astype(~index.ignored, dtype)
    den, den_z = _denominators(s, w_y, kept, h2.shape[0], args, dtype, dev, xp=xp)

    r = row_sums(h2, lw, lb, index.safe, w, args.softcap, args.temperature if args.scaled else None,
                 chunk=vocab_chunk(h, h2.shape[0], vocab, dtype, xp=xp), class_sum=maybe_nonzero(args.eps),
                 moments=args.return_stats)
    ce = index_loss(r.log_z, r.target, r.class_sum, w_y, float(vocab) if w is None else xp.sum(w), args.eps, vocab)
    z = mask_loss(args.z * r.log_z**2, index, xp=xp) if maybe_nonzero(args.z) else None
    loss = _reduce(mask_loss(ce, index, xp=xp), z, s, den, den_z, args, xp=xp)
    if args.reduction == "none":
        loss = xp.reshape(loss, shape)
    loss = as_dtype(loss, h.dtype, xp=xp)
    if not args.return_stats:
        return loss
    assert r.entropy is not None and r.hit is not None  # (moments=True)
    z_rows = args.z * r.log_z**2
    if kept is not None:
        z_rows = xp.where(kept != 0.0, z_rows, 0.0)
    z_stat = _reduce(z_rows, None, s, den_z, den_z, args, xp=xp)
    z_stat = xp.reshape(z_stat, shape) if args.reduction == "none" else z_stat
    hits = r.hit if kept is None else r.hit * kept
    n_kept: Any = float(h2.shape[0]) if kept is None else xp.sum(kept)

    def out(v: Array) -> Array:
        return as_dtype(v, h.dtype, xp=xp)

    return loss, LossStats(out(xp.reshape(r.log_z, shape)), out(z_stat), out(xp.sum(hits) / n_kept),
                           out(xp.reshape(r.entropy, shape)))


# --- the blocked sweep (eager arrays, class indices) ---------------------------------------------


@dataclass
class _Sweep:
    """One blocked sweep of :func:`fused`: sizes, per-row coefficients, reused buffers and the
    gradients being accumulated (all in the compute dtype unless noted). "Swept rows" are the
    rows whose target is not ignored, in order; ``rows_of`` maps them to the rows of ``h2``.
    Where values are not read (an accelerator, ``check_values=False``: finding the kept rows
    would be a device-to-host sync) every row is swept and ``masked`` zeroes the dropped ones."""

    h2: Array  # input as (N, D)
    weight: Array
    bias: Any  # None without a bias
    y: Array  # the swept rows' targets (K,)
    rows_of: Any  # (K,) indices into h2, None when no row is dropped
    pos: Any  # (N,) each row's place among the swept rows (K where dropped); None with rows_of
    masked: IndexTarget | None  # no host read: every row is swept, these (ignored, invalid) masked
    args: LinearArgs
    dtype: Any
    rows: int
    v_chunk: int
    alias: bool  # slices are views that in-place operators write through
    fold: bool  # compute dtype == input dtype, no soft cap: row scales go on the (rows, D) operands
    want_loss: bool
    want_grad: bool
    cw: Any = None  # class weights (V,)
    w_y: Any = None  # (K,) class weight of each swept row's target
    w_sum: Any = 0.0  # Σ_c w_c
    sw: Any = None  # (K,) sample weights
    den: Any = None  # "mean" denominators of the cross-entropy and z parts
    den_z: Any = None
    s: Any = 0.0  # per-row scales of the two parts' gradients (cotangent, sample weight, 1/T, denominators)
    s_z: Any = 0.0
    s_lse: Any = None  # (K,) the statistics' lse cotangent over T (its gradient: s_lse·p, the softmax term)
    class_sum: Any = None  # Σ_c w_c y_c per swept row (smoothing, forward, no soft cap)
    w_cols: Any = None  # Σ_c w_c W_c (smoothing, no soft cap)
    ce_rows: Any = None  # (K,) cross-entropy term (class-weighted)
    z_rows: Any = None  # (K,) z term
    stat_rows: Any = None  # return_stats: (3, K) log Z, entropy and hit (1.0 where the target is an argmax)
    d_hidden: Any = None  # in input's dtype: (N, D), or (K, D) where dropped rows are added at the end
    d_weight: Any = None
    d_bias: Any = None
    b: Any = None  # the one-hot coefficient per swept row
    u: Any = None  # the uniform coefficient per swept row (smoothing)
    u_h: Any = None  # Σ_i u_i h_i, subtracted from dW along the class weights (no soft cap)
    logits_buf: Any = None
    part_buf: Any = None
    cap_buf: Any = None  # tanh² of the block (soft cap, gradient)
    dh_buf: Any = None  # one block of dL/dh before its scatter to the swept rows


def fused(
    hidden: Array,
    weight: Array,
    target: Array,
    bias: Array | None,
    class_weight: Array | None,
    sample_weight: Array | None,
    args: LinearArgs,
    *,
    cotangent: Array | None,
    want_grad: bool,
    want_loss: bool = True,
    lse_cotangent: Array | None = None,
    xp: Namespace,
) -> Fused:
    """The blocked sweep (eager arrays, class indices, checked and shift-prepared arguments):
    loss and/or the three gradients. ``lse_cotangent`` (the per-position shape, with
    ``want_grad``): the gradients also carry that of ``Σ_i lse_cotangent_i·log Z_i``, the
    statistics' ``lse`` (the scored logits' logsumexp) differentiated: its ``p_i/T`` joins the
    softmax term of ``G`` (0 where the row is dropped: its ``lse`` is the constant 0).

    Rows whose target is ignored are dropped first: the sweep runs over the K kept rows only,
    gathered block by block (no copy of ``hidden``). Per block of ``rows`` rows the
    temporaries are one ``(rows, V)`` buffer (the logits, turned in place into their shifted
    exponentials ``e``), one ``(v_chunk, D)`` product for ``dW`` and O(rows·D) vectors (with a
    soft cap, one more ``(rows, V)`` buffer for ``tanh²``). Where slices are views and ``out=``
    exists (NumPy, PyTorch, CuPy) the buffers are allocated once and reused. Of the gradient
    w.r.t. the scored logits ``G = a/Σe·e - b·onehot(t) - u·w``
    (:func:`xce.losses.cross_entropy.gradient_coefficients`) only the first term is formed from
    the block without a soft cap (its row scale goes on the ``(rows, D)`` operands; the others
    are O(D) per row, the ``dW`` part of the one-hot in :func:`_subtract_targets`). With a soft
    cap the factor ``1 - tanh²`` is per element: the block's gradient is formed explicitly,
    uniform part included; the one-hot part still stays out (its factor is the target's).
    """
    sw = _start(hidden, weight, target, bias, class_weight, sample_weight, args, cotangent=cotangent,
                want_grad=want_grad, want_loss=want_loss, lse_cotangent=lse_cotangent, xp=xp)
    k = sw.y.shape[0]
    w_t = xp.matrix_transpose(weight)
    for i0 in range(0, k, sw.rows):
        _block(sw, i0, min(i0 + sw.rows, k), w_t, xp=xp)
    return _finish(sw, hidden, xp=xp)


def _take_rows(a: Any, rows_of: Any, *, xp: Namespace) -> Any:
    return a if rows_of is None or a is None or isinstance(a, float) or a.ndim == 0 else xp.take(a, rows_of, axis=0)


def _block_size(hidden: Array, n: int, vocab: int, dtype: Any, block_rows: int | None, *, xp: Namespace) -> int:
    rows = block_rows if block_rows is not None else _engine.options().get("block_rows")
    if rows is None:  # the engine's policy for a block of logits of a matmul
        rows = max(8, _engine.block_bytes(hidden, "matmul") // (xp.finfo(dtype).bits // 8 * max(vocab, 1)))
        # ...and never more than a twelfth of the rows: the block stays a small part of the
        # logits it replaces, whatever N (one block of 64 MiB was a quarter of N=2048's logits).
        rows = min(rows, max(8, n // _MAX_BLOCK_FRACTION))
    return max(1, min(int(rows), max(n, 1)))


def _start(hidden: Array, weight: Array, target: Array, bias: Array | None, class_weight: Array | None,
           sample_weight: Array | None, args: LinearArgs, *, cotangent: Array | None, want_grad: bool,
           want_loss: bool, xp: Namespace, lse_cotangent: Array | None = None) -> _Sweep:
    """Sizes, kept rows, coefficients and buffers of a sweep (see :class:`_Sweep`)."""
    n_features, vocab = hidden.shape[-1], weight.shape[0]
    h2 = xp.reshape(hidden, (-1, n_features))
    dtype, dev = compute_dtype(hidden.dtype, xp=xp), device_of(hidden)
    # Values read (eager CPU): targets checked, ignored rows dropped before any product (their
    # number is read on the host). Not read (accelerators): the lazy contract, every row swept.
    reads = _engine.reads_values(target)
    index = prepare_index(xp.reshape(target, (-1,)), vocab, args.ignore_index, xp=xp, lazy=not reads)
    y, rows_of, pos = index.safe, None, None
    masked = None if reads or index.dropped is None else index
    if masked is not None:
        # The dropped rows' hidden states as 0 (a where: a non-finite state in a padding row
        # must not reach dW through 0·inf, as it does not where the row is dropped). One copy
        # of the hidden states, O(N·D), beside the O(block·V) sweep.
        h2 = xp.where(xp.expand_dims(masked.dropped, axis=1), 0.0, h2)
    if reads and index.ignored is not None:  # ignored rows leave before any product
        keep = ~index.ignored
        rows_of = xp.nonzero(keep)[0]
        y = xp.take(y, rows_of)
        pos = xp.where(keep, xp.cumulative_sum(xp.astype(keep, y.dtype)) - 1, y.shape[0])
    k = y.shape[0]
    rows = _block_size(hidden, k, vocab, dtype, args.block_rows, xp=xp)
    sw = _Sweep(h2, weight, bias, y, rows_of, pos, masked, args, dtype, rows,
                max(1, min(vocab, _VOCAB_CHUNK_ELEMENTS // max(n_features, 1))), _slices_alias(xp, dev),
                dtype == hidden.dtype and args.softcap is None, want_loss, want_grad)
    _start_weights(sw, class_weight, sample_weight, xp=xp)
    if want_loss:
        sw.ce_rows = xp.zeros((k,), dtype=dtype, device=dev)
        sw.z_rows = xp.zeros((k,), dtype=dtype, device=dev) if maybe_nonzero(args.z) or args.return_stats else None
        sw.stat_rows = xp.zeros((3, k), dtype=dtype, device=dev) if args.return_stats else None
    if want_grad:
        _start_gradient(sw, hidden, cotangent, xp=xp, lse_cotangent=lse_cotangent)
    _start_buffers(sw, hidden, xp=xp)
    return sw


def _start_weights(sw: _Sweep, class_weight: Array | None, sample_weight: Array | None, *, xp: Namespace) -> None:
    """Class and sample weights of the swept rows, the mean's denominators and, without a soft
    cap, the smoothing sums that need no sweep: Σ_c w_c x_c = h · Σ_c w_c W_c + Σ_c w_c b_c."""
    args, dtype, vocab, dev = sw.args, sw.dtype, sw.weight.shape[0], device_of(sw.h2)
    if class_weight is not None:
        sw.cw = as_dtype(class_weight, dtype, xp=xp)
        sw.w_y = xp.take(sw.cw, sw.y)
    sw.w_sum = float(vocab) if sw.cw is None else xp.sum(sw.cw)
    if sample_weight is not None:
        sw.sw = _take_rows(as_dtype(xp.reshape(sample_weight, (-1,)), dtype, xp=xp), sw.rows_of, xp=xp)
    kept = None if sw.masked is None or sw.masked.ignored is None else xp.astype(~sw.masked.ignored, dtype)
    sw.den, sw.den_z = _denominators(sw.sw, sw.w_y, kept, sw.y.shape[0], args, dtype, dev, xp=xp)
    if args.softcap is not None or not maybe_nonzero(args.eps):  # (an array ε is never read)
        return
    w = as_dtype(sw.weight, dtype, xp=xp)
    sw.w_cols = xp.sum(w, axis=0) if sw.cw is None else sw.cw @ w
    if sw.want_loss:
        c_sum = as_dtype(sw.h2, dtype, xp=xp) @ sw.w_cols
        if sw.bias is not None:
            b = as_dtype(sw.bias, dtype, xp=xp)
            c_sum = c_sum + (xp.sum(b) if sw.cw is None else xp.sum(sw.cw * b))
        c_sum = _take_rows(c_sum, sw.rows_of, xp=xp)
        sw.class_sum = c_sum / args.temperature if args.scaled else c_sum


def _start_gradient(sw: _Sweep, hidden: Array, cotangent: Array | None, *, xp: Namespace,
                    lse_cotangent: Array | None = None) -> None:
    """Per-row gradient coefficients and the gradients' arrays and buffers."""
    args, dtype, dev = sw.args, sw.dtype, device_of(hidden)
    (n, n_features), vocab, k = sw.h2.shape, sw.weight.shape[0], sw.y.shape[0]
    cot = cotangent
    if cot is not None and args.reduction == "none":
        cot = _take_rows(xp.reshape(cot, (-1,)), sw.rows_of, xp=xp)
    sw.s, sw.s_z = _scales(cot, sw.sw, sw.den, sw.den_z, args, dtype, xp=xp)
    zeros = xp.zeros((k,), dtype=dtype, device=dev)
    if lse_cotangent is not None:  # d lse / d cap(x) = p / T: a row scale of the softmax term
        s_lse = _take_rows(as_dtype(xp.reshape(lse_cotangent, (-1,)), dtype, xp=xp), sw.rows_of, xp=xp)
        sw.s_lse = s_lse / args.temperature if args.scaled else s_lse
    if sw.masked is not None:  # dropped rows: no gradient (a where: no 0·inf)
        drop = sw.masked.dropped
        sw.s, sw.s_z = xp.where(drop, 0.0, sw.s + zeros), xp.where(drop, 0.0, sw.s_z + zeros)
        if sw.s_lse is not None:
            sw.s_lse = xp.where(drop, 0.0, sw.s_lse)
    _, b, u = gradient_coefficients(sw.s + zeros, sw.s, None, 1.0 if sw.w_y is None else sw.w_y, sw.w_sum, args.eps,
                                    0.0, vocab)
    sw.b = b + zeros
    if maybe_nonzero(args.eps):
        sw.u = u + zeros
        if args.softcap is None:
            sw.u_h = xp.zeros((n_features,), dtype=dtype, device=dev)
    if sw.rows_of is None:
        sw.d_hidden = xp.empty((n, n_features), dtype=hidden.dtype, device=dev)
    elif _scatters(xp, dev):  # blocks scattered into their rows; dropped rows stay 0
        sw.d_hidden = xp.zeros((n, n_features), dtype=hidden.dtype, device=dev)
        sw.dh_buf = xp.empty((sw.rows, n_features), dtype=hidden.dtype, device=dev)
    else:  # no scatter: the swept rows, spread out at the end
        sw.d_hidden = xp.empty((k, n_features), dtype=hidden.dtype, device=dev)
    sw.d_weight = xp.zeros((vocab, n_features), dtype=dtype, device=dev)
    sw.d_bias = xp.zeros((vocab,), dtype=dtype, device=dev) if sw.bias is not None else None


def _start_buffers(sw: _Sweep, hidden: Array, *, xp: Namespace) -> None:
    """Buffers reused by every block (written through out= and views); elsewhere each
    operation returns a new array and the buffers stay None."""
    if not sw.alias:
        return
    (_, n_features), vocab, dev = sw.h2.shape, sw.weight.shape[0], device_of(hidden)
    capped = sw.args.softcap is not None
    if sw.fold or (capped and sw.dtype == hidden.dtype):
        sw.logits_buf = xp.empty((sw.rows, vocab), dtype=sw.dtype, device=dev)
    if sw.want_grad:
        if capped:
            sw.cap_buf = xp.empty((sw.rows, vocab), dtype=sw.dtype, device=dev)
        if sw.fold:
            sw.part_buf = xp.empty((sw.v_chunk, n_features), dtype=sw.dtype, device=dev)


def _block_logits(sw: _Sweep, h: Array, r: int, w_t: Array, *, xp: Namespace) -> tuple[Array, Array | None]:
    """The block's scored logits ``cap(x)/T`` in the compute dtype (in the reused buffer where
    there is one) and, with a soft cap and gradients, ``tanh²(x/c)``: :mod:`xce._scoring`'s
    transform (upcast, then capped and tempered) written in place."""
    buf = sw.logits_buf
    x = h @ w_t if buf is None else write_into("matmul", buf[:r, ...], h, w_t, xp=xp)
    if sw.bias is not None:
        x = x + sw.bias if sw.bias.dtype != x.dtype else _iadd(x, sw.bias)
    x = as_dtype(x, sw.dtype, xp=xp)
    args, t2 = sw.args, None
    if args.softcap is not None:
        c = args.softcap
        x = write_into("tanh", x, write_into("divide", x, x, c, xp=xp), xp=xp)
        if sw.want_grad:
            t2 = write_into("multiply", None if sw.cap_buf is None else sw.cap_buf[:r, ...], x, x, xp=xp)
        x = write_into("multiply", x, x, c / args.temperature, xp=xp)
    elif args.scaled:
        x = write_into("divide", x, x, args.temperature, xp=xp)
    return x, t2


def _block(sw: _Sweep, i0: int, i1: int, w_t: Array, *, xp: Namespace) -> None:
    """Swept rows i0:i1: their logits, log Z and loss, then their part of the three gradients."""
    args = sw.args
    h = sw.h2[i0:i1, ...] if sw.rows_of is None else xp.take(sw.h2, sw.rows_of[i0:i1], axis=0)
    x, t2 = _block_logits(sw, h, i1 - i0, w_t, xp=xp)
    y = sw.y[i0:i1]
    m = finite_max(x, 1, xp=xp)
    capped = args.softcap is not None
    x_y = take_along_class_axis(x, y, 1, xp=xp) if sw.want_loss or capped else None  # before x is overwritten
    w_y = None if sw.w_y is None else sw.w_y[i0:i1]
    c_sum = None
    if sw.want_loss and maybe_nonzero(args.eps):
        c_sum = sw.class_sum[i0:i1] if not capped else xp.sum(x, axis=1) if sw.cw is None else x @ sw.cw
    x -= m
    # In place where possible (x is not needed any more), except for the statistics' moment.
    e = write_into("exp", None if sw.stat_rows is not None else x, x, xp=xp)
    total = xp.sum(e, axis=1, keepdims=True)
    log_z = xp.squeeze(xp.log(total) + m, axis=1)
    if sw.want_loss:
        sw.ce_rows[i0:i1] = index_loss(log_z, x_y, c_sum, w_y, sw.w_sum, args.eps, sw.weight.shape[0])
        if sw.z_rows is not None:
            sw.z_rows[i0:i1] = args.z * log_z**2
        if sw.stat_rows is not None:
            _block_stats(sw, i0, i1, x, e, total, log_z, x_y, m, xp=xp)
    del x
    if sw.want_grad:
        a = _row_scale(sw, i0, i1, log_z, total, xp=xp)
        if capped:
            _block_gradient_capped(sw, i0, i1, h, e, a, t2, x_y, y, xp=xp)
        else:
            _block_gradient(sw, i0, i1, h, e, a, y, xp=xp)


def _block_stats(sw: _Sweep, i0: int, i1: int, s: Array, e: Array, total: Array, log_z: Array, x_y: Array,
                 m: Array, *, xp: Namespace) -> None:
    """The statistics of rows i0:i1 (``s = x - max``, ``e = exp(s)``): log Z, the entropy
    ``log Σe - Σ e·s / Σe`` and whether the target's logit is the maximum."""
    moment = xp.sum(e * xp.where(e > 0.0, s, 0.0), axis=1, keepdims=True) / total
    sw.stat_rows[0, i0:i1] = log_z
    sw.stat_rows[1, i0:i1] = xp.squeeze(xp.log(total) - moment, axis=1)
    sw.stat_rows[2, i0:i1] = xp.astype(x_y >= xp.squeeze(m, axis=1), sw.dtype)


def _row_scale(sw: _Sweep, i0: int, i1: int, log_z: Array, total: Array, *, xp: Namespace) -> Array:
    """``a / Σe``: the factor of the block's exponentials in G (``a`` from the loss's rule)."""
    def part(v: Any) -> Any:
        return v if isinstance(v, float) or v.ndim == 0 else v[i0:i1]

    w_y = 1.0 if sw.w_y is None else sw.w_y[i0:i1]
    a, _, _ = gradient_coefficients(part(sw.s) + xp.zeros_like(log_z), part(sw.s_z), log_z, w_y, sw.w_sum,
                                    sw.args.eps, sw.args.z, sw.weight.shape[0])
    if sw.s_lse is not None:
        a = a + sw.s_lse[i0:i1]
    return a / xp.squeeze(total, axis=1)


def _dh_slot(sw: _Sweep, i0: int, i1: int) -> tuple[Array, int, int]:
    """Where the block's dL/dh rows are formed: the result's own rows, or the scatter buffer."""
    return (sw.d_hidden, i0, i1) if sw.dh_buf is None else (sw.dh_buf, 0, i1 - i0)


def _dh_commit(sw: _Sweep, i0: int, i1: int) -> None:
    if sw.dh_buf is not None:
        sw.d_hidden[sw.rows_of[i0:i1], ...] = sw.dh_buf[: i1 - i0, ...]


def _block_gradient(sw: _Sweep, i0: int, i1: int, h: Array, e: Array, q: Array, y: Array, *, xp: Namespace) -> None:
    """Rows i0:i1's part of dL/dh, dW and db, from their exponentials ``e`` (not normalised)."""
    # G = q·e - b·e_y - u·w with the row scale q = a / Σe. Only the first term touches the
    # block; q is applied to the (rows, D) operands (G W = q·(e W), Gᵀh = eᵀ(q·h)) rather than
    # to the (rows, V) block, except in half precision, where e is scaled before its cast.
    if sw.fold:
        g, h_q = e, xp.expand_dims(q, axis=1) * h
    else:
        e *= xp.expand_dims(q, axis=1)
        g, h_q = as_dtype(e, h.dtype, xp=xp), h
    # dL/dh = q·(e W) - b·W[y] - u·Σ_c w_c W_c
    out, j0, j1 = _dh_slot(sw, i0, i1)
    _matmul_into(out, j0, j1, g, sw.weight, alias=sw.alias, xp=xp)
    rest = xp.expand_dims(sw.b[i0:i1], axis=1) * as_dtype(xp.take(sw.weight, y, axis=0), sw.dtype, xp=xp)
    if sw.u is not None:
        rest += xp.expand_dims(sw.u[i0:i1], axis=1) * sw.w_cols
        sw.u_h = sw.u_h + sw.u[i0:i1] @ as_dtype(h, sw.dtype, xp=xp)
    _add_into(out, j0, j1, as_dtype(rest, h.dtype, xp=xp), alias=sw.alias, subtract=True,
              scale=xp.expand_dims(as_dtype(q, h.dtype, xp=xp), axis=1) if sw.fold else None)
    _dh_commit(sw, i0, i1)
    _weight_update(sw, g, h_q, xp=xp)
    if sw.d_bias is not None:
        sw.d_bias += q @ e if sw.fold else xp.sum(e, axis=0)


def _block_gradient_capped(sw: _Sweep, i0: int, i1: int, h: Array, e: Array, q: Array, t2: Array, x_y: Array,
                           y: Array, *, xp: Namespace) -> None:
    """Soft cap: ``G = (q·e - u·w) ⊙ (1 - tanh²)`` formed in the block; the one-hot part
    ``-b·(1 - tanh²(x_y/c))`` at the target stays out of it (a gather and the sorted scatter)."""
    args = sw.args
    g = write_into("multiply", e, e, xp.expand_dims(q, axis=1), xp=xp)
    if sw.u is not None:
        u = xp.expand_dims(sw.u[i0:i1], axis=1)
        g = write_into("subtract", g, g, u if sw.cw is None else u * sw.cw, xp=xp)
    t2 = write_into("multiply", t2, g, t2, xp=xp)  # G·tanh², then G - G·tanh²
    g = write_into("subtract", g, g, t2, xp=xp)
    tanh_y = x_y * (args.temperature / args.softcap)  # the target's tanh(x_y / c), from its scored logit
    b = sw.b[i0:i1] * (1.0 - tanh_y**2)
    sw.b[i0:i1] = b  # the one-hot coefficient of dW's sorted scatter (_finish)
    gh = as_dtype(g, h.dtype, xp=xp)
    out, j0, j1 = _dh_slot(sw, i0, i1)
    _matmul_into(out, j0, j1, gh, sw.weight, alias=sw.alias, xp=xp)
    rest = xp.expand_dims(b, axis=1) * as_dtype(xp.take(sw.weight, y, axis=0), sw.dtype, xp=xp)
    _add_into(out, j0, j1, as_dtype(rest, h.dtype, xp=xp), alias=sw.alias, subtract=True)
    _dh_commit(sw, i0, i1)
    _weight_update(sw, gh, h, xp=xp)
    if sw.d_bias is not None:
        sw.d_bias += xp.sum(g, axis=0)


def _weight_update(sw: _Sweep, g: Array, h_q: Array, *, xp: Namespace) -> None:
    """``dW += gᵀ h_q``, a vocabulary chunk at a time (a ``(v_chunk, D)`` product)."""
    vocab = sw.weight.shape[0]
    for v0 in range(0, vocab, sw.v_chunk):
        v1 = min(v0 + sw.v_chunk, vocab)
        g_t = xp.matrix_transpose(g[:, v0:v1])
        buf = sw.part_buf
        part = g_t @ h_q if buf is None else write_into("matmul", buf[: v1 - v0, ...], g_t, h_q, xp=xp)
        _add_into(sw.d_weight, v0, v1, as_dtype(part, sw.dtype, xp=xp), alias=sw.alias)


def _spread(values: Array, sw: _Sweep, *, xp: Namespace) -> Array:
    """Swept rows ``(K, ...)`` -> all rows ``(N, ...)``, 0 at dropped rows (a gather)."""
    if sw.pos is None:
        return values
    pad = xp.zeros((1, *values.shape[1:]), dtype=values.dtype, device=device_of(values))
    return xp.take(xp.concat([values, pad], axis=0), sw.pos, axis=0)


def _finish(sw: _Sweep, hidden: Array, *, xp: Namespace) -> Fused:
    """The uniform and one-hot parts of dW and db, and the reduced loss."""
    args = sw.args
    if sw.want_grad:
        # Nothing may still refer to the block buffers, so that they are freed before the correction.
        sw.logits_buf = sw.part_buf = sw.cap_buf = sw.dh_buf = None
        if sw.u_h is not None:  # the uniform part: -u_i·w_c added to every class c of row i
            sw.d_weight -= sw.u_h if sw.cw is None else xp.expand_dims(sw.cw, axis=1) * sw.u_h
            if sw.d_bias is not None:
                sw.d_bias -= xp.sum(sw.u) if sw.cw is None else sw.cw * xp.sum(sw.u)
        if not (isinstance(args.eps, float) and args.eps >= 1.0):  # ε = 1: no one-hot part
            _subtract_targets(sw.d_weight, sw.d_bias, sw.h2, sw.y, sw.b, sw.rows_of, rows=sw.rows,
                              v_chunk=sw.v_chunk, alias=sw.alias,
                              reads=sw.masked is None and not _engine.on_accelerator(hidden), xp=xp)
    loss_out = stats = None
    if sw.want_loss:
        z_rows = _masked(sw.z_rows, sw, xp=xp) if maybe_nonzero(args.z) else None
        loss = _reduce(_masked(sw.ce_rows, sw, xp=xp), z_rows, sw.sw, sw.den, sw.den_z, args, xp=xp)
        if args.reduction == "none":
            loss = xp.reshape(_spread(loss, sw, xp=xp), tuple(hidden.shape[:-1]))
        loss_out = as_dtype(loss, hidden.dtype, xp=xp)
        if sw.stat_rows is not None:
            stats = _finish_stats(sw, hidden, xp=xp)
    if not sw.want_grad:
        return Fused(loss_out, None, None, None, stats)
    d_hidden = sw.d_hidden if sw.d_hidden.shape[0] == sw.h2.shape[0] else _spread(sw.d_hidden, sw, xp=xp)
    return Fused(loss_out, xp.reshape(d_hidden, tuple(hidden.shape)), as_dtype(sw.d_weight, sw.weight.dtype, xp=xp),
                 None if sw.d_bias is None else as_dtype(sw.d_bias, sw.bias.dtype, xp=xp), stats)


def _finish_stats(sw: _Sweep, hidden: Array, *, xp: Namespace) -> LossStats:
    """:class:`xce.LossStats` of the sweep: per position (0 where the row was dropped), the z
    term alone reduced like the loss, the accuracy over the swept rows."""
    shape = tuple(hidden.shape[:-1])

    def per_position(v: Array) -> Array:
        return as_dtype(xp.reshape(_spread(v, sw, xp=xp), shape), hidden.dtype, xp=xp)

    z = _reduce(_masked(sw.z_rows, sw, xp=xp), None, sw.sw, sw.den_z, sw.den_z, sw.args, xp=xp)
    z = per_position(z) if sw.args.reduction == "none" else as_dtype(z, hidden.dtype, xp=xp)
    hits, lse, entropy = sw.stat_rows[2, :], sw.stat_rows[0, :], sw.stat_rows[1, :]
    n_swept: Any = float(hits.shape[0])
    if sw.masked is not None:  # every row was swept: the dropped ones are 0 and leave the count
        drop: Any = sw.masked.dropped  # (masked: some row is dropped)
        hits, lse, entropy = (xp.where(drop, 0.0, v) for v in (hits, lse, entropy))
        n_swept = xp.sum(xp.astype(~drop, hits.dtype))
    return LossStats(per_position(lse), z, xp.sum(hits) / n_swept, per_position(entropy))


def _masked(rows: Array, sw: _Sweep, *, xp: Namespace) -> Array:
    """Per-row terms with the masked rows' values: 0 where ignored, NaN where out of range
    (the lazy contract); the rows as they are where the dropped ones were never swept."""
    return rows if sw.masked is None else mask_loss(rows, sw.masked, xp=xp)


def _iadd(x: Array, y: Array) -> Array:
    x += y
    return x


def _add_into(out: Array, i0: int, i1: int, value: Array, *, alias: bool, subtract: bool = False,
              scale: Array | None = None) -> None:
    """``out[i0:i1] = out[i0:i1]·scale ± value``: in place through a view where slices alias,
    else on the slice's copy, written back by setitem."""
    view = out[i0:i1, ...]
    if scale is not None:
        view *= scale
    if subtract:
        view -= value
    else:
        view += value
    if not alias:
        out[i0:i1, ...] = view


def _matmul_into(out: Array, i0: int, i1: int, a: Array, b: Array, *, alias: bool, xp: Namespace) -> None:
    """``out[i0:i1] = a @ b``, with the product written in place where the slice is a view."""
    view = out[i0:i1, ...] if alias else None
    res = a @ b if view is None else write_into("matmul", view, a, b, xp=xp)
    if res is not view:
        out[i0:i1, ...] = res


def _subtract_targets(d_weight: Array, d_bias: Array | None, h2: Array, y: Array, c1: Array, rows_of: Any,
                      *, rows: int, v_chunk: int, alias: bool, reads: bool = True, xp: Namespace) -> None:
    """``d_weight[y_i] -= c1_i·h_i`` and ``d_bias[y_i] -= c1_i`` for all swept rows, in place.

    The standard has no scatter-add, so the rows are sorted by target: each class's rows
    form a run, and its sum is a difference of two cumulative sums. Cumulative sums restart
    every ``rows`` sorted rows (their rounding error grows with the run), and a vocabulary
    chunk at a time is taken from them: O((N + V)·D) work in a few dozen operations, with
    ``(rows, D)`` and ``(v_chunk, D)`` temporaries. Where values are not read (``reads=False``:
    the runs' class range is a host read per piece) the library's scatter-add serves, a block of
    rows at a time; without one, every vocabulary chunk is visited.
    """
    vocab, dev = d_weight.shape[0], device_of(d_weight)
    if not reads and _scatter_add_targets(d_weight, d_bias, h2, y, c1, rows_of, rows=rows, xp=xp):
        return
    order = xp.argsort(y)
    key = xp.take(y, order)
    # Class v's rows, in sorted order: bounds[v] to bounds[v + 1].
    bounds = xp.searchsorted(key, xp.arange(vocab + 1, dtype=key.dtype, device=dev))
    n_kept = key.shape[0]
    for p0 in range(0, n_kept, rows):
        p1 = min(p0 + rows, n_kept)
        idx = order[p0:p1]
        c = xp.take(c1, idx)
        h_rows = xp.take(h2, idx if rows_of is None else xp.take(rows_of, idx), axis=0)
        hc = xp.expand_dims(c, axis=1) * as_dtype(h_rows, d_weight.dtype, xp=xp)
        cs = xp.cumulative_sum(hc, axis=0, include_initial=True)
        del hc, h_rows
        cb = None if d_bias is None else xp.cumulative_sum(c, include_initial=True)
        # Classes whose runs meet this piece: key[p0] .. key[p1 - 1].
        k0, k1 = (int(key[p0]), int(key[p1 - 1]) + 1) if reads else (0, vocab)
        for v0 in range(k0, k1, v_chunk):
            v1 = min(v0 + v_chunk, k1)
            # (not clip: array-api-compat's takes boolean masks, a host read each on CuPy)
            local = xp.minimum(xp.maximum(bounds[v0:v1 + 1], p0), p1) - p0
            lo, hi = local[:-1], local[1:]
            run_sums = xp.take(cs, hi, axis=0)
            run_sums -= xp.take(cs, lo, axis=0)
            _add_into(d_weight, v0, v1, run_sums, alias=alias, subtract=True)
            if cb is not None:
                _add_into(d_bias, v0, v1, xp.take(cb, hi) - xp.take(cb, lo), alias=alias, subtract=True)


def _scatter_add_targets(d_weight: Array, d_bias: Array | None, h2: Array, y: Array, c1: Array, rows_of: Any, *,
                         rows: int, xp: Namespace) -> bool:
    """:func:`_subtract_targets` by the library's scatter-add, a block of rows at a time (no
    value read); False where the library has none."""
    for p0 in range(0, y.shape[0], rows):
        p1 = min(p0 + rows, y.shape[0])
        h_rows = h2[p0:p1, ...] if rows_of is None else xp.take(h2, rows_of[p0:p1], axis=0)
        c = -c1[p0:p1]
        if not add_at_rows(d_weight, y[p0:p1], xp.expand_dims(c, axis=1) * as_dtype(h_rows, d_weight.dtype, xp=xp)):
            return False
        if d_bias is not None:
            add_at_rows(d_bias, y[p0:p1], c)
    return True


def _scatters(xp: Namespace, device: Any) -> bool:
    """Whether ``a[index_array, ...] = b`` works (NumPy, PyTorch, CuPy; not in the standard):
    named for the libraries known, probed once per namespace for the others."""
    key = id(xp)
    if key not in _SCATTERS and mutable_like_numpy(xp) is not None:
        _SCATTERS[key] = bool(mutable_like_numpy(xp))
    if key not in _SCATTERS:
        device = _probe_device(xp, device)
        probe = xp.zeros((2, 1), device=device)
        try:
            probe[xp.asarray([1], device=device), ...] = xp.ones((1, 1), device=device)
            _SCATTERS[key] = bool(probe[1, 0] == 1.0)
        except (IndexError, TypeError, ValueError):
            _SCATTERS[key] = False
    return _SCATTERS[key]


def _slices_alias(xp: Namespace, device: Any) -> bool:
    """Whether a basic slice of an array is a view that in-place operators write through
    (NumPy, PyTorch, CuPy; not JAX): named for the libraries known (a probe's read is a sync
    on a GPU), probed once per namespace for the others."""
    key = id(xp)
    if key not in _ALIASING and mutable_like_numpy(xp) is not None:
        _ALIASING[key] = bool(mutable_like_numpy(xp))
    if key not in _ALIASING:
        probe = xp.zeros((2,), device=_probe_device(xp, device))
        part = probe[0:1]
        part += 1.0
        _ALIASING[key] = bool(probe[0] == 1.0)
    return _ALIASING[key]


def _probe_device(xp: Namespace, device: Any) -> Any:
    """``device``, or the library's default where arrays there hold no values (PyTorch's
    ``meta``): a probe's answer is the library's, whatever the device, and is read once."""
    return device if has_values(xp.zeros((1,), device=device)) else None


register_value_and_grad(linear_cross_entropy, value_and_grad_linear_cross_entropy)

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

Eager arrays (NumPy, PyTorch, CuPy, array-api-strict) take the blocked path. JAX and Dask
arrays take the unfused formula ``cross_entropy(h @ W.T + b, ...)``: under ``jax.jit`` a
Python loop over blocks would unroll into the trace, and XLA and Dask schedule the fused
expression themselves (XLA may still materialise the logits).
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
    take_along_class_axis,
    write_into,
)
from ._reduce import reduce_loss, reduction_scale
from ._registry import adapter_for, register_value_and_grad
from ._softmax import finite_max
from ._targets import IndexTarget, mean_weights, prepare_index
from ._validate import check_fraction, check_integer, check_linear_shapes, check_real, check_reduction
from .losses.cross_entropy import (
    cross_entropy,
    cross_entropy_grad,
    gradient_coefficients,
    index_loss,
)

__all__ = ["linear_cross_entropy", "value_and_grad_linear_cross_entropy"]

_NAMES = ("hidden", "weight", "target", "bias")
# Elements of one (v_chunk, D) slice of a block's dW product (8 MiB in float32).
_VOCAB_CHUNK_ELEMENTS = 1 << 21
_ALIASING: dict[int, bool] = {}
_MAX_BLOCK_FRACTION = 12


class Fused(NamedTuple):
    loss: Array | None
    d_hidden: Array | None
    d_weight: Array | None
    d_bias: Array | None


def linear_cross_entropy(
    hidden: Array,
    weight: Array,
    target: Array,
    bias: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    block_rows: int | None = None,
    xp: Namespace | None = None,
) -> Array:
    r"""Cross entropy of the logits ``hidden @ weight.T + bias``, never materialising them.

    Equal to ``cross_entropy(hidden @ weight.T + bias, target, None, ignore_index, reduction,
    label_smoothing, axis=-1, z_loss=z_loss)``. With :math:`x = h W^\top + b` and
    :math:`\log Z = \mathrm{logsumexp}(x)`, for each row not ignored

    .. math::
       l_i = \log Z_i - (1-\varepsilon)\,x_{i,y_i} - \frac{\varepsilon}{V}\sum_c x_{i,c}
             + z\,(\log Z_i)^2,

    and ``"mean"`` divides by the number of non-ignored rows. The smoothing term needs no
    pass over the vocabulary: :math:`\sum_c x_{i,c} = h_i \cdot \sum_c W_c + \sum_c b_c`.
    Eager arrays are evaluated in blocks of ``block_rows`` rows (default: about 16M logits
    per block), so the extra memory is O(block_rows · V), not O(N · V). On PyTorch tensors
    that require grad, ``.backward()`` goes through :func:`xce.adapters.torch.linear_cross_entropy`
    (blocked as well); ``xce.value_and_grad(xce.linear_cross_entropy)`` gives the three
    gradients on any backend.

    Parameters
    ----------
    hidden : array
        Shape ``(..., D)``.
    weight : array
        Shape ``(V, D)`` (a linear layer's ``(out_features, in_features)``), ``hidden``'s dtype.
    target : array
        Integer class indices, shape ``hidden.shape[:-1]``.
    bias : array, optional
        Shape ``(V,)``.
    ignore_index : int, default -100
    reduction : {"mean", "sum", "none"}, default "mean"
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's uniform smoothing.
    z_loss : float >= 0, default 0.0
        PaLM's z-loss coefficient (unweighted, counted over the non-ignored rows).
    block_rows : int, optional
        Rows per block on eager backends.
    xp : namespace, optional

    Returns
    -------
    array
        0-d for ``"mean"``/``"sum"``; ``target``'s shape for ``"none"``.

    Examples
    --------
    >>> import numpy as np, xce
    >>> h, W = np.asarray([[1.0, 0.0], [0.0, 1.0]]), np.asarray([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> t = np.asarray([0, 2])
    >>> round(float(xce.linear_cross_entropy(h, W, t)), 6) == round(float(xce.cross_entropy(h @ W.T, t)), 6)
    True
    """
    xp = namespace(_NAMES, hidden, weight, target, bias, xp=xp)
    reduction, eps, z, ignore_index = _check(hidden, weight, target, bias, ignore_index, reduction, label_smoothing,
                                             z_loss, xp=xp)
    if is_lazy(hidden) or is_traced(hidden):  # JAX, Dask, torch.compile / torch.func: one formula
        return cross_entropy(_logits(hidden, weight, bias, xp=xp), target, None, ignore_index, reduction, eps,
                             axis=-1, z_loss=z, xp=xp)
    adapter = adapter_for(hidden)
    if adapter is not None and adapter.wants_linear_cross_entropy(hidden, weight, bias):
        return adapter.linear_cross_entropy(hidden, weight, target, bias, ignore_index, reduction, eps, z_loss=z,
                                            block_rows=block_rows)
    return fused(hidden, weight, target, bias, ignore_index, reduction, eps, z, cotangent=None, want_grad=False,
                 block_rows=block_rows, xp=xp).loss


def value_and_grad_linear_cross_entropy(
    hidden: Array,
    weight: Array,
    target: Array,
    bias: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    cotangent: Array | None = None,
    block_rows: int | None = None,
    xp: Namespace | None = None,
) -> tuple[Array, tuple[Array, Array, Array | None]]:
    r"""``(loss, (d_hidden, d_weight, d_bias))`` of :func:`linear_cross_entropy`, in one blocked sweep.

    With :math:`G = \partial L/\partial x` the logits' gradient (formed block by block, never
    whole): :math:`\partial L/\partial h = G W`, :math:`\partial L/\partial W = G^\top h`,
    :math:`\partial L/\partial b = \sum_i G_i`, and per row
    :math:`G_i = s_i[(1 + 2z\log Z_i)\,p_i - (1-\varepsilon)e_{y_i} - \varepsilon/V]`.
    ``cotangent`` as in :mod:`xce.grad`. Lazy backends (JAX, Dask) use the unfused formula.

    Examples
    --------
    >>> import numpy as np, xce
    >>> h, W = np.ones((2, 3)), np.zeros((4, 3))
    >>> loss, (dh, dW, db) = xce.value_and_grad(xce.linear_cross_entropy)(h, W, np.asarray([0, 1]))
    >>> round(float(loss), 4), dh.shape, dW.shape, db is None
    (1.3863, (2, 3), (4, 3), True)
    """
    xp = namespace(_NAMES, hidden, weight, target, bias, xp=xp)
    reduction, eps, z, ignore_index = _check(hidden, weight, target, bias, ignore_index, reduction, label_smoothing,
                                             z_loss, xp=xp)
    if is_lazy(hidden) or is_traced(hidden):  # JAX, Dask, torch.compile / torch.func: one formula
        logits = _logits(hidden, weight, bias, xp=xp)
        loss = cross_entropy(logits, target, None, ignore_index, reduction, eps, axis=-1, z_loss=z, xp=xp)
        g = cross_entropy_grad(logits, target, None, ignore_index, reduction, eps, axis=-1, z_loss=z,
                               cotangent=cotangent, xp=xp)
        g2 = xp.reshape(g, (-1, g.shape[-1]))
        h2 = xp.reshape(hidden, (-1, hidden.shape[-1]))
        d_bias = None if bias is None else xp.sum(g2, axis=0)
        return loss, (xp.reshape(g2 @ weight, tuple(hidden.shape)), xp.matrix_transpose(g2) @ h2, d_bias)
    out = fused(hidden, weight, target, bias, ignore_index, reduction, eps, z, cotangent=cotangent, want_grad=True,
                block_rows=block_rows, xp=xp)
    return out.loss, (out.d_hidden, out.d_weight, out.d_bias)


@dataclass
class _Sweep:
    """One blocked sweep of :func:`fused`: sizes, per-row coefficients, reused buffers and the
    gradients being accumulated (all in the compute dtype unless noted)."""

    h2: Array  # hidden as (N, D)
    weight: Array
    bias: Any  # None without a bias
    index: IndexTarget
    eps: float
    z: float
    dtype: Any
    rows: int
    v_chunk: int
    alias: bool  # slices are views that in-place operators write through
    fold: bool  # compute dtype == input dtype: row scales go on the (rows, D) operands
    want_loss: bool
    want_grad: bool
    s: Any = 0.0  # per-row scale of the loss (cotangent over the "mean" denominator)
    class_sum: Any = None  # Σ_c x_c per row (smoothing, forward)
    w_sum: Any = None  # Σ_c W_c (smoothing)
    per_row: Any = None
    d_hidden: Any = None  # in hidden's dtype
    d_weight: Any = None
    d_bias: Any = None
    b: Any = None  # the one-hot coefficient per row (0 at dropped rows)
    u: Any = None  # the uniform coefficient per row (smoothing; 0 at dropped rows)
    u_h: Any = None  # Σ_i u_i h_i, subtracted from every row of dW
    logits_buf: Any = None
    part_buf: Any = None


def fused(
    hidden: Array,
    weight: Array,
    target: Array,
    bias: Array | None,
    ignore_index: int,
    reduction: str,
    eps: float,
    z: float,
    *,
    cotangent: Array | None,
    want_grad: bool,
    want_loss: bool = True,
    block_rows: int | None = None,
    xp: Namespace,
) -> Fused:
    """The blocked sweep (eager arrays, validated arguments): loss and/or the three gradients.

    Per block of ``rows`` rows the temporaries are one ``(rows, V)`` buffer (the logits, turned
    in place into their shifted exponentials ``e``), one ``(v_chunk, D)`` product for ``dW``
    and O(rows·D) vectors. Where slices are views and ``out=`` exists (NumPy, PyTorch, CuPy)
    the two buffers are allocated once and reused, and ``e @ W`` is written straight into
    ``d_hidden``; elsewhere each operation allocates. Of the logits' gradient
    ``G = a/Σe·e - b·onehot(y) - u`` (:func:`xce.losses.cross_entropy.gradient_coefficients`)
    only the first term is formed from the block (its row scale goes on the ``(rows, D)``
    operands); the other two are O(D) per row, the ``dW`` part of the one-hot in
    :func:`_subtract_targets`.
    """
    sw = _start(hidden, weight, target, bias, ignore_index, reduction, eps, z, cotangent=cotangent,
                want_grad=want_grad, want_loss=want_loss, block_rows=block_rows, xp=xp)
    n = sw.h2.shape[0]
    w_t = xp.matrix_transpose(weight)
    for i0 in range(0, n, sw.rows):
        _block(sw, i0, min(i0 + sw.rows, n), w_t, xp=xp)
    return _finish(sw, hidden, reduction, xp=xp)


def _start(hidden: Array, weight: Array, target: Array, bias: Array | None, ignore_index: int, reduction: str,
           eps: float, z: float, *, cotangent: Array | None, want_grad: bool, want_loss: bool,
           block_rows: int | None, xp: Namespace) -> _Sweep:
    """Sizes, coefficients and buffers of a sweep (see :class:`_Sweep`)."""
    n_features, vocab = hidden.shape[-1], weight.shape[0]
    h2 = xp.reshape(hidden, (-1, n_features))
    n, dtype, dev = h2.shape[0], compute_dtype(hidden.dtype, xp=xp), device_of(hidden)
    index = prepare_index(xp.reshape(target, (-1,)), vocab, ignore_index, xp=xp, lazy=False)
    rows = block_rows if block_rows is not None else _engine.options().get("block_rows")
    if rows is None:  # the engine's policy for a block of logits of a matmul
        rows = max(8, _engine.block_bytes(hidden, "matmul") // (xp.finfo(dtype).bits // 8 * max(vocab, 1)))
        # ...and never more than a twelfth of the rows: the block stays a small part of the
        # logits it replaces, whatever N (one block of 64 MiB was a quarter of N=2048's logits).
        rows = min(rows, max(8, n // _MAX_BLOCK_FRACTION))
    rows = max(1, min(int(rows), max(n, 1)))
    sw = _Sweep(h2, weight, bias, index, eps, z, dtype, rows, max(1, min(vocab, _VOCAB_CHUNK_ELEMENTS //
                max(n_features, 1))), _slices_alias(xp, dev), dtype == hidden.dtype, want_loss, want_grad)
    if eps > 0.0:  # Σ_c x_c = h · Σ_c W_c + Σ_c b_c needs no sweep, and G's uniform part is O(D)
        sw.w_sum = xp.sum(as_dtype(weight, dtype, xp=xp), axis=0)
        if want_loss:
            sw.class_sum = as_dtype(h2, dtype, xp=xp) @ sw.w_sum
            if bias is not None:
                sw.class_sum = sw.class_sum + xp.sum(as_dtype(bias, dtype, xp=xp))
    if want_loss:
        sw.per_row = xp.zeros((n,), dtype=dtype, device=dev)
    if want_grad:
        # One denominator for both parts: no class weights, so Σ w_y is the count of kept rows.
        cot = None if cotangent is None else xp.reshape(cotangent, (-1,)) if reduction == "none" else cotangent
        sw.s = reduction_scale(cot, reduction, xp.empty((n,), dtype=dtype, device=dev),
                               mean_weights(None, index, xp=xp), dtype, xp=xp)
        _, b, u = gradient_coefficients(sw.s + xp.zeros((n,), dtype=dtype, device=dev), sw.s, None, 1.0,
                                        float(vocab), eps, 0.0, vocab)
        drop = index.ignored
        sw.b = b if drop is None else xp.where(drop, 0.0, b)
        if eps > 0.0:
            u = u + xp.zeros_like(sw.b)
            sw.u = u if drop is None else xp.where(drop, 0.0, u)
            sw.u_h = xp.zeros((n_features,), dtype=dtype, device=dev)
        sw.d_hidden = xp.empty((n, n_features), dtype=hidden.dtype, device=dev)
        sw.d_weight = xp.zeros((vocab, n_features), dtype=dtype, device=dev)
        sw.d_bias = xp.zeros((vocab,), dtype=dtype, device=dev) if bias is not None else None
    # Buffers reused by every block (written through out= and views); elsewhere each
    # operation returns a new array and the buffers stay None.
    if sw.alias and sw.fold:
        sw.logits_buf = xp.empty((rows, vocab), dtype=dtype, device=dev)
        if want_grad:
            sw.part_buf = xp.empty((sw.v_chunk, n_features), dtype=dtype, device=dev)
    return sw


def _block(sw: _Sweep, i0: int, i1: int, w_t: Array, *, xp: Namespace) -> None:
    """Rows i0:i1: their logits, log Z and loss, then their part of the three gradients."""
    h = sw.h2[i0:i1, ...]
    buf = sw.logits_buf
    x = h @ w_t if buf is None else write_into("matmul", buf[: i1 - i0, ...], h, w_t, xp=xp)
    if sw.bias is not None:
        x = x + sw.bias if sw.bias.dtype != x.dtype else _iadd(x, sw.bias)
    x = as_dtype(x, sw.dtype, xp=xp)
    y = sw.index.safe[i0:i1]
    m = finite_max(x, 1, xp=xp)
    kept = None if sw.index.ignored is None else ~sw.index.ignored[i0:i1]
    x_y = take_along_class_axis(x, y, 1, xp=xp) if sw.want_loss else None  # before x is overwritten
    x -= m
    e = write_into("exp", x, x, xp=xp)  # in place where possible: x is not needed any more
    total = xp.sum(e, axis=1, keepdims=True)
    log_z = xp.squeeze(xp.log(total) + m, axis=1)
    if sw.want_loss:
        vocab = sw.weight.shape[0]
        c_sum = None if sw.class_sum is None else sw.class_sum[i0:i1]
        loss = index_loss(log_z, x_y, c_sum, None, float(vocab), sw.eps, vocab)
        if sw.z > 0.0:
            loss = loss + sw.z * log_z**2
        sw.per_row[i0:i1] = loss if kept is None else xp.where(kept, loss, 0.0)
    del x
    if sw.want_grad:
        _block_gradient(sw, i0, i1, h, e, total, log_z, kept, y, xp=xp)


def _block_gradient(sw: _Sweep, i0: int, i1: int, h: Array, e: Array, total: Array, log_z: Array,
                    kept: Array | None, y: Array, *, xp: Namespace) -> None:
    """Rows i0:i1's part of dL/dh, dW and db, from their exponentials ``e`` (not normalised)."""
    vocab = sw.weight.shape[0]
    s_i = sw.s if isinstance(sw.s, float) or sw.s.ndim == 0 else sw.s[i0:i1]
    a, _, _ = gradient_coefficients(s_i + xp.zeros_like(log_z), s_i, log_z, 1.0, float(vocab), sw.eps, sw.z, vocab)
    if kept is not None:
        a = xp.where(kept, a, 0.0)
    # G = q·e - b·e_y - u with the row scale q = a / Σe. Only the first term touches the
    # block; q is applied to the (rows, D) operands (G W = q·(e W), Gᵀh = eᵀ(q·h)) rather than
    # to the (rows, V) block, except in half precision, where e is scaled before its cast.
    q = a / xp.squeeze(total, axis=1)
    if sw.fold:
        g, h_q = e, xp.expand_dims(q, axis=1) * h
    else:
        e *= xp.expand_dims(q, axis=1)
        g, h_q = as_dtype(e, h.dtype, xp=xp), h
    # dL/dh = q·(e W) - b·W[y] - u·ΣW
    _matmul_into(sw.d_hidden, i0, i1, g, sw.weight, alias=sw.alias, xp=xp)
    rest = xp.expand_dims(sw.b[i0:i1], axis=1) * as_dtype(xp.take(sw.weight, y, axis=0), sw.dtype, xp=xp)
    if sw.u is not None:
        rest += xp.expand_dims(sw.u[i0:i1], axis=1) * sw.w_sum
        sw.u_h = sw.u_h + sw.u[i0:i1] @ as_dtype(h, sw.dtype, xp=xp)
    _add_into(sw.d_hidden, i0, i1, as_dtype(rest, h.dtype, xp=xp), alias=sw.alias, subtract=True,
              scale=xp.expand_dims(as_dtype(q, h.dtype, xp=xp), axis=1) if sw.fold else None)
    for v0 in range(0, vocab, sw.v_chunk):
        v1 = min(v0 + sw.v_chunk, vocab)
        g_t = xp.matrix_transpose(g[:, v0:v1])
        buf = sw.part_buf
        part = g_t @ h_q if buf is None else write_into("matmul", buf[: v1 - v0, ...], g_t, h_q, xp=xp)
        _add_into(sw.d_weight, v0, v1, as_dtype(part, sw.dtype, xp=xp), alias=sw.alias)
    if sw.d_bias is not None:
        sw.d_bias += q @ e if sw.fold else xp.sum(e, axis=0)


def _finish(sw: _Sweep, hidden: Array, reduction: str, *, xp: Namespace) -> Fused:
    """The one-hot and uniform parts of dW and db, and the reduced loss."""
    if sw.want_grad:
        # Nothing may still refer to the block buffers, so that they are freed before the correction.
        sw.logits_buf = sw.part_buf = None
        if sw.u is not None:  # the uniform part: -u_i added to every class of row i
            sw.d_weight -= sw.u_h
            if sw.d_bias is not None:
                sw.d_bias -= xp.sum(sw.u)
        if sw.eps < 1.0:
            _subtract_targets(sw.d_weight, sw.d_bias, sw.h2, sw.index.safe, sw.b, sw.index.ignored, rows=sw.rows,
                              v_chunk=sw.v_chunk, alias=sw.alias, xp=xp)
    loss_out = None
    if sw.want_loss:
        lead = tuple(hidden.shape[:-1])
        per_row = xp.reshape(sw.per_row, lead) if reduction == "none" else sw.per_row
        loss_out = as_dtype(reduce_loss(per_row, reduction, denominator=mean_weights(None, sw.index, xp=xp), xp=xp),
                            hidden.dtype, xp=xp)
    if not sw.want_grad:
        return Fused(loss_out, None, None, None)
    return Fused(loss_out, xp.reshape(sw.d_hidden, tuple(hidden.shape)), as_dtype(sw.d_weight, sw.weight.dtype, xp=xp),
                 None if sw.d_bias is None else as_dtype(sw.d_bias, sw.bias.dtype, xp=xp))


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


def _subtract_targets(d_weight: Array, d_bias: Array | None, h2: Array, y: Array, c1: Array, drop: Array | None,
                      *, rows: int, v_chunk: int, alias: bool, xp: Namespace) -> None:
    """``d_weight[y_i] -= c1_i·h_i`` and ``d_bias[y_i] -= c1_i`` for all rows, in place.

    The standard has no scatter-add, so the rows are sorted by target: each class's rows
    form a run, and its sum is a difference of two cumulative sums. Cumulative sums restart
    every ``rows`` sorted rows (their rounding error grows with the run), and a vocabulary
    chunk at a time is taken from them: O((N + V)·D) work in a few dozen operations, with
    ``(rows, D)`` and ``(v_chunk, D)`` temporaries.
    """
    vocab, dev = d_weight.shape[0], device_of(d_weight)
    key = y if drop is None else xp.where(drop, vocab, y)  # ignored rows sort past every class
    order = xp.argsort(key)
    key = xp.take(key, order)
    # Class v's rows, in sorted order: bounds[v] to bounds[v + 1].
    bounds = xp.searchsorted(key, xp.arange(vocab + 1, dtype=key.dtype, device=dev))
    n_kept = int(bounds[vocab])
    for p0 in range(0, n_kept, rows):
        p1 = min(p0 + rows, n_kept)
        idx = order[p0:p1]
        c = xp.take(c1, idx)
        hc = xp.expand_dims(c, axis=1) * as_dtype(xp.take(h2, idx, axis=0), d_weight.dtype, xp=xp)
        cs = xp.cumulative_sum(hc, axis=0, include_initial=True)
        del hc
        cb = None if d_bias is None else xp.cumulative_sum(c, include_initial=True)
        # Classes whose runs meet this piece: key[p0] .. key[p1 - 1].
        k0, k1 = int(key[p0]), int(key[p1 - 1]) + 1
        for v0 in range(k0, k1, v_chunk):
            v1 = min(v0 + v_chunk, k1)
            local = xp.clip(bounds[v0:v1 + 1], p0, p1) - p0
            lo, hi = local[:-1], local[1:]
            run_sums = xp.take(cs, hi, axis=0)
            run_sums -= xp.take(cs, lo, axis=0)
            _add_into(d_weight, v0, v1, run_sums, alias=alias, subtract=True)
            if cb is not None:
                _add_into(d_bias, v0, v1, xp.take(cb, hi) - xp.take(cb, lo), alias=alias, subtract=True)


def _slices_alias(xp: Namespace, device: Any) -> bool:
    """Whether a basic slice of an array is a view that in-place operators write through
    (NumPy, PyTorch, CuPy); probed once per namespace, not assumed from the library's name."""
    key = id(xp)
    if key not in _ALIASING:
        probe = xp.zeros((2,), device=device)
        part = probe[0:1]
        part += 1.0
        _ALIASING[key] = bool(probe[0] == 1.0)
    return _ALIASING[key]


def _logits(hidden: Array, weight: Array, bias: Array | None, *, xp: Namespace) -> Array:
    x = hidden @ xp.matrix_transpose(weight)
    return x if bias is None else x + bias


def _check(hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss, *, xp: Namespace):
    check_linear_shapes(hidden, weight, target, bias, xp=xp)
    return (check_reduction(reduction), check_fraction(label_smoothing, "label_smoothing"),
            check_real(z_loss, "z_loss", minimum=0.0), check_integer(ignore_index, "ignore_index"))


register_value_and_grad(linear_cross_entropy, value_and_grad_linear_cross_entropy)

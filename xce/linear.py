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

from typing import Any, NamedTuple

from ._namespace import (
    Array,
    Namespace,
    as_dtype,
    compute_dtype,
    device_of,
    is_lazy,
    namespace,
    take_along_class_axis,
    write_into,
)
from ._softmax import finite_max
from ._validate import check_fraction, check_integer, check_linear_shapes, check_real, check_reduction
from .classification import _denominator, _prepare_index, cross_entropy
from .grad import _scale, cross_entropy_grad, register

__all__ = ["linear_cross_entropy"]

_NAMES = ("hidden", "weight", "target", "bias")
# Elements of one block of logits (64 MiB in float32), the only (rows, V) temporary: few,
# tall blocks keep dW's rank-`rows` updates efficient (each also reads and writes all of dW).
_BLOCK_ELEMENTS = 1 << 24
# Elements of one (v_chunk, D) slice of a block's dW product (8 MiB in float32).
_VOCAB_CHUNK_ELEMENTS = 1 << 21
_ALIASING: dict[int, bool] = {}


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
    if is_lazy(hidden):
        return cross_entropy(_logits(hidden, weight, bias, xp=xp), target, None, ignore_index, reduction, eps,
                             axis=-1, z_loss=z, xp=xp)
    from .adapters import for_array

    adapter = for_array(hidden)
    if adapter is not None and adapter.needs_autograd(hidden, weight, bias):
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
    if is_lazy(hidden):
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
    ``d_hidden``; elsewhere each operation allocates. Of ``G = q·e - c1·onehot(y) - c2`` only
    ``q·e`` is formed from the block (``q`` scales rows of the ``(rows, D)`` operands); the
    other two terms are O(D) per row, the ``dW`` part of the one-hot in :func:`_subtract_targets`.
    """
    lead = tuple(hidden.shape[:-1])
    n_features, vocab = hidden.shape[-1], weight.shape[0]
    h2 = xp.reshape(hidden, (-1, n_features))
    n = h2.shape[0]
    dtype = compute_dtype(hidden.dtype, xp=xp)
    dev = device_of(hidden)
    index = _prepare_index(xp.reshape(target, (-1,)), vocab, ignore_index, xp=xp, lazy=False)
    drop = index.ignored
    like = xp.empty((n,), dtype=dtype, device=dev)
    # One denominator for both parts: no class weights, so Σ w_y is the count of kept rows.
    s = _scale(None if cotangent is None else xp.reshape(cotangent, (-1,)) if reduction == "none" else cotangent,
               reduction, like, _denominator(None, index, xp=xp), dtype, xp=xp) if want_grad else 0.0
    rows = block_rows if block_rows is not None else max(8, _BLOCK_ELEMENTS // max(vocab, 1))
    rows = max(1, min(int(rows), max(n, 1)))
    v_chunk = max(1, min(vocab, _VOCAB_CHUNK_ELEMENTS // max(n_features, 1)))
    class_sum = w_sum = None
    if eps > 0.0:  # Σ_c W_c: Σ_c x_c = h · Σ_c W_c + Σ_c b_c needs no sweep, and G's uniform part is O(D)
        w_sum = xp.sum(as_dtype(weight, dtype, xp=xp), axis=0)
    if eps > 0.0 and want_loss:
        class_sum = as_dtype(h2, dtype, xp=xp) @ w_sum
        if bias is not None:
            class_sum = class_sum + xp.sum(as_dtype(bias, dtype, xp=xp))
    per_row = xp.zeros((n,), dtype=dtype, device=dev) if want_loss else None
    d_hidden = d_weight = d_bias = None
    if want_grad:
        d_hidden = xp.empty((n, n_features), dtype=hidden.dtype, device=dev)
        d_weight = xp.zeros((vocab, n_features), dtype=dtype, device=dev)
        d_bias = xp.zeros((vocab,), dtype=dtype, device=dev) if bias is not None else None
    c1 = c2 = c2_h = None
    if want_grad:  # G's coefficients per row: c1 = s·(1 - ε) at the target, c2 = s·ε/V everywhere
        c1 = s * (1.0 - eps) + xp.zeros((n,), dtype=dtype, device=dev)
        c1 = c1 if drop is None else xp.where(drop, 0.0, c1)
        if eps > 0.0:
            c2 = s * (eps / vocab) + xp.zeros_like(c1)
            c2 = c2 if drop is None else xp.where(drop, 0.0, c2)
            c2_h = xp.zeros((n_features,), dtype=dtype, device=dev)  # Σ_i c2_i h_i, subtracted from every row of dW
    fold = dtype == hidden.dtype
    # Buffers reused by every block (written through out= and views); elsewhere each
    # operation returns a new array and the buffers stay None.
    alias = _slices_alias(xp, dev)
    logits_buf = part_buf = None
    if alias and fold:
        logits_buf = xp.empty((rows, vocab), dtype=dtype, device=dev)
        if want_grad:
            part_buf = xp.empty((v_chunk, n_features), dtype=dtype, device=dev)
    w_t = xp.matrix_transpose(weight)
    for i0 in range(0, n, rows):
        i1 = min(i0 + rows, n)
        h = h2[i0:i1, ...]
        x = h @ w_t if logits_buf is None else write_into("matmul", logits_buf[:i1 - i0, ...], h, w_t, xp=xp)
        if bias is not None:
            x = x + bias if bias.dtype != x.dtype else _iadd(x, bias)
        x = as_dtype(x, dtype, xp=xp)
        y = index.safe[i0:i1]
        m = finite_max(x, 1, xp=xp)
        kept = None if drop is None else ~drop[i0:i1]
        x_y = take_along_class_axis(x, y, 1, xp=xp) if want_loss else None  # before x is overwritten
        x -= m
        e = write_into("exp", x, x, xp=xp)  # in place where possible: x is not needed any more
        total = xp.sum(e, axis=1, keepdims=True)
        lse = xp.squeeze(xp.log(total) + m, axis=1)
        if want_loss:
            loss = lse - (1.0 - eps) * x_y
            if class_sum is not None:
                loss = loss - (eps / vocab) * class_sum[i0:i1]
            if z > 0.0:
                loss = loss + z * lse**2
            per_row[i0:i1] = loss if kept is None else xp.where(kept, loss, 0.0)
        del x
        if not want_grad:
            continue
        s_i = s if isinstance(s, float) or s.ndim == 0 else s[i0:i1]
        a = s_i * (1.0 + (2.0 * z) * lse) if z > 0.0 else s_i + xp.zeros_like(lse)
        if kept is not None:
            a = xp.where(kept, a, 0.0)
        # G = q·e - c1·e_y - c2 with the row scale q = a / Σe. Only the first term touches the
        # block; q is applied to the (rows, D) operands (G W = q·(e W), Gᵀh = eᵀ(q·h)) rather than
        # to the (rows, V) block, except in half precision, where e is scaled before its cast.
        q = a / xp.squeeze(total, axis=1)
        if fold:
            g, h_q = e, xp.expand_dims(q, axis=1) * h
        else:
            e *= xp.expand_dims(q, axis=1)
            g, h_q = as_dtype(e, hidden.dtype, xp=xp), h
        # dL/dh = q·(e W) - c1·W[y] - c2·ΣW
        _matmul_into(d_hidden, i0, i1, g, weight, alias=alias, xp=xp)
        rest = xp.expand_dims(c1[i0:i1], axis=1) * as_dtype(xp.take(weight, y, axis=0), dtype, xp=xp)
        if c2 is not None:
            rest += xp.expand_dims(c2[i0:i1], axis=1) * w_sum
            c2_h = c2_h + c2[i0:i1] @ as_dtype(h, dtype, xp=xp)
        _add_into(d_hidden, i0, i1, as_dtype(rest, hidden.dtype, xp=xp), alias=alias, subtract=True,
                  scale=xp.expand_dims(as_dtype(q, hidden.dtype, xp=xp), axis=1) if fold else None)
        for v0 in range(0, vocab, v_chunk):
            v1 = min(v0 + v_chunk, vocab)
            g_t = xp.matrix_transpose(g[:, v0:v1])
            part = g_t @ h_q if part_buf is None else write_into("matmul", part_buf[:v1 - v0, ...], g_t, h_q, xp=xp)
            _add_into(d_weight, v0, v1, as_dtype(part, dtype, xp=xp), alias=alias)
        if d_bias is not None:
            d_bias += q @ e if fold else xp.sum(e, axis=0)
    if want_grad:
        # Nothing may still refer to the block buffers, so that they are freed before the correction.
        logits_buf = part_buf = e = g = g_t = part = None
        if c2 is not None:  # the uniform part: -c2_i added to every class of row i
            d_weight -= c2_h
            if d_bias is not None:
                d_bias -= xp.sum(c2)
        if eps < 1.0:
            _subtract_targets(d_weight, d_bias, h2, index.safe, c1, drop, rows=rows, v_chunk=v_chunk, alias=alias,
                              xp=xp)
    loss_out = None
    if want_loss:
        if reduction == "none":
            loss_out = xp.reshape(per_row, lead)
        elif reduction == "sum":
            loss_out = xp.sum(per_row)
        else:
            loss_out = xp.sum(per_row) / xp.astype(xp.sum(_denominator(None, index, xp=xp) if drop is not None else
                                                          xp.ones((n,), dtype=dtype, device=dev)), dtype)
        loss_out = as_dtype(loss_out, hidden.dtype, xp=xp)
    if not want_grad:
        return Fused(loss_out, None, None, None)
    return Fused(loss_out, xp.reshape(d_hidden, tuple(hidden.shape)), as_dtype(d_weight, weight.dtype, xp=xp),
                 None if d_bias is None else as_dtype(d_bias, bias.dtype, xp=xp))


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


register(linear_cross_entropy, value_and_grad_linear_cross_entropy)

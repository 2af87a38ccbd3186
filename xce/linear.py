r"""``linear_cross_entropy``: a linear layer followed by cross entropy, without the logits.

For language-model heads the ``(N, V)`` logits dwarf everything else (N = 8192 tokens and a
32k vocabulary is 1 GiB in float32, twice that with their gradient). Here the rows are taken
in blocks: each block's logits ``h @ W.T + b`` live only while their logsumexp, loss and
gradient are formed, the approach of Cut Cross-Entropy (Wijmans et al., 2024) and
Liger-Kernel's fused linear cross entropy (Hsu et al., 2024). With gradients requested, the
same sweep produces :math:`\partial L/\partial h`, :math:`\partial L/\partial W` and
:math:`\partial L/\partial b`, so forward plus backward costs the three matrix products of
the unfused computation.

Eager arrays (NumPy, PyTorch, CuPy, array-api-strict) take the blocked path. JAX and Dask
arrays take the unfused formula ``cross_entropy(h @ W.T + b, ...)``: under ``jax.jit`` a
Python loop over blocks would unroll into the trace, and XLA and Dask schedule the fused
expression themselves (XLA may still materialise the logits).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._namespace import Array, Namespace, compute_dtype, device_of, is_lazy, namespace, take_along_class_axis
from ._softmax import finite_max
from ._validate import check_fraction, check_integer, check_linear_shapes, check_real, check_reduction
from .classification import _denominator, _prepare_index, cross_entropy
from .grad import _scale, cross_entropy_grad, register

__all__ = ["linear_cross_entropy"]

_NAMES = ("hidden", "weight", "target", "bias")
# Elements of one block of logits (32 MiB in float32): a few such temporaries are alive at once.
_BLOCK_ELEMENTS = 1 << 23
_VOCAB_CHUNK_ELEMENTS = 1 << 22
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
    Eager arrays are evaluated in blocks of ``block_rows`` rows (default: about 4M logits
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
    """The blocked sweep (eager arrays, validated arguments): loss and/or the three gradients."""
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
    rows = block_rows if block_rows is not None else max(16, _BLOCK_ELEMENTS // max(vocab, 1))
    rows = max(1, min(int(rows), max(n, 1)))
    v_chunk = max(1, _VOCAB_CHUNK_ELEMENTS // max(n_features, 1))
    class_sum = None
    if eps > 0.0 and want_loss:  # Σ_c x_c = h · Σ_c W_c + Σ_c b_c: O(D), no sweep needed
        w_sum = xp.sum(xp.astype(weight, dtype), axis=0)
        class_sum = xp.astype(h2, dtype) @ w_sum
        if bias is not None:
            class_sum = class_sum + xp.sum(xp.astype(bias, dtype))
    losses, d_hidden = [], []
    d_weight = xp.zeros((vocab, n_features), dtype=dtype, device=dev) if want_grad else None
    d_bias = xp.zeros((vocab,), dtype=dtype, device=dev) if want_grad and bias is not None else None
    views = None
    if want_grad and _slices_alias(xp, dev):
        views = [d_weight[v0:min(v0 + v_chunk, vocab), ...] for v0 in range(0, vocab, v_chunk)]
    classes = xp.reshape(xp.arange(vocab, dtype=index.safe.dtype, device=dev), (1, vocab))
    for i0 in range(0, n, rows):
        i1 = min(i0 + rows, n)
        h = h2[i0:i1, ...]
        x = h @ xp.matrix_transpose(weight)
        if bias is not None:
            x = x + bias
        if x.dtype != dtype:
            x = xp.astype(x, dtype)
        y = index.safe[i0:i1]
        m = finite_max(x, 1, xp=xp)
        x -= m  # in place: one block-sized buffer for the shifted logits, one for exp
        e = xp.exp(x)
        total = xp.sum(e, axis=1, keepdims=True)
        lse = xp.squeeze(xp.log(total) + m, axis=1)
        kept = None if drop is None else ~drop[i0:i1]
        if want_loss:
            x_y = take_along_class_axis(x, y, 1, xp=xp) + xp.squeeze(m, axis=1)
            loss = lse - (1.0 - eps) * x_y
            if class_sum is not None:
                loss = loss - (eps / vocab) * class_sum[i0:i1]
            if z > 0.0:
                loss = loss + z * lse**2
            losses.append(loss if kept is None else xp.where(kept, loss, 0.0))
        del x
        if not want_grad:
            continue
        s_i = s if isinstance(s, float) or s.ndim == 0 else s[i0:i1]
        a = s_i * (1.0 + (2.0 * z) * lse) if z > 0.0 else s_i + xp.zeros_like(lse)
        c1 = s_i * (1.0 - eps) + xp.zeros_like(lse)
        if kept is not None:
            a, c1 = xp.where(kept, a, 0.0), xp.where(kept, c1, 0.0)
        # G = a·p - c1·e_y - s·ε/V, formed in place in the exp buffer.
        e /= total
        e *= xp.expand_dims(a, axis=1)
        e -= xp.where(xp.expand_dims(y, axis=1) == classes, xp.expand_dims(c1, axis=1), 0.0)
        if eps > 0.0:
            c2 = s_i * (eps / vocab) + xp.zeros_like(lse)
            e -= xp.expand_dims(c2 if kept is None else xp.where(kept, c2, 0.0), axis=1)
        g = e if e.dtype == hidden.dtype else xp.astype(e, hidden.dtype)
        d_hidden.append(g @ weight)
        for j, v0 in enumerate(range(0, vocab, v_chunk)):
            v1 = min(v0 + v_chunk, vocab)
            part = xp.matrix_transpose(g[:, v0:v1]) @ h
            part = part if part.dtype == dtype else xp.astype(part, dtype)
            if views is not None:
                views[j] += part  # a view: accumulates into d_weight without a copy back
            else:
                d_weight[v0:v1, ...] += part
        if d_bias is not None:
            d_bias += xp.sum(e, axis=0)
    loss_out = None
    if want_loss:
        per_row = xp.concat(losses) if losses else xp.zeros((0,), dtype=dtype, device=dev)
        if reduction == "none":
            loss_out = xp.reshape(per_row, lead)
        elif reduction == "sum":
            loss_out = xp.sum(per_row)
        else:
            loss_out = xp.sum(per_row) / xp.astype(xp.sum(_denominator(None, index, xp=xp) if drop is not None else
                                                          xp.ones((n,), dtype=dtype, device=dev)), dtype)
        if loss_out.dtype != hidden.dtype:
            loss_out = xp.astype(loss_out, hidden.dtype)
    if not want_grad:
        return Fused(loss_out, None, None, None)
    dh = xp.concat(d_hidden) if d_hidden else xp.zeros((0, n_features), dtype=hidden.dtype, device=dev)
    dh = xp.reshape(dh, tuple(hidden.shape))
    if dh.dtype != hidden.dtype:
        dh = xp.astype(dh, hidden.dtype)
    return Fused(loss_out, dh, _cast(d_weight, weight.dtype, xp=xp),
                 None if d_bias is None else _cast(d_bias, bias.dtype, xp=xp))


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


def _cast(a: Array, dtype: Any, *, xp: Namespace) -> Array:
    return a if a.dtype == dtype else xp.astype(a, dtype)


def _logits(hidden: Array, weight: Array, bias: Array | None, *, xp: Namespace) -> Array:
    x = hidden @ xp.matrix_transpose(weight)
    return x if bias is None else x + bias


def _check(hidden, weight, target, bias, ignore_index, reduction, label_smoothing, z_loss, *, xp: Namespace):
    check_linear_shapes(hidden, weight, target, bias, xp=xp)
    return (check_reduction(reduction), check_fraction(label_smoothing, "label_smoothing"),
            check_real(z_loss, "z_loss", minimum=0.0), check_integer(ignore_index, "ignore_index"))


register(linear_cross_entropy, value_and_grad_linear_cross_entropy)

"""linear_cross_entropy equals F.linear + F.cross_entropy (value and gradients), blocked or not."""

from __future__ import annotations

import numpy as np
import pytest

import xce
import xce.grad as G
import xce.linear as linear_module
from xce.linear import linear_cross_entropy

from conftest import assert_close_to

torch = pytest.importorskip("torch")
F = torch.nn.functional

lazy_xp_modules = [xce]
SUPPORTED = {"numpy", "array_api_strict", "torch", "jax", "jax-jit", "dask", "cupy", "torch-cuda", "cupy-standin"}

RNG = np.random.default_rng(3)
N, D, V = 19, 6, 13
H = RNG.normal(size=(N, D))
W = RNG.normal(size=(V, D))
B = RNG.normal(size=V)
T = RNG.integers(0, V, size=N)
T[4] = -100
COT = RNG.normal(size=N)

CONFIGS = [
    ({}, False),
    ({"label_smoothing": 0.2, "z_loss": 0.05}, True),
    ({"reduction": "sum", "label_smoothing": 0.1}, True),
    ({"reduction": "none", "z_loss": 0.1}, False),
]


def _reference(kwargs, bias, cot=None):
    kwargs = dict(kwargs)
    z = kwargs.pop("z_loss", 0.0)
    reduction = kwargs.get("reduction", "mean")
    h, w = torch.tensor(H, requires_grad=True), torch.tensor(W, requires_grad=True)
    b = torch.tensor(B, requires_grad=True) if bias else None
    logits = F.linear(h, w, b)
    t = torch.from_numpy(T)
    out = F.cross_entropy(logits, t, **kwargs)
    if z:
        kept = t != -100
        zt = torch.where(kept, z * torch.logsumexp(logits, -1) ** 2, 0.0)
        out = out + {"mean": zt.sum() / kept.sum(), "sum": zt.sum(), "none": zt}[reduction]
    (out * (1.0 if cot is None else torch.from_numpy(cot))).sum().backward()
    return out.detach().numpy(), h.grad.numpy(), w.grad.numpy(), None if b is None else b.grad.numpy()


@pytest.mark.parametrize(("kwargs", "bias"), CONFIGS)
def test_value_matches_unfused(backend, kwargs, bias):
    xp = backend.xp
    loss = linear_cross_entropy(backend.asarray(H), backend.asarray(W), backend.asarray(T),
                                linear_bias=backend.asarray(B) if bias else None, block_rows=4, **kwargs)
    assert_close_to(loss, _reference(kwargs, bias)[0], dtype=xp.float64, backend=backend)


@pytest.mark.parametrize(("kwargs", "bias"), CONFIGS)
def test_value_and_grad_matches_autograd(backend, kwargs, bias):
    if backend.name in ("jax-jit", "dask"):
        pytest.skip("value_and_grad runs eagerly (jax eager covers the unfused formula)")
    xp = backend.xp
    cot = COT if kwargs.get("reduction") == "none" else None
    ref = _reference(kwargs, bias, cot)
    loss, (dh, dw, db) = xce.grad.value_and_grad(linear_cross_entropy)(
        backend.asarray(H), backend.asarray(W), backend.asarray(T), linear_bias=backend.asarray(B) if bias else None,
        block_rows=5, cotangent=None if cot is None else backend.asarray(cot), **kwargs)
    assert_close_to(loss, ref[0], dtype=xp.float64, backend=backend)
    assert_close_to(dh, ref[1], dtype=xp.float64, backend=backend)
    assert_close_to(dw, ref[2], dtype=xp.float64, backend=backend)
    if bias:
        assert_close_to(db, ref[3], dtype=xp.float64, backend=backend)
    else:
        assert db is None


@pytest.mark.parametrize(("kwargs", "bias"), CONFIGS)
def test_torch_backward_matches_autograd(kwargs, bias):
    ref = _reference(kwargs, bias, COT if kwargs.get("reduction") == "none" else None)
    h, w = torch.tensor(H, requires_grad=True), torch.tensor(W, requires_grad=True)
    b = torch.tensor(B, requires_grad=True) if bias else None
    out = linear_cross_entropy(h, w, torch.from_numpy(T), linear_bias=b, block_rows=7, **kwargs)
    (out * (torch.from_numpy(COT) if kwargs.get("reduction") == "none" else 1.0)).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref[0], rtol=1e-10, atol=1e-12)
    for got, want in zip((h.grad, w.grad, None if b is None else b.grad), ref[1:]):
        if want is not None:
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_torch_gradcheck():
    h = torch.tensor(H[:5], requires_grad=True)
    w = torch.tensor(W[:7], requires_grad=True)
    b = torch.tensor(B[:7], requires_grad=True)
    t = torch.tensor([0, 6, 2, -100, 3])
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(h, w, t, linear_bias=b, label_smoothing=0.1, z_loss=0.05, block_rows=2),
        (h, w, b))


def test_jax_grad_and_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    ref = _reference({"label_smoothing": 0.1}, True)

    def f(h, w, b):
        return linear_cross_entropy(h, w, jnp.asarray(T), linear_bias=b, label_smoothing=0.1)

    for fn in (jax.grad(f, argnums=(0, 1, 2)), jax.jit(jax.grad(f, argnums=(0, 1, 2)))):
        for got, want in zip(fn(jnp.asarray(H), jnp.asarray(W), jnp.asarray(B)), ref[1:]):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


def test_leading_axes_and_float32():
    h = RNG.normal(size=(2, 3, D)).astype(np.float32)
    t = RNG.integers(0, V, size=(2, 3))
    loss = linear_cross_entropy(h, W.astype(np.float32), t, reduction="none", block_rows=2)
    assert loss.shape == (2, 3) and loss.dtype == np.float32
    ref = xce.cross_entropy(h @ W.astype(np.float32).T, t, reduction="none", axis=-1)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    _, (dh, dw, _) = G.value_and_grad(linear_cross_entropy)(h, W.astype(np.float32), t)
    assert dh.shape == h.shape and dw.shape == W.shape and dh.dtype == np.float32


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="weight must have shape"):
        linear_cross_entropy(H, W.T, T)
    with pytest.raises(ValueError, match="target shape"):
        linear_cross_entropy(H, W, T[:-1])
    with pytest.raises(IndexError):
        linear_cross_entropy(H, W, np.full(N, V))


@pytest.mark.parametrize("block_rows", [1, 3, 8])
def test_many_vocabulary_chunks_and_skewed_targets(backend, monkeypatch, block_rows):
    """The target correction of dW sorts rows by class and restarts its cumulative sums every
    ``block_rows`` rows: runs of one class across pieces, ignored rows, chunks of 2 classes."""
    if backend.name in ("jax", "jax-jit", "dask"):
        pytest.skip("lazy backends take the unfused formula")
    monkeypatch.setattr(linear_module, "_VOCAB_CHUNK_ELEMENTS", 2 * D)
    t = T.copy()
    t[5:15] = 7  # one class over several pieces
    t[[0, 16]] = -100
    kwargs = {"label_smoothing": 0.2, "z_loss": 0.05}
    loss, (dh, dw, db) = xce.grad.value_and_grad(linear_cross_entropy)(
        backend.asarray(H), backend.asarray(W), backend.asarray(t), linear_bias=backend.asarray(B),
        block_rows=block_rows, **kwargs)
    h, w, b = (torch.tensor(a, requires_grad=True) for a in (H, W, B))
    logits = F.linear(h, w, b)
    tt = torch.from_numpy(t)
    kept = tt != -100
    z = (0.05 * torch.logsumexp(logits, -1) ** 2 * kept).sum() / kept.sum()
    ref = F.cross_entropy(logits, tt, label_smoothing=0.2) + z
    ref.backward()
    for got, want in zip((loss, dh, dw, db), (ref.detach(), h.grad, w.grad, b.grad)):
        assert_close_to(got, want.numpy(), dtype=backend.xp.float64, backend=backend)


@pytest.mark.parametrize("want_grad", [False, True])
def test_numpy_temporaries_do_not_grow_with_n(monkeypatch, want_grad):
    """Peak memory beyond the outputs is a couple of blocks, not O(N·V) or another O(N·D) copy."""
    import tracemalloc

    n, d, v, rows = 2048, 128, 2048, 32
    monkeypatch.setattr(linear_module, "_VOCAB_CHUNK_ELEMENTS", 256 * d)
    rng = np.random.default_rng(0)
    h = rng.normal(size=(n, d)).astype(np.float32)
    w = (rng.normal(size=(v, d)) / 16).astype(np.float32)
    t = rng.integers(0, v, size=n)
    block = rows * v * 4
    outputs = (n * d + v * d) * 4 if want_grad else 0
    fn = G.value_and_grad(linear_cross_entropy) if want_grad else linear_cross_entropy
    fn(h[:4], w, t[:4], block_rows=rows)  # first-call imports and caches are not the sweep's
    tracemalloc.start()
    try:
        fn(h, w, t, block_rows=rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One logits block, one (256, D) product, O(rows·D) and O(N) vectors: the logits are 64 blocks,
    # dL/dh (a copy of which would fail this) 4 blocks.
    extra = peak - outputs
    assert extra < 2 * block + 256 * d * 4 + 2 * rows * d * 4 + 64 * n, extra / block

"""linear_cross_entropy's PyTorch 2.13 signature and LLM options (xce issue 14): class weights,
softcap, temperature, sample_weight, normalizer, causal shift, dropped ignored rows, probability
targets, against float64 references (``F.linear_cross_entropy`` where it overlaps, else the
formula written out in torch float64), values and gradients on every backend."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import xce
import xce.linear as linear_module

from conftest import assert_close_to, to_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

lazy_xp_modules = [xce]

RNG = np.random.default_rng(14)
N, D, V = 13, 5, 11
H = RNG.normal(size=(N, D))
W = RNG.normal(size=(V, D))
B = RNG.normal(size=V)
T = RNG.integers(0, V, size=N)
T[[2, 7]] = -100
CW = RNG.uniform(0.5, 2.0, size=V)
SW = RNG.uniform(0.0, 2.0, size=N)
COT = RNG.normal(size=N)
# (batch, time) inputs for shift=True
H3 = RNG.normal(size=(2, 6, D))
T3 = RNG.integers(0, V, size=(2, 6))
T3[0, 3] = -100
SW3 = RNG.uniform(0.0, 2.0, size=(2, 6))


def reference(h_np, t_np, *, bias=None, weight=None, reduction="mean", ignore_index=None, label_smoothing=0.0,
              z_loss=0.0, softcap=None, temperature=1.0, sample_weight=None, normalizer=None, shift=False, cot=None):
    """``(loss, d_input, d_linear_weight, d_linear_bias)``, the definition written out in torch float64."""
    ii = -100 if ignore_index is None else ignore_index
    h, w = torch.tensor(h_np, requires_grad=True), torch.tensor(W, requires_grad=True)
    b = None if bias is None else torch.tensor(bias, requires_grad=True)
    t = torch.as_tensor(np.asarray(t_np))
    sw = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
    x = F.linear(h, w, b)
    if shift:
        x, t, sw = x[..., :-1, :], t[..., 1:], None if sw is None else sw[..., 1:]
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    x = x / temperature
    logp = torch.log_softmax(x, -1)
    kept = t != ii
    ts = torch.where(kept, t, 0)
    wv = torch.ones(V, dtype=torch.float64) if weight is None else torch.as_tensor(weight)
    nll = -torch.gather(logp, -1, ts.unsqueeze(-1)).squeeze(-1)
    ce = (1 - label_smoothing) * wv[ts] * nll - label_smoothing / V * (wv * logp).sum(-1)
    ce = torch.where(kept, ce, 0.0)
    zt = torch.where(kept, z_loss * torch.logsumexp(x, -1) ** 2, 0.0)
    s = torch.ones_like(ce) if sw is None else sw
    if reduction == "none":
        out = s * (ce + zt)
    elif reduction == "sum":
        out = (s * ce).sum() + (s * zt).sum()
    elif normalizer is not None:
        out = ((s * ce).sum() + (s * zt).sum()) / float(normalizer)
    else:
        out = (s * ce).sum() / (s * wv[ts] * kept).sum() + (s * zt).sum() / (s * kept).sum()
    (out * (1.0 if cot is None else torch.as_tensor(cot))).sum().backward()
    return out.detach().numpy(), h.grad.numpy(), w.grad.numpy(), None if b is None else b.grad.numpy()


CASES = [
    ("class-weight", {"weight": CW}),
    ("weight+smoothing+z", {"weight": CW, "label_smoothing": 0.1, "z_loss": 0.05}),
    ("softcap", {"softcap": 2.0}),
    ("softcap+temperature+all", {"softcap": 1.5, "temperature": 0.7, "label_smoothing": 0.2, "weight": CW,
                                 "z_loss": 0.05}),
    ("temperature+smoothing", {"temperature": 2.0, "label_smoothing": 0.1}),
    ("sample_weight+weight+z", {"sample_weight": SW, "weight": CW, "z_loss": 0.1}),
    ("sample_weight-sum", {"sample_weight": SW, "reduction": "sum"}),
    ("sample_weight-none+softcap", {"sample_weight": SW, "reduction": "none", "softcap": 3.0,
                                    "label_smoothing": 0.1}),
    ("normalizer", {"normalizer": 7.0, "z_loss": 0.05, "weight": CW}),
    ("none+weight+temperature", {"reduction": "none", "weight": CW, "z_loss": 0.1, "temperature": 1.3}),
]


def _on(backend, kwargs):
    return {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


# Half of the cases with a bias, half without.
CASES = [(name, kwargs, i % 2 == 1) for i, (name, kwargs) in enumerate(CASES)]


@pytest.mark.parametrize(("name", "kwargs", "bias"), CASES, ids=[c[0] for c in CASES])
def test_value(backend, name, kwargs, bias):
    loss = xce.linear_cross_entropy(backend.asarray(H), backend.asarray(W), backend.asarray(T),
                                    linear_bias=backend.asarray(B) if bias else None, block_rows=4,
                                    **_on(backend, kwargs))
    want = reference(H, T, bias=B if bias else None, **kwargs)[0]
    assert_close_to(loss, want, dtype=backend.xp.float64, backend=backend)


def _gradients(backend, h, t, kwargs, bias, cot):
    """``(loss, d_input, d_linear_weight, d_linear_bias)`` by the backend's own means."""
    xp, kw = backend.xp, _on(backend, kwargs)
    lb = backend.asarray(B) if bias else None
    if backend.name.startswith("torch"):
        hh, ww = (torch.tensor(a, device=backend.device, requires_grad=True) for a in (h, W))
        bb = None if lb is None else lb.clone().requires_grad_(True)
        out = xce.linear_cross_entropy(hh, ww, backend.asarray(t), linear_bias=bb, block_rows=3, **kw)
        (out * (1.0 if cot is None else backend.asarray(cot))).sum().backward()
        return out.detach(), hh.grad, ww.grad, None if bb is None else bb.grad
    if backend.name == "jax":
        import jax

        def f(hh, ww, bb):
            out = xce.linear_cross_entropy(hh, ww, backend.asarray(t), linear_bias=bb, **kw)
            return (out * (1.0 if cot is None else backend.asarray(cot))).sum()

        grads = jax.jit(jax.grad(f, argnums=(0, 1, 2) if bias else (0, 1)))(backend.asarray(h), backend.asarray(W), lb)
        loss = xce.linear_cross_entropy(backend.asarray(h), backend.asarray(W), backend.asarray(t), linear_bias=lb,
                                        **kw)
        return (loss, *grads, None) if not bias else (loss, *grads)
    loss, grads = xce.value_and_grad(xce.linear_cross_entropy)(
        backend.asarray(h), backend.asarray(W), backend.asarray(t), linear_bias=lb, block_rows=3,
        cotangent=None if cot is None else backend.asarray(cot), xp=xp, **kw)
    return (loss, *grads)


@pytest.mark.parametrize(("name", "kwargs", "bias"), CASES, ids=[c[0] for c in CASES])
def test_gradients(backend, name, kwargs, bias):
    if backend.name in ("jax-jit", "dask"):
        pytest.skip("jax: jax.grad under jit in the 'jax' case; dask: value only")
    cot = COT if kwargs.get("reduction") == "none" else None
    want = reference(H, T, bias=B if bias else None, cot=cot, **kwargs)
    got = _gradients(backend, H, T, kwargs, bias, cot)
    for g, r in zip(got, want):
        if r is None:
            assert g is None
        else:
            assert_close_to(g, r, dtype=backend.xp.float64, backend=backend)


SHIFT_CASES = [{}, {"sample_weight": SW3, "weight": CW, "z_loss": 0.1}, {"reduction": "none", "softcap": 2.0},
               {"reduction": "sum", "label_smoothing": 0.1}]


@pytest.mark.parametrize("kwargs", SHIFT_CASES)
def test_shift(backend, kwargs):
    """shift=True: position t predicts target t+1, the last position is dropped; equal to the
    written-out shifted definition, values and gradients."""
    if backend.name in ("jax-jit", "dask"):
        loss = xce.linear_cross_entropy(backend.asarray(H3), backend.asarray(W), backend.asarray(T3), shift=True,
                                        **_on(backend, kwargs))
        assert_close_to(loss, reference(H3, T3, shift=True, **kwargs)[0], dtype=backend.xp.float64, backend=backend)
        return
    cot = RNG.normal(size=(2, 5)) if kwargs.get("reduction") == "none" else None
    want = reference(H3, T3, bias=B, shift=True, cot=cot, **kwargs)
    got = _gradients(backend, H3, T3, {**kwargs, "shift": True}, True, cot)
    for g, r in zip(got, want):
        assert_close_to(g, r, dtype=backend.xp.float64, backend=backend)


def test_shift_equals_the_explicitly_shifted_call():
    sw = SW3
    kw = {"weight": CW, "label_smoothing": 0.1, "z_loss": 0.01, "softcap": 4.0}
    a = xce.value_and_grad(xce.linear_cross_entropy)(H3, W, T3, shift=True, sample_weight=sw, **kw)
    h = np.ascontiguousarray(H3[:, :-1])
    b = xce.value_and_grad(xce.linear_cross_entropy)(h, W, T3[:, 1:], sample_weight=sw[:, 1:], **kw)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_allclose(a[1][0][:, :-1], b[1][0], rtol=1e-12, atol=1e-15)
    assert not a[1][0][:, -1].any()
    np.testing.assert_allclose(a[1][1], b[1][1], rtol=1e-12, atol=1e-15)
    none = xce.linear_cross_entropy(H3, W, T3, shift=True, reduction="none")
    assert none.shape == (2, 5)
    np.testing.assert_allclose(none, xce.linear_cross_entropy(h, W, T3[:, 1:], reduction="none"), rtol=1e-12)


def _count_swept_rows(monkeypatch) -> list[int]:
    """The sweep's block sizes (rows multiplied by the linear weight), appended as it runs."""
    seen: list[int] = []
    block = linear_module._block

    def spy(sw, i0, i1, w_t, *, xp):
        seen.append(i1 - i0)
        return block(sw, i0, i1, w_t, xp=xp)

    monkeypatch.setattr(linear_module, "_block", spy)
    return seen


def test_ignored_rows_are_dropped_before_the_matmul(monkeypatch):
    """Half the rows ignored: the sweep multiplies only the kept rows, and the results equal the
    call on the kept rows alone (dL/dh 0 at the dropped rows)."""
    rng = np.random.default_rng(0)
    h, t = rng.normal(size=(40, D)), rng.integers(0, V, size=40)
    t[::2] = -100
    seen = _count_swept_rows(monkeypatch)
    kw = {"weight": CW, "label_smoothing": 0.1, "reduction": "sum", "block_rows": 4}
    loss, (dh, dw, _) = xce.value_and_grad(xce.linear_cross_entropy)(h, W, t, **kw)
    assert sum(seen) == 20
    kept = t != -100
    loss_k, (dh_k, dw_k, _) = xce.value_and_grad(xce.linear_cross_entropy)(h[kept], W, t[kept], **kw)
    np.testing.assert_allclose(loss, loss_k, rtol=1e-12)
    np.testing.assert_allclose(dh[kept], dh_k, rtol=1e-12, atol=1e-15)
    assert not dh[~kept].any()
    np.testing.assert_allclose(dw, dw_k, rtol=1e-12, atol=1e-15)


# What a GPU runs: values are not read (a host sync each), so no row can be dropped (finding the
# kept rows is a read); every row is swept and the ignored ones masked. check_values=False gives
# the CPU the same path. CASES and SHIFT_CASES have ignored rows.
NO_READ_CASES = [*CASES, ("shift+sample_weight+z", {"sample_weight": SW3, "weight": CW, "z_loss": 0.1, "shift": True},
                          True), ("shift-none+softcap", {"reduction": "none", "softcap": 2.0, "shift": True}, False)]


@pytest.mark.parametrize(("name", "kwargs", "bias"), NO_READ_CASES, ids=[c[0] for c in NO_READ_CASES])
def test_without_value_reads_every_row_is_swept_and_masked(backend, name, kwargs, bias, monkeypatch):
    """Values and gradients of the sweep that reads no value (an accelerator's) equal the
    reference, on every eager backend: NumPy and PyTorch by their scatter-add, array-api-strict
    (none) by visiting every vocabulary chunk."""
    if backend.name in ("jax", "jax-jit", "dask"):
        pytest.skip("lazy arrays never take the sweep (the unfused formula; see test_gradients)")
    h, t = (H3, T3) if kwargs.get("shift") else (H, T)
    swept = _count_swept_rows(monkeypatch)
    cot = None
    if kwargs.get("reduction") == "none":
        cot = RNG.normal(size=(2, 5)) if kwargs.get("shift") else COT
    want = reference(h, t, bias=B if bias else None, cot=cot, **kwargs)
    with xce.config(check_values=False):
        got = _gradients(backend, h, t, kwargs, bias, cot)
    n_rows = h.size // D  # every sweep (one forward, one backward) takes every row, the ignored ones too
    assert swept and sum(swept) % n_rows == 0
    for g, r in zip(got, want):
        if r is None:
            assert g is None
        else:
            assert_close_to(g, r, dtype=backend.xp.float64, backend=backend)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_without_value_reads_an_out_of_range_target_is_nan(backend, reduction):
    """The lazy contract where values are not read: an index outside [0, V) gives NaN at its
    position (so "mean" is NaN) instead of an IndexError, and the other positions are exact."""
    if backend.name in ("jax", "jax-jit", "dask"):
        pytest.skip("lazy arrays: the unfused formula's own lazy contract")
    bad = T.copy()
    bad[4] = V + 3
    with xce.config(check_values=False):
        out = to_numpy(xce.linear_cross_entropy(backend.asarray(H), backend.asarray(W), backend.asarray(bad),
                                                        reduction=reduction, block_rows=4))
    if reduction == "mean":
        assert np.isnan(out)
        return
    want = reference(H, np.where(bad == V + 3, -100, bad), reduction="none")[0]
    assert np.isnan(out[4]) and not np.isnan(np.delete(out, 4)).any()
    np.testing.assert_allclose(np.delete(out, 4), np.delete(want, 4), rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_without_value_reads_a_non_finite_ignored_row_stays_out(backend):
    """An ignored row's hidden state may be inf or NaN (padding): where the row is dropped it never
    reaches the results, and where it is swept and masked it must not either (no 0·inf in dW)."""
    if backend.name in ("jax", "jax-jit", "dask"):
        pytest.skip("lazy arrays: the unfused formula")
    h = H.copy()
    h[2] = np.inf
    h[7, 1] = np.nan  # (T[2] and T[7] are ignore_index)
    kw = {"weight": CW, "label_smoothing": 0.1, "z_loss": 0.05}
    want = reference(np.where(np.isfinite(h), h, 0.0), T, bias=B, **kw)
    with xce.config(check_values=False):
        got = _gradients(backend, h, T, kw, True, None)
    for g, r in zip(got, want):
        assert_close_to(g, r, dtype=backend.xp.float64, backend=backend)
    assert not to_numpy(got[1])[[2, 7]].any()


def test_without_value_reads_the_statistics_skip_the_ignored_rows():
    """return_stats: per-position log Z and entropy 0 at ignored rows and the accuracy over the
    kept ones, as when they are dropped."""
    kw = {"weight": CW, "z_loss": 0.05, "return_stats": True, "block_rows": 4}
    for reduction in ("mean", "none"):
        read = xce.linear_cross_entropy(H, W, T, reduction=reduction, **kw)
        with xce.config(check_values=False):
            unread = xce.linear_cross_entropy(H, W, T, reduction=reduction, **kw)
        np.testing.assert_allclose(unread[0], read[0], rtol=1e-12, atol=1e-15)
        for a, b in zip(unread[1], read[1]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert read[1].lse[2] == 0.0 and 0.0 < read[1].accuracy < 1.0


OVERLAP = [{}, {"weight": CW}, {"weight": CW, "label_smoothing": 0.1, "reduction": "sum"},
           {"reduction": "none", "weight": CW}, {"ignore_index": 3}]


@pytest.mark.parametrize("options", [False, True])
@pytest.mark.parametrize("kwargs", OVERLAP)
def test_matches_torch_linear_cross_entropy(kwargs, options):
    """PyTorch 2.13's own F.linear_cross_entropy, float64, with and without its options."""
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("PyTorch < 2.13")
    if options and kwargs.get("label_smoothing"):
        pytest.skip("PyTorch's chunked path refuses label smoothing (it warns and falls back)")
    opts = torch.nn.LinearCrossEntropyOptions() if options else None
    t = torch.as_tensor(np.where(T == -100, 3, T) if "ignore_index" in kwargs else T)
    kw = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    results = []
    for fn in (F.linear_cross_entropy, xce.linear_cross_entropy):
        h, w, b = (torch.tensor(a, requires_grad=True) for a in (H, W, B))
        out = fn(h, w, t, linear_bias=b, options=opts, **kw)
        out.sum().backward()
        results.append((out.detach(), h.grad, w.grad, b.grad))
    for got, want in zip(*results[::-1]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{}, {"weight": CW, "label_smoothing": 0.1}, {"reduction": "none"}])
def test_probability_targets(backend, kwargs):
    """Probability targets (as F.linear_cross_entropy accepts them) through the unfused formula."""
    p = RNG.dirichlet(np.ones(V), size=N)
    h, w, b = (torch.tensor(a, requires_grad=True) for a in (H, W, B))
    kw = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    ref = F.cross_entropy(F.linear(h, w, b), torch.tensor(p), **kw)
    ref.sum().backward()
    args = (backend.asarray(H), backend.asarray(W), backend.asarray(p))
    loss = xce.linear_cross_entropy(*args, linear_bias=backend.asarray(B), **_on(backend, kwargs))
    assert_close_to(loss, ref.detach().numpy(), dtype=backend.xp.float64, backend=backend)
    if backend.name not in ("jax-jit", "dask"):
        _, grads = xce.value_and_grad(xce.linear_cross_entropy)(*args, linear_bias=backend.asarray(B),
                                                                **_on(backend, kwargs))
        for g, r in zip(grads, (h.grad, w.grad, b.grad)):
            assert_close_to(g, r.numpy(), dtype=backend.xp.float64, backend=backend)


def test_torch_class_and_sample_weight_requiring_grad_take_the_definition():
    cw = torch.tensor(CW, requires_grad=True)
    h = torch.tensor(H, requires_grad=True)
    out = xce.linear_cross_entropy(h, torch.tensor(W), torch.as_tensor(T), weight=cw, label_smoothing=0.1)
    out.backward()
    cw2, h2 = torch.tensor(CW, requires_grad=True), torch.tensor(H, requires_grad=True)
    logp = torch.log_softmax(h2 @ torch.tensor(W).T, -1)
    t = torch.as_tensor(T)
    kept = t != -100
    ts = torch.where(kept, t, 0)
    per = 0.9 * cw2[ts] * -logp.gather(1, ts[:, None])[:, 0] - 0.1 / V * (cw2 * logp).sum(-1)
    ref = (per * kept).sum() / (cw2[ts] * kept).sum()
    ref.backward()
    np.testing.assert_allclose(out.item(), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(cw.grad.numpy(), cw2.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h.grad.numpy(), h2.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_traced_softcap_temperature_normalizer_under_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    f = jax.jit(lambda h, n, c, tt: xce.linear_cross_entropy(h, jnp.asarray(W), jnp.asarray(T), normalizer=n,
                                                               softcap=c, temperature=tt))
    want = reference(H, T, normalizer=5.0, softcap=2.0, temperature=0.5)[0]
    np.testing.assert_allclose(f(jnp.asarray(H), jnp.asarray(5.0), jnp.asarray(2.0), jnp.asarray(0.5)), want,
                               rtol=1e-12)
    assert np.isnan(f(jnp.asarray(H), jnp.asarray(5.0), jnp.asarray(-2.0), jnp.asarray(0.5)))
    assert np.isnan(f(jnp.asarray(H), jnp.asarray(5.0), jnp.asarray(2.0), jnp.asarray(0.0)))


def test_normalizer_array_and_all_ignored():
    want = reference(H, T, normalizer=5.0, z_loss=0.1)[0]
    got = xce.linear_cross_entropy(torch.as_tensor(H), torch.as_tensor(W), torch.as_tensor(T),
                                   normalizer=torch.tensor(5.0), z_loss=0.1)
    np.testing.assert_allclose(got.item(), want, rtol=1e-12)
    with np.errstate(invalid="ignore"):
        assert np.isnan(xce.linear_cross_entropy(H, W, np.full(N, -100)))
    assert xce.linear_cross_entropy(H, W, np.full(N, -100), reduction="sum") == 0.0


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"softcap": 0.0}, ValueError, "softcap must be a finite float > 0"),
    ({"softcap": -1.0}, ValueError, "softcap"),
    ({"temperature": 0.0}, ValueError, "temperature must be a finite float > 0"),
    ({"normalizer": np.ones(2)}, ValueError, "normalizer must be a Python number or a 0-d array"),
    ({"normalizer": 0.0}, ValueError, "normalizer must be > 0"),
    ({"normalizer": 3.0, "reduction": "sum"}, ValueError, "normalizer.*reduction='mean'"),
    ({"sample_weight": np.ones(N - 1)}, ValueError, "sample_weight must have one weight per position"),
    ({"weight": np.ones(V - 1)}, ValueError, "weight must have shape"),
    ({"weight": W}, TypeError, "class weight.*linear_weight"),
    ({"options": "chunked"}, TypeError, "LinearCrossEntropyOptions"),
])
def test_errors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        xce.linear_cross_entropy(H, W, T, **kwargs)


def test_shift_needs_two_positions():
    with pytest.raises(ValueError, match="T >= 2"):
        xce.linear_cross_entropy(H[:, None, :], W, T[:, None], shift=True)


def test_probability_targets_refuse_ignore_index():
    with pytest.raises(ValueError, match="ignore_index cannot be given with probability targets"):
        xce.linear_cross_entropy(H, W, np.full((N, V), 1.0 / V), ignore_index=-100)


def test_migration_from_the_old_signature():
    with pytest.raises(TypeError, match=r"linear_cross_entropy\(input, linear_weight, target, linear_bias=<array>, "
                                        r"ignore_index=-1\)"):
        xce.linear_cross_entropy(H, W, T, B, -1)
    with pytest.raises(TypeError, match="keyword-only"):
        xce.value_and_grad(xce.linear_cross_entropy)(H, W, T, None, -100, "sum")
    with pytest.raises(TypeError, match="weight= now means the class weights"):
        xce.linear_cross_entropy(H, weight=W, target=T)
    want = xce.linear_cross_entropy(H, W, T, linear_bias=B)
    with pytest.warns(DeprecationWarning, match="hidden=.*input="):
        assert xce.linear_cross_entropy(hidden=H, linear_weight=W, target=T, linear_bias=B) == want
    with pytest.warns(DeprecationWarning, match="bias=.*linear_bias="):
        assert xce.linear_cross_entropy(H, W, T, bias=B) == want
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert xce.linear_cross_entropy(H, W, T, linear_bias=B, ignore_index=None) == want

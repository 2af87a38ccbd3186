"""cross_entropy's LLM-training arguments: ``softcap``, ``sample_weight``, ``normalizer`` and
``return_stats``, on every backend, values and gradients against float64 PyTorch.

The reference is the definition written out: logits capped by ``c·tanh(x/c)``, PyTorch's
per-position ``F.cross_entropy``, each position times its sample weight, the "mean" divided by
``Σ s_i w_{y_i}`` over kept positions (the z term by ``Σ s_i``) or by ``normalizer``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xce
from tests.conftest import assert_close_to, to_numpy

torch = pytest.importorskip("torch")
F = torch.nn.functional

IGNORE = -100


def reference(x: np.ndarray, t: np.ndarray, *, weight=None, sample_weight=None, softcap=None, z_loss=0.0,
              normalizer=None, reduction="mean", label_smoothing=0.0) -> dict[str, Any]:
    """Loss, d/dx, d/d sample_weight and the statistics in float64 PyTorch (classes on axis 1)."""
    X = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    S = torch.tensor(np.ones(x.shape[:1] + x.shape[2:]) if sample_weight is None else sample_weight,
                     dtype=torch.float64, requires_grad=True)
    y = X if softcap is None else softcap * torch.tanh(X / softcap)
    T = torch.tensor(t)
    W = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    per = F.cross_entropy(y, T, weight=W, reduction="none", label_smoothing=label_smoothing)
    lse = torch.logsumexp(y, 1)
    if T.dtype.is_floating_point:
        keep = torch.ones_like(lse, dtype=torch.bool)
        w_y = torch.ones_like(lse)
        hit = y.argmax(1) == T.argmax(1)
    else:
        keep = T != IGNORE
        safe = torch.where(keep, T, 0)
        w_y = torch.ones_like(lse) if W is None else W[safe]
        w_y = torch.where(keep, w_y, 0.0)
        hit = torch.take_along_dim(y, safe.unsqueeze(1), 1).squeeze(1) >= y.max(1).values
    z = torch.where(keep, z_loss * lse**2, 0.0)
    if reduction == "none":
        loss, z_stat = S * (per + z), S * z
    elif reduction == "sum":
        loss, z_stat = (S * (per + z)).sum(), (S * z).sum()
    elif normalizer is not None:
        loss, z_stat = (S * (per + z)).sum() / normalizer, (S * z).sum() / normalizer
    else:
        loss = (S * per).sum() / (S * w_y).sum() + (S * z).sum() / (S * keep).sum()
        z_stat = (S * z).sum() / (S * keep).sum()
    dx, ds = torch.autograd.grad(loss.sum(), (X, S))
    p = torch.softmax(y, 1)
    entropy = -(p * torch.log_softmax(y, 1)).sum(1)
    accuracy = (hit & keep).double().sum() / keep.double().sum()
    return {"loss": loss.detach().numpy(), "dx": dx.numpy(), "ds": ds.numpy(), "lse": lse.detach().numpy(),
            "z_loss": z_stat.detach().numpy(), "entropy": entropy.detach().numpy(), "accuracy": float(accuracy)}


def _case(kind: str, shape=(7, 5), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 4.0
    if kind == "index":
        t = rng.integers(0, shape[1], size=shape[:1] + shape[2:])
        t.reshape(-1)[1] = IGNORE
        t.reshape(-1)[4] = np.argmax(x.reshape(shape[0], shape[1], -1)[4 // max(1, int(np.prod(shape[2:]))), :, 0])
    else:
        t = rng.dirichlet(np.ones(shape[1]), size=shape[:1] + shape[2:])
        t = np.moveaxis(t, -1, 1)
    sw = rng.uniform(0.0, 2.0, size=shape[:1] + shape[2:])
    w = rng.uniform(0.5, 2.0, size=shape[1])
    return x, t, sw, w


CASES = {
    "softcap": dict(softcap=3.0),
    "sample_weight": dict(sample_weight=True),
    "weighted+z": dict(sample_weight=True, weight=True, z_loss=0.05),
    "softcap+weight+z": dict(softcap=2.0, weight=True, z_loss=0.1, label_smoothing=0.1),
    "normalizer": dict(normalizer=11.0, sample_weight=True, weight=True, z_loss=0.05),
    "sum": dict(reduction="sum", sample_weight=True, weight=True, z_loss=0.05),
    "none": dict(reduction="none", sample_weight=True, softcap=4.0, label_smoothing=0.2),
}


def _kwargs(case: dict, sw: np.ndarray, w: np.ndarray) -> dict:
    out = dict(case)
    out["sample_weight"] = sw if case.get("sample_weight") else None
    out["weight"] = w if case.get("weight") else None
    return out


def _on(backend, kw: dict, dtype) -> dict:
    return {k: (backend.asarray(v, dtype=dtype) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("name", list(CASES))
def test_values_match_the_written_out_definition(backend, kind, name):
    x, t, sw, w = _case(kind)
    kw = _kwargs(CASES[name], sw, w)
    if kind == "probability" and kw.get("weight") is not None and kw.get("label_smoothing"):
        kw["label_smoothing"] = 0.0
    ref = reference(x, t, **kw)
    dtype = backend.xp.float64
    target = backend.asarray(t) if kind == "index" else backend.asarray(t, dtype=dtype)
    out = xce.cross_entropy(backend.asarray(x, dtype=dtype), target, **_on(backend, kw, dtype))
    assert_close_to(out, ref["loss"], dtype=dtype, backend=backend)


@pytest.mark.parametrize("kind", ["index", "probability"])
def test_return_stats_from_the_same_pass(backend, kind):
    x, t, sw, _ = _case(kind, shape=(6, 4, 3))
    kw = dict(sample_weight=sw, softcap=3.0, z_loss=0.01)
    ref = reference(x, t, **kw)
    dtype = backend.xp.float64
    target = backend.asarray(t) if kind == "index" else backend.asarray(t, dtype=dtype)
    loss, stats = xce.cross_entropy(backend.asarray(x, dtype=dtype), target, **_on(backend, kw, dtype),
                                    return_stats=True)
    assert isinstance(stats, xce.LossStats)
    assert_close_to(loss, ref["loss"], dtype=dtype, backend=backend)
    assert_close_to(stats.lse, ref["lse"], dtype=dtype, backend=backend)
    assert_close_to(stats.entropy, ref["entropy"], dtype=dtype, backend=backend)
    assert_close_to(stats.z_loss, ref["z_loss"], dtype=dtype, backend=backend)
    assert float(to_numpy(stats.accuracy)) == pytest.approx(ref["accuracy"], abs=1e-12)


def test_stats_of_the_blocked_engine_with_class_chunks():
    """The engine's online moment (entropy) across class chunks and row blocks."""
    x, t, _, _ = _case("index", shape=(33, 50))
    x[3, :7] = -np.inf  # classes without mass: no NaN from 0·(-inf)
    ref = reference(np.where(np.isinf(x), -1e300, x), t)
    with xce.config(enabled=True, block_rows=8, class_chunk=16):
        loss, stats = xce.cross_entropy(x, t, return_stats=True)
    np.testing.assert_allclose(loss, ref["loss"], rtol=1e-12)
    np.testing.assert_allclose(stats.entropy, ref["entropy"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(stats.lse, ref["lse"], rtol=1e-12)
    assert float(stats.accuracy) == pytest.approx(ref["accuracy"])


@pytest.mark.parametrize("name", list(CASES))
def test_torch_gradients(name):
    """torch autograd, through F.cross_entropy delegation and through xce's own definitions,
    w.r.t. the logits and the sample weights."""
    x, t, sw, w = _case("index")
    kw = _kwargs(CASES[name], sw, w)
    ref = reference(x, t, **kw)
    for delegate in (True, False):
        X = torch.tensor(x, requires_grad=True)
        S = torch.tensor(sw, requires_grad=True)
        args = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        args["sample_weight"] = S if kw["sample_weight"] is not None else None
        with xce.config(delegate=delegate):
            loss = xce.cross_entropy(X, torch.tensor(t), **args)
        loss.sum().backward()
        np.testing.assert_allclose(X.grad.numpy(), ref["dx"], rtol=1e-10, atol=1e-12)
        if kw["sample_weight"] is not None:
            np.testing.assert_allclose(S.grad.numpy(), ref["ds"], rtol=1e-10, atol=1e-12)


def test_torch_gradients_of_a_large_input_through_the_analytic_backward():
    x, t, sw, _ = _case("index", shape=(300, 400))
    ref = reference(x, t, sample_weight=sw, softcap=5.0)
    X = torch.tensor(x, requires_grad=True)
    with xce.config(delegate=False):
        xce.cross_entropy(X, torch.tensor(t), sample_weight=torch.tensor(sw), softcap=5.0).backward()
    np.testing.assert_allclose(X.grad.numpy(), ref["dx"], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", list(CASES))
def test_value_and_grad_on_numpy(name):
    x, t, sw, w = _case("index")
    kw = _kwargs(CASES[name], sw, w)
    ref = reference(x, t, **kw)
    if kw.get("reduction") == "none":
        ct = np.linspace(0.5, 1.5, t.size).reshape(t.shape)
        g = xce.grad.cross_entropy_grad(x, t, **kw, cotangent=ct)
        X = torch.tensor(x, requires_grad=True)
        loss = xce.cross_entropy(x, t, **kw)
        np.testing.assert_allclose(loss, ref["loss"], rtol=1e-12)
        y = X if kw.get("softcap") is None else kw["softcap"] * torch.tanh(X / kw["softcap"])
        per = F.cross_entropy(y, torch.tensor(t), reduction="none", label_smoothing=kw.get("label_smoothing", 0.0))
        (torch.tensor(sw) * per * torch.tensor(ct)).sum().backward()
        np.testing.assert_allclose(g, X.grad.numpy(), rtol=1e-10, atol=1e-12)
        return
    loss, g = xce.value_and_grad(xce.cross_entropy)(x, t, **kw)
    np.testing.assert_allclose(loss, ref["loss"], rtol=1e-12)
    np.testing.assert_allclose(g, ref["dx"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_jax_grad_under_jit(name):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, t, sw, w = _case("index")
    kw = _kwargs(CASES[name], sw, w)
    ref = reference(x, t, **kw)
    args = {k: (jnp.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    sample_weight = args.pop("sample_weight")

    def f(x, s):
        return jnp.sum(xce.cross_entropy(x, jnp.asarray(t), sample_weight=s, **args))

    for delegate in (True, False):
        with xce.config(delegate=delegate):
            gx, gs = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x), sample_weight if sample_weight is not None
                                                           else jnp.ones(t.shape))
        np.testing.assert_allclose(np.asarray(gx), ref["dx"], rtol=1e-10, atol=1e-12)
        if sample_weight is not None:
            np.testing.assert_allclose(np.asarray(gs), ref["ds"], rtol=1e-10, atol=1e-12)


def test_traced_softcap_and_normalizer_under_jit_compile_once():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, t, sw, _ = _case("index")
    traces = []

    @jax.jit
    def f(x, cap, n):
        traces.append(1)
        return xce.cross_entropy(x, jnp.asarray(t), softcap=cap, normalizer=n, sample_weight=jnp.asarray(sw))

    for cap, n in [(3.0, 10.0), (5.0, 4.0)]:
        out = f(jnp.asarray(x), jnp.asarray(cap), jnp.asarray(n))
        ref = reference(x, t, softcap=cap, normalizer=n, sample_weight=sw)
        np.testing.assert_allclose(np.asarray(out), ref["loss"], rtol=1e-12)
    assert len(traces) == 1
    assert np.isnan(np.asarray(f(jnp.asarray(x), jnp.asarray(-1.0), jnp.asarray(3.0))))  # lazy contract


def test_softcap_is_applied_and_the_default_is_pytorch():
    """A soft cap accepted and not applied is the classic bug: the value must change, and
    without the new arguments the result is PyTorch's."""
    x, t, _, _ = _case("index")
    plain = xce.cross_entropy(x, t)
    capped = xce.cross_entropy(x, t, softcap=1.0)
    assert abs(float(plain) - float(capped)) > 1e-3
    assert float(plain) == pytest.approx(float(F.cross_entropy(torch.tensor(x), torch.tensor(t))), rel=1e-12)
    assert float(capped) == pytest.approx(float(reference(x, t, softcap=1.0)["loss"]), rel=1e-12)


def test_normalizer_array_is_not_read():
    """A 0-d tensor normalizer on a torch input: one division, no host read (works under vmap
    and compile), equal to the number."""
    x, t, _, _ = _case("index")
    X = torch.tensor(x)
    a = xce.cross_entropy(X, torch.tensor(t), normalizer=torch.tensor(9))
    b = xce.cross_entropy(X, torch.tensor(t), normalizer=9)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    T, n = torch.tensor(t), torch.tensor(9.0)
    compiled = torch.compile(lambda v: xce.cross_entropy(v, T, normalizer=n), backend="aot_eager", fullgraph=True)
    assert float(compiled(X)) == pytest.approx(float(b), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(softcap=0.0), ValueError, "softcap must be a finite float > 0"),
        (dict(softcap=-2.0), ValueError, "softcap"),
        (dict(normalizer=0), ValueError, "normalizer must be > 0"),
        (dict(normalizer=4.0, reduction="sum"), ValueError, "normalizer= replaces the denominator of reduction='mean'"),
        (dict(normalizer=np.ones(2)), ValueError, "normalizer must be a Python number or a 0-d array"),
        (dict(sample_weight=np.ones(3)), ValueError, r"sample_weight must have the per-position loss's shape \(7,\)"),
        (dict(sample_weight=np.ones(7, dtype=np.int64)), TypeError, "sample_weight"),
        (dict(return_stats=1), TypeError, "return_stats must be True or False"),
        (dict(sample_weight=torch.ones(7)), TypeError, "sample_weight is a torch array"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    x, t, _, _ = _case("index")
    with pytest.raises(error, match=match):
        xce.cross_entropy(x, t, **kwargs)
    if "sample_weight" in kwargs:  # the gradient checks it the same way
        with pytest.raises(error, match=match):
            xce.grad.cross_entropy_grad(x, t, **kwargs)


# --- linear_cross_entropy(..., return_stats=True): the same statistics from the blocked sweep ----


def _linear_case(seed=1):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(2, 9, 5))
    w = rng.normal(size=(13, 5)) * 2.0
    b = rng.normal(size=13)
    t = rng.integers(0, 13, size=(2, 9))
    t[0, 2] = t[1, 6] = IGNORE
    sw = rng.uniform(0.0, 2.0, size=(2, 9))
    return h, w, b, t, sw


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_return_stats_equal_cross_entropy_stats(backend, shift, reduction):
    """Against cross_entropy's statistics of the written-out logits (themselves checked against
    float64 PyTorch above); at ignored positions the sweep never forms logits (stats 0)."""
    h, w, b, t, sw = _linear_case()
    x = 3.0 * np.tanh((h @ w.T + b) / 3.0) / 0.8
    xs, ts, sws = (x[:, :-1], t[:, 1:], sw[:, 1:]) if shift else (x, t, sw)
    loss_ref, st_ref = xce.cross_entropy(xs, ts, axis=-1, z_loss=0.01, sample_weight=sws, reduction=reduction,
                                         return_stats=True)
    dtype = backend.xp.float64
    kw = dict(linear_bias=backend.asarray(b, dtype=dtype), sample_weight=backend.asarray(sw, dtype=dtype),
              softcap=3.0, temperature=0.8, z_loss=0.01, reduction=reduction, shift=shift, block_rows=5)
    loss, stats = xce.linear_cross_entropy(backend.asarray(h, dtype=dtype), backend.asarray(w, dtype=dtype),
                                           backend.asarray(t), return_stats=True, **kw)
    kept = ts != IGNORE
    assert_close_to(loss, loss_ref, dtype=dtype, backend=backend)
    assert_close_to(stats.z_loss, st_ref.z_loss, dtype=dtype, backend=backend)
    for name in ("lse", "entropy"):
        got = to_numpy(getattr(stats, name))
        assert got.shape == ts.shape
        np.testing.assert_allclose(got[kept], getattr(st_ref, name)[kept], rtol=1e-10)
    assert float(to_numpy(stats.accuracy)) == pytest.approx(float(st_ref.accuracy), abs=1e-12)


def test_linear_return_stats_under_torch_autograd():
    """The torch Function returns ``lse`` differentiable (tests/test_lse_gradient.py) and the
    other statistics as non-differentiable outputs; the loss's gradients are unchanged."""
    h, w, b, t, _ = _linear_case()
    H = torch.tensor(h, requires_grad=True)
    W = torch.tensor(w, requires_grad=True)
    loss, stats = xce.linear_cross_entropy(H, W, torch.tensor(t), linear_bias=torch.tensor(b), z_loss=0.01,
                                           return_stats=True)
    assert stats.lse.requires_grad and not stats.entropy.requires_grad and not stats.z_loss.requires_grad
    loss.backward()
    H2, W2 = torch.tensor(h, requires_grad=True), torch.tensor(w, requires_grad=True)
    xce.linear_cross_entropy(H2, W2, torch.tensor(t), linear_bias=torch.tensor(b), z_loss=0.01).backward()
    np.testing.assert_allclose(H.grad.numpy(), H2.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(W.grad.numpy(), W2.grad.numpy(), rtol=1e-12)
    x = h @ w.T + b
    _, ref = xce.cross_entropy(x, t, axis=-1, z_loss=0.01, return_stats=True)
    assert float(stats.accuracy) == pytest.approx(float(ref.accuracy))
    np.testing.assert_allclose(stats.lse.detach().numpy()[t != IGNORE], ref.lse[t != IGNORE], rtol=1e-12)


def test_jax_jvp_and_vmap_of_the_llm_arguments():
    """Forward mode equals the gradient's contraction, and vmap equals the loop (the custom JVP
    of the per-position loss composes with the weighting)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, t, sw, w = _case("index")
    tj = jnp.asarray(t)

    def f(v):
        return xce.cross_entropy(v, tj, jnp.asarray(w), softcap=2.5, sample_weight=jnp.asarray(sw), z_loss=0.05)

    direction = jnp.asarray(np.random.default_rng(3).normal(size=x.shape))
    _, tangent = jax.jit(lambda v, d: jax.jvp(f, (v,), (d,)))(jnp.asarray(x), direction)
    g = reference(x, t, weight=w, sample_weight=sw, softcap=2.5, z_loss=0.05)["dx"]
    assert float(tangent) == pytest.approx(float(np.sum(g * np.asarray(direction))), rel=1e-10)
    batch = jnp.stack([jnp.asarray(x), 2.0 * jnp.asarray(x)])
    looped = [reference(np.asarray(b), t, weight=w, sample_weight=sw, softcap=2.5, z_loss=0.05)["loss"] for b in batch]
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(batch)), looped, rtol=1e-10)


def test_cross_entropy_loss_object_holds_softcap_and_takes_per_batch_arrays():
    x, t, sw, w = _case("index")
    loss = xce.CrossEntropyLoss(weight=w, z_loss=0.05, softcap=3.0)
    assert "softcap=3.0" in repr(loss) and "softcap" not in repr(xce.CrossEntropyLoss())
    expected = xce.cross_entropy(x, t, w, z_loss=0.05, softcap=3.0, sample_weight=sw, normalizer=9.0)
    assert float(loss(x, t, sample_weight=sw, normalizer=9.0)) == pytest.approx(float(expected), rel=1e-14)
    value, stats = loss(x, t, return_stats=True)
    assert float(value) == pytest.approx(float(reference(x, t, weight=w, z_loss=0.05, softcap=3.0)["loss"]), rel=1e-12)
    assert isinstance(stats, xce.LossStats)
    with pytest.raises(ValueError, match="softcap must be a finite float > 0"):
        xce.CrossEntropyLoss(softcap=0.0)

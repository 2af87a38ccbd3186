"""linear_cross_entropy on JAX arrays is a scan over vocabulary chunks: values, gradients and every
JAX transform equal the unfused float64 formula, and under ``jax.jit`` XLA's temporaries stay a
small part of the logits (the formula's are all of them)."""

from __future__ import annotations

import numpy as np
import pytest

import xce

jax = pytest.importorskip("jax")
jnp = jax.numpy

RNG = np.random.default_rng(21)
N, D, V = 11, 4, 37
H = RNG.normal(size=(N, D))
W = RNG.normal(size=(V, D))
B = RNG.normal(size=V)
T = RNG.integers(0, V, size=N)
T[[3, 8]] = 5
T[6] = -100
CW = RNG.uniform(0.5, 2.0, size=V)
SW = RNG.uniform(0.0, 2.0, size=N)
COT = RNG.normal(size=N)
H3 = RNG.normal(size=(2, 5, D))
T3 = RNG.integers(0, V, size=(2, 5))
T3[1, 2] = -100
T_II = np.where(T == -100, 1, T)  # for ignore_index=5 (T holds two 5s)
# Chunks of 8 classes (a scan of four, then the last 5) and of 12 (three, then the last 1).
CHUNKS = (8, 12)


def formula(h, w, t, *, bias=None, weight=None, reduction="mean", ignore_index=-100, label_smoothing=0.0,
            z_loss=0.0, softcap=None, temperature=1.0, sample_weight=None, normalizer=None, shift=False,
            stats=False):
    """The definition on the whole logits, in plain jax.numpy."""
    x = h @ w.T + (0.0 if bias is None else bias)
    sw = sample_weight
    if shift:
        x, t, sw = x[..., :-1, :], t[..., 1:], None if sw is None else sw[..., 1:]
    if softcap is not None:
        x = softcap * jnp.tanh(x / softcap)
    x = x / temperature
    lse = jax.nn.logsumexp(x, axis=-1)
    logp = x - lse[..., None]
    kept = t != ignore_index
    ts = jnp.where(kept, t, 0)
    wv = jnp.ones(w.shape[0], dtype=x.dtype) if weight is None else weight
    nll = -jnp.take_along_axis(logp, ts[..., None], axis=-1)[..., 0]
    ce = (1 - label_smoothing) * wv[ts] * nll - label_smoothing / w.shape[0] * (wv * logp).sum(-1)
    ce, zt = jnp.where(kept, ce, 0.0), jnp.where(kept, z_loss * lse**2, 0.0)
    s = jnp.ones_like(ce) if sw is None else sw

    def reduce(num, den):
        if reduction == "none":
            return s * num
        if reduction == "sum":
            return (s * num).sum()
        return (s * num).sum() / (den if normalizer is None else normalizer)

    out = reduce(ce, (s * wv[ts] * kept).sum()) + reduce(zt, (s * kept).sum())
    if not stats:
        return out
    hit = jnp.take_along_axis(x, ts[..., None], axis=-1)[..., 0] >= x.max(-1)
    return out, xce.LossStats(lse, reduce(zt, (s * kept).sum()), (hit & kept).sum() / kept.sum(),
                              -(jnp.exp(logp) * logp).sum(-1))


CASES = [
    ("plain", {}),
    ("class-weight", {"weight": CW}),
    ("smoothing+z", {"label_smoothing": 0.1, "z_loss": 0.05}),
    ("weight+smoothing+z", {"weight": CW, "label_smoothing": 0.2, "z_loss": 0.05}),
    ("softcap+temperature+all", {"softcap": 1.5, "temperature": 0.7, "label_smoothing": 0.2, "weight": CW,
                                 "z_loss": 0.05}),
    ("sample_weight+weight+z", {"sample_weight": SW, "weight": CW, "z_loss": 0.1}),
    ("sum+smoothing", {"reduction": "sum", "label_smoothing": 0.1, "sample_weight": SW}),
    ("none+softcap", {"reduction": "none", "softcap": 3.0, "label_smoothing": 0.1, "z_loss": 0.02}),
    ("normalizer", {"normalizer": 7.0, "z_loss": 0.05, "weight": CW}),
    ("ignore_index", {"ignore_index": 5, "weight": CW, "label_smoothing": 0.1}),
]


def _on(kwargs):
    return {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


def _weighted_sum(out, reduction):
    return (out * jnp.asarray(COT)).sum() if reduction == "none" else out


# Half of the cases with a bias, half without.
CASES = [(name, kwargs, i % 2 == 1) for i, (name, kwargs) in enumerate(CASES)]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("name", "kwargs", "bias"), CASES, ids=[c[0] for c in CASES])
def test_jit_value_and_grad_equal_the_formula(name, kwargs, bias, chunk):
    reduction = kwargs.get("reduction", "mean")
    t = jnp.asarray(T_II if "ignore_index" in kwargs else T)
    args = (jnp.asarray(H), jnp.asarray(W), jnp.asarray(B) if bias else None)

    def loss(fn):
        def f(h, w, b):
            if fn is formula:
                out = formula(h, w, t, bias=b, **_on(kwargs))
            else:
                out = xce.linear_cross_entropy(h, w, t, linear_bias=b, **_on(kwargs))
            return _weighted_sum(out, reduction)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2) if bias else (0, 1)))

    with xce.config(class_chunk=chunk):
        got = loss(xce.linear_cross_entropy)(*args)
    want = loss(formula)(*args)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_eager_values_and_the_statistics_equal_the_formula(reduction):
    kwargs = {"reduction": reduction, "weight": CW, "z_loss": 0.05, "softcap": 2.0, "label_smoothing": 0.1,
              "sample_weight": SW}
    with xce.config(class_chunk=8):
        loss, stats = xce.linear_cross_entropy(jnp.asarray(H), jnp.asarray(W), jnp.asarray(T),
                                               linear_bias=jnp.asarray(B), return_stats=True, **_on(kwargs))
    want, want_stats = formula(jnp.asarray(H), jnp.asarray(W), jnp.asarray(T), bias=jnp.asarray(B), stats=True,
                               **_on(kwargs))
    np.testing.assert_allclose(loss, want, rtol=1e-12, atol=1e-12)
    for field in xce.LossStats._fields:
        np.testing.assert_allclose(getattr(stats, field), getattr(want_stats, field), rtol=1e-12, atol=1e-12,
                                   err_msg=field)


@pytest.mark.parametrize("kwargs", [{}, {"reduction": "none", "sample_weight": SW[:10].reshape(2, 5)}])
def test_shift_equals_the_formula(kwargs):
    kw = _on(kwargs)

    def f(h, w):
        return _weighted_sum(xce.linear_cross_entropy(h, w, jnp.asarray(T3), shift=True, **kw), "mean")

    def g(h, w):
        return _weighted_sum(formula(h, w, jnp.asarray(T3), shift=True, **kw), "mean")

    with xce.config(class_chunk=8):
        got = jax.jit(jax.value_and_grad(lambda h, w: f(h, w).sum(), argnums=(0, 1)))(jnp.asarray(H3), jnp.asarray(W))
    want = jax.value_and_grad(lambda h, w: g(h, w).sum(), argnums=(0, 1))(jnp.asarray(H3), jnp.asarray(W))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


KW = {"weight": CW, "label_smoothing": 0.1, "z_loss": 0.05, "softcap": 2.0, "temperature": 0.8}


def _pair(**extra):
    def ours(h, w, b):
        return xce.linear_cross_entropy(h, w, jnp.asarray(T), linear_bias=b, **_on({**KW, **extra}))

    def theirs(h, w, b):
        return formula(h, w, jnp.asarray(T), bias=b, **_on({**KW, **extra}))

    return ours, theirs


def test_jvp_and_hessian_vector_products_equal_the_formula():
    ours, theirs = _pair()
    primals = (jnp.asarray(H), jnp.asarray(W), jnp.asarray(B))
    tangents = tuple(jnp.asarray(RNG.normal(size=p.shape)) for p in primals)
    with xce.config(class_chunk=8):
        got = jax.jit(lambda p, t: jax.jvp(ours, p, t))(primals, tangents)
        hvp = jax.jit(lambda p, t: jax.jvp(jax.grad(ours, argnums=(0, 1, 2)), p, t)[1])(primals, tangents)
        jac = jax.jacfwd(ours, argnums=0)(*primals)
    want = jax.jvp(theirs, primals, tangents)
    want_hvp = jax.jvp(jax.grad(theirs, argnums=(0, 1, 2)), primals, tangents)[1]
    for a, b in zip(jax.tree.leaves((got, hvp, jac)),
                    jax.tree.leaves((want, want_hvp, jax.jacfwd(theirs, argnums=0)(*primals)))):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_vmap_of_the_gradient_equals_the_formula_per_item():
    ours, theirs = _pair(reduction="sum")
    hs = jnp.asarray(RNG.normal(size=(3, N, D)))
    with xce.config(class_chunk=8):
        got = jax.jit(jax.vmap(jax.value_and_grad(ours, argnums=(0, 1)), in_axes=(0, None, None)))(
            hs, jnp.asarray(W), jnp.asarray(B))
    want = jax.vmap(jax.value_and_grad(theirs, argnums=(0, 1)), in_axes=(0, None, None))(hs, jnp.asarray(W),
                                                                                          jnp.asarray(B))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_class_and_sample_weight_gradients_equal_the_formula():
    def f(fn, cw, sw):
        if fn is formula:
            return formula(jnp.asarray(H), jnp.asarray(W), jnp.asarray(T), weight=cw, sample_weight=sw,
                           label_smoothing=0.1, z_loss=0.05)
        return xce.linear_cross_entropy(jnp.asarray(H), jnp.asarray(W), jnp.asarray(T), weight=cw, sample_weight=sw,
                                        label_smoothing=0.1, z_loss=0.05)

    with xce.config(class_chunk=8):
        got = jax.jit(jax.grad(lambda cw, sw: f(None, cw, sw), argnums=(0, 1)))(jnp.asarray(CW), jnp.asarray(SW))
    want = jax.grad(lambda cw, sw: f(formula, cw, sw), argnums=(0, 1))(jnp.asarray(CW), jnp.asarray(SW))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_out_of_range_target_is_nan_under_jit():
    t = jnp.asarray(T).at[0].set(V)
    loss = jax.jit(lambda h: xce.linear_cross_entropy(h, jnp.asarray(W), t))(jnp.asarray(H))
    assert np.isnan(loss)


def _temp(f, *args):
    """XLA's temporary bytes for ``jit(f)`` at the argument shapes (compiled, never run)."""
    return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.1, "softcap": 30.0, "z_loss": 1e-4}])
def test_jit_temporaries_are_a_small_part_of_the_logits(kwargs):
    n, d, v = 2048, 256, 16000
    h, w = jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((v, d), jnp.float32)
    t = jax.ShapeDtypeStruct((n,), jnp.int32)
    logits = n * v * 4

    def ours(h, w, t):
        return xce.linear_cross_entropy(h, w, t, **kwargs)

    def unfused(h, w, t):
        return xce.cross_entropy(h @ w.T, t, label_smoothing=kwargs.get("label_smoothing", 0.0),
                                 z_loss=kwargs.get("z_loss", 0.0))

    grad = jax.grad(ours, argnums=(0, 1))
    assert _temp(unfused, h, w, t) >= logits
    assert _temp(jax.grad(unfused, argnums=(0, 1)), h, w, t) >= logits
    assert _temp(ours, h, w, t) <= 0.15 * logits
    assert _temp(grad, h, w, t) <= 0.15 * logits

"""``sample_weight=`` on ``nll_loss``, ``softmax_focal_loss`` and ``poly1_cross_entropy`` (issue 14,
item 5): cross entropy's semantics on every backend, values and gradients against the formula.

The reference is the formula written out in NumPy float64 (classes on axis 1): the per-position
loss :math:`l_i = w_{y_i} f(\\ell_{i,y_i})` (0 at ignored positions), times the sample weight
:math:`s_i`; ``"mean"`` divides :math:`\\sum_i s_i l_i` by :math:`\\sum_i s_i w_{y_i}` over kept
positions. Its derivatives: :math:`\\partial l_i/\\partial x_i = w_{y_i} f'(\\ell_y)(e_y - p)` (nll:
:math:`-w_{y_i} e_{y_i}`), and w.r.t. :math:`s_i` the quotient rule on that mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xce

from conftest import assert_close_to, dtype_name, to_numpy
from reference import rounded

lazy_xp_modules = [xce]

IGNORE = -100
LOSSES = {"nll_loss": {}, "softmax_focal_loss": {"gamma": 1.5}, "poly1_cross_entropy": {"epsilon": 0.7}}
REDUCTIONS = ["mean", "sum", "none"]


def _position_loss(name: str, xl: np.ndarray, onehot: np.ndarray, kw: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(f(ℓ_y), ∂f/∂x)`` per position, classes last."""
    if name == "nll_loss":
        return -(xl * onehot).sum(-1), -onehot
    m = xl.max(-1, keepdims=True)
    logp = xl - (m + np.log(np.exp(xl - m).sum(-1, keepdims=True)))
    ell = (logp * onehot).sum(-1)
    p_y = np.exp(ell)
    if name == "softmax_focal_loss":
        g, u = kw["gamma"], 1.0 - p_y
        f, fp = -(u**g) * ell, -(u**g) + g * p_y * ell * u ** (g - 1.0)
    else:
        f, fp = -ell + kw["epsilon"] * (1.0 - p_y), -1.0 - kw["epsilon"] * p_y
    return f, fp[..., None] * (onehot - np.exp(logp))


def _probability_loss(xl: np.ndarray, y: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Poly-1 with probability targets: ``-Σ y ℓ + ε(1 - Σ y p)`` and its derivative, classes last."""
    m = xl.max(-1, keepdims=True)
    logp = xl - (m + np.log(np.exp(xl - m).sum(-1, keepdims=True)))
    p = np.exp(logp)
    mass = (y * p).sum(-1, keepdims=True)
    return -(y * logp).sum(-1) + eps * (1.0 - mass[..., 0]), y.sum(-1, keepdims=True) * p - y - eps * p * (y - mass)


def reference(name: str, x: np.ndarray, t: np.ndarray, *, weight=None, sample_weight=None, reduction="mean",
              cotangent=None, keep=None, **kw: Any) -> dict[str, np.ndarray]:
    """Loss, d/dx and d/d sample_weight of the formula, NumPy float64, classes on axis 1."""
    xl = np.moveaxis(np.asarray(x, dtype=np.float64), 1, -1)
    if np.issubdtype(t.dtype, np.floating):  # poly-1 with probability targets; ``keep``: where=
        kept = np.ones(xl.shape[:-1], dtype=bool) if keep is None else keep
        f, df = _probability_loss(xl, np.moveaxis(t, 1, -1), kw["epsilon"])
        w_y = kept.astype(np.float64)
    else:
        kept = t != IGNORE
        safe = np.where(kept, t, 0)
        w_y = np.where(kept, (np.ones(xl.shape[-1]) if weight is None else weight)[safe], 0.0)
        f, df = _position_loss(name, xl, np.eye(xl.shape[-1])[safe], kw)
    per, dper = np.where(kept, w_y * f, 0.0), np.where(kept[..., None], w_y[..., None] * df, 0.0)
    s = np.ones(per.shape) if sample_weight is None else sample_weight
    num, den = (s * per).sum(), (s * w_y).sum()
    if reduction == "none":
        ct = np.ones(per.shape) if cotangent is None else cotangent
        loss, scale, ds = s * per, ct * s, ct * per
    elif reduction == "sum":
        loss, scale, ds = num, s, per
    else:
        loss, scale, ds = num / den, s / den, per / den - num / den**2 * w_y
    return {"loss": loss, "dx": np.moveaxis(scale[..., None] * dper, -1, 1), "ds": ds}


def _case(shape=(7, 5), seed=0):
    """Logits, index targets (two ignored), sample weights (one 0), class weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * 2.0
    positions = shape[:1] + shape[2:]
    t = rng.integers(0, shape[1], size=positions)
    t.reshape(-1)[1] = t.reshape(-1)[4] = IGNORE
    sw = rng.uniform(0.1, 2.0, size=positions)
    sw.reshape(-1)[2] = 0.0
    return x, t, sw, rng.uniform(0.5, 2.0, size=shape[1])


def _fn(name: str) -> Any:
    return getattr(xce, name)


# --- values on every backend ------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_values_with_class_weights_and_ignore_index(backend, name, reduction):
    x, t, sw, w = _case()
    kw = LOSSES[name]
    expected = reference(name, x, t, weight=w, sample_weight=sw, reduction=reduction, **kw)["loss"]
    f64 = backend.xp.float64
    out = _fn(name)(backend.asarray(x, f64), backend.asarray(t), weight=backend.asarray(w, f64),
                    reduction=reduction, sample_weight=backend.asarray(sw, f64), **kw)
    assert_close_to(out, expected, dtype=f64, backend=backend)


@pytest.mark.parametrize("name", list(LOSSES))
def test_unweighted_mean_of_spatial_positions_in_each_dtype(backend, dtype, name):
    """(N, C, d) inputs, no class weight: ``"mean"`` divides by Σ s_i over kept positions; half
    precision computes in float32 (the reference sees the rounded inputs)."""
    x, t, sw, _ = _case(shape=(3, 4, 2), seed=1)
    x, sw = rounded(x, dtype_name(dtype)), rounded(sw, dtype_name(dtype))
    kw = LOSSES[name]
    expected = reference(name, x, t, sample_weight=sw, **kw)["loss"]
    out = _fn(name)(backend.asarray(x, dtype), backend.asarray(t), sample_weight=backend.asarray(sw, dtype), **kw)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poly1_probability_targets_with_where(backend, reduction):
    """Probability targets: the sample weight has the per-position shape; ``"mean"`` over Σ s_i
    at the positions ``where`` keeps."""
    x, _, sw, _ = _case(seed=2)
    rng = np.random.default_rng(3)
    q = rng.dirichlet(np.ones(x.shape[1]), size=x.shape[0])
    keep = np.ones(x.shape[0], dtype=bool)
    keep[[0, 5]] = False
    expected = reference("poly1_cross_entropy", x, q, sample_weight=sw, reduction=reduction, keep=keep,
                         epsilon=0.7)["loss"]
    f64 = backend.xp.float64
    out = xce.poly1_cross_entropy(backend.asarray(x, f64), backend.asarray(q, f64), epsilon=0.7, reduction=reduction,
                                  where=backend.asarray(keep), sample_weight=backend.asarray(sw, f64))
    assert_close_to(out, expected, dtype=f64, backend=backend)


def test_unit_sample_weights_give_the_default_and_none_is_the_default():
    x, t, _, w = _case()
    for name, kw in LOSSES.items():
        for reduction in REDUCTIONS:
            plain = _fn(name)(x, t, weight=w, reduction=reduction, **kw)
            np.testing.assert_array_equal(_fn(name)(x, t, weight=w, reduction=reduction, sample_weight=None, **kw),
                                          plain)
            np.testing.assert_allclose(_fn(name)(x, t, weight=w, reduction=reduction, sample_weight=np.ones(t.shape),
                                                 **kw), plain, rtol=1e-14, atol=1e-15)


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOSSES))
def test_analytic_gradient_on_every_backend(backend, name):
    """``xce.grad.<loss>_grad`` with ``sample_weight`` (the Array API rule value_and_grad uses)."""
    x, t, sw, w = _case(seed=4)
    kw = LOSSES[name]
    expected = reference(name, x, t, weight=w, sample_weight=sw, **kw)["dx"]
    f64 = backend.xp.float64
    g = getattr(xce.grad, f"{name}_grad")(backend.asarray(x, f64), backend.asarray(t), weight=backend.asarray(w, f64),
                                          sample_weight=backend.asarray(sw, f64), **kw)
    assert_close_to(g, expected, dtype=f64, backend=backend)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", [*LOSSES, "poly1-probabilities"])
def test_value_and_grad_on_numpy(name, reduction):
    x, t, sw, w = _case(seed=5)
    kw = dict(weight=w)
    if name == "poly1-probabilities":
        name, t, kw = "poly1_cross_entropy", np.random.default_rng(6).dirichlet(np.ones(5), size=7), {}
    kw.update(LOSSES[name], reduction=reduction, sample_weight=sw)
    ct = np.linspace(0.5, 1.5, t.shape[0]) if reduction == "none" else np.asarray(2.0)
    ref = reference(name, x, t, cotangent=ct if reduction == "none" else None, **kw)
    loss, g = xce.value_and_grad(_fn(name))(x, t, cotangent=ct, **kw)
    np.testing.assert_allclose(loss, ref["loss"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g, ref["dx"] * (1.0 if reduction == "none" else 2.0), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_torch_autograd_wrt_input_and_sample_weight(name, reduction):
    torch = pytest.importorskip("torch")
    x, t, sw, w = _case(shape=(4, 5, 3), seed=7)
    kw = LOSSES[name]
    ref = reference(name, x, t, weight=w, sample_weight=sw, reduction=reduction, **kw)
    X, S = torch.tensor(x, requires_grad=True), torch.tensor(sw, requires_grad=True)
    loss = _fn(name)(X, torch.tensor(t), weight=torch.tensor(w), reduction=reduction, sample_weight=S, **kw)
    np.testing.assert_allclose(loss.detach().numpy(), ref["loss"], rtol=1e-12, atol=1e-14)
    loss.sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), ref["dx"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(S.grad.numpy(), ref["ds"], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_jax_grad_under_jit_wrt_input_and_sample_weight(name, reduction):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, t, sw, w = _case(seed=8)
    kw = LOSSES[name]
    ref = reference(name, x, t, weight=w, sample_weight=sw, reduction=reduction, **kw)

    def f(v, s):
        return _fn(name)(v, jnp.asarray(t), weight=jnp.asarray(w), reduction=reduction, sample_weight=s, **kw)

    gx, gs = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(sw))
    np.testing.assert_allclose(np.asarray(gx), ref["dx"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.asarray(gs), ref["ds"], rtol=1e-10, atol=1e-13)


# --- loss objects and errors -----------------------------------------------------------------


@pytest.mark.parametrize(("cls", "config", "name"), [
    (xce.NLLLoss, {"ignore_index": IGNORE}, "nll_loss"),
    (xce.SoftmaxFocalLoss, {"gamma": 1.5}, "softmax_focal_loss"),
])
def test_loss_objects_take_sample_weight_per_call(cls, config, name):
    x, t, sw, w = _case(seed=9)
    loss = cls(weight=w, reduction="sum", **config)
    expected = reference(name, x, t, weight=w, sample_weight=sw, reduction="sum", **LOSSES[name])["loss"]
    np.testing.assert_allclose(loss(x, t, sample_weight=sw), expected, rtol=1e-12)
    assert float(loss(x, t)) == float(_fn(name)(x, t, weight=w, reduction="sum", **config))


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("gradient", [False, True])
def test_bad_sample_weights_name_the_argument_and_the_shape(name, gradient):
    x, t, _, _ = _case(shape=(7, 5, 2))
    fn = getattr(xce.grad, f"{name}_grad") if gradient else _fn(name)
    with pytest.raises(ValueError, match=r"sample_weight must have the per-position loss's shape \(7, 2\).*"
                                         r"got shape \(7,\)"):
        fn(x, t, sample_weight=np.ones(7))
    with pytest.raises(TypeError, match="sample_weight must be a real floating-point array; got dtype int64"):
        fn(x, t, sample_weight=np.ones((7, 2), dtype=np.int64))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"cannot be mixed \(.*sample_weight is a torch array\)"):
        fn(x, t, sample_weight=torch.ones(7, 2, dtype=torch.float64))


def test_poly1_probability_targets_check_the_per_position_shape():
    q = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"sample_weight must have the per-position loss's shape \(4,\)"):
        xce.poly1_cross_entropy(np.zeros((4, 3)), q, sample_weight=np.ones((4, 3)))
    assert to_numpy(xce.poly1_cross_entropy(np.zeros((4, 3)), q, sample_weight=np.zeros(4), reduction="sum")) == 0.0

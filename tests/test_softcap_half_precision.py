"""Soft-capped losses in half precision are computed in float32, the soft cap included.

xce's rule for float16 / bfloat16 input is "computed in float32, returned in the input dtype",
so a half-precision result must be the float32 computation on the upcast input, rounded once:
within half an ulp (of the half dtype) of it. Capping in the input dtype first (``c·tanh(x/c)``
rounded to bfloat16, 0.06 at ``c = 30``, before any softmax) broke that by several ulps in the
values and by up to ~10^4 ulps in the gradient (label smoothing: where ``p ≈ ε/C``).

Checked for ``cross_entropy``, ``kl_div_with_logits`` and ``generalized_jsd``: values and the
analytic gradients (``xce.grad``) on every backend with a half dtype, autodiff on PyTorch (its
kernels and ``xce.config(delegate=False)``) and JAX (``jit(grad)``, both settings). The float32
computation itself is checked against a float64 reference written from the definitions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xce
from xce.losses.distillation import generalized_jsd_grad, kl_div_with_logits_grad

from conftest import assert_close_to, dtype_name, to_numpy
from reference import rounded
from test_distillation import ref_grad, ref_loss

IGNORE = -100
CAP = 30.0
HALF = ["float16", "bfloat16"]
# (label_smoothing, class weights, reduction)
CE_CASES = [(0.0, False, "none"), (0.1, False, "none"), (0.0, True, "mean"), (0.1, True, "none"), (0.1, True, "sum")]
# (loss, beta, temperature, reduction): forward and reverse KL, the JSD.
DISTILLATION_CASES = [("kl", 0.0, 1.0, "none"), ("kl", 1.0, 2.0, "mean"), ("jsd", 0.5, 1.0, "none"),
                      ("jsd", 0.3, 2.0, "batchmean")]


def half_ulp(v: np.ndarray, name: str) -> np.ndarray:
    """Half the spacing of ``name``'s values at ``v`` (subnormals included)."""
    mantissa, min_exponent = {"bfloat16": (7, -126), "float16": (10, -14)}[name]
    exponent = np.floor(np.log2(np.maximum(np.abs(v), 2.0**min_exponent)))
    return 2.0 ** (exponent - mantissa) / 2.0


def assert_rounded_from(actual, float32_result, name: str) -> None:
    """``actual`` (half precision) is ``float32_result`` rounded: within half an ulp of it."""
    a = to_numpy(actual).astype(np.float64)
    f = to_numpy(float32_result).astype(np.float64)
    assert a.shape == f.shape
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(f))
    ulps = np.abs(a - f) / (2.0 * half_ulp(f, name))
    assert ulps.max() <= 0.5, f"{name} result is {ulps.max():.3g} ulps from the float32 computation (at most 0.5)"


def assert_float32_close(actual, expected) -> None:
    """The float32 computation against float64: a few float32 ulps of the largest entry."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 1.0
    np.testing.assert_allclose(to_numpy(actual).astype(np.float64), expected, rtol=1e-5, atol=1e-5 * scale)


def _ce_data(name: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rounded(rng.normal(size=(24, 500)) * 4.0, name)
    t = rng.integers(0, 500, size=24)
    t[3] = IGNORE
    w = rounded(rng.uniform(0.5, 2.0, size=500), name)
    return x, t, w


def _ce_reference(x, t, w, eps, reduction):
    """Loss and d Σloss / dx in float64 PyTorch, written out: ``F.cross_entropy`` of ``c·tanh(x/c)``."""
    X = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    W = None if w is None else torch.tensor(w, dtype=torch.float64)
    loss = F.cross_entropy(CAP * torch.tanh(X / CAP), torch.tensor(t), weight=W, ignore_index=IGNORE,
                           reduction=reduction, label_smoothing=eps)
    loss.sum().backward()
    return loss.detach().numpy(), X.grad.numpy()


@pytest.mark.parametrize("dtype", HALF, indirect=True)
@pytest.mark.parametrize(("eps", "weighted", "reduction"), CE_CASES)
def test_cross_entropy_value_and_gradient_rule(backend, dtype, eps, weighted, reduction):
    """Value and the analytic gradient (``xce.grad``), half precision against float32 against float64."""
    xp, name = backend.xp, dtype_name(dtype)
    x, t, w = _ce_data(name)
    w = w if weighted else None
    ref_loss64, ref_dx64 = _ce_reference(x, t, w, eps, reduction)
    target = backend.asarray(t, xp.int64)
    results = {}
    for dt in (dtype, xp.float32):
        kw = dict(weight=None if w is None else backend.asarray(w, dt), label_smoothing=eps, reduction=reduction,
                  softcap=CAP)
        X = backend.asarray(x, dt)
        results[dt] = (xce.cross_entropy(X, target, **kw), xce.grad.cross_entropy_grad(X, target, **kw))
    (loss, dx), (loss32, dx32) = results[dtype], results[xp.float32]
    assert_close_to(loss32, ref_loss64, dtype=xp.float32, backend=backend)
    assert_close_to(dx32, ref_dx64, dtype=xp.float32, backend=backend)
    assert loss.dtype == dtype and dx.dtype == dtype
    assert_rounded_from(loss, loss32, name)
    assert_rounded_from(dx, dx32, name)


def _torch_ce(x, t, w, eps, reduction, dtype):
    X = torch.tensor(x, dtype=dtype, requires_grad=True)
    W = None if w is None else torch.tensor(w, dtype=dtype)
    out = xce.cross_entropy(X, torch.tensor(t), W, reduction=reduction, label_smoothing=eps, softcap=CAP)
    out.backward(torch.ones_like(out))
    return out.detach(), X.grad


@pytest.mark.parametrize("delegate", [True, False])
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize(("eps", "weighted", "reduction"), CE_CASES)
def test_cross_entropy_torch_autograd(name, eps, weighted, reduction, delegate):
    """``.backward()`` through PyTorch's kernels and through xce's own definitions."""
    x, t, w = _ce_data(name, seed=1)
    w = w if weighted else None
    dtype = getattr(torch, name)
    with xce.config(delegate=delegate):
        loss, dx = _torch_ce(x, t, w, eps, reduction, dtype)
        loss32, dx32 = _torch_ce(x, t, w, eps, reduction, torch.float32)
    ref_loss64, ref_dx64 = _ce_reference(x, t, w, eps, reduction)
    assert_float32_close(loss32, ref_loss64)
    assert_float32_close(dx32, ref_dx64)
    assert loss.dtype == dx.dtype == dtype
    assert_rounded_from(loss, loss32, name)
    assert_rounded_from(dx, dx32, name)


@pytest.mark.parametrize("delegate", [True, False])
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize(("eps", "weighted", "reduction"), CE_CASES)
def test_cross_entropy_jax_grad(name, eps, weighted, reduction, delegate):
    """``jax.jit(jax.grad)`` in float16 and bfloat16 (both CPU dtypes of JAX), with the custom
    derivative rule and with JAX's autodiff of the definition."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, t, w = _ce_data(name, seed=2)
    w = w if weighted else None

    def run(dt):
        W = None if w is None else jnp.asarray(w, dtype=dt)

        def f(v):
            return xce.cross_entropy(v, jnp.asarray(t), W, reduction=reduction, label_smoothing=eps, softcap=CAP)

        X = jnp.asarray(x, dtype=dt)
        return jax.jit(f)(X), jax.jit(jax.grad(lambda v: jnp.sum(f(v).astype(jnp.float32))))(X)

    with xce.config(delegate=delegate):
        loss, dx = run(getattr(jnp, name))
        loss32, dx32 = run(jnp.float32)
    ref_loss64, ref_dx64 = _ce_reference(x, t, w, eps, reduction)
    assert_float32_close(loss32, ref_loss64)
    assert_float32_close(dx32, ref_dx64)
    assert loss.dtype == dx.dtype == getattr(jnp, name)
    assert_rounded_from(loss, loss32, name)
    assert_rounded_from(dx, dx32, name)


# --- the distillation losses -------------------------------------------------------------------


def _distillation_data(name: str, seed: int = 3):
    rng = np.random.default_rng(seed)
    s = rounded(rng.normal(size=(16, 400)) * 4.0, name)
    t = rounded(rng.normal(size=(16, 400)) * 4.0, name)
    target = rng.integers(0, 400, size=16)
    target[::5] = IGNORE
    return s, t, target


def _distillation(loss, beta, grad=False):
    if loss == "jsd":
        fn = generalized_jsd_grad if grad else xce.generalized_jsd
        return lambda *a, **k: fn(*a, beta=beta, **k)
    fn = kl_div_with_logits_grad if grad else xce.kl_div_with_logits
    return lambda *a, **k: fn(*a, direction="forward" if beta == 0.0 else "reverse", **k)


@pytest.mark.parametrize("dtype", HALF, indirect=True)
@pytest.mark.parametrize(("loss", "beta", "temperature", "reduction"), DISTILLATION_CASES)
def test_distillation_value_and_gradient_rule(backend, dtype, loss, beta, temperature, reduction):
    xp, name = backend.xp, dtype_name(dtype)
    s, t, target = _distillation_data(name)
    kw = dict(temperature=temperature, reduction=reduction, softcap=CAP)
    y = backend.asarray(target, xp.int64)
    results = {}
    for dt in (dtype, xp.float32):
        S, T = backend.asarray(s, dt), backend.asarray(t, dt)
        results[dt] = (_distillation(loss, beta)(S, T, y, **kw), _distillation(loss, beta, grad=True)(S, T, y, **kw))
    (value, ds), (value32, ds32) = results[dtype], results[xp.float32]
    ref = dict(beta=beta, temperature=temperature, softcap=CAP, reduction=reduction)
    assert_close_to(value32, ref_loss(s, t, target, **ref).numpy(), dtype=xp.float32, backend=backend)
    assert_close_to(ds32, ref_grad(s, t, target, **ref)[0], dtype=xp.float32, backend=backend)
    assert value.dtype == dtype and ds.dtype == dtype
    assert_rounded_from(value, value32, name)
    assert_rounded_from(ds, ds32, name)


@pytest.mark.parametrize("delegate", [True, False])
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize(("loss", "beta", "temperature", "reduction"), DISTILLATION_CASES)
def test_distillation_torch_autograd(name, loss, beta, temperature, reduction, delegate):
    """Both logits' gradients (the student's and the teacher's) through ``.backward()``."""
    s, t, target = _distillation_data(name, seed=4)

    def run(dtype):
        S = torch.tensor(s, dtype=dtype, requires_grad=True)
        T = torch.tensor(t, dtype=dtype, requires_grad=True)
        out = _distillation(loss, beta)(S, T, torch.tensor(target), temperature=temperature, reduction=reduction,
                                        softcap=CAP)
        out.backward(torch.ones_like(out))
        return out.detach(), S.grad, T.grad

    with xce.config(delegate=delegate):
        half = run(getattr(torch, name))
        single = run(torch.float32)
    ref = dict(beta=beta, temperature=temperature, softcap=CAP, reduction=reduction)
    assert_float32_close(single[0], ref_loss(s, t, target, **ref).numpy())
    for got, expected in zip(single[1:], ref_grad(s, t, target, **ref)):
        assert_float32_close(got, expected)
    for a, b in zip(half, single):
        assert a.dtype == getattr(torch, name)
        assert_rounded_from(a, b, name)


@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize(("loss", "beta", "temperature", "reduction"), DISTILLATION_CASES)
def test_distillation_jax_grad(name, loss, beta, temperature, reduction):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    s, t, target = _distillation_data(name, seed=5)

    def run(dt):
        def f(a, b):
            return _distillation(loss, beta)(a, b, jnp.asarray(target), temperature=temperature, reduction=reduction,
                                             softcap=CAP)

        S, T = jnp.asarray(s, dtype=dt), jnp.asarray(t, dtype=dt)
        grads = jax.jit(jax.grad(lambda a, b: jnp.sum(f(a, b).astype(jnp.float32)), argnums=(0, 1)))(S, T)
        return (jax.jit(f)(S, T), *grads)

    half, single = run(getattr(jnp, name)), run(jnp.float32)
    ref = dict(beta=beta, temperature=temperature, softcap=CAP, reduction=reduction)
    assert_float32_close(single[0], ref_loss(s, t, target, **ref).numpy())
    for got, expected in zip(single[1:], ref_grad(s, t, target, **ref)):
        assert_float32_close(got, expected)
    for a, b in zip(half, single):
        assert a.dtype == getattr(jnp, name)
        assert_rounded_from(a, b, name)

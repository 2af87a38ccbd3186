"""The max-shift of a logsumexp is a constant of differentiation.

``m + log Σ_c exp(x_c - m)`` does not depend on ``m``; differentiated through ``max`` anyway,
its derivative in ``m`` is ``1 - Σ_c p_c``, the softmax sum's rounding error, and it lands on
each row's argmax entry of the gradient. In float32 that entry was off by up to ~3e-5 relative
(1.8e-7 absolute at 256x2048, against 1e-8 elsewhere) wherever autodiff runs through xce's
definition: ``cross_entropy(..., return_stats=True)``, ``xce.config(delegate=False)`` at small
sizes, ``logsumexp``, ``log_softmax``. With the shift detached (``stop_gradient``) the gradient
is as exact as the analytic one: checked entrywise, relative, against float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xce

IGNORE = -100
# Entrywise relative tolerances (no absolute floor: the argmax entries are among the largest).
RTOL_FLOAT64 = 3e-6  # float32 against float64
RTOL_PATHS = 4e-6  # two float32 computations (the analytic backward's own error is ~2e-6)
# (shape, xce.config settings): one fused block, the blocked engine, classes in chunks (online logsumexp).
LAYOUTS = [((64, 300), {}), ((256, 2048), {}), ((256, 2048), {"class_chunk": 512})]
# Arguments whose gradient has no cancellation (label smoothing's p - ε/C has: not entrywise).
CASES = [dict(reduction="sum"), dict(reduction="mean", z_loss=1e-3), dict(reduction="none", softcap=5.0, weight=True)]


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    t = rng.integers(0, shape[1], size=shape[0])
    t[::9] = IGNORE
    w = rng.uniform(0.5, 1.5, size=shape[1]).astype(np.float32)
    return x, t, w


def assert_entrywise(actual, expected, rtol: float) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert np.array_equal(actual == 0.0, expected == 0.0)  # ignored rows: exactly 0 in both
    nz = expected != 0.0
    worst = np.max(np.abs(actual[nz] - expected[nz]) / np.abs(expected[nz]))
    assert worst <= rtol, f"largest relative error {worst:.3g} > {rtol:g}"


def _torch_grad(x, t, w, kw, dtype, return_stats):
    X = torch.tensor(x, dtype=dtype, requires_grad=True)
    W = torch.tensor(w, dtype=dtype) if kw.get("weight") else None
    out = xce.cross_entropy(X, torch.tensor(t), **dict(kw, weight=W), return_stats=return_stats)
    loss = out[0] if return_stats else out
    loss.backward(torch.ones_like(loss))
    return X.grad.numpy()


@pytest.mark.parametrize("delegate", [True, False])
@pytest.mark.parametrize(("shape", "config"), LAYOUTS)
@pytest.mark.parametrize("kw", CASES)
def test_return_stats_leaves_the_torch_gradient_unchanged(kw, shape, config, delegate):
    """``return_stats=True`` (autograd through the definition's one pass) gives the gradient of
    the call without it (PyTorch's kernel, or the analytic backward) and float64's."""
    x, t, w = _data(shape)
    with xce.config(delegate=delegate, **config):
        with_stats = _torch_grad(x, t, w, kw, torch.float32, True)
        plain = _torch_grad(x, t, w, kw, torch.float32, False)
        exact = _torch_grad(x, t, w, kw, torch.float64, False)
    assert_entrywise(with_stats, exact, RTOL_FLOAT64)
    assert_entrywise(with_stats, plain, RTOL_PATHS)


@pytest.mark.parametrize("kw", CASES)
def test_return_stats_leaves_the_jax_gradient_unchanged(kw):
    """JAX: autodiff through the definition (``return_stats``, ``delegate=False``) against the
    custom derivative rule and float64."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, t, w = _data((64, 300), seed=1)

    def grad(dtype, return_stats):
        W = jnp.asarray(w, dtype=dtype) if kw.get("weight") else None

        def f(v):
            out = xce.cross_entropy(v, jnp.asarray(t), **dict(kw, weight=W), return_stats=return_stats)
            return jnp.sum(out[0] if return_stats else out)

        return np.asarray(jax.jit(jax.grad(f))(jnp.asarray(x, dtype=dtype)))

    exact = grad(jnp.float64, False)
    assert_entrywise(grad(jnp.float32, True), exact, RTOL_FLOAT64)
    assert_entrywise(grad(jnp.float32, True), grad(jnp.float32, False), RTOL_PATHS)
    with xce.config(delegate=False):
        assert_entrywise(grad(jnp.float32, False), exact, RTOL_FLOAT64)


def test_logsumexp_and_log_softmax_gradients():
    """The public ``logsumexp`` and ``log_softmax`` under torch autograd and ``jax.grad``."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, _, _ = _data((256, 2048), seed=2)
    weights = np.random.default_rng(3).normal(size=x.shape)  # a generic cotangent for log_softmax

    def torch_grads(dtype):
        X = torch.tensor(x, dtype=dtype, requires_grad=True)
        g_lse = torch.autograd.grad(xce.logsumexp(X, axis=1).sum(), X)[0]
        g_ls = torch.autograd.grad((xce.log_softmax(X, axis=1) * torch.tensor(weights, dtype=dtype)).sum(), X)[0]
        return g_lse.numpy(), g_ls.numpy()

    def jax_grads(dtype):
        X = jnp.asarray(x, dtype=dtype)
        g_lse = jax.grad(lambda v: jnp.sum(xce.logsumexp(v, axis=1)))(X)
        g_ls = jax.grad(lambda v: jnp.sum(xce.log_softmax(v, axis=1) * jnp.asarray(weights, dtype=dtype)))(X)
        return np.asarray(g_lse), np.asarray(g_ls)

    for grads in (torch_grads, jax_grads):
        (lse32, ls32), (lse64, ls64) = grads("float32" if grads is jax_grads else torch.float32), grads(
            "float64" if grads is jax_grads else torch.float64)
        assert_entrywise(lse32, lse64, RTOL_FLOAT64)
        # log_softmax's gradient w - p·Σw cancels: compared against its scale.
        np.testing.assert_allclose(ls32, ls64, rtol=0, atol=4e-7 * np.max(np.abs(ls64)))

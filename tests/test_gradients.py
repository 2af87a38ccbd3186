"""Gradients flow through xce with torch autograd and jax.grad exactly as through the native loss."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xce

from reference import cross_entropy_grad

GRAD_CONFIGS = list(itertools.product([False, True], [False, True], [0.0, 0.2], ["mean", "sum"], [False, True]))


def _inputs(probabilities: bool):
    rng = np.random.default_rng(7)
    x = rng.normal(scale=2.0, size=(6, 5, 2))
    if probabilities:
        target = np.moveaxis(rng.dirichlet(np.ones(5), size=(6, 2)), -1, 1)
    else:
        target = rng.integers(0, 5, size=(6, 2))
    return x, target, rng.uniform(0.5, 2.0, size=5)


@pytest.mark.parametrize(("weighted", "ignore", "eps", "reduction", "probabilities"), GRAD_CONFIGS)
def test_torch_autograd_matches_native(weighted, ignore, eps, reduction, probabilities):
    torch = pytest.importorskip("torch")
    x, target, weight = _inputs(probabilities)
    kwargs = {"label_smoothing": eps, "reduction": reduction}
    if ignore and not probabilities:
        kwargs["ignore_index"] = 3
    w = weight if weighted else None
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(target)
    xce.cross_entropy(xt, tt, weight=None if w is None else torch.tensor(w), **kwargs).backward()
    np.testing.assert_allclose(xt.grad.numpy(), cross_entropy_grad(x, target, weight=w, **kwargs), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize(("weighted", "ignore", "eps", "reduction", "probabilities"), GRAD_CONFIGS)
def test_jax_grad_matches_torch(weighted, ignore, eps, reduction, probabilities):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, target, weight = _inputs(probabilities)
    kwargs = {"label_smoothing": eps, "reduction": reduction}
    if ignore and not probabilities:
        kwargs["ignore_index"] = 3
    w = weight if weighted else None
    expected = cross_entropy_grad(x, target, weight=w, **kwargs)

    def loss(logits):
        return xce.cross_entropy(logits, jnp.asarray(target), weight=None if w is None else jnp.asarray(w), **kwargs)

    for fn in (jax.grad(loss), jax.jit(jax.grad(loss))):
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x))), expected, rtol=1e-10, atol=1e-12)


def test_jax_vmap_over_batches():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(8)
    x, t = rng.normal(size=(3, 4, 5)), rng.integers(0, 5, size=(3, 4))
    batched = jax.vmap(xce.cross_entropy)(jnp.asarray(x), jnp.asarray(t))
    each = [float(xce.cross_entropy(jnp.asarray(x[i]), jnp.asarray(t[i]))) for i in range(3)]
    np.testing.assert_allclose(np.asarray(batched), each, rtol=1e-12)


def test_masked_logits_have_finite_gradients():
    torch = pytest.importorskip("torch")
    x = torch.tensor([[0.0, -float("inf"), 1.0], [2.0, 1.0, -float("inf")]], dtype=torch.float64, requires_grad=True)
    xce.cross_entropy(x, torch.tensor([0, 1])).backward()
    assert torch.isfinite(x.grad).all(), x.grad


@pytest.mark.parametrize(("weighted", "ignore", "eps", "reduction", "probabilities"), GRAD_CONFIGS[::3])
def test_torch_large_inputs_route_to_the_analytic_backward(weighted, ignore, eps, reduction, probabilities):
    """With the engine on, torch autograd goes through xce.adapters.torch: same gradients."""
    torch = pytest.importorskip("torch")
    x, target, weight = _inputs(probabilities)
    kwargs = {"label_smoothing": eps, "reduction": reduction}
    if ignore and not probabilities:
        kwargs["ignore_index"] = 3
    w = weight if weighted else None
    xt = torch.tensor(x, requires_grad=True)
    with xce.config(enabled=True, block_rows=2):
        loss = xce.cross_entropy(xt, torch.tensor(target), weight=None if w is None else torch.tensor(w), **kwargs)
    assert "CrossEntropy" in type(loss.grad_fn).__name__, loss.grad_fn
    loss.backward()
    np.testing.assert_allclose(xt.grad.numpy(), cross_entropy_grad(x, target, weight=w, **kwargs), rtol=1e-10,
                               atol=1e-12)

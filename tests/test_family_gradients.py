"""Gradients of the binary, divergence, focal and poly-1 losses through torch autograd (and
jax.grad) match autograd through the float64 torch oracles."""

from __future__ import annotations

import numpy as np
import pytest

import xce

import reference as ref

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(11)
X = RNG.normal(scale=2.0, size=(5, 4))
BIN = RNG.uniform(size=(5, 4))
IDX = np.asarray([0, 3, 1, 2, 3])
W = RNG.uniform(0.5, 2.0, size=4)
LOG_Q = np.log(RNG.dirichlet(np.ones(4), size=5))
P = RNG.dirichlet(np.ones(4), size=5)
P[1, 2] = 0.0

# (xce function, oracle, input, target, kwargs)
CASES = [
    ("binary_cross_entropy", 1 / (1 + np.exp(-X)), BIN, {"weight": W, "label_smoothing": 0.1}),
    ("binary_cross_entropy_with_logits", X, BIN, {"weight": W, "pos_weight": W[::-1].copy(), "reduction": "sum"}),
    ("multilabel_soft_margin_loss", X, BIN, {"weight": W}),
    ("sigmoid_focal_loss", X, BIN, {"alpha": 0.3, "gamma": 2.0}),
    ("kl_div", LOG_Q, P, {"reduction": "batchmean"}),
    ("softmax_focal_loss", X, IDX, {"gamma": 2.0, "weight": W, "ignore_index": 3}),
    ("poly1_cross_entropy", X, IDX, {"epsilon": 0.5, "weight": W}),
]


def _torch(a):
    return None if a is None else torch.from_numpy(np.asarray(a))


@pytest.mark.parametrize(("name", "x", "target", "kwargs"), CASES, ids=[c[0] for c in CASES])
def test_torch_autograd_matches_oracle(name, x, target, kwargs):
    expected = ref.grad(getattr(ref, name), x, target, **kwargs)
    xt = torch.tensor(x, requires_grad=True)
    t_kwargs = {k: _torch(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    getattr(xce, name)(xt, _torch(target), **t_kwargs).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["sigmoid_focal_loss", "softmax_focal_loss", "kl_div"])
def test_jax_grad_matches_oracle(name):
    jax = pytest.importorskip("jax")
    _, x, target, kwargs = next(c for c in CASES if c[0] == name)
    expected = ref.grad(getattr(ref, name), x, target, **kwargs)
    j_kwargs = {k: jax.numpy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}

    def loss(v):
        return getattr(xce, name)(v, jax.numpy.asarray(target), **j_kwargs).sum()

    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(jax.numpy.asarray(x))), expected, rtol=1e-9,
                               atol=1e-12)


def test_z_loss_and_off_target_gradients():
    x, t = X, IDX
    kw = {"weight": W, "ignore_index": 2, "label_smoothing": 0.2}

    def oracle(v, target):
        ce = ref.cross_entropy_off_target(v, target, 0.2, weight=W, ignore_index=2)
        return ce + ref.z_loss_term(v, target, 0.05, ignore_index=2)

    expected = ref.grad(oracle, x, t)
    xt = torch.tensor(x, requires_grad=True)
    xce.cross_entropy(xt, torch.from_numpy(t), label_smoothing_mode="off_target", z_loss=0.05,
                      **{k: _torch(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}).backward()
    np.testing.assert_allclose(xt.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_extreme_logits_have_finite_gradients():
    x = torch.tensor([1e4, -1e4, 30.0, -30.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    (xce.binary_cross_entropy_with_logits(x, y) + xce.sigmoid_focal_loss(x, y).sum()).backward()
    assert torch.isfinite(x.grad).all(), x.grad
    p = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64, requires_grad=True)
    xce.binary_cross_entropy(p, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)).backward()
    assert torch.isfinite(p.grad).all(), p.grad

"""Plain autodiff through every public loss (torch autograd; jax.grad, jit(grad), vmap) matches the
float64 torch oracles, and the adapters' registered backward passes match plain autodiff."""

from __future__ import annotations

import numpy as np
import pytest

import xce
from xce.adapters import for_array

import reference as ref

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
jnp = jax.numpy

RNG = np.random.default_rng(13)
X = RNG.normal(scale=2.0, size=(5, 4))
X3 = RNG.normal(scale=2.0, size=(3, 4, 2))
T3 = RNG.integers(0, 4, size=(3, 2))
P3 = np.moveaxis(RNG.dirichlet(np.ones(4), size=(3, 2)), -1, 1)
BIN = RNG.uniform(size=(5, 4))
IDX = np.asarray([0, 3, 1, 2, 3])
W = RNG.uniform(0.5, 2.0, size=4)
LOG_Q = np.log(RNG.dirichlet(np.ones(4), size=5))
P = RNG.dirichlet(np.ones(4), size=5)

# (xce name, oracle, input, target, kwargs); the oracle is differentiated by torch in float64.
CASES = [
    ("cross_entropy", None, X3, T3, {"weight": W, "ignore_index": 1, "label_smoothing": 0.2}),
    ("cross_entropy", None, X3, P3, {"weight": W, "label_smoothing": 0.1, "reduction": "sum"}),
    ("nll_loss", ref.nll_loss, X, IDX, {"weight": W, "ignore_index": 3}),
    ("binary_cross_entropy", ref.binary_cross_entropy, 1 / (1 + np.exp(-X)), BIN, {"weight": W}),
    ("binary_cross_entropy_with_logits", ref.binary_cross_entropy_with_logits, X, BIN,
     {"pos_weight": W, "label_smoothing": 0.1}),
    ("multilabel_soft_margin_loss", ref.multilabel_soft_margin_loss, X, BIN, {"weight": W, "reduction": "sum"}),
    ("kl_div", ref.kl_div, LOG_Q, P, {"reduction": "batchmean"}),
    ("kl_div", ref.kl_div, LOG_Q, np.log(P), {"reduction": "sum", "log_target": True}),
    ("softmax_focal_loss", ref.softmax_focal_loss, X, IDX, {"gamma": 2.0, "weight": W, "ignore_index": 3}),
    ("poly1_cross_entropy", ref.poly1_cross_entropy, X, IDX, {"epsilon": 0.5, "weight": W}),
    ("sigmoid_focal_loss", ref.sigmoid_focal_loss, X, BIN, {"alpha": 0.3, "gamma": 2.0, "reduction": "mean"}),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def _expected(name, oracle, x, target, kwargs):
    if oracle is None:
        return ref.cross_entropy_grad(x, target, **kwargs)
    if name == "nll_loss":  # the nll oracle returns NumPy; differentiate F.nll_loss directly
        xt = torch.tensor(x, requires_grad=True)
        torch.nn.functional.nll_loss(xt, torch.from_numpy(target), weight=torch.from_numpy(kwargs["weight"]),
                                     ignore_index=kwargs["ignore_index"]).backward()
        return xt.grad.numpy()
    return ref.grad(oracle, x, target, **kwargs)


@pytest.mark.parametrize(("name", "oracle", "x", "target", "kwargs"), CASES, ids=IDS)
def test_torch_autograd(name, oracle, x, target, kwargs):
    xt = torch.tensor(x, requires_grad=True)
    getattr(xce, name)(xt, torch.from_numpy(target),
                       **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
                       ).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), _expected(name, oracle, x, target, kwargs), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "oracle", "x", "target", "kwargs"), CASES, ids=IDS)
def test_jax_grad_jit_vmap(name, oracle, x, target, kwargs):
    expected = _expected(name, oracle, x, target, kwargs)
    j_kwargs = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}

    def loss(v, t):
        return getattr(xce, name)(v, t, **j_kwargs).sum()

    for fn in (jax.grad(loss), jax.jit(jax.grad(loss))):
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x), jnp.asarray(target))), expected, rtol=1e-9,
                                   atol=1e-12)
    # vmap of the per-example gradient over a stacked copy equals the single gradient twice.
    stacked = jax.vmap(jax.grad(loss))(jnp.stack([jnp.asarray(x)] * 2), jnp.stack([jnp.asarray(target)] * 2))
    np.testing.assert_allclose(np.asarray(stacked), np.stack([expected] * 2), rtol=1e-9, atol=1e-12)


def test_z_loss_off_target_under_jit():
    def oracle(v, t):
        return ref.cross_entropy_off_target(v, t, 0.2, weight=W, ignore_index=2) + ref.z_loss_term(v, t, 0.05,
                                                                                                 ignore_index=2)

    expected = ref.grad(oracle, X, IDX)

    def loss(v):
        return xce.cross_entropy(v, jnp.asarray(IDX), jnp.asarray(W), 2, label_smoothing=0.2,
                                 label_smoothing_mode="off_target", z_loss=0.05)

    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(X))), expected, rtol=1e-9, atol=1e-12)


# --- the adapters: registered backward == plain autodiff through xce.cross_entropy -------------

ADAPTER_CASES = [
    (T3, {"weight": W, "ignore_index": 1, "label_smoothing": 0.2, "z_loss": 0.1}),
    (T3, {"label_smoothing": 0.3, "label_smoothing_mode": "off_target", "reduction": "sum"}),
    (T3, {"weight": W, "reduction": "none", "z_loss": 0.05}),
    (P3, {"weight": W, "label_smoothing": 0.1, "z_loss": 0.1}),
]


@pytest.mark.parametrize(("target", "kwargs"), ADAPTER_CASES)
def test_torch_adapter(target, kwargs):
    adapter = for_array(torch.zeros(1))
    kw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    t = torch.from_numpy(target)
    a, b = torch.tensor(X3, requires_grad=True), torch.tensor(X3, requires_grad=True)
    adapter.cross_entropy(a, t, **kw).sum().backward()
    xce.cross_entropy(b, t, **kw).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12, atol=1e-14)
    x = torch.tensor(X3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: adapter.cross_entropy(v, t, **kw), (x,))
    assert torch.autograd.gradgradcheck(lambda v: adapter.cross_entropy(v, t, **kw), (x,))


@pytest.mark.parametrize(("target", "kwargs"), ADAPTER_CASES)
def test_jax_adapter(target, kwargs):
    from jax.test_util import check_grads

    adapter = for_array(jnp.zeros(1))
    kw = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    t = jnp.asarray(target)

    def custom(v):
        return adapter.cross_entropy(v, t, **kw).sum()

    def plain(v):
        return xce.cross_entropy(v, t, **kw).sum()

    x = jnp.asarray(X3)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(custom))(x)), np.asarray(jax.grad(plain)(x)),
                               rtol=1e-12, atol=1e-14)
    check_grads(custom, (x,), order=2, modes=["rev"])
    batched = jax.vmap(jax.grad(custom))(jnp.stack([x, x]))
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(jax.grad(plain)(x)), rtol=1e-12, atol=1e-14)

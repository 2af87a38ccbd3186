"""xce.value_and_grad: the analytic gradients equal torch autograd through the xce loss, on the
eager backends (NumPy, array-api-strict, PyTorch, JAX without jit)."""

from __future__ import annotations

import numpy as np
import pytest

import xce
import xce.grad as G
import xce.linear

from conftest import assert_close_to

torch = pytest.importorskip("torch")

lazy_xp_modules = [xce]
EAGER = {"numpy", "array_api_strict", "torch", "jax", "cupy", "torch-cuda", "cupy-standin"}

RNG = np.random.default_rng(5)
X3 = RNG.normal(scale=2.0, size=(4, 5, 3))
T3 = RNG.integers(0, 5, size=(4, 3))
T3[0, 0] = 2
P3 = np.moveaxis(RNG.dirichlet(np.ones(5), size=(4, 3)), -1, 1)
W5 = RNG.uniform(0.5, 2.0, size=5)
X2 = RNG.normal(scale=2.0, size=(6, 4))
T2 = np.asarray([0, 3, 1, 2, 3, 1])
W4 = RNG.uniform(0.5, 2.0, size=4)
Y2 = RNG.uniform(size=(6, 4))
COT = RNG.normal(size=(4, 3))

# (loss name, input, target, kwargs)
CASES = [
    ("cross_entropy", X3, T3, {}),
    ("cross_entropy", X3, T3, {"weight": W5, "ignore_index": 2, "label_smoothing": 0.2, "z_loss": 0.1}),
    ("cross_entropy", X3, T3, {"weight": W5, "label_smoothing": 0.3, "label_smoothing_mode": "off_target",
                               "reduction": "sum"}),
    ("cross_entropy", X3, T3, {"weight": W5, "ignore_index": 2, "reduction": "none", "z_loss": 0.05,
                               "cotangent": COT}),
    ("cross_entropy", np.moveaxis(X3, 1, -1).copy(), T3, {"axis": -1, "label_smoothing": 0.1}),
    ("cross_entropy", X3, P3, {"weight": W5, "label_smoothing": 0.2, "z_loss": 0.1}),
    ("cross_entropy", X3, P3, {"reduction": "none"}),
    ("nll_loss", X2, T2, {"weight": W4, "ignore_index": 1}),
    ("nll_loss", X2, T2, {"reduction": "none"}),
    ("softmax_focal_loss", X2, T2, {"gamma": 1.5, "weight": W4, "ignore_index": 3}),
    ("softmax_focal_loss", X2, T2, {"gamma": 0.5, "reduction": "sum"}),
    ("poly1_cross_entropy", X2, T2, {"epsilon": 0.7, "weight": W4}),
    ("binary_cross_entropy", 1 / (1 + np.exp(-X2)), Y2, {"weight": W4, "label_smoothing": 0.1}),
    ("binary_cross_entropy_with_logits", X2, Y2, {"weight": W4, "pos_weight": W4[::-1].copy(), "reduction": "sum"}),
    ("binary_cross_entropy_with_logits", X2, Y2, {"reduction": "none"}),
    ("multilabel_soft_margin_loss", X2, Y2, {"weight": W4}),
    ("sigmoid_focal_loss", X2, Y2, {"alpha": 0.3, "gamma": 1.5, "reduction": "mean"}),
]


def _torch_grad(name, x, target, kwargs):
    """Gradient of xce.<name> by torch autograd, in float64 (the oracle)."""
    kwargs = dict(kwargs)
    cot = kwargs.pop("cotangent", None)
    xt = torch.tensor(x, requires_grad=True)
    out = getattr(xce, name)(xt, torch.from_numpy(np.asarray(target)),
                             **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()})
    (out * (1.0 if cot is None else torch.from_numpy(cot))).sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize(("name", "x", "target", "kwargs"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_value_and_grad_matches_torch_autograd(backend, name, x, target, kwargs):
    if backend.name not in EAGER:
        pytest.skip("value_and_grad is tested on eager backends")
    xp = backend.xp
    loss_ref, grad_ref = _torch_grad(name, x, target, kwargs)
    conv = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    loss, grad = xce.grad.value_and_grad(getattr(xce, name))(backend.asarray(x), backend.asarray(target), **conv)
    assert_close_to(loss, loss_ref, dtype=xp.float64, backend=backend)
    assert_close_to(grad, grad_ref, dtype=xp.float64, backend=backend)


def test_half_precision_gradient_is_computed_in_float32():
    x = torch.tensor(X2, dtype=torch.bfloat16)
    g = G.cross_entropy_grad(x, torch.from_numpy(T2), label_smoothing=0.1)
    assert g.dtype == torch.bfloat16
    _, ref = _torch_grad("cross_entropy", x.double().numpy(), T2, {"label_smoothing": 0.1})
    np.testing.assert_allclose(g.double().numpy(), ref, rtol=1e-2, atol=1e-3)


def test_blocked_backward_equals_unblocked(monkeypatch):
    x = RNG.normal(size=(40, 7, 3))
    t = RNG.integers(0, 7, size=(40, 3))
    t[5, 1] = -100
    kw = {"weight": RNG.uniform(0.5, 2.0, size=7), "label_smoothing": 0.1, "z_loss": 0.1}
    whole = G.cross_entropy_grad(x, t, **kw)
    from xce import _engine

    monkeypatch.setattr(_engine, "_BLOCK_BYTES_GRADIENT", 50 * 8)  # blocks of 50 float64 elements: 2 rows
    np.testing.assert_allclose(G.cross_entropy_grad(x, t, **kw), whole, rtol=1e-14, atol=1e-16)


def test_masked_logits_give_finite_gradients():
    x = np.asarray([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])
    g = G.cross_entropy_grad(x, np.asarray([0, -100]))
    assert np.isfinite(g).all()
    p = np.asarray([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    assert np.isfinite(G.cross_entropy_grad(np.asarray([[0.0, -np.inf, 1.0]] * 2), p)).all()


def test_unknown_function_is_refused():
    with pytest.raises(TypeError, match="no analytic gradient for 'kl_div'"):
        xce.grad.value_and_grad(xce.kl_div)


def test_importing_xce_imports_no_framework():
    import subprocess
    import sys

    code = "import sys, xce, xce.grad, xce.linear, xce.adapters; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]

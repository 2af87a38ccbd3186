"""kl_div_with_logits and generalized_jsd against a float64 PyTorch reference written from the
formulas, on every backend; their gradients (autodiff and the analytic rules); their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from array_api_extra.testing import lazy_xp_function

import xce
from xce.losses.distillation import (
    generalized_jsd,
    generalized_jsd_grad,
    kl_div_with_logits,
    kl_div_with_logits_grad,
)

from conftest import assert_close_to, dtype_name, to_numpy
from reference import rounded

# Not (yet) in xce.__all__, so conftest does not tag them: tagged here, and patched in this
# module's globals (jax.jit for "jax-jit", no compute() allowed for "dask").
for _fn in (generalized_jsd, generalized_jsd_grad, kl_div_with_logits, kl_div_with_logits_grad):
    lazy_xp_function(_fn)

REDUCTIONS = ("mean", "sum", "none", "batchmean")
# (beta, temperature, softcap): every beta meets both temperatures and both softcaps.
CASES = [
    (0.0, 1.0, None), (0.0, 2.0, 5.0),
    (0.3, 2.0, None), (0.3, 1.0, 5.0),
    (0.5, 1.0, 5.0), (0.5, 2.0, None),
    (1.0, 2.0, 5.0), (1.0, 1.0, None),
]
# Every beta once; both temperatures and both softcaps appear.
GRAD_CASES = CASES[::2]


# --- the float64 reference: the definitions, in probability space -----------------------------


def ref_per_position(s, t, *, beta, temperature=1.0, softcap=None, axis=None):
    """Per-position divergence of torch float64 tensors (differentiable in both)."""
    ax = axis if axis is not None else (0 if s.ndim == 1 else 1)
    if softcap is not None:
        s, t = softcap * torch.tanh(s / softcap), softcap * torch.tanh(t / softcap)
    q, p = F.softmax(s / temperature, dim=ax), F.softmax(t / temperature, dim=ax)

    def kl(a, b):  # Σ a log(a / b), 0 log 0 = 0
        return (torch.xlogy(a, a) - torch.xlogy(a, b)).sum(ax)

    if beta == 0.0:
        return kl(p, q)
    if beta == 1.0:
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def ref_loss(s, t, target=None, *, reduction="mean", ignore_index=-100, **kwargs):
    s = s if torch.is_tensor(s) else torch.from_numpy(np.asarray(s, dtype=np.float64))
    t = t if torch.is_tensor(t) else torch.from_numpy(np.asarray(t, dtype=np.float64))
    loss = ref_per_position(s, t, **kwargs)
    kept = torch.ones(loss.shape, dtype=torch.bool) if target is None else torch.from_numpy(
        np.asarray(target) != ignore_index)
    loss = torch.where(kept, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "batchmean":
        return loss.sum() / s.shape[0]
    return loss.sum() / kept.sum()


def ref_grad(s, t, target=None, cotangent=None, **kwargs):
    """(d/d student, d/d teacher) of ``Σ cotangent·loss`` by torch autograd through the reference."""
    st = torch.tensor(np.asarray(s, dtype=np.float64), requires_grad=True)
    tt = torch.tensor(np.asarray(t, dtype=np.float64), requires_grad=True)
    out = ref_loss(st, tt, target, **kwargs)
    w = torch.ones_like(out) if cotangent is None else torch.from_numpy(np.asarray(cotangent, dtype=np.float64))
    (out * w).sum().backward()
    return st.grad.numpy(), tt.grad.numpy()


def _case(shape=(5, 7), seed=0, ignore=True, axis=None):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=shape) * 2.0
    t = rng.normal(size=shape) * 2.0
    ax = axis % len(shape) if axis is not None else (0 if len(shape) == 1 else 1)
    per = shape[:ax] + shape[ax + 1 :]
    target = rng.integers(0, shape[ax], size=per)
    if ignore:
        flat = target.reshape(-1)
        flat[::3] = -100
    return s, t, target


def _call(fn, beta, *args, **kwargs):
    """``fn`` is generalized_jsd or kl_div_with_logits; beta 0 / 1 map to the directions."""
    if fn is generalized_jsd or fn is generalized_jsd_grad:
        return fn(*args, beta=beta, **kwargs)
    return fn(*args, direction="forward" if beta == 0.0 else "reverse", **kwargs)


# --- values on every backend ------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "temperature", "softcap"), CASES)
def test_values(backend, beta, temperature, softcap):
    xp = backend.xp
    s, t, target = _case()
    xs, xt, xtarget = backend.asarray(s, xp.float64), backend.asarray(t, xp.float64), backend.asarray(target)
    kw = dict(temperature=temperature, softcap=softcap)
    for reduction in REDUCTIONS:
        expected = ref_loss(s, t, target, beta=beta, reduction=reduction, **kw).numpy()
        out = generalized_jsd(xs, xt, xtarget, beta=beta, reduction=reduction, **kw)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        if beta in (0.0, 1.0):  # the endpoints are the two KL directions
            out = _call(kl_div_with_logits, beta, xs, xt, xtarget, reduction=reduction, **kw)
            assert_close_to(out, expected, dtype=xp.float64, backend=backend)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_without_target_spatial(backend, direction):
    """(N, C, d) logits, classes on axis 1 (PyTorch's rule), no target."""
    xp = backend.xp
    s, t, _ = _case((3, 4, 2), seed=1)
    beta = 0.0 if direction == "forward" else 1.0
    for reduction in REDUCTIONS:
        out = kl_div_with_logits(backend.asarray(s, xp.float64), backend.asarray(t, xp.float64), direction=direction,
                                 temperature=2.0, reduction=reduction)
        expected = ref_loss(s, t, beta=beta, temperature=2.0, reduction=reduction).numpy()
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def test_forward_kl_is_torch_kl_div(backend):
    """Forward KL = F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True), where reductions overlap
    ("none" summed over the classes; F.kl_div's "mean" is over elements, so ours divided by C)."""
    xp = backend.xp
    temperature = 2.0
    for shape in [(4, 6), (6,)]:  # 1-D: "batchmean" divides by shape[0] = C, as PyTorch does
        s, t, _ = _case(shape, seed=2, ignore=False)
        ax = 0 if len(shape) == 1 else 1
        ls = F.log_softmax(torch.from_numpy(s) / temperature, dim=ax)
        lt = F.log_softmax(torch.from_numpy(t) / temperature, dim=ax)
        xs, xt = backend.asarray(s, xp.float64), backend.asarray(t, xp.float64)
        for reduction in ("sum", "batchmean", "none", "mean"):
            with pytest.warns(UserWarning) if reduction == "mean" else _nothing():
                expected = F.kl_div(ls, lt, reduction=reduction, log_target=True)
            if reduction == "none":
                expected = expected.sum(ax)
            if reduction == "mean":
                expected = expected * shape[ax]
            out = kl_div_with_logits(xs, xt, temperature=temperature, reduction=reduction)
            assert_close_to(out, expected.numpy(), dtype=xp.float64, backend=backend)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_trl_generalized_jsd_loss_formula(backend):
    """TRL's GKDTrainer.generalized_jsd_loss (log-space mixture via torch.logsumexp of a stack,
    F.kl_div with log_target) on (B, T, V) logits: its "batchmean" (sum / (B·T)) is our "mean"."""
    xp = backend.xp
    s, t, _ = _case((2, 3, 6), seed=3, ignore=False, axis=-1)
    for beta in (0.0, 0.3, 0.5, 1.0):
        ls = F.log_softmax(torch.from_numpy(s) / 2.0, dim=-1)
        lt = F.log_softmax(torch.from_numpy(t) / 2.0, dim=-1)
        if beta == 0.0:
            jsd = F.kl_div(ls, lt, reduction="none", log_target=True)
        elif beta == 1.0:
            jsd = F.kl_div(lt, ls, reduction="none", log_target=True)
        else:
            b = torch.tensor(beta, dtype=torch.float64)
            mix = torch.logsumexp(torch.stack([ls + torch.log1p(-b), lt + torch.log(b)]), dim=0)
            jsd = b * F.kl_div(mix, lt, reduction="none", log_target=True) + (1 - b) * F.kl_div(
                mix, ls, reduction="none", log_target=True)
        expected = jsd.sum() / (jsd.size(0) * jsd.size(1))
        out = generalized_jsd(backend.asarray(s, xp.float64), backend.asarray(t, xp.float64), beta=beta,
                              temperature=2.0, axis=-1)
        assert_close_to(out, expected.numpy(), dtype=xp.float64, backend=backend)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_axis_last_with_ignore(backend, beta):
    """(B, T, V) logits with axis=-1 and (B, T) labels, ignored positions masked."""
    xp = backend.xp
    s, t, target = _case((2, 5, 6), seed=4, axis=-1)
    xs, xt, xtarget = backend.asarray(s, xp.float64), backend.asarray(t, xp.float64), backend.asarray(target)
    for reduction in ("none", "mean", "batchmean"):
        expected = ref_loss(s, t, target, beta=beta, axis=-1, reduction=reduction).numpy()
        out = generalized_jsd(xs, xt, xtarget, beta=beta, axis=-1, reduction=reduction)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    none = to_numpy(generalized_jsd(xs, xt, xtarget, beta=beta, axis=-1, reduction="none"))
    assert np.all(none[target == -100] == 0.0) and np.all(none[target != -100] > 0.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the 0/0 of "mean"
def test_all_ignored(backend):
    xp = backend.xp
    s, t, _ = _case((3, 4), seed=5)
    xs, xt = backend.asarray(s, xp.float64), backend.asarray(t, xp.float64)
    every = backend.asarray(np.full(3, -7))
    for fn in (generalized_jsd, kl_div_with_logits):
        assert_close_to(fn(xs, xt, every, ignore_index=-7), np.nan, dtype=xp.float64, backend=backend)
        assert_close_to(fn(xs, xt, every, ignore_index=-7, reduction="sum"), 0.0, dtype=xp.float64, backend=backend)
        assert_close_to(fn(xs, xt, every, ignore_index=-7, reduction="none"), np.zeros(3), dtype=xp.float64,
                        backend=backend)


def test_dtypes(backend, dtype):
    """Half precision is computed in float32 and returned in the input dtype."""
    name = dtype_name(dtype)
    s, t, target = _case((4, 9), seed=6)
    s, t = rounded(s, name), rounded(t, name)
    xs, xt, xtarget = backend.asarray(s, dtype), backend.asarray(t, dtype), backend.asarray(target)
    for beta, temperature, softcap in [(0.0, 2.0, None), (0.5, 1.0, 5.0), (1.0, 1.0, None)]:
        kw = dict(temperature=temperature, softcap=softcap)
        out = generalized_jsd(xs, xt, xtarget, beta=beta, **kw)
        expected = ref_loss(s, t, target, beta=beta, **kw).numpy()
        if name == "float32":  # float32 logs and cancellations: a few ulps of the log-probabilities
            assert out.dtype == dtype
            np.testing.assert_allclose(to_numpy(out), expected, rtol=2e-5)
        else:
            assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_masked_vocabulary_is_finite(backend):
    """A class at -inf in both models contributes 0, with finite values (every beta)."""
    xp = backend.xp
    s = np.asarray([[1.0, -np.inf, 0.5, 2.0], [0.3, -np.inf, 0.1, 1.0]])
    t = np.asarray([[0.0, -np.inf, 1.5, -1.0], [2.0, -np.inf, 0.0, 1.0]])
    finite_s, finite_t = s[:, [0, 2, 3]], t[:, [0, 2, 3]]
    for beta in (0.0, 0.3, 1.0):
        out = generalized_jsd(backend.asarray(s, xp.float64), backend.asarray(t, xp.float64), beta=beta,
                              reduction="none")
        assert_close_to(out, ref_loss(finite_s, finite_t, beta=beta, reduction="none").numpy(), dtype=xp.float64,
                        backend=backend)
        g = generalized_jsd_grad(backend.asarray(s, xp.float64), backend.asarray(t, xp.float64), beta=beta)
        expected = np.zeros_like(s)
        expected[:, [0, 2, 3]] = ref_grad(finite_s, finite_t, beta=beta)[0]
        assert_close_to(g, expected, dtype=xp.float64, backend=backend)


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "temperature", "softcap"), GRAD_CASES)
def test_analytic_gradient(backend, beta, temperature, softcap):
    """The *_grad rules on every backend against torch autograd through the reference."""
    xp = backend.xp
    s, t, target = _case(seed=7)
    xs, xt, xtarget = backend.asarray(s, xp.float64), backend.asarray(t, xp.float64), backend.asarray(target)
    cot = np.random.default_rng(8).normal(size=target.shape)
    kw = dict(temperature=temperature, softcap=softcap)
    for reduction, cotangent in [("mean", 2.0), ("sum", None), ("batchmean", None), ("none", cot)]:
        expected = ref_grad(s, t, target, cotangent, beta=beta, reduction=reduction, **kw)[0]
        c = None if cotangent is None else backend.asarray(cotangent, xp.float64)
        out = generalized_jsd_grad(xs, xt, xtarget, beta=beta, reduction=reduction, cotangent=c, **kw)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        if beta in (0.0, 1.0):
            out = _call(kl_div_with_logits_grad, beta, xs, xt, xtarget, reduction=reduction, cotangent=c, **kw)
            assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def test_analytic_gradient_half_precision(backend, dtype):
    name = dtype_name(dtype)
    s, t, target = _case((3, 8), seed=9)
    s, t = rounded(s, name), rounded(t, name)
    out = generalized_jsd_grad(backend.asarray(s, dtype), backend.asarray(t, dtype), backend.asarray(target), beta=0.3,
                               reduction="sum")
    expected = ref_grad(s, t, target, beta=0.3, reduction="sum")[0]
    assert out.dtype == dtype
    rtol = {"float64": 1e-10, "float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}[name]
    np.testing.assert_allclose(to_numpy(out).astype(np.float64), expected, rtol=rtol, atol=rtol * 0.05)


@pytest.mark.parametrize(("beta", "temperature", "softcap"), CASES)
def test_torch_autograd(beta, temperature, softcap):
    """Autograd through the xce formula, w.r.t. both logits (nothing is detached for you)."""
    s, t, target = _case(seed=10)
    kw = dict(temperature=temperature, softcap=softcap)
    for reduction in REDUCTIONS:
        st = torch.tensor(s, requires_grad=True)
        tt = torch.tensor(t, requires_grad=True)
        out = generalized_jsd(st, tt, torch.from_numpy(target), beta=beta, reduction=reduction, **kw)
        out.sum().backward()
        gs, gt = ref_grad(s, t, target, beta=beta, reduction=reduction, **kw)
        np.testing.assert_allclose(st.grad.numpy(), gs, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(tt.grad.numpy(), gt, rtol=1e-10, atol=1e-13)
    # A detached teacher gets no gradient; the student's is unchanged.
    st = torch.tensor(s, requires_grad=True)
    generalized_jsd(st, torch.tensor(t, requires_grad=True).detach(), beta=beta, **kw).backward()
    np.testing.assert_allclose(st.grad.numpy(), ref_grad(s, t, beta=beta, **kw)[0], rtol=1e-10, atol=1e-13)


def test_torch_autograd_half_precision():
    s, t, target = _case((4, 10), seed=11)
    s = rounded(s, "bfloat16")
    t = rounded(t, "bfloat16")
    st = torch.tensor(s, dtype=torch.bfloat16, requires_grad=True)
    out = kl_div_with_logits(st, torch.tensor(t, dtype=torch.bfloat16), torch.from_numpy(target), temperature=2.0)
    assert out.dtype == torch.bfloat16
    out.backward()
    assert st.grad.dtype == torch.bfloat16
    expected = ref_grad(s, t, target, beta=0.0, temperature=2.0)[0]
    np.testing.assert_allclose(st.grad.double().numpy(), expected, rtol=1.6e-2, atol=1e-3)


def test_masked_vocabulary_autograd():
    """-inf in both models at a class: finite gradients through torch autograd and jax.grad."""
    jax = pytest.importorskip("jax")
    s = np.asarray([[1.0, -np.inf, 0.5, 2.0], [0.3, -np.inf, 0.1, 1.0]])
    t = np.asarray([[0.0, -np.inf, 1.5, -1.0], [2.0, -np.inf, 0.0, 1.0]])
    for beta in (0.0, 0.3, 1.0):
        expected = np.zeros_like(s)
        expected[:, [0, 2, 3]] = ref_grad(s[:, [0, 2, 3]], t[:, [0, 2, 3]], beta=beta)[0]
        st = torch.tensor(s, requires_grad=True)
        generalized_jsd(st, torch.tensor(t), beta=beta).backward()
        np.testing.assert_allclose(st.grad.numpy(), expected, rtol=1e-10, atol=1e-13)
        g = jax.jit(jax.grad(lambda a, b, beta=beta: generalized_jsd(a, b, beta=beta)))(
            jax.numpy.asarray(s), jax.numpy.asarray(t))
        np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-10, atol=1e-13)


def test_jax_grad_under_jit():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    s, t, target = _case((3, 2, 5), seed=12, axis=-1)
    for beta, temperature, softcap in GRAD_CASES:
        kw = dict(temperature=temperature, softcap=softcap)

        def f(a, b, y, beta=beta, kw=kw):
            return generalized_jsd(a, b, y, beta=beta, axis=-1, **kw)

        g = jax.jit(jax.grad(f))(jnp.asarray(s), jnp.asarray(t), jnp.asarray(target))
        expected = ref_grad(s, t, target, beta=beta, axis=-1, **kw)[0]
        np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-10, atol=1e-13)


def test_traced_hyperparameters():
    """temperature, beta and softcap as traced JAX 0-d arrays: same value and gradients as the
    floats (d/d temperature too); out of range gives NaN instead of raising."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    s, t, target = _case(seed=13)

    @jax.jit
    def f(a, temperature, beta, softcap):
        return generalized_jsd(a, jnp.asarray(t), jnp.asarray(target), beta=beta, temperature=temperature,
                               softcap=softcap)

    args = (jnp.asarray(1.5), jnp.asarray(0.3), jnp.asarray(4.0))
    value, (g_s, g_temp) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(s), *args)
    st = torch.tensor(s, requires_grad=True)
    temp = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    expected = ref_loss(st, torch.from_numpy(t), target, beta=0.3, temperature=temp, softcap=4.0)
    expected.backward()
    np.testing.assert_allclose(float(value), expected.item(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g_s), st.grad.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(float(g_temp), float(temp.grad), rtol=1e-10)
    for bad in [(jnp.asarray(0.0), *args[1:]), (args[0], jnp.asarray(1.5), args[2]), (*args[:2], jnp.asarray(-1.0))]:
        assert np.isnan(float(f(jnp.asarray(s), *bad)))
    # A traced beta always takes the general formula: it tends to 0 at the endpoints.
    g = jax.jit(lambda a, b: generalized_jsd(a, jnp.asarray(t), beta=b))
    assert float(g(jnp.asarray(s), jnp.asarray(0.0))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fn", [kl_div_with_logits, generalized_jsd])
def test_value_and_grad_numpy(fn):
    """xce.value_and_grad finds both losses; the labels may be passed as target=."""
    s, t, target = _case(seed=14)
    f = xce.value_and_grad(fn)
    beta = 0.3 if fn is generalized_jsd else 1.0
    kw = dict(beta=0.3) if fn is generalized_jsd else dict(direction="reverse")
    loss, g = f(s, t, target=target, temperature=2.0, softcap=5.0, **kw)
    expected = ref_loss(s, t, target, beta=beta, temperature=2.0, softcap=5.0).numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    np.testing.assert_allclose(g, ref_grad(s, t, target, beta=beta, temperature=2.0, softcap=5.0)[0], rtol=1e-10,
                               atol=1e-13)
    cot = np.random.default_rng(15).normal(size=target.shape)
    loss, g = f(s, t, target, reduction="none", cotangent=cot, **kw)
    assert loss.shape == target.shape
    np.testing.assert_allclose(g, ref_grad(s, t, target, cot, beta=beta, reduction="none")[0], rtol=1e-10,
                               atol=1e-13)


# --- errors -------------------------------------------------------------------------------------


def test_errors_are_named():
    s = np.zeros((2, 3))
    for fn in (kl_div_with_logits, generalized_jsd, kl_div_with_logits_grad, generalized_jsd_grad):
        with pytest.raises(ValueError, match=r"temperature must be a finite float > 0; got 0\.0"):
            fn(s, s, temperature=0.0)
        with pytest.raises(ValueError, match=r"temperature must be a finite float > 0; got -2"):
            fn(s, s, temperature=-2)
        with pytest.raises(ValueError, match="temperature must be a finite float; got inf"):
            fn(s, s, temperature=float("inf"))
        with pytest.raises(TypeError, match="temperature must be a float"):
            fn(s, s, temperature="2")
        with pytest.raises(ValueError, match=r"softcap must be a finite float > 0; got 0\.0\. Pass softcap=None"):
            fn(s, s, softcap=0.0)
        with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum', 'batchmean'; got 'avg'"):
            fn(s, s, reduction="avg")
        with pytest.raises(ValueError, match=r"teacher_logits of shape \(2, 4\) must have student_logits's shape "
                                             r"\(2, 3\)"):
            fn(s, np.zeros((2, 4)))
        with pytest.raises(TypeError, match=r"student_logits \(float64\) and teacher_logits \(float32\) must have "
                                            "the same dtype"):
            fn(s, np.zeros((2, 3), dtype=np.float32))
        with pytest.raises(TypeError, match="student_logits must be a real floating-point array"):
            fn(np.zeros((2, 3), dtype=np.int64), np.zeros((2, 3), dtype=np.int64))
        with pytest.raises(ValueError, match=r"target shape \(3,\) does not match student_logits shape \(2, 3\) with "
                                             r"the class axis 1 removed; expected \(2,\)"):
            fn(s, s, np.zeros(3, dtype=np.int64))
        with pytest.raises(TypeError, match="target must hold integer labels of shape"):
            fn(s, s, np.zeros(2))
        with pytest.raises(TypeError, match="ignore_index must be an integer"):
            fn(s, s, ignore_index=1.5)
        with pytest.raises(ValueError, match="axis=2 is out of range for student_logits"):
            fn(s, s, axis=2)
        with pytest.raises(ValueError, match="student_logits must have a class axis; got a 0-d array"):
            fn(np.zeros(()), np.zeros(()))
        with pytest.raises(TypeError, match="arrays from different libraries cannot be mixed"):
            fn(s, torch.zeros(2, 3, dtype=torch.float64))
    for fn in (generalized_jsd, generalized_jsd_grad):
        with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]; got 1\.5"):
            fn(s, s, beta=1.5)
        with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]; got -0\.1"):
            fn(s, s, beta=-0.1)
    for fn in (kl_div_with_logits, kl_div_with_logits_grad):
        with pytest.raises(ValueError, match="direction must be one of 'forward', 'reverse'; got 'backward'"):
            fn(s, s, direction="backward")


def test_shape_errors_raise_under_jit():
    jax = pytest.importorskip("jax")
    f = jax.jit(lambda a, b: generalized_jsd(a, b))
    with pytest.raises(ValueError, match="teacher_logits of shape"):
        f(jax.numpy.zeros((2, 3)), jax.numpy.zeros((3, 3)))


def test_loss_objects_hold_the_configuration():
    import numpy as np

    import xce

    rng = np.random.default_rng(11)
    s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    y = np.asarray([0, -100, 2, 3])
    kl = xce.KLDivWithLogitsLoss("reverse", temperature=2.0, reduction="sum")
    np.testing.assert_allclose(kl(s, t, y), xce.kl_div_with_logits(s, t, y, direction="reverse", temperature=2.0,
                                                                  reduction="sum"), rtol=1e-14)
    jsd = xce.GeneralizedJSDLoss(0.3, softcap=5.0)
    np.testing.assert_allclose(jsd(s, t), xce.generalized_jsd(s, t, beta=0.3, softcap=5.0), rtol=1e-14)
    with pytest.raises(ValueError, match="temperature must be positive"):
        xce.KLDivWithLogitsLoss(temperature=0.0)
    with pytest.raises(ValueError, match="beta must lie in"):
        xce.GeneralizedJSDLoss(beta=1.5)
    with pytest.raises(ValueError, match="direction must be one of"):
        xce.KLDivWithLogitsLoss("sideways")

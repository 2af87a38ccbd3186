"""The analytic backward of kl_div_with_logits / generalized_jsd under PyTorch autograd (the
``torch.autograd.Function`` of xce.adapters.torch): values and gradients for the student and the
teacher equal float64 autograd through the written-out formulas (tests/test_distillation.py's
reference), in several blocks of rows; gradcheck, double backward, torch.func and torch.compile."""

from __future__ import annotations

import array_api_compat.torch as txp
import numpy as np
import pytest
import torch

import xce
from xce.losses import distillation
from xce.losses.distillation import generalized_jsd, kl_div_with_logits

from test_distillation import REDUCTIONS, ref_grad, ref_loss

# (loss, beta): forward / reverse KL through kl_div_with_logits, the JSD's endpoints and interior.
LOSSES = [("forward", 0.0), ("reverse", 1.0), ("jsd", 0.0), ("jsd", 0.3), ("jsd", 1.0)]
# (shape, axis): PyTorch's (N, C), LM logits (B, T, V) with axis=-1, classes not last.
LAYOUTS = [((7, 11), None), ((2, 5, 11), -1), ((5, 11, 3), 1), ((3, 2, 11, 2), 2)]
# Small blocks: every layout is cut into several blocks of rows, the last one partial.
BLOCKS = dict(enabled=True, block_rows=2)


def _loss(name, beta, s, t, target=None, **kwargs):
    if name == "jsd":
        return generalized_jsd(s, t, target, beta=beta, **kwargs)
    return kl_div_with_logits(s, t, target, direction=name, **kwargs)


def _data(shape, axis, seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=shape) * 2.0, rng.normal(size=shape) * 2.0
    ax = axis % len(shape) if axis is not None else 1
    target = rng.integers(0, shape[ax], size=shape[:ax] + shape[ax + 1:])
    target.reshape(-1)[::3] = -100
    return s, t, target


def _tensors(s, t, dtype=torch.float64, teacher_grad=True):
    return (torch.tensor(s, dtype=dtype, requires_grad=True),
            torch.tensor(t, dtype=dtype, requires_grad=teacher_grad))


def _uses_function(out):
    return type(out.grad_fn).__name__ == "_DistillationBackward"


@pytest.mark.parametrize(("name", "beta"), LOSSES)
@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_gradients_match_float64_formula(name, beta, shape, axis):
    """Every reduction with ignored positions, temperature and soft cap; both logits require grad;
    a random cotangent for "none"."""
    s, t, target = _data(shape, axis)
    kw = dict(temperature=2.0, softcap=5.0, axis=axis)
    for reduction in REDUCTIONS:
        st, tt = _tensors(s, t)
        with xce.config(**BLOCKS):
            out = _loss(name, beta, st, tt, torch.from_numpy(target), reduction=reduction, **kw)
            assert _uses_function(out)
            cot = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
            (out * cot).sum().backward()
        expected = ref_loss(s, t, target, beta=beta, reduction=reduction, **kw)
        np.testing.assert_allclose(out.detach().numpy(), expected.numpy(), rtol=1e-10, atol=1e-13)
        gs, gt = ref_grad(s, t, target, cot.numpy(), beta=beta, reduction=reduction, **kw)
        np.testing.assert_allclose(st.grad.numpy(), gs, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(tt.grad.numpy(), gt, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("config", [BLOCKS, dict(enabled=True)])
def test_saves_the_inputs_and_two_values_per_position(config):
    """What autograd keeps between forward and backward: the two logits and the two per-position
    log-normalisers, nothing of the forward's (N, C) temporaries (the formula's autograd keeps
    many)."""
    s, t, target = _data((2, 5, 11), -1, seed=8)
    y = torch.from_numpy(target)

    def saved_sizes(**kwargs):
        sizes = []
        st, tt = _tensors(s, t)
        with xce.config(**kwargs), torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x,
                                                                            lambda x: x):
            generalized_jsd(st, tt, y, beta=0.3, temperature=2.0, softcap=5.0, axis=-1)
        return sorted(sizes)

    assert saved_sizes(**config) == [10, 10, 110, 110]
    assert sum(saved_sizes(enabled=False)) > 10 * 110


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_float32_student_only_without_target(beta):
    """float32 logits, a constant teacher (no gradient computed for it), default arguments."""
    s, t, _ = _data((6, 40), None, seed=1)
    st, tt = _tensors(s, t, torch.float32, teacher_grad=False)
    with xce.config(**BLOCKS):
        out = generalized_jsd(st, tt, beta=beta)
        assert _uses_function(out) and out.dtype == torch.float32
        out.backward()
    assert st.grad.dtype == torch.float32 and tt.grad is None
    s32, t32 = st.detach().double().numpy(), tt.double().numpy()
    np.testing.assert_allclose(float(out.detach()), float(ref_loss(s32, t32, beta=beta)), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(st.grad.numpy(), ref_grad(s32, t32, beta=beta)[0], rtol=2e-5, atol=1e-7)


def test_teacher_rule_is_the_swapped_student_rule():
    """pair_gradients' teacher gradient on its own equals the formula's (no autograd involved)."""
    s, t, target = _data((4, 9), None, seed=2)
    ts, tt, y = torch.tensor(s), torch.tensor(t), torch.from_numpy(target)
    args = distillation.check_arguments(ts, tt, y, 1.5, -100, "sum", None, None, xp=txp)
    for beta in (0.0, 0.3, 1.0):
        _, g_t = distillation.gradients(ts, tt, args, beta, None, xp=txp, wants=(False, True))
        expected = ref_grad(s, t, target, beta=beta, reduction="sum", temperature=1.5)[1]
        np.testing.assert_allclose(g_t.numpy(), expected, rtol=1e-10, atol=1e-13)


def test_plain_autograd_serves_small_or_disabled_calls():
    """Below the engine's size threshold, and under xce.config(enabled=False), autograd records
    the formula's operations; the values and gradients are the Function's."""
    s, t, target = _data((4, 9), None, seed=3)
    grads = []
    for config in (dict(enabled=False), {}, BLOCKS):
        st, tt = _tensors(s, t)
        with xce.config(**config):
            out = generalized_jsd(st, tt, torch.from_numpy(target), beta=0.3, temperature=2.0)
            assert _uses_function(out) == (config == BLOCKS)
            out.backward()
        grads.append((st.grad, tt.grad))
    for g_s, g_t in grads[1:]:
        torch.testing.assert_close(g_s, grads[0][0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g_t, grads[0][1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("name", "beta"), [("forward", 0.0), ("jsd", 0.3), ("jsd", 1.0)])
def test_gradcheck_and_double_backward(name, beta):
    s, t, target = _data((3, 5), None, seed=4)
    y = torch.from_numpy(target)
    st, tt = _tensors(s, t)

    def f(a, b):
        return _loss(name, beta, a, b, y, temperature=1.5, softcap=4.0)

    with xce.config(**BLOCKS):
        assert _uses_function(f(st, tt))
        assert torch.autograd.gradcheck(f, (st, tt))
        assert torch.autograd.gradgradcheck(f, (st, tt))


def test_zero_d_tensor_beta_and_half_precision():
    """A 0-d tensor beta (read by the checks) and bfloat16 logits through the Function."""
    s, t, target = _data((6, 16), None, seed=5)
    st, tt = _tensors(s, t)
    with xce.config(**BLOCKS):
        out = generalized_jsd(st, tt, torch.from_numpy(target), beta=torch.tensor(0.3, dtype=torch.float64))
        assert _uses_function(out)
        out.backward()
    np.testing.assert_allclose(st.grad.numpy(), ref_grad(s, t, target, beta=0.3)[0], rtol=1e-10, atol=1e-13)
    sb = torch.tensor(s, dtype=torch.bfloat16, requires_grad=True)
    with xce.config(**BLOCKS):
        out = kl_div_with_logits(sb, torch.tensor(t, dtype=torch.bfloat16), torch.from_numpy(target))
        out.backward()
    assert out.dtype == sb.grad.dtype == torch.bfloat16
    s16, t16 = sb.detach().double().numpy(), torch.tensor(t, dtype=torch.bfloat16).double().numpy()
    np.testing.assert_allclose(sb.grad.double().numpy(), ref_grad(s16, t16, target, beta=0.0)[0], rtol=1.6e-2,
                               atol=1e-3)


def test_masked_vocabulary_stays_finite():
    """-inf in both models at a class: the blocked backward's gradient is finite (0 there)."""
    s = np.asarray([[1.0, -np.inf, 0.5, 2.0], [0.3, -np.inf, 0.1, 1.0], [0.0, -np.inf, 1.0, 1.0]])
    t = np.asarray([[0.0, -np.inf, 1.5, -1.0], [2.0, -np.inf, 0.0, 1.0], [1.0, -np.inf, 0.0, 0.0]])
    for beta in (0.0, 0.3, 1.0):
        st = torch.tensor(s, requires_grad=True)
        with xce.config(**BLOCKS):
            generalized_jsd(st, torch.tensor(t), beta=beta).backward()
        expected = np.zeros_like(s)
        expected[:, [0, 2, 3]] = ref_grad(s[:, [0, 2, 3]], t[:, [0, 2, 3]], beta=beta)[0]
        np.testing.assert_allclose(st.grad.numpy(), expected, rtol=1e-10, atol=1e-13)


def test_torch_func_grad_takes_the_formula():
    """Under torch.func the Function is not used (traced): torch.func.grad still differentiates
    the formula, and agrees with the Function's gradient."""
    s, t, target = _data((6, 8), None, seed=6)
    y = torch.from_numpy(target)
    with xce.config(**BLOCKS):
        g = torch.func.grad(lambda a: generalized_jsd(a, torch.tensor(t), y, beta=0.3, temperature=2.0))(
            torch.tensor(s))
        st = torch.tensor(s, requires_grad=True)
        generalized_jsd(st, torch.tensor(t), y, beta=0.3, temperature=2.0).backward()
    torch.testing.assert_close(g, st.grad, rtol=1e-12, atol=1e-14)


def test_torch_compile_backward():
    """torch.compile (aot_eager: AOTAutograd traces the backward) takes the formula, even where the
    eager call would take the Function."""
    s, t, target = _data((6, 8), -1, seed=7)
    y = torch.from_numpy(target)
    torch._dynamo.reset()
    with xce.config(**BLOCKS):
        compiled = torch.compile(lambda a, b: kl_div_with_logits(a, b, y, direction="reverse", axis=-1),
                                 backend="aot_eager", fullgraph=True)
        st = torch.tensor(s, requires_grad=True)
        compiled(st, torch.tensor(t)).backward()
    np.testing.assert_allclose(st.grad.numpy(), ref_grad(s, t, target, beta=1.0, axis=-1)[0], rtol=1e-10,
                               atol=1e-13)

"""linear_distillation_loss equals the unfused distillation loss of the two heads' logits (values
and the student's gradients), blocked or not, on every backend; the teacher gets no gradient.

References, in float64: the generalized JSD written out in NumPy from its definition (values),
and the same with ``F.linear``, ``F.log_softmax`` and ``F.kl_div(log_target=True)`` in PyTorch
(values and, by autograd, gradients).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import xce
import xce.linear_distillation as lindist
from xce.linear_distillation import linear_distillation_loss

from conftest import assert_close_to, to_numpy
from reference import rounded

torch = pytest.importorskip("torch")
F = torch.nn.functional

RNG = np.random.default_rng(5)
N, DS, DT, V = 11, 5, 7, 9  # the teacher's hidden size differs from the student's
HS, WS, BS = RNG.normal(size=(N, DS)), RNG.normal(size=(V, DS)), RNG.normal(size=V)
HT, WT, BT = RNG.normal(size=(N, DT)), RNG.normal(size=(V, DT)), RNG.normal(size=V)
Y = RNG.integers(0, V, size=N)
Y[[1, 6]] = -100
REDUCTIONS = ("mean", "sum", "none", "batchmean")
# (loss, beta, temperature, softcap, biases): every loss meets both temperatures, softcaps, biases.
CONFIGS = [
    ("jsd", 0.5, 1.0, None, False),
    ("jsd", 0.3, 2.0, 4.0, True),
    ("forward_kl", 0.5, 2.0, None, True),
    ("reverse_kl", 0.5, 1.0, 4.0, False),
    ("jsd", 0.0, 1.0, None, True),
    ("jsd", 1.0, 2.0, None, False),
]
BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}


def _beta(loss, beta):
    return BETA.get(loss, beta)


# --- the float64 references -------------------------------------------------------------------


def numpy_reference(hs, ws, bs, ht, wt, bt, y, *, beta, temperature=1.0, softcap=None, reduction="mean"):
    """The definition, in probability space: Σ P log(P/M) etc. from the two softmaxes."""
    s, t = hs @ ws.T, ht @ wt.T
    s, t = (s if bs is None else s + bs), (t if bt is None else t + bt)
    if softcap is not None:
        s, t = softcap * np.tanh(s / softcap), softcap * np.tanh(t / softcap)

    def softmax(x):
        e = np.exp(x / temperature - (x / temperature).max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def kl(a, b):
        return np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / b), 0.0), axis=-1)

    q, p = softmax(s), softmax(t)
    if beta == 0.0:
        per = kl(p, q)
    elif beta == 1.0:
        per = kl(q, p)
    else:
        m = beta * p + (1 - beta) * q
        per = beta * kl(p, m) + (1 - beta) * kl(q, m)
    kept = np.ones(per.shape, bool) if y is None else y != -100
    per = np.where(kept, per, 0.0)
    return {"none": per, "sum": per.sum(), "batchmean": per.sum() / s.shape[0], "mean": per.sum() / kept.sum()}[
        reduction]


def torch_reference(hs, ws, bs, ht, wt, bt, y, *, beta, temperature=1.0, softcap=None, reduction="mean"):
    """The same with F.linear, F.log_softmax and F.kl_div; the teacher detached."""
    s, t = F.linear(hs, ws, bs), F.linear(ht, wt, bt).detach()
    if softcap is not None:
        s, t = softcap * torch.tanh(s / softcap), softcap * torch.tanh(t / softcap)
    ls, lt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)

    def kl(log_a, log_b):  # KL(a‖b) per position
        return F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)

    if beta == 0.0:
        per = kl(lt, ls)
    elif beta == 1.0:
        per = kl(ls, lt)
    else:
        lm = torch.logsumexp(torch.stack([lt + math.log(beta), ls + math.log1p(-beta)]), 0)
        per = beta * kl(lt, lm) + (1 - beta) * kl(ls, lm)
    kept = torch.ones(per.shape, dtype=torch.bool) if y is None else torch.as_tensor(y) != -100
    per = torch.where(kept, per, 0.0)
    return {"none": per, "sum": per.sum(), "batchmean": per.sum() / s.shape[0], "mean": per.sum() / kept.sum()}[
        reduction]


def reference_grads(bias, cot=None, hs=HS, ht=HT, y=Y, **kwargs):
    """(loss, d_hs, d_Ws, d_bs) by torch autograd through the reference."""
    h, w = torch.tensor(hs, requires_grad=True), torch.tensor(WS, requires_grad=True)
    b = torch.tensor(BS, requires_grad=True) if bias else None
    out = torch_reference(h, w, b, torch.tensor(ht), torch.tensor(WT), torch.tensor(BT) if bias else None, y,
                          **kwargs)
    (out * (1.0 if cot is None else torch.from_numpy(cot))).sum().backward()
    return out.detach().numpy(), h.grad.numpy(), w.grad.numpy(), None if b is None else b.grad.numpy()


def _arrays(backend, bias, dtype=None):
    a = [backend.asarray(x, dtype) for x in (HS, WS, HT, WT)]
    return (*a, backend.asarray(BS, dtype) if bias else None, backend.asarray(BT, dtype) if bias else None)


# --- values on every backend ------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "beta", "temperature", "softcap", "bias"), CONFIGS)
def test_values_match_the_unfused_loss(backend, loss, beta, temperature, softcap, bias):
    xp = backend.xp
    hs, ws, ht, wt, bs, bt = _arrays(backend, bias, xp.float64)
    y = backend.asarray(Y)
    kw = dict(temperature=temperature, softcap=softcap)
    for reduction in REDUCTIONS:
        out = linear_distillation_loss(hs, ws, ht, wt, y, loss=loss, beta=beta, reduction=reduction, student_bias=bs,
                                       teacher_bias=bt, block_rows=4, **kw)
        expected = numpy_reference(HS, WS, BS if bias else None, HT, WT, BT if bias else None, Y,
                                   beta=_beta(loss, beta), reduction=reduction, **kw)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def test_torch_reference_is_the_numpy_reference():
    """The two references agree (F.kl_div / log-space mixture vs the probability-space definition)."""
    for loss, beta, temperature, softcap, _ in CONFIGS:
        for reduction in REDUCTIONS:
            kw = dict(beta=_beta(loss, beta), temperature=temperature, softcap=softcap, reduction=reduction)
            t = torch_reference(*(torch.tensor(a) for a in (HS, WS, BS, HT, WT, BT)), Y, **kw)
            np.testing.assert_allclose(t.numpy(), numpy_reference(HS, WS, BS, HT, WT, BT, Y, **kw), rtol=1e-12)


def test_leading_axes_without_target(backend):
    """(B, T, D) hidden states: "none" has shape (B, T), "batchmean" divides by B, "mean" by B·T;
    no target: every position counts."""
    xp = backend.xp
    hs, ht = HS[:10].reshape(2, 5, DS), HT[:10].reshape(2, 5, DT)
    for reduction in REDUCTIONS:
        out = linear_distillation_loss(backend.asarray(hs), backend.asarray(WS), backend.asarray(ht),
                                       backend.asarray(WT), beta=0.3, reduction=reduction, block_rows=3)
        expected = numpy_reference(hs, WS, None, ht, WT, None, None, beta=0.3, reduction=reduction)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        if reduction == "batchmean":
            np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-12)
            assert np.isclose(expected * 2, numpy_reference(hs, WS, None, ht, WT, None, None, beta=0.3,
                                                            reduction="sum"))


@pytest.mark.parametrize("block_rows", [None, 1, 4, 100])
def test_block_sizes_agree(block_rows):
    ref = numpy_reference(HS, WS, BS, HT, WT, BT, Y, beta=0.3, reduction="none")
    out = linear_distillation_loss(HS, WS, HT, WT, Y, beta=0.3, reduction="none", student_bias=BS, teacher_bias=BT,
                                   block_rows=block_rows)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    with xce.config(block_rows=2):  # the engine's option governs the default
        out = linear_distillation_loss(HS, WS, HT, WT, Y, beta=0.3, reduction="none", student_bias=BS, teacher_bias=BT)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


# --- gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss", "beta", "temperature", "softcap", "bias"), CONFIGS)
def test_value_and_grad_matches_autograd(backend, loss, beta, temperature, softcap, bias):
    if backend.name in ("jax-jit", "dask"):
        pytest.skip("value_and_grad runs eagerly (jax eager covers the unfused formula)")
    xp = backend.xp
    hs, ws, ht, wt, bs, bt = _arrays(backend, bias, xp.float64)
    cot = RNG.normal(size=N)
    f = xce.value_and_grad(linear_distillation_loss)
    for reduction, c in [("mean", 2.0), ("sum", None), ("batchmean", None), ("none", cot)]:
        ref = reference_grads(bias, None if c is None else np.asarray(c), beta=_beta(loss, beta),
                              temperature=temperature, softcap=softcap, reduction=reduction)
        value, (dh, dw, db) = f(hs, ws, ht, wt, backend.asarray(Y), loss=loss, beta=beta, temperature=temperature,
                                softcap=softcap, reduction=reduction, student_bias=bs, teacher_bias=bt, block_rows=3,
                                cotangent=None if c is None else backend.asarray(c, xp.float64))
        for got, want in zip((value, dh, dw), ref):
            assert_close_to(got, want, dtype=xp.float64, backend=backend)
        if bias:
            assert_close_to(db, ref[3], dtype=xp.float64, backend=backend)
        else:
            assert db is None


@pytest.mark.parametrize(("loss", "beta", "temperature", "softcap", "bias"), CONFIGS)
def test_torch_backward_matches_autograd(loss, beta, temperature, softcap, bias):
    """The autograd Function: gradients to the student's hidden, weight and bias; none to the
    teacher even where its tensors require grad."""
    cot = RNG.normal(size=N)
    for reduction in REDUCTIONS:
        c = cot if reduction == "none" else None
        ref = reference_grads(bias, c, beta=_beta(loss, beta), temperature=temperature, softcap=softcap,
                              reduction=reduction)
        h, w = torch.tensor(HS, requires_grad=True), torch.tensor(WS, requires_grad=True)
        b = torch.tensor(BS, requires_grad=True) if bias else None
        th, tw = torch.tensor(HT, requires_grad=True), torch.tensor(WT, requires_grad=True)
        out = linear_distillation_loss(h, w, th, tw, torch.from_numpy(Y), loss=loss, beta=beta,
                                       temperature=temperature, softcap=softcap, reduction=reduction, student_bias=b,
                                       teacher_bias=torch.tensor(BT, requires_grad=True) if bias else None,
                                       block_rows=4)
        assert isinstance(out.grad_fn, torch.autograd.function.BackwardCFunction)
        (out * (3.0 if c is None else torch.from_numpy(c))).sum().backward()
        np.testing.assert_allclose(out.detach().numpy(), ref[0], rtol=1e-12, atol=1e-14)
        scale = 3.0 if c is None else 1.0
        for got, want in zip((h.grad, w.grad, None if b is None else b.grad), ref[1:]):
            if want is not None:
                np.testing.assert_allclose(got.numpy(), scale * want, rtol=1e-10, atol=1e-13)
        assert th.grad is None and tw.grad is None


def test_torch_partial_requires_grad_and_gradcheck():
    """Only the weight requires grad (frozen hidden states); gradcheck through the Function."""
    w = torch.tensor(WS, requires_grad=True)
    linear_distillation_loss(torch.tensor(HS), w, torch.tensor(HT), torch.tensor(WT), torch.from_numpy(Y),
                             beta=0.3).backward()
    np.testing.assert_allclose(w.grad.numpy(), reference_grads(False, beta=0.3)[2], rtol=1e-10, atol=1e-13)
    h = torch.tensor(HS[:5], requires_grad=True)
    w = torch.tensor(WS, requires_grad=True)
    b = torch.tensor(BS, requires_grad=True)
    ht, wt, y = torch.tensor(HT[:5]), torch.tensor(WT), torch.tensor([0, 3, -100, 8, 2])
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda h, w, b, r=reduction: linear_distillation_loss(h, w, ht, wt, y, beta=0.3, temperature=1.5,
                                                                  softcap=3.0, reduction=r, student_bias=b,
                                                                  block_rows=2), (h, w, b))


def test_torch_without_grad_takes_the_sweep():
    out = linear_distillation_loss(torch.tensor(HS), torch.tensor(WS), torch.tensor(HT), torch.tensor(WT),
                                   torch.from_numpy(Y), block_rows=2)
    assert out.grad_fn is None
    np.testing.assert_allclose(out.numpy(), numpy_reference(HS, WS, None, HT, WT, None, Y, beta=0.5), rtol=1e-12)


def test_jax_grad_under_jit():
    """jax.grad (jitted) w.r.t. the student's hidden, weight and bias; zero for the teacher."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    for loss, beta, temperature, softcap, _ in CONFIGS[:4]:
        ref = reference_grads(True, beta=_beta(loss, beta), temperature=temperature, softcap=softcap)

        def f(hs, ws, bs, ht, wt, loss=loss, beta=beta, temperature=temperature, softcap=softcap):
            return linear_distillation_loss(hs, ws, ht, wt, jnp.asarray(Y), loss=loss, beta=beta,
                                            temperature=temperature, softcap=softcap, student_bias=bs,
                                            teacher_bias=jnp.asarray(BT))

        grads = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4)))(*(jnp.asarray(a) for a in (HS, WS, BS, HT, WT)))
        for got, want in zip(grads, ref[1:]):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
        assert not np.any(np.asarray(grads[3])) and not np.any(np.asarray(grads[4]))


def test_masked_vocabulary_is_finite():
    """A class at -inf in both models (a -inf bias) contributes 0: finite values and gradients."""
    bs, bt = BS.copy(), BT.copy()
    bs[2] = bt[2] = -np.inf
    keep = [c for c in range(V) if c != 2]
    for beta in (0.0, 0.3, 1.0):
        value, (dh, dw, db) = xce.value_and_grad(linear_distillation_loss)(
            HS, WS, HT, WT, Y, beta=beta, student_bias=bs, teacher_bias=bt, block_rows=4)
        expected = numpy_reference(HS, WS[keep], BS[keep], HT, WT[keep], BT[keep], Y, beta=beta)
        np.testing.assert_allclose(value, expected, rtol=1e-12)
        assert np.all(np.isfinite(dh)) and np.all(np.isfinite(dw)) and np.isfinite(db[keep]).all()
        assert np.all(dw[2] == 0.0)


def test_half_precision_and_float32(backend):
    """float32 and bfloat16 hidden states: the products in the input dtype, the divergence in
    float32, the result in the input dtype."""
    if backend.name in ("dask", "array_api_strict"):
        pytest.skip("covered by numpy (float32); no bfloat16")
    for name, rtol in (("float32", 1e-5), ("bfloat16", 3e-2)):
        dtype = getattr(backend.xp, name, None)
        if dtype is None:
            continue
        arrays = [rounded(a, name) for a in (HS, WS, HT, WT)]
        out = linear_distillation_loss(*(backend.asarray(a, dtype) for a in arrays), backend.asarray(Y), beta=0.3,
                                       temperature=2.0, block_rows=4)
        assert out.dtype == dtype
        expected = numpy_reference(*arrays[:2], None, *arrays[2:], None, Y, beta=0.3, temperature=2.0)
        np.testing.assert_allclose(to_numpy(out).astype(np.float64), expected, rtol=rtol)


def test_torch_bfloat16_backward():
    arrays = [rounded(a, "bfloat16") for a in (HS, WS, HT, WT)]
    h = torch.tensor(arrays[0], dtype=torch.bfloat16, requires_grad=True)
    w = torch.tensor(arrays[1], dtype=torch.bfloat16, requires_grad=True)
    out = linear_distillation_loss(h, w, *(torch.tensor(a, dtype=torch.bfloat16) for a in arrays[2:]),
                                   torch.from_numpy(Y), loss="forward_kl", block_rows=4)
    out.backward()
    assert out.dtype == h.grad.dtype == w.grad.dtype == torch.bfloat16
    ref = reference_grads(False, hs=arrays[0], ht=arrays[2], beta=0.0)
    np.testing.assert_allclose(h.grad.double().numpy(), ref[1], rtol=5e-2, atol=2e-3)


def test_numpy_temporaries_do_not_grow_with_n():
    """Peak memory beyond the outputs is a few blocks of logits, not O(N·V)."""
    import tracemalloc

    n, d, v, rows = 1024, 32, 1024, 16
    rng = np.random.default_rng(0)
    hs, ht = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    ws, wt = (rng.normal(size=(v, d)) / 4).astype(np.float32), (rng.normal(size=(v, d)) / 4).astype(np.float32)
    f = xce.value_and_grad(linear_distillation_loss)
    f(hs[:4], ws, ht[:4], wt, block_rows=rows)  # first-call imports and caches are not the sweep's
    tracemalloc.start()
    try:
        f(hs, ws, ht, wt, block_rows=rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    block = rows * v * 4
    extra = peak - (n * d + v * d) * 4  # beyond d_hidden and d_weight
    # Each model's logits are 64 blocks; about a dozen block-sized temporaries live at once.
    assert extra < 16 * block, extra / block


# --- errors, the loss object --------------------------------------------------------------------


def test_errors_name_the_argument():
    f = linear_distillation_loss
    with pytest.raises(ValueError, match=r"temperature must be a finite float > 0; got 0\.0"):
        f(HS, WS, HT, WT, temperature=0.0)
    with pytest.raises(ValueError, match=r"temperature must be a finite float > 0; got -1"):
        f(HS, WS, HT, WT, temperature=-1)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]; got 1\.5"):
        f(HS, WS, HT, WT, beta=1.5)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]; got -0\.2"):
        f(HS, WS, HT, WT, loss="forward_kl", beta=-0.2)
    with pytest.raises(ValueError, match=r"softcap must be a finite float > 0; got 0\.0\. Pass softcap=None"):
        f(HS, WS, HT, WT, softcap=0.0)
    with pytest.raises(ValueError, match="loss must be one of 'jsd', 'forward_kl', 'reverse_kl'; got 'kl'"):
        f(HS, WS, HT, WT, loss="kl")
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum', 'batchmean'; got 'avg'"):
        f(HS, WS, HT, WT, reduction="avg")
    with pytest.raises(ValueError, match=r"teacher_hidden of shape \(10, 7\) and student_hidden of shape \(11, 5\) "
                                         "must have the same leading shape"):
        f(HS, WS, HT[:10], WT)
    with pytest.raises(ValueError, match=r"teacher_weight has 8 rows \(classes\) but student_weight has 9"):
        f(HS, WS, HT, WT[:8])
    with pytest.raises(ValueError, match=r"teacher_weight must have shape \(V, D\) = \(vocabulary, 7\)"):
        f(HS, WS, HT, WS)
    with pytest.raises(ValueError, match=r"student_bias must have shape \(9,\)"):
        f(HS, WS, HT, WT, student_bias=BS[:3])
    with pytest.raises(TypeError, match=r"student_hidden \(float64\) and teacher_hidden \(float32\) must have the "
                                        "same dtype"):
        f(HS, WS, HT.astype(np.float32), WT.astype(np.float32))
    with pytest.raises(TypeError, match=r"teacher_hidden \(float64\) and teacher_weight \(float32\)"):
        f(HS, WS, HT, WT.astype(np.float32))
    with pytest.raises(ValueError, match=r"target shape \(10,\) does not match student_hidden's shape \(11, 5\) "
                                         r"without its last axis; expected \(11,\)"):
        f(HS, WS, HT, WT, Y[:10])
    with pytest.raises(TypeError, match="student_hidden must be a real floating-point array"):
        f(HS.astype(np.int64), WS, HT, WT)
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        f(HS, WS, HT, WT, block_rows=0)
    with pytest.raises(TypeError, match="arrays from different libraries cannot be mixed"):
        f(HS, WS, torch.tensor(HT), WT)
    # D may differ between the models (5 and 7 here) and the teacher's bias is optional.
    assert np.isfinite(f(HS, WS, HT, WT, student_bias=BS))


def test_loss_object_holds_the_configuration():
    obj = xce.LinearDistillationLoss("jsd", beta=0.3, temperature=2.0, softcap=4.0, reduction="sum")
    assert repr(obj) == ("LinearDistillationLoss(loss='jsd', beta=0.3, temperature=2.0, ignore_index=-100, "
                         "reduction='sum', softcap=4.0, block_rows=None)")
    expected = linear_distillation_loss(HS, WS, HT, WT, Y, beta=0.3, temperature=2.0, softcap=4.0, reduction="sum",
                                        student_bias=BS)
    np.testing.assert_allclose(obj(HS, WS, HT, WT, Y, student_bias=BS), expected, rtol=1e-14)
    assert obj.beta == 0.3 and obj.loss == "jsd"
    with pytest.raises(ValueError, match="temperature must be positive"):
        xce.LinearDistillationLoss(temperature=0.0)
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        xce.LinearDistillationLoss(beta=2.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        xce.LinearDistillationLoss("hinton")


def test_default_block_rows_follow_the_engine():
    """Without block_rows, a block's two (rows, V) logits fill the engine's matmul block (capped at
    N); xce.config(block_rows=) overrides it."""
    import array_api_compat.numpy as anp

    from xce import _engine

    heads = lindist.Heads(HS, WS, None, HT, WT, None)
    checked = lindist.check_arguments(heads, None, "jsd", 0.5, 1.0, -100, "mean", None, None, xp=anp)
    assert lindist._start(heads, checked, None, None, True, None, xp=anp).rows == N
    wide = np.zeros((3 * _engine.block_bytes(HS, "matmul") // 16, DS))  # V so large that one row is 3 blocks
    heads = heads._replace(student_weight=wide, teacher_weight=np.zeros((wide.shape[0], DT)))
    assert lindist._start(heads, checked, None, None, True, None, xp=anp).rows == 1
    with xce.config(block_rows=3):
        assert lindist._start(heads, checked, None, None, True, None, xp=anp).rows == 3

"""PyTorch's blocked native forward (``xce.adapters.torch._blocked_native``): a large CPU
forward without autograd is ``F.cross_entropy`` one block of rows at a time, the per-block
sums added and ``"mean"`` divided by xce's own denominator. It must give the definition's
result (float64 references), serve exactly those calls, and leave every other one (autograd,
non-finite results, invalid targets) to the paths that already handle it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xce

torch = pytest.importorskip("torch")
adapter = pytest.importorskip("xce.adapters.torch")
F = torch.nn.functional

RNG = np.random.default_rng(41)
N, C = 11, 7  # 11 rows in blocks of 3: a short last block


def _spy(monkeypatch, name: str) -> list[bool]:
    """Every size above the one-piece delegation; ``adapter.<name>`` records, per call,
    whether it served (returned a result) or handed the call on (None)."""
    calls: list[bool] = []
    real = getattr(adapter, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(adapter, "DELEGATE_MAX_ELEMENTS_CPU", 0)
    monkeypatch.setattr(adapter, name, spy)
    return calls


@pytest.fixture
def served(monkeypatch):
    """The forward without autograd in blocks (of 3 rows, under the tests' config)."""
    return _spy(monkeypatch, "_blocked_native")


def _data(dtype=torch.float32, ignored=True):
    x = torch.tensor(RNG.normal(scale=3.0, size=(N, C)), dtype=dtype)
    y = torch.tensor(RNG.integers(0, C, size=N), dtype=torch.int64)
    if ignored:
        y[[1, 7]] = -100
    return x, y


def _reference(x, y, **kwargs):
    """float64 F.cross_entropy (what xce's definition gives for finite logits)."""
    w = kwargs.pop("weight", None)
    return F.cross_entropy(x.double(), y, None if w is None else w.double(), **kwargs)


TOL = {torch.float32: dict(rtol=2e-6, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_blocks_give_the_definitions_result(served, dtype, reduction, eps, weighted):
    x, y = _data(dtype)
    w = torch.tensor(RNG.uniform(0.2, 2.0, size=C), dtype=dtype) if weighted else None
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(x, y, w, reduction=reduction, label_smoothing=eps)
    assert served == [True]
    assert out.dtype == dtype and out.shape == ((N,) if reduction == "none" else ())
    want = _reference(x, y, weight=w, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(out.double().numpy(), want.numpy(), **TOL[dtype])
    with xce.config(delegate=False):
        definition = xce.cross_entropy(x, y, w, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(out.numpy(), definition.numpy(), **TOL[dtype])


def test_off_target_smoothing_maps_to_uniform(served):
    x, y = _data()
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(x, y, label_smoothing=0.2, label_smoothing_mode="off_target")
    assert served == [True]
    want = _reference(x, y, label_smoothing=0.2 * C / (C - 1))
    np.testing.assert_allclose(out.double().numpy(), want.numpy(), **TOL[torch.float32])


def test_every_position_ignored(served):
    x, y = _data()
    y[:] = -100
    with xce.config(enabled=True, block_rows=3):
        mean = xce.cross_entropy(x, y)
        total = xce.cross_entropy(x, y, reduction="sum")
    assert math.isnan(float(mean)) and float(total) == 0.0


def test_plus_inf_logits_give_the_limit(served):
    """A NaN from the kernel (+inf on another class) sends the call to the definition: +inf."""
    x, y = _data(ignored=False)
    y[4] = 0
    x[4, 3] = math.inf
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(x, y, reduction="none")
    assert served == [True]  # served, then refused by the NaN check
    assert math.isinf(float(out[4])) and not torch.isnan(out).any()


def test_invalid_targets_raise_xces_error(served):
    x, y = _data()
    y[5] = C
    with xce.config(enabled=True, block_rows=3), pytest.raises(IndexError, match="outside"):
        xce.cross_entropy(x, y)


def test_autograd_takes_the_engines_backward(served):
    x, y = _data()
    x.requires_grad_(True)
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(x, y)
    assert served == []
    out.backward()
    xd = x.detach().double().requires_grad_(True)
    _reference(xd, y).backward()
    np.testing.assert_allclose(x.grad.double().numpy(), xd.grad.numpy(), **TOL[torch.float32])
    with torch.no_grad(), xce.config(enabled=True, block_rows=3):
        xce.cross_entropy(x, y)  # the same tensor without autograd recording: served
    assert served == [True]


def test_a_large_input_is_served_by_default(monkeypatch):
    """Above DELEGATE_MAX_ELEMENTS_CPU with the default plan (no config block)."""
    calls = []
    real = adapter._blocked_native
    monkeypatch.setattr(adapter, "_blocked_native", lambda *a: calls.append(1) or real(*a))
    n, c = 300, adapter.DELEGATE_MAX_ELEMENTS_CPU // 300 + 7
    x = torch.tensor(RNG.normal(size=(n, c)), dtype=torch.float32)
    y = torch.tensor(RNG.integers(0, c, size=n), dtype=torch.int64)
    y[::10] = -100
    out = xce.cross_entropy(x, y, label_smoothing=0.1)
    assert calls == [1]
    np.testing.assert_allclose(float(out), float(_reference(x, y, label_smoothing=0.1)), rtol=2e-6)


def test_the_blocks_above_the_limit_are_at_most_5_percent_of_the_logits(monkeypatch):
    """The blocked forward's extra memory is one block's log-softmax: with the default plan,
    just above 32 MiB of logits (where a 4 MiB block was 10% of them) and far above it
    (16 MiB blocks), every block F.cross_entropy gets holds at most 1/20 of the logits."""
    blocks: list[tuple[int, ...]] = []
    real = F.cross_entropy

    class _Spy:
        def __getattr__(self, name):
            return getattr(F, name)

        @staticmethod
        def cross_entropy(input, *args, **kwargs):
            blocks.append(tuple(input.shape))
            return real(input, *args, **kwargs)

    monkeypatch.setattr(adapter, "_F", _Spy())
    for n, c in [(1024, adapter.DELEGATE_MAX_ELEMENTS_CPU // 1024 + 8), (4096, 32000)]:
        blocks.clear()
        x = torch.empty((1, c)).normal_().expand(n, c)  # one row of memory: the sizes are what counts
        y = torch.tensor(RNG.integers(0, c, size=n), dtype=torch.int64)
        with torch.no_grad():
            out = xce.cross_entropy(x, y)
        assert len(blocks) >= 20 and sum(b[0] for b in blocks) == n
        assert max(b[0] for b in blocks) * c <= n * c / 20
        np.testing.assert_allclose(float(out), float(_reference(x, y)), rtol=2e-6)


# The one-piece limits (DELEGATE_MAX_ELEMENTS_CPU: 32 MiB of logits for a forward; under
# autograd DELEGATE_MAX_ELEMENTS_CPU_AUTOGRAD), at their defaults.
_BETWEEN = (512, (1 << 21) // 512 + 8)  # above the autograd limit, below the forward's (float32)


def _routes(monkeypatch) -> list[str]:
    """Which route served each call: "blocks" (the forward), "function" (autograd's) or
    neither (nothing recorded: F.cross_entropy in one piece)."""
    routes: list[str] = []
    for name, label in (("_blocked_native", "blocks"), ("_native_loss_and_lse", "function")):
        real = getattr(adapter, name)
        monkeypatch.setattr(adapter, name, lambda *a, real=real, label=label: routes.append(label) or real(*a))
    return routes


def test_a_forward_below_32_mib_of_logits_is_one_piece(monkeypatch):
    """float32 above the autograd limit but under 32 MiB: F.cross_entropy in one piece, which
    beats its blocks there; float64 of as many logits (over 32 MiB): the blocks."""
    routes = _routes(monkeypatch)
    n, c = _BETWEEN
    y = torch.tensor(RNG.integers(0, c, size=n), dtype=torch.int64)
    x32 = torch.tensor(RNG.normal(size=(n, c)), dtype=torch.float32)
    out = xce.cross_entropy(x32, y)
    assert routes == []
    np.testing.assert_allclose(float(out), float(_reference(x32, y)), rtol=2e-6)
    x64 = torch.tensor(RNG.normal(size=(n, (1 << 22) // n + 8)), dtype=torch.float64)
    y64 = torch.tensor(RNG.integers(0, x64.shape[1], size=n), dtype=torch.int64)
    out = xce.cross_entropy(x64, y64)
    assert routes == ["blocks"]
    np.testing.assert_allclose(float(out), float(_reference(x64, y64)), rtol=1e-12)


def test_under_autograd_the_function_serves_from_the_smaller_limit(monkeypatch):
    routes = _routes(monkeypatch)
    n, c = _BETWEEN
    x = torch.tensor(RNG.normal(size=(n, c)), dtype=torch.float32, requires_grad=True)
    y = torch.tensor(RNG.integers(0, c, size=n), dtype=torch.int64)
    xce.cross_entropy(x, y).backward()
    assert routes == ["function"]
    xd = x.detach().double().requires_grad_(True)
    _reference(xd, y).backward()
    np.testing.assert_allclose(x.grad.double().numpy(), xd.grad.numpy(), rtol=1e-4, atol=1e-10)


def test_z_loss_keeps_the_smaller_limit_without_autograd(monkeypatch):
    """torch.logsumexp keeps an (N, C) array of its own: above the smaller limit the z-loss
    forward is not F.cross_entropy in one piece (the definition's blocked engine serves)."""
    one_piece = []
    real = adapter._native_cross_entropy
    monkeypatch.setattr(adapter, "_native_cross_entropy", lambda *a: one_piece.append(1) or real(*a))
    n, c = _BETWEEN
    x = torch.tensor(RNG.normal(size=(n, c)), dtype=torch.float32)
    y = torch.tensor(RNG.integers(0, c, size=n), dtype=torch.int64)
    out = xce.cross_entropy(x, y, z_loss=1e-3)
    assert one_piece == []
    xce.cross_entropy(x, y)
    assert one_piece == [1]  # (the same input without z-loss: one piece)
    lse = torch.logsumexp(x.double(), 1)
    np.testing.assert_allclose(float(out), float(_reference(x, y) + 1e-3 * (lse**2).mean()), rtol=2e-6)


# --- the autograd Function's forward (adapters/torch.py _native_loss_and_lse) -----------------


@pytest.fixture
def native_forward(monkeypatch):
    """The autograd Function's forward from the kernel's blocks (autograd takes the Function
    at every size once the one-piece delegation is off)."""
    return _spy(monkeypatch, "_native_loss_and_lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_functions_forward_gives_the_definitions_loss_and_gradient(native_forward, dtype, reduction):
    x, y = _data(dtype)
    x[2] *= 4.0  # a row of wider logits (far larger ones: the test below, against the engine)
    xg = x.clone().requires_grad_(True)
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(xg, y, reduction=reduction)
    assert native_forward == [True]
    xd = x.double().requires_grad_(True)
    want = _reference(xd, y, reduction=reduction)
    np.testing.assert_allclose(out.detach().double().numpy(), want.detach().numpy(), **TOL[dtype])
    cotangent = torch.linspace(0.5, 1.5, N, dtype=dtype) if reduction == "none" else torch.tensor(0.7, dtype=dtype)
    out.backward(cotangent)
    want.backward(cotangent.double())
    np.testing.assert_allclose(xg.grad.double().numpy(), xd.grad.numpy(), **TOL[dtype])
    assert torch.all(xg.grad[[1, 7]] == 0)  # ignored rows


def test_the_functions_saved_logsumexp_is_the_engines(native_forward, monkeypatch):
    """lse = max - log_softmax[argmax]: the engine's max-shifted value, so the backward is as
    precise with either forward (large logits, float32)."""
    x, y = _data()
    x *= 100.0
    grads = []
    for use_native in (True, False):
        if not use_native:
            monkeypatch.setattr(adapter, "_native_loss_and_lse", lambda *args: None)
        xg = x.clone().requires_grad_(True)
        with xce.config(enabled=True, block_rows=3):
            xce.cross_entropy(xg, y, reduction="sum").backward()
        grads.append(xg.grad)
    assert native_forward == [True]
    np.testing.assert_allclose(grads[0].numpy(), grads[1].numpy(), rtol=1e-6, atol=1e-7)


def test_the_functions_forward_with_every_row_ignored(native_forward):
    x, y = _data()
    y[:] = -100
    xg = x.clone().requires_grad_(True)
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(xg, y)
    assert native_forward == [True] and math.isnan(float(out.detach()))


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("options", [{"label_smoothing": 0.1}, {"weight": True}, {"z_loss": 1e-2},
                                     {"weight": True, "label_smoothing": 0.2, "z_loss": 1e-2},
                                     {"label_smoothing": 0.15, "label_smoothing_mode": "off_target"}])
def test_the_functions_forward_with_weights_smoothing_and_z_loss(native_forward, options, reduction):
    """The blocks' statistics go through the loss module's own rule (index_loss_from_stats)."""
    x, y = _data(torch.float64)
    options = dict(options)  # (the parameter is shared between the parametrized cases)
    if options.pop("weight", False):
        options["weight"] = torch.linspace(0.5, 2.0, C, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(xg, y, reduction=reduction, **options)
    assert native_forward == [True]
    xd = x.clone().requires_grad_(True)
    with xce.config(delegate=False):
        want = xce.cross_entropy(xd, y, reduction=reduction, **options)
    np.testing.assert_allclose(out.detach().numpy(), want.detach().numpy(), **TOL[torch.float64])
    out.sum().backward()
    want.sum().backward()
    np.testing.assert_allclose(xg.grad.numpy(), xd.grad.numpy(), **TOL[torch.float64])


def test_the_functions_forward_is_not_used_under_delegate_false(native_forward):
    x, y = _data()
    with xce.config(enabled=True, block_rows=3, delegate=False):
        xce.cross_entropy(x.clone().requires_grad_(True), y).backward()
    assert native_forward in ([], [False])


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_the_functions_forward_leaves_non_finite_rows_to_the_definition(native_forward, value):
    x, y = _data(ignored=False)
    y[4] = 0
    x[4, 3] = value
    if value == -math.inf:
        x[4] = -math.inf  # a row of -inf: log_softmax is NaN there, the definition's limit is +inf
    xg = x.clone().requires_grad_(True)
    with xce.config(enabled=True, block_rows=3):
        out = xce.cross_entropy(xg, y, reduction="none")
    assert native_forward == [False]
    with xce.config(delegate=False):
        want = xce.cross_entropy(x, y, reduction="none")
    np.testing.assert_array_equal(torch.isnan(out.detach()).numpy(), torch.isnan(want).numpy())
    np.testing.assert_allclose(out.detach().numpy(), want.numpy(), rtol=2e-6)

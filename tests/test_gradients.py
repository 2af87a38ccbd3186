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
    with xce.config(enabled=True, block_rows=2, delegate=False):  # the analytic backward, not F.cross_entropy
        loss = xce.cross_entropy(xt, torch.tensor(target), weight=None if w is None else torch.tensor(w), **kwargs)
    assert "CrossEntropy" in type(loss.grad_fn).__name__, loss.grad_fn
    loss.backward()
    np.testing.assert_allclose(xt.grad.numpy(), cross_entropy_grad(x, target, weight=w, **kwargs), rtol=1e-10,
                               atol=1e-12)


def test_torch_adapter_forward_computes_the_logsumexp_once(monkeypatch):
    """The forward's one sweep gives the loss and the saved logsumexp; backward reuses it."""
    torch = pytest.importorskip("torch")
    import xce.losses.cross_entropy as engine  # the cross-entropy statistics' blocked sweep

    calls = []
    row_stats = engine.row_stats

    def counted(*args, **kwargs):
        calls.append(1)
        return row_stats(*args, **kwargs)

    monkeypatch.setattr(engine, "row_stats", counted)
    x = torch.randn(12, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 9, (12,))
    with xce.config(enabled=True, block_rows=5, delegate=False):  # the analytic backward, not F.cross_entropy
        loss = xce.cross_entropy(x, t, label_smoothing=0.1)
        assert len(calls) == 1
        loss.backward()
    assert len(calls) == 1
    expected = torch.func.grad(lambda v: torch.nn.functional.cross_entropy(v, t, label_smoothing=0.1))(x.detach())
    np.testing.assert_allclose(x.grad.numpy(), expected.numpy(), rtol=1e-10, atol=1e-13)


def _torch_case(torch, shape, axis, weighted, ignore, probabilities, seed=3):
    g = torch.Generator().manual_seed(seed)
    n_classes = shape[axis]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3.0
    x[0, ...] = 0.0  # a row of ties
    per_position = shape[:axis] + shape[axis + 1 :] if axis != -1 else shape[:-1]
    if probabilities:
        target = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=axis)
    else:
        target = torch.randint(0, n_classes, per_position, generator=g)
        if ignore:
            target.view(-1)[::4] = -100
    weight = torch.rand(n_classes, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    if weighted:
        weight[1] = 0.0  # a zero weight: a zero per-row coefficient
    return x, target, weight


# (shape, axis): (R, C) with few and with many classes (the per-row target assignment), and
# (B, T, C) classes last (flattened to rows), and (N, C, d) classes off the last axis.
BLOCKED_LAYOUTS = [((37, 11), 1), ((13, 4100), 1), ((3, 7, 11), -1), ((9, 11, 4), 1)]


@pytest.mark.parametrize(("shape", "axis"), BLOCKED_LAYOUTS)
@pytest.mark.parametrize(("weighted", "ignore", "eps", "reduction", "probabilities"),
                         [(False, False, 0.0, "mean", False), (True, True, 0.1, "mean", False),
                          (True, False, 0.2, "none", False), (False, True, 0.1, "sum", False),
                          (True, False, 0.1, "mean", True), (False, False, 0.0, "none", True)])
def test_blocked_backward_matches_torch_autograd(shape, axis, weighted, ignore, eps, reduction, probabilities):
    """ce_backward's blocked path (small blocks forced) == autograd through F.cross_entropy,
    including a random-sign cotangent for "none" (negative per-row scales)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, target, weight = _torch_case(torch, shape, axis, weighted, ignore, probabilities)
    kw = {"weight": weight, "reduction": reduction, "label_smoothing": eps}
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with xce.config(enabled=True, block_rows=4, delegate=False):  # the analytic backward, not F.cross_entropy
        loss = xce.cross_entropy(a, target, axis=axis, **kw)
    assert "CrossEntropy" in type(loss.grad_fn).__name__
    moved = b if axis == 1 else torch.movedim(b, -1, 1)
    ref = F.cross_entropy(moved, torch.movedim(target, -1, 1) if probabilities and axis == -1 else target, **kw)
    np.testing.assert_allclose(loss.detach().numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with xce.config(enabled=True, block_rows=4, delegate=False):  # the analytic backward, not F.cross_entropy
        loss.backward(g)
    ref.backward(g)
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(("shape", "axis"), BLOCKED_LAYOUTS)
@pytest.mark.parametrize(("weighted", "ignore", "eps", "reduction"),
                         [(False, False, 0.0, "mean"), (True, True, 0.1, "none")])
@pytest.mark.parametrize("check_values", [True, False])
def test_blocked_backward_target_update_is_the_scatter(monkeypatch, shape, axis, weighted, ignore, eps, reduction,
                                                       check_values):
    """In place with the classes last, the target update is the library's scatter, values read
    or not (check_values=False is what an accelerator gets: nothing read on the host); the
    gradients are autograd's through F.cross_entropy either way."""
    torch = pytest.importorskip("torch")
    import xce.losses.cross_entropy as ce

    F = torch.nn.functional
    scattered = []
    real = ce.put_along_class_axis
    monkeypatch.setattr(ce, "put_along_class_axis", lambda *a: scattered.append(1) or real(*a))
    x, target, weight = _torch_case(torch, shape, axis, weighted, ignore, False)
    kw = {"weight": weight, "reduction": reduction, "label_smoothing": eps}
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    g = torch.randn(target.shape if reduction == "none" else (), generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    with xce.config(enabled=True, block_rows=4, delegate=False, check_values=check_values):
        xce.cross_entropy(a, target, axis=axis, **kw).backward(g)
    F.cross_entropy(b if axis == 1 else torch.movedim(b, -1, 1), target, **kw).backward(g)
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert bool(scattered) == (axis % len(shape) == len(shape) - 1)


@pytest.mark.parametrize(("shape", "axis"), BLOCKED_LAYOUTS)
@pytest.mark.parametrize("probabilities", [False, True])
def test_blocked_backward_equals_unblocked_with_z_loss(shape, axis, probabilities):
    torch = pytest.importorskip("torch")
    from xce.grad import cross_entropy_grad

    x, target, weight = _torch_case(torch, shape, axis, True, not probabilities, probabilities)
    kw = {"weight": weight, "label_smoothing": 0.1, "z_loss": 0.05, "axis": axis}
    with xce.config(enabled=False):
        whole = cross_entropy_grad(x, target, **kw)  # one block: the unblocked formula
    a = x.clone().requires_grad_(True)
    with xce.config(enabled=True, block_rows=4, delegate=False):  # the analytic backward, not F.cross_entropy
        xce.cross_entropy(a, target, **kw).backward()
        blocked = cross_entropy_grad(x, target, **kw)  # no saved lse: softmax per block
    np.testing.assert_allclose(a.grad.numpy(), whole.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(blocked.numpy(), whole.numpy(), rtol=1e-13, atol=1e-15)


def test_blocked_backward_bfloat16_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(21, 4100, generator=g) * 3.0).to(torch.bfloat16)
    t = torch.randint(0, 4100, (21,), generator=g)
    t[3] = -100
    a, b = x.clone().requires_grad_(True), x.float().requires_grad_(True)
    with xce.config(enabled=True, block_rows=4, delegate=False):  # the analytic backward, not F.cross_entropy
        xce.cross_entropy(a, t, label_smoothing=0.1).backward()
    F.cross_entropy(b, t, label_smoothing=0.1).backward()
    assert a.grad.dtype == torch.bfloat16
    np.testing.assert_allclose(a.grad.float().numpy(), b.grad.to(torch.bfloat16).float().numpy(), rtol=1e-2,
                               atol=1e-7)
    assert (a.grad[3] == 0).all()

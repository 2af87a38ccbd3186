"""Right gradients on every path (issue 15): probability-target gradients at zero entries,
learnable class weights on large torch inputs, and the NumPy engine after ``fork``.

References are the formulas written out in float64 torch, differentiable in every argument
(PyTorch's own ``nll_loss`` is not differentiable in ``weight``).
"""

from __future__ import annotations

import multiprocessing
import sys

import numpy as np
import pytest

import xce

torch = pytest.importorskip("torch")


def ce_formula(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Cross entropy (classes on axis 1) from its definition, in torch, differentiable in x,
    a probability target and the class weight."""
    n_classes = x.shape[1]
    logp = torch.log_softmax(x, dim=1)
    shape = [1] * x.ndim
    shape[1] = n_classes
    w = torch.ones(n_classes, dtype=x.dtype) if weight is None else weight
    wc = w.reshape(shape)
    if target.is_floating_point():
        q = (1.0 - label_smoothing) * target + label_smoothing / n_classes
        loss = -(wc * q * logp).sum(1)
        return {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]
    kept = target != ignore_index
    safe = torch.where(kept, target, 0)
    w_y = w[safe] * kept
    nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    smooth = -(wc * logp).sum(1)
    loss = ((1.0 - label_smoothing) * w_y * nll + (label_smoothing / n_classes) * smooth) * kept
    return {"mean": loss.sum() / w_y.sum(), "sum": loss.sum(), "none": loss}[reduction]


def _one_hot_rows(rng, n, c, *, soft_rows: int = 2):
    """Probability targets where most rows are one-hot (exact zeros) and a few are soft."""
    q = np.zeros((n, c))
    q[np.arange(n), rng.integers(0, c, size=n)] = 1.0
    q[:soft_rows] = rng.dirichlet(np.ones(c), size=soft_rows)
    q[0, 1] = 0.0  # a zero inside a soft row too
    return q / q.sum(1, keepdims=True)


# (rows, classes): small goes through autograd of the definition; large (>= 65,536 elements)
# took the adapter's analytic-backward route, which recursed (RecursionError) before.
SIZES = [(6, 5), (512, 160)]
CASES = [(size, eps, reduction, weighted) for size in SIZES for eps in (0.0, 0.1) for reduction in ("mean", "sum")
         for weighted in (False, True)]


@pytest.mark.parametrize(("size", "eps", "reduction", "weighted"), CASES)
def test_torch_probability_target_and_weight_gradients(size, eps, reduction, weighted):
    rng = np.random.default_rng(3)
    n, c = size
    x = rng.normal(size=(n, c))
    q = _one_hot_rows(rng, n, c)
    w = rng.uniform(0.5, 2.0, size=c) if weighted else None

    def grads(fn, dtype):
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        qt = torch.tensor(q, dtype=dtype, requires_grad=True)
        wt = None if w is None else torch.tensor(w, dtype=dtype, requires_grad=True)
        loss = fn(xt, qt, wt, reduction=reduction, label_smoothing=eps)
        loss.backward()
        return [loss] + [t.grad for t in (xt, qt, wt) if t is not None]

    expected = grads(ce_formula, torch.float64)
    actual = grads(xce.cross_entropy, torch.float64)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.detach().numpy(), e.detach().numpy(), rtol=1e-10, atol=1e-12)
    # The zero entries carry the true derivative -(1-ε)·s·w_c·ℓ_c, which is not 0.
    assert float(expected[2][q == 0.0].abs().max()) > 1e-3


@pytest.mark.parametrize(("size", "eps", "reduction"), [(s, e, r) for s in SIZES for e in (0.0, 0.1)
                                                       for r in ("mean", "sum")])
def test_torch_index_target_weight_gradient(size, eps, reduction):
    rng = np.random.default_rng(4)
    n, c = size
    x = rng.normal(size=(n, c))
    y = rng.integers(0, c, size=n)
    y[::7] = -100
    w = rng.uniform(0.5, 2.0, size=c)

    def grads(fn):
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        loss = fn(xt, torch.tensor(y), wt, reduction=reduction, label_smoothing=eps)
        loss.backward()
        return loss, xt.grad, wt.grad

    for a, e in zip(grads(xce.cross_entropy), grads(ce_formula)):
        np.testing.assert_allclose(a.detach().numpy(), e.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_jax_probability_target_gradient_at_zero_entries(jit, eps):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 5))
    q = _one_hot_rows(rng, 6, 5)
    w = rng.uniform(0.5, 2.0, size=5)

    def loss(x, q, w):
        return xce.cross_entropy(x, q, w, label_smoothing=eps)

    fn = jax.grad(loss, argnums=(0, 1))
    fn = jax.jit(fn) if jit else fn
    dx, dq = fn(jnp.asarray(x), jnp.asarray(q), jnp.asarray(w))
    xt, qt = torch.tensor(x, requires_grad=True), torch.tensor(q, requires_grad=True)
    ce_formula(xt, qt, torch.tensor(w), label_smoothing=eps).backward()
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dq), qt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_minus_inf_logits_with_zero_target_mass_stay_finite():
    """The fix keeps the old guarantee: a -inf logit with no target mass adds 0 (value and
    d/d input), and d/d target there is the true +inf·(1-ε)·s, not a silent 0."""
    x = torch.tensor([[0.0, -float("inf"), 1.0]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[0.5, 0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    loss = xce.cross_entropy(x, q)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert torch.isfinite(q.grad[0, [0, 2]]).all()


def _child(conn) -> None:
    # Runs in a forked child: the parent's engine pool threads do not exist here.
    x = np.random.default_rng(0).normal(size=(4096, 64))
    y = np.arange(4096) % 64
    with xce.config(threads=2, enabled=True):
        conn.send(float(xce.cross_entropy(x, y)))
    conn.close()


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method (Linux's default)")
def test_engine_after_fork_does_not_hang():
    x = np.random.default_rng(0).normal(size=(4096, 64))
    y = np.arange(4096) % 64
    with xce.config(threads=2, enabled=True, block_rows=64):
        expected = float(xce.cross_entropy(x, y))  # the parent's pool now has live threads
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child,))
    proc.start()
    proc.join(timeout=60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("cross_entropy hung in a forked child (the engine's thread pool was inherited)")
    assert proc.exitcode == 0
    assert parent.poll(1)
    np.testing.assert_allclose(parent.recv(), expected, rtol=1e-12)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("eps", "probabilities"), [(0.0, False), (0.1, False), (0.0, True), (0.1, True)])
def test_jax_class_weight_gradient(jit, reduction, eps, probabilities):
    """jax.grad w.r.t. the class weight is the true derivative (it was a silent zero), the
    "mean" denominator Σ w_y included; input gradients unchanged."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(6)
    x = rng.normal(size=(7, 5))
    if probabilities:
        y = _one_hot_rows(rng, 7, 5)
    else:
        y = rng.integers(0, 5, size=7)
        y[3] = -100
    w = rng.uniform(0.5, 2.0, size=5)

    def loss(x, w):
        return xce.cross_entropy(x, jnp.asarray(y), w, reduction=reduction, label_smoothing=eps).sum()

    fn = jax.grad(loss, argnums=(0, 1))
    dx, dw = (jax.jit(fn) if jit else fn)(jnp.asarray(x), jnp.asarray(w))
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ce_formula(xt, torch.tensor(y), wt, reduction=reduction, label_smoothing=eps).sum().backward()
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dw), wt.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_jax_forward_mode_and_second_order():
    """The custom JVP is linear in its tangents: jvp, jacfwd and a Hessian-vector product agree
    with the plain definition's autodiff (xce.config(delegate=False))."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(4, 6)))
    y = jnp.asarray(rng.integers(0, 6, size=4))
    v = jnp.asarray(rng.normal(size=(4, 6)))

    def loss(x):
        return xce.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-2)

    def hvp(f):
        return jax.jvp(jax.grad(f), (x,), (v,))[1]

    custom = (jax.jvp(loss, (x,), (v,))[1], jax.jacfwd(loss)(x), hvp(loss))
    with xce.config(delegate=False):
        plain = (jax.jvp(loss, (x,), (v,))[1], jax.jacfwd(loss)(x), hvp(loss))
    for a, b in zip(custom, plain):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("n", "c"), [(8, 10), (64, 100), (256, 1000), (1024, 10000)])
def test_jax_jit_grad_memory_is_no_more_than_optaxs(n, c):
    """Issue 13: ``jit(grad)`` of xce.cross_entropy needs no more scratch memory than optax's
    ``softmax_cross_entropy_with_integer_labels(x, y).mean()`` (XLA's own accounting of the
    compiled programs, no data), and its program is the analytic rule: no scatter (autodiff
    of the target gather would add one; optax's has it). The forward may add O(N) bytes:
    ``"mean"`` counts the kept positions (PyTorch's ``ignore_index``), which optax does not."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    x = jax.ShapeDtypeStruct((n, c), jax.numpy.float32)
    y = jax.ShapeDtypeStruct((n,), jax.numpy.int32)

    def compiled(f):
        return jax.jit(f).lower(x, y).compile()

    def theirs(x, y):
        return optax.softmax_cross_entropy_with_integer_labels(x, y).mean()

    for ours, native, slack in [(jax.grad(xce.cross_entropy), jax.grad(theirs), 0),
                                (xce.cross_entropy, theirs, 4 * n)]:
        a, b = compiled(ours).memory_analysis(), compiled(native).memory_analysis()
        if a is None or b is None:
            pytest.skip("this jaxlib reports no memory analysis")
        assert a.temp_size_in_bytes <= b.temp_size_in_bytes + slack
    grad_program = compiled(jax.grad(xce.cross_entropy)).as_text()
    assert "scatter" not in grad_program and "scatter" in compiled(jax.grad(theirs)).as_text()


def test_config_rejects_non_bool_switches():
    with pytest.raises(TypeError, match="delegate must be a bool"), xce.config(delegate=1):
        pass


@pytest.mark.parametrize("mode", ["uniform", "off_target"])
def test_jax_traced_numeric_hyper_parameters(mode):
    """label_smoothing, z_loss (cross_entropy), gamma (focal) and epsilon (poly-1) may be traced
    under jit: one compilation serves a schedule, values and gradients equal the static ones,
    and an out-of-range value gives NaN (its value is not read), as an invalid target does."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(9)
    x = jnp.asarray(rng.normal(size=(6, 5)))
    y = jnp.asarray(rng.integers(0, 5, size=6))
    traces = []

    def ce(x, eps, z):
        traces.append(1)
        return xce.cross_entropy(x, y, label_smoothing=eps, label_smoothing_mode=mode, z_loss=z)

    step = jax.jit(jax.value_and_grad(ce))
    for eps, z in ((0.0, 0.0), (0.1, 1e-3), (0.3, 0.0)):
        loss, dx = step(x, eps, z)
        want_loss, want_dx = jax.value_and_grad(
            lambda x, eps=eps, z=z: xce.cross_entropy(x, y, label_smoothing=eps, label_smoothing_mode=mode,
                                                       z_loss=z))(x)
        np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(dx), np.asarray(want_dx), rtol=1e-10, atol=1e-12)
    assert len(traces) == 1  # one compilation for the whole schedule
    assert np.isnan(float(step(x, 1.5, 0.0)[0])) and np.isnan(float(step(x, 0.1, -1.0)[0]))

    for fn, name, value in ((xce.softmax_focal_loss, "gamma", 1.5), (xce.poly1_cross_entropy, "epsilon", 0.7)):
        traced = jax.jit(jax.value_and_grad(lambda x, v, fn=fn, name=name: fn(x, y, **{name: v})))(x, value)
        static = jax.value_and_grad(lambda x, fn=fn, name=name, value=value: fn(x, y, **{name: value}))(x)
        np.testing.assert_allclose(float(traced[0]), float(static[0]), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(traced[1]), np.asarray(static[1]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_where_mask(backend, probabilities, reduction):
    """optax's where=: masked positions contribute 0 and leave the mean, exactly like ignored
    positions (index targets: the mean divides by Σ w_y over kept positions); gradients too."""
    from conftest import assert_close_to

    xp = backend.xp
    rng = np.random.default_rng(10)
    x = rng.normal(size=(6, 4, 3))  # classes on axis 1, K-dim positions (6, 3)
    w = rng.uniform(0.5, 2.0, size=4)
    keep = rng.uniform(size=(6, 3)) > 0.4
    if probabilities:
        y = np.moveaxis(rng.dirichlet(np.ones(4), size=(6, 3)), -1, 1)
    else:
        y = rng.integers(0, 4, size=(6, 3))
        y[~keep] = 99  # out of range, but masked: never checked, never read
    xt = torch.tensor(x, requires_grad=True)
    if probabilities:
        per = ce_formula(xt, torch.tensor(y), torch.tensor(w), reduction="none", label_smoothing=0.1)
        per = torch.where(torch.tensor(keep), per, 0.0)
        expected = {"none": per, "sum": per.sum(), "mean": per.sum() / keep.sum()}[reduction]
    else:
        expected = ce_formula(xt, torch.tensor(np.where(keep, y, -100)), torch.tensor(w), reduction=reduction,
                              label_smoothing=0.1)
    expected.sum().backward()
    kwargs = {"reduction": reduction, "label_smoothing": 0.1, "where": backend.asarray(keep)}
    args = (backend.asarray(x), backend.asarray(y), backend.asarray(w))
    out = xce.cross_entropy(*args, **kwargs)
    assert_close_to(out, expected.detach().numpy(), dtype=xp.float64, backend=backend)
    if not backend.lazy and backend.name != "array_api_strict" and not backend.name.startswith("torch"):
        grad = xce.grad.cross_entropy_grad(*args, **kwargs)
        assert_close_to(grad, xt.grad.numpy(), dtype=xp.float64, backend=backend)


def test_where_rejects_a_per_class_mask():
    x, y = np.zeros((2, 3)), np.asarray([0, 1])
    with pytest.raises(ValueError, match=r"where of shape .* does not broadcast to the per-position loss"):
        xce.cross_entropy(x, y, where=np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="where must be a boolean mask"):
        xce.cross_entropy(x, y, where=np.ones(2))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_poly1_with_probability_targets(backend, reduction):
    """optax's poly_loss_cross_entropy: -Σ y log p + ε (1 - Σ y p), on every backend; its
    gradient by value_and_grad (eager) and autodiff (torch, jax) against the formula."""
    from conftest import assert_close_to

    xp = backend.xp
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 4, 2))
    y = np.moveaxis(rng.dirichlet(np.ones(4), size=(5, 2)), -1, 1)
    y[0, :, 0] = [0.0, 1.0, 0.0, 0.0]
    xt = torch.tensor(x, requires_grad=True)
    logp = torch.log_softmax(xt, dim=1)
    per = -(torch.tensor(y) * logp).sum(1) + 0.7 * (1.0 - (torch.tensor(y) * logp.exp()).sum(1))
    expected = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    expected.sum().backward()
    out = xce.poly1_cross_entropy(backend.asarray(x), backend.asarray(y), epsilon=0.7, reduction=reduction)
    assert_close_to(out, expected.detach().numpy(), dtype=xp.float64, backend=backend)
    if backend.name == "numpy":
        _, g = xce.value_and_grad(xce.poly1_cross_entropy)(x, y, epsilon=0.7, reduction=reduction)
        np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    if backend.name.startswith("jax"):
        import jax

        g = jax.grad(lambda v: xce.poly1_cross_entropy(v, backend.asarray(y), epsilon=0.7,
                                                         reduction=reduction).sum())(backend.asarray(x))
        np.testing.assert_allclose(np.asarray(g), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="takes no class weight"):
        xce.poly1_cross_entropy(backend.asarray(x), backend.asarray(y), weight=backend.asarray(np.ones(4)))


@pytest.mark.parametrize("name", ["nll_loss", "softmax_focal_loss", "poly1_cross_entropy", "poly1-probabilities"])
def test_where_on_the_index_losses(backend, name):
    """where= on nll, focal and poly-1 (and poly-1's probability targets): the same as the loss
    over the kept positions only (masked ones ignored), values and, eagerly, gradients."""
    from conftest import assert_close_to

    xp = backend.xp
    rng = np.random.default_rng(13)
    x = rng.normal(size=(7, 4))
    keep = np.asarray([True, False, True, True, False, True, True])
    if name == "poly1-probabilities":
        fn, y = xce.poly1_cross_entropy, rng.dirichlet(np.ones(4), size=7)
    else:
        fn, y = getattr(xce, name), rng.integers(0, 4, size=7)
    out = fn(backend.asarray(x), backend.asarray(y), where=backend.asarray(keep))
    expected = fn(x[keep], y[keep])
    assert_close_to(out, np.asarray(expected), dtype=xp.float64, backend=backend)
    if backend.name == "numpy":
        _, g = xce.value_and_grad(fn)(x, y, where=keep)
        _, g_kept = xce.value_and_grad(fn)(x[keep], y[keep])
        np.testing.assert_allclose(g[keep], g_kept, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(g[~keep], 0.0)

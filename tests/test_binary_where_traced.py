"""where= on the binary losses and kl_div, and traced numeric hyper-parameters (issue 15,
items 5 and 6).

References are float64 PyTorch (``torch.nn.functional``, or the formula written out where
PyTorch has no such loss) over the kept elements only, so that masked elements, poisoned
with NaN / inf / out-of-range values, can reach neither the reference nor, if xce leaks
them, anything but a failure. Gradients: torch autograd through xce on torch, ``jax.grad``
under ``jax.jit`` on JAX, ``xce.value_and_grad`` on the eager Array API namespaces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xce

from conftest import assert_close_to, to_numpy

lazy_xp_modules = [xce]

ELEMENTWISE = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss"]
REDUCTIONS = ["mean", "sum", "none"]


def _focal(x, y, alpha, gamma):
    """torchvision's sigmoid focal loss, per element."""
    p = torch.sigmoid(x)
    p_t = p * y + (1 - p) * (1 - y)
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none") * (1 - p_t) ** gamma
    return loss if alpha < 0 else (alpha * y + (1 - alpha) * (1 - y)) * loss


def _elementwise_case(name, seed=0, shape=(5, 4)):
    """``(input, target, kwargs, keep)`` with the masked elements poisoned."""
    rng = np.random.default_rng(seed)
    keep = rng.uniform(size=shape) > 0.35
    y = rng.uniform(size=shape)
    kwargs = {}
    if name == "binary_cross_entropy":
        x = rng.uniform(0.05, 0.95, size=shape)
        x[~keep] = np.where(rng.uniform(size=(~keep).sum()) > 0.5, np.nan, 1.5)  # unread, unchecked
        kwargs = {"weight": rng.uniform(0.5, 2.0, size=shape[-1]), "label_smoothing": 0.1}
    else:
        x = rng.normal(scale=2.0, size=shape)
        x[~keep] = np.where(rng.uniform(size=(~keep).sum()) > 0.5, np.nan, np.inf)
        if name == "binary_cross_entropy_with_logits":
            kwargs = {"weight": rng.uniform(0.5, 2.0, size=shape), "pos_weight": rng.uniform(0.5, 3.0, size=shape[-1]),
                      "label_smoothing": 0.2}
        else:
            kwargs = {"alpha": 0.3, "gamma": 1.5}
    y[~keep] = np.nan
    return x, y, kwargs, keep


def _reference(name, x, y, kwargs, keep, reduction):
    """Loss and gradient w.r.t. ``x`` (float64 torch) over the kept elements only."""
    xt = torch.tensor(x, requires_grad=True)
    k = torch.tensor(keep)
    xk, yk = xt[k], torch.tensor(y)[k]
    full = {a: torch.tensor(np.broadcast_to(kwargs[a], x.shape).copy())[k] for a in ("weight", "pos_weight")
            if a in kwargs}
    eps = kwargs.get("label_smoothing", 0.0)
    yk = yk * (1 - eps) + eps / 2
    if name == "binary_cross_entropy":
        per = F.binary_cross_entropy(xk, yk, reduction="none", **full)
    elif name == "binary_cross_entropy_with_logits":
        per = F.binary_cross_entropy_with_logits(xk, yk, reduction="none", **full)
    else:
        per = _focal(xk, yk, kwargs["alpha"], kwargs["gamma"])
    out = {"mean": per.mean(), "sum": per.sum(), "none": torch.zeros(x.shape, dtype=per.dtype).masked_scatter(k, per)}
    loss = out[reduction]
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


def _backend_kwargs(backend, kwargs):
    return {a: backend.asarray(v) if isinstance(v, np.ndarray) else v for a, v in kwargs.items()}


def _check_gradient(backend, fn, x, y, kwargs, expected):
    """The gradient of ``fn(x, y, **kwargs).sum()`` w.r.t. ``x`` on ``backend``: finite, 0 at
    masked elements, equal to ``expected``."""
    if backend.name.startswith("torch"):
        xt = backend.asarray(x).requires_grad_()
        fn(xt, backend.asarray(y), **_backend_kwargs(backend, kwargs)).sum().backward()
        got = xt.grad
    elif backend.name.startswith("jax"):
        import jax

        t, kw = backend.asarray(y), _backend_kwargs(backend, kwargs)
        got = jax.jit(jax.grad(lambda v: fn(v, t, **kw).sum()))(backend.asarray(x))
    elif not backend.lazy:  # NumPy, array-api-strict, CuPy: the analytic gradient
        got = xce.value_and_grad(fn)(backend.asarray(x), backend.asarray(y), **_backend_kwargs(backend, kwargs))[1]
    else:
        return
    got = to_numpy(got)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_where_on_the_elementwise_losses(backend, name, reduction):
    """Masked elements contribute 0, leave the mean's count and get a zero gradient, whatever
    they hold (NaN, inf, a probability of 1.5: not read, not checked)."""
    xp = backend.xp
    x, y, kwargs, keep = _elementwise_case(name, seed=ELEMENTWISE.index(name))
    kwargs = {**kwargs, "reduction": reduction, "where": keep}
    want, want_grad = _reference(name, x, y, kwargs, keep, reduction)
    fn = getattr(xce, name)
    out = fn(backend.asarray(x), backend.asarray(y), **_backend_kwargs(backend, kwargs))
    assert_close_to(out, want, dtype=xp.float64, backend=backend)
    _check_gradient(backend, fn, x, y, kwargs, want_grad)
    assert not want_grad[~keep].any()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_where_broadcasts(backend, reduction):
    """A mask of fewer dimensions broadcasts to the elementwise loss: a per-column mask keeps
    the columns (and the mean counts their elements)."""
    xp = backend.xp
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(3, 4)), (rng.uniform(size=(3, 4)) > 0.5).astype(np.float64)
    cols = np.asarray([True, False, True, True])
    out = xce.binary_cross_entropy_with_logits(backend.asarray(x), backend.asarray(y), reduction=reduction,
                                               where=backend.asarray(cols))
    per = F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(y), reduction="none").numpy() * cols
    assert_close_to(out, per.sum() / (3 * cols.sum()) if reduction == "mean" else per, dtype=xp.float64,
                    backend=backend)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_where_on_multilabel_soft_margin_loss(backend, reduction):
    """multilabel_soft_margin_loss masks positions (rows): the loss of the kept rows only."""
    xp = backend.xp
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(6, 4)), (rng.uniform(size=(6, 4)) > 0.5).astype(np.float64)
    w = rng.uniform(0.5, 2.0, size=4)
    keep = np.asarray([True, False, True, True, False, True])
    x[~keep] = np.nan
    xt = torch.tensor(x, requires_grad=True)
    k = torch.tensor(keep)
    per = F.multilabel_soft_margin_loss(xt[k], torch.tensor(y)[k], weight=torch.tensor(w), reduction="none")
    want = {"mean": per.mean(), "sum": per.sum(), "none": torch.zeros(6, dtype=per.dtype).masked_scatter(k, per)}
    want[reduction].sum().backward()
    kwargs = {"weight": w, "reduction": reduction, "where": keep}
    out = xce.multilabel_soft_margin_loss(backend.asarray(x), backend.asarray(y), **_backend_kwargs(backend, kwargs))
    assert_close_to(out, want[reduction].detach().numpy(), dtype=xp.float64, backend=backend)
    _check_gradient(backend, xce.multilabel_soft_margin_loss, x, y, kwargs, xt.grad.numpy())


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
def test_where_on_kl_div(backend, reduction, log_target):
    """kl_div's where (optax's kl_divergence(where=)): masked elements are exactly 0 whatever
    they hold (log q = -inf, a negative target); "mean" over the kept elements, "batchmean"
    over the rows that keep one (row 2 keeps none)."""
    xp = backend.xp
    rng = np.random.default_rng(7)
    log_q, p = np.log(rng.dirichlet(np.ones(5), size=4)), rng.dirichlet(np.ones(5), size=4)
    t = np.log(p) if log_target else p
    keep = rng.uniform(size=(4, 5)) > 0.3
    keep[2] = False
    log_q[~keep], t[~keep] = -np.inf, -1.0
    xt = torch.tensor(log_q, requires_grad=True)
    k = torch.tensor(keep)
    per = F.kl_div(xt[k], torch.tensor(t)[k], reduction="none", log_target=log_target)
    want = {"mean": per.mean(), "sum": per.sum(), "batchmean": per.sum() / 3,
            "none": torch.zeros((4, 5), dtype=per.dtype).masked_scatter(k, per)}[reduction]
    want.sum().backward()
    kwargs = {"reduction": reduction, "log_target": log_target, "where": keep}
    out = xce.kl_div(backend.asarray(log_q), backend.asarray(t), **_backend_kwargs(backend, kwargs))
    assert_close_to(out, want.detach().numpy(), dtype=xp.float64, backend=backend)
    if backend.name.startswith(("torch", "jax")):  # kl_div has no analytic gradient: autodiff only
        _check_gradient(backend, xce.kl_div, log_q, t, kwargs, xt.grad.numpy())


def test_kl_div_where_all_true_is_pytorch():
    """An all-True mask changes nothing, broadcast rows included ("batchmean": input.shape[0])."""
    rng = np.random.default_rng(8)
    log_q, p = np.log(rng.dirichlet(np.ones(3), size=(2, 4))), rng.dirichlet(np.ones(3), size=(1, 4))
    for reduction in ("mean", "sum", "batchmean"):
        for q, t in ((log_q, p), (log_q[:1], rng.dirichlet(np.ones(3), size=(2, 4)))):
            plain = xce.kl_div(q, t, reduction=reduction)
            masked = xce.kl_div(q, t, reduction=reduction, where=np.ones(3, bool))
            np.testing.assert_allclose(masked, plain, rtol=1e-14)
    # Row i of a (2, 4, 3) input is kept when any of its elements is.
    keep = np.zeros((2, 4, 3), bool)
    keep[1, 2, 0] = True
    out = xce.kl_div(log_q, p, reduction="batchmean", where=keep)
    np.testing.assert_allclose(out, p[0, 2, 0] * (np.log(p[0, 2, 0]) - log_q[1, 2, 0]), rtol=1e-14)


def test_where_errors_are_named():
    x, y = np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(TypeError, match=r"^where must be a boolean mask"):
        xce.binary_cross_entropy_with_logits(x, y, where=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^where of shape \(3, 3\) does not broadcast to the elementwise loss"):
        xce.sigmoid_focal_loss(x, y, where=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"^where of shape \(2, 3\) does not broadcast to the per-position loss"):
        xce.multilabel_soft_margin_loss(x, y, where=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"^where of shape \(4,\) does not broadcast to the elementwise loss"):
        xce.kl_div(x, y, where=np.ones(4, bool))
    with pytest.raises(TypeError, match=r"^where must be"):
        xce.grad.binary_cross_entropy_grad(x + 0.5, y, where=[True, False, True])


# --- traced hyper-parameters -----------------------------------------------------------------

# (loss, the hyper-parameter, two valid values, an invalid one, other keyword arguments)
TRACED = [
    ("binary_cross_entropy", "label_smoothing", (0.05, 0.3), 1.5, {}),
    ("binary_cross_entropy_with_logits", "label_smoothing", (0.1, 0.0), -0.1, {}),
    ("sigmoid_focal_loss", "gamma", (0.5, 2.0), -1.0, {"reduction": "mean"}),
    ("sigmoid_focal_loss", "alpha", (0.3, -1.0), 1.5, {"reduction": "sum"}),
]


@pytest.mark.parametrize(("name", "param", "values", "invalid", "kwargs"), TRACED,
                         ids=[f"{n}-{p}" for n, p, *_ in TRACED])
def test_traced_hyper_parameters(name, param, values, invalid, kwargs):
    """Under jax.jit a traced hyper-parameter compiles once for a schedule; each value gives
    the loss and gradient of the Python number; an invalid traced value gives NaN (not read),
    an invalid Python number raises ValueError naming the argument."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, y, _, keep = _elementwise_case(name, seed=11, shape=(6, 3))
    x, y = np.where(keep, x, 0.5), np.where(keep, y, 0.0)
    fn = getattr(xce, name)
    traces = []

    def loss(v, h):
        traces.append(1)
        return fn(v, jnp.asarray(y), **{param: h}, **kwargs).sum()

    step = jax.jit(jax.value_and_grad(loss))
    for value in values:
        got, grad = step(jnp.asarray(x), value)
        want, want_grad = jax.value_and_grad(lambda v, value=value: fn(v, jnp.asarray(y), **{param: value},
                                                                         **kwargs).sum())(jnp.asarray(x))
        np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(want_grad), rtol=1e-10, atol=1e-12)
        _, g = xce.value_and_grad(fn)(x, y, **{param: value}, **kwargs)  # the analytic gradient agrees
        np.testing.assert_allclose(np.asarray(grad), g, rtol=1e-10, atol=1e-12)
    assert len(traces) == 1
    assert np.isnan(float(step(jnp.asarray(x), invalid)[0]))
    with pytest.raises(ValueError, match=rf"^{param} must"):
        fn(x, y, **{param: invalid}, **kwargs)


def test_traced_pos_weight_and_the_grad_functions():
    """A 0-d pos_weight may be traced too; the *_grad functions take traced hyper-parameters
    (one compilation for two values) and equal jax.grad of the loss."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(12)
    x, y = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.uniform(size=(4, 3)))
    traces = []

    @jax.jit
    def both(x, pw, eps, gamma, alpha):
        traces.append(1)
        bce = jax.grad(lambda v: xce.binary_cross_entropy_with_logits(v, y, pos_weight=pw, label_smoothing=eps))(x)
        focal = jax.grad(lambda v: xce.sigmoid_focal_loss(v, y, alpha=alpha, gamma=gamma, reduction="sum"))(x)
        return (bce, xce.grad.binary_cross_entropy_with_logits_grad(x, y, pos_weight=pw, label_smoothing=eps),
                focal, xce.grad.sigmoid_focal_loss_grad(x, y, alpha=alpha, gamma=gamma, reduction="sum"))

    for args in ((2.0, 0.1, 1.5, 0.25), (0.5, 0.0, 0.0, -1.0)):
        bce, bce_rule, focal, focal_rule = both(x, *(jnp.asarray(a) for a in args))
        np.testing.assert_allclose(np.asarray(bce_rule), np.asarray(bce), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(np.asarray(focal_rule), np.asarray(focal), rtol=1e-10, atol=1e-13)
        want = xce.binary_cross_entropy_with_logits(np.asarray(x), np.asarray(y), pos_weight=np.asarray(args[0]),
                                                    label_smoothing=args[1])
        got = xce.binary_cross_entropy_with_logits(x, y, pos_weight=jnp.asarray(args[0]), label_smoothing=args[1])
        np.testing.assert_allclose(float(got), want, rtol=1e-12)
    assert len(traces) == 1


def test_concrete_zero_d_hyper_parameters_are_numbers(backend):
    """A concrete 0-d array is read as its number (and checked like one)."""
    xp = backend.xp
    x, y = np.asarray([[0.3, -1.2], [2.0, 0.1]]), np.asarray([[1.0, 0.0], [0.0, 1.0]])
    out = xce.sigmoid_focal_loss(backend.asarray(x), backend.asarray(y), alpha=np.asarray(0.4),
                                 gamma=np.asarray(1.5), reduction="sum")
    want = _focal(torch.tensor(x), torch.tensor(y), 0.4, 1.5).sum().numpy()
    assert_close_to(out, want, dtype=xp.float64, backend=backend)
    if not backend.lazy:
        with pytest.raises(ValueError, match=r"^label_smoothing must lie in"):
            xce.binary_cross_entropy_with_logits(backend.asarray(x), backend.asarray(y),
                                                 label_smoothing=np.asarray(2.0))


def test_loss_objects_take_traced_hyper_parameters():
    """BCELoss / BCEWithLogitsLoss / SigmoidFocalLoss built inside jax.jit from traced values:
    one compilation, the values of the Python numbers."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(4, 3)), (rng.uniform(size=(4, 3)) > 0.5).astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    traces = []

    @jax.jit
    def losses(eps, alpha, gamma):
        traces.append(1)
        return (xce.BCELoss(label_smoothing=eps)(jnp.asarray(p), jnp.asarray(y)),
                xce.BCEWithLogitsLoss(label_smoothing=eps)(jnp.asarray(x), jnp.asarray(y)),
                xce.SigmoidFocalLoss(alpha=alpha, gamma=gamma, reduction="mean")(jnp.asarray(x), jnp.asarray(y)))

    for eps, alpha, gamma in ((0.1, 0.25, 2.0), (0.0, 0.7, 0.5)):
        want = (xce.binary_cross_entropy(p, y, label_smoothing=eps),
                xce.binary_cross_entropy_with_logits(x, y, label_smoothing=eps),
                xce.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="mean"))
        np.testing.assert_allclose([float(v) for v in losses(eps, alpha, gamma)], want, rtol=1e-12)
    assert len(traces) == 1

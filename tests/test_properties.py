"""Property-based tests (hypothesis) over the backend matrix (issue 4).

Each property runs a handful of examples per backend (``max_examples`` small, no deadline) so the
whole file stays within CI's time budget. On the slow backends (``jax-jit`` recompiles for every
new shape, ``dask`` builds a graph per call) the shapes are drawn from a small fixed set.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xce

from conftest import to_numpy

lazy_xp_modules = [xce]

# Every backend of the matrix; the two slow ones carry the ``slow`` marker so that a quick run can
# deselect them (-m "not slow"). They run by default.
pytestmark = pytest.mark.parametrize(
    "backend",
    ["numpy", "array_api_strict", "torch", "jax", "cupy", "torch-cuda", "cupy-standin",
     pytest.param("jax-jit", marks=pytest.mark.slow), pytest.param("dask", marks=pytest.mark.slow)],
    indirect=True,
)

SLOW = {"jax", "jax-jit", "dask"}  # jax eager also compiles each op per new shape
PROPERTY = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)


def _close(a, b, rtol=1e-9, atol=1e-9):
    np.testing.assert_allclose(to_numpy(a), to_numpy(b) if not isinstance(b, (float, np.ndarray)) else b,
                               rtol=rtol, atol=atol, equal_nan=True)


def _case(data, backend, *, weighted=False, ignore=False):
    """Logits (N, C), index targets (N,), optional weights and an ignore_index, as float64/int64 backend arrays."""
    if backend.name in SLOW:
        n, c = data.draw(st.sampled_from([(4, 3), (1, 1)]), label="shape")
    else:
        n = data.draw(st.integers(1, 6), label="N")
        c = data.draw(st.integers(1, 6), label="C")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    scale = data.draw(st.sampled_from([0.1, 3.0, 30.0]), label="scale")
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=scale, size=(n, c))
    t = rng.integers(0, c, size=n)
    w = rng.uniform(0.1, 3.0, size=c) if weighted else None
    ignore_index = -100
    if ignore:
        real = data.draw(st.booleans(), label="real class")
        # Under jax.jit ignore_index is static: a new value is a new compilation, so keep to two.
        ignore_index = (0 if backend.name in SLOW else int(rng.integers(0, c))) if real else -100
        t = np.where(rng.random(n) < 0.3, ignore_index, t)
    return x, t, w, ignore_index


def _arrays(backend, x, t, w=None):
    xp = backend.xp
    return (backend.asarray(x, xp.float64), backend.asarray(t, xp.int64),
            None if w is None else backend.asarray(w, xp.float64))


@PROPERTY
@given(data=st.data(), eps=st.sampled_from([0.0, 0.25]))
def test_shift_invariance(backend, data, eps):
    """Adding a constant to a row of logits changes nothing."""
    x, t, w, ii = _case(data, backend, weighted=True, ignore=True)
    shift = np.random.default_rng(0).uniform(-50, 50, size=(x.shape[0], 1))
    a = _arrays(backend, x, t, w)
    b = _arrays(backend, x + shift, t, w)
    kw = {"ignore_index": ii, "label_smoothing": eps, "reduction": "none"}
    _close(xce.cross_entropy(*a, **kw), xce.cross_entropy(*b, **kw), rtol=1e-7, atol=1e-7)
    _close(xce.log_softmax(a[0], axis=1), xce.log_softmax(b[0], axis=1), rtol=1e-7, atol=1e-7)


@PROPERTY
@given(data=st.data(), eps=st.sampled_from([0.0, 0.3, 1.0]))
def test_losses_are_non_negative(backend, data, eps):
    x, t, w, ii = _case(data, backend, weighted=True, ignore=True)
    xa, ta, wa = _arrays(backend, x, t, w)
    assert np.all(to_numpy(xce.cross_entropy(xa, ta, wa, ignore_index=ii, label_smoothing=eps, reduction="none"))
                  >= -1e-12)
    q = np.random.default_rng(1).dirichlet(np.ones(x.shape[1]), size=x.shape[0])
    qa = backend.asarray(q, backend.xp.float64)
    assert np.all(to_numpy(xce.cross_entropy(xa, qa, wa, label_smoothing=eps, reduction="none")) >= -1e-12)


@PROPERTY
@given(data=st.data(), eps=st.sampled_from([0.0, 0.2]), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_one_hot_probabilities_equal_index_targets(backend, data, eps, reduction):
    """Without weights the two target forms agree, smoothing included."""
    x, t, _, _ = _case(data, backend)
    xa, ta, _ = _arrays(backend, x, t)
    q = backend.asarray(np.eye(x.shape[1])[t], backend.xp.float64)
    _close(xce.cross_entropy(xa, q, label_smoothing=eps, reduction=reduction),
           xce.cross_entropy(xa, ta, label_smoothing=eps, reduction=reduction))


@PROPERTY
@given(data=st.data(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_zero_smoothing_and_unit_weight_are_defaults(backend, data, reduction):
    x, t, _, ii = _case(data, backend, ignore=True)
    xa, ta, _ = _arrays(backend, x, t)
    base = xce.cross_entropy(xa, ta, ignore_index=ii, reduction=reduction)
    _close(xce.cross_entropy(xa, ta, ignore_index=ii, reduction=reduction, label_smoothing=0.0), base, rtol=0, atol=0)
    ones = backend.asarray(np.ones(x.shape[1]), backend.xp.float64)
    _close(xce.cross_entropy(xa, ta, ones, ignore_index=ii, reduction=reduction), base, rtol=1e-12, atol=1e-12)
    _close(xce.nll_loss(xa, ta, ones, ignore_index=ii, reduction=reduction),
           xce.nll_loss(xa, ta, ignore_index=ii, reduction=reduction), rtol=1e-12, atol=1e-12)


@PROPERTY
@given(data=st.data(), eps=st.sampled_from([0.0, 0.3]))
def test_ignored_positions_do_not_change_sum(backend, data, eps):
    """Appending ignored rows (whatever their logits) leaves "sum" and "mean" unchanged."""
    x, t, w, _ = _case(data, backend, weighted=True)
    extra = np.random.default_rng(2).normal(scale=10.0, size=(3, x.shape[1]))
    x2, t2 = np.concatenate([x, extra]), np.concatenate([t, [-100] * 3])
    a, b = _arrays(backend, x, t, w), _arrays(backend, x2, t2, w)
    for reduction in ("sum", "mean"):
        _close(xce.cross_entropy(*b, label_smoothing=eps, reduction=reduction),
               xce.cross_entropy(*a, label_smoothing=eps, reduction=reduction))


@PROPERTY
@given(data=st.data(), eps=st.sampled_from([0.0, 0.3]), probabilities=st.booleans())
def test_batch_permutation_invariance(backend, data, eps, probabilities):
    x, t, w, ii = _case(data, backend, weighted=True, ignore=not probabilities)
    perm = np.random.default_rng(3).permutation(x.shape[0])
    if probabilities:
        t = np.random.default_rng(4).dirichlet(np.ones(x.shape[1]), size=x.shape[0])
        ii = -100
    xp = backend.xp
    tt = (lambda v: backend.asarray(v, xp.float64)) if probabilities else (lambda v: backend.asarray(v, xp.int64))
    wa = backend.asarray(w, xp.float64)
    for reduction in ("sum", "mean"):
        kw = {"ignore_index": ii, "label_smoothing": eps, "reduction": reduction}
        _close(xce.cross_entropy(backend.asarray(x[perm], xp.float64), tt(t[perm]), wa, **kw),
               xce.cross_entropy(backend.asarray(x, xp.float64), tt(t), wa, **kw))


@PROPERTY
@given(data=st.data(), eps=st.sampled_from([0.0, 0.3]))
def test_sum_is_mean_times_weighted_count(backend, data, eps):
    x, t, w, ii = _case(data, backend, weighted=True, ignore=True)
    kept = t != ii
    denominator = float(np.sum(w[t[kept]]))
    a = _arrays(backend, x, t, w)
    total = to_numpy(xce.cross_entropy(*a, ignore_index=ii, label_smoothing=eps, reduction="sum"))
    mean = to_numpy(xce.cross_entropy(*a, ignore_index=ii, label_smoothing=eps, reduction="mean"))
    if denominator == 0.0:
        assert np.isnan(mean) and total == 0.0
    else:
        np.testing.assert_allclose(mean * denominator, total, rtol=1e-9, atol=1e-9)


@PROPERTY
@given(data=st.data(), axis=st.sampled_from([0, 1, -1]))
def test_softmax_is_a_distribution(backend, data, axis):
    x, _, _, _ = _case(data, backend)
    xa = backend.asarray(x, backend.xp.float64)
    p = to_numpy(xce.softmax(xa, axis=axis))
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(to_numpy(xce.log_softmax(xa, axis=axis))), p, rtol=1e-9, atol=1e-300)


@PROPERTY
@given(data=st.data(), axis=st.sampled_from([None, 0, 1]))
def test_logsumexp_bounds(backend, data, axis):
    """max ≤ logsumexp ≤ max + log(count)."""
    x, _, _, _ = _case(data, backend)
    got = to_numpy(xce.logsumexp(backend.asarray(x, backend.xp.float64), axis=axis))
    m = np.max(x, axis=axis)
    count = x.size if axis is None else x.shape[axis]
    assert np.all(got >= m - 1e-12 * np.abs(m))
    assert np.all(got <= m + np.log(count) + 1e-9 * (1 + np.abs(m)))


@PROPERTY
@given(data=st.data(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_nll_of_log_softmax_is_cross_entropy(backend, data, reduction):
    x, t, w, ii = _case(data, backend, weighted=True, ignore=True)
    xa, ta, wa = _arrays(backend, x, t, w)
    _close(xce.nll_loss(xce.log_softmax(xa, axis=1), ta, wa, ignore_index=ii, reduction=reduction),
           xce.cross_entropy(xa, ta, wa, ignore_index=ii, reduction=reduction))


@PROPERTY
@given(data=st.data(), eps=st.sampled_from([0.1, 0.5, 1.0]))
def test_smoothing_is_a_mixture_with_the_uniform_target(backend, data, eps):
    """Unweighted: CE_ε = (1-ε)·CE_0 + ε·CE(uniform probabilities), for "sum"."""
    x, t, _, _ = _case(data, backend)
    xa, ta, _ = _arrays(backend, x, t)
    uniform = backend.asarray(np.full(x.shape, 1.0 / x.shape[1]), backend.xp.float64)
    lhs = xce.cross_entropy(xa, ta, label_smoothing=eps, reduction="sum")
    rhs = (1 - eps) * to_numpy(xce.cross_entropy(xa, ta, reduction="sum")) + eps * to_numpy(
        xce.cross_entropy(xa, uniform, reduction="sum"))
    _close(lhs, np.asarray(rhs))


@PROPERTY
@given(data=st.data())
def test_class_axis_is_a_relabelling(backend, data):
    """(N, C) logits with axis=1 and their transpose with axis=0 give the same per-position losses."""
    x, t, w, ii = _case(data, backend, weighted=True, ignore=True)
    xa, ta, wa = _arrays(backend, x, t, w)
    xt = backend.asarray(np.ascontiguousarray(x.T), backend.xp.float64)
    kw = {"ignore_index": ii, "label_smoothing": 0.1, "reduction": "none"}
    _close(xce.cross_entropy(xt, ta, wa, axis=0, **kw), xce.cross_entropy(xa, ta, wa, **kw))

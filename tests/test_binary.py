"""binary_cross_entropy, binary_cross_entropy_with_logits, multilabel_soft_margin_loss and
sigmoid_focal_loss against float64 PyTorch / torchvision formulas on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xce

import reference as ref
from conftest import assert_close_to, dtype_name
from reference import rounded

lazy_xp_modules = [xce]

P = [[0.6, 0.1], [0.3, 0.8]]
Y = [[0.0, 1.0], [1.0, 0.0]]


def _as(backend, a, dtype):
    return None if a is None else backend.asarray(a, dtype)


@pytest.mark.parametrize(("fn", "expected"), [
    ("binary_cross_entropy", 1.5081),
    ("binary_cross_entropy_with_logits", 0.8518),
    ("multilabel_soft_margin_loss", 0.8518),
])
def test_worked_examples(backend, fn, expected):
    xp = backend.xp
    out = getattr(xce, fn)(backend.asarray(P, xp.float64), backend.asarray(Y, xp.float64))
    assert_close_to(xp.round(out * 1e4) / 1e4, expected, dtype=xp.float64, backend=backend)


def _case(seed, shape=(5, 3)):
    rng = np.random.default_rng(seed)
    return (rng.normal(scale=3.0, size=shape), rng.uniform(0.02, 0.98, size=shape),
            (rng.uniform(size=shape) > 0.5).astype(np.float64), rng.uniform(0.2, 2.0, size=shape[-1]))


# (weighted, reduction, label_smoothing, soft targets): every dtype runs the first, float64 the
# second (jax.jit compiles per configuration, which dominates the run time).
CONFIGS = [(True, "none", 0.1, True), (False, "mean", 0.0, False)]


@pytest.fixture(params=[0, 1], ids=["all-dtypes", "float64"])
def config(request, backend, dtype):
    if request.param and dtype_name(dtype) != "float64":
        pytest.skip("secondary configuration: float64 only")
    return CONFIGS[request.param]


def test_bce_matches_torch(backend, dtype, config):
    weighted, reduction, eps, soft = config
    name = dtype_name(dtype)
    _, p, y, w = _case(0)
    p[0, 0], p[1, 1] = 0.0, 1.0  # PyTorch's -100 clamp
    y = rounded(p[::-1].copy() if soft else y, name)
    p, w = rounded(p, name), (rounded(w, name) if weighted else None)
    expected = ref.binary_cross_entropy(p, y, weight=w, reduction=reduction, label_smoothing=eps)
    out = xce.binary_cross_entropy(_as(backend, p, dtype), _as(backend, y, dtype), weight=_as(backend, w, dtype),
                                   reduction=reduction, label_smoothing=eps)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_bce_with_logits_matches_torch(backend, dtype, config):
    weighted, reduction, eps, soft = config
    name = dtype_name(dtype)
    x, p, y, w = _case(1)
    y = rounded(p if soft else y, name)
    x = rounded(x, name)
    w = rounded(w, name) if weighted else None
    pw = rounded(w[::-1] * 2, name) if weighted else None  # pos_weight along the last axis
    expected = ref.binary_cross_entropy_with_logits(x, y, weight=w, reduction=reduction, pos_weight=pw,
                                                    label_smoothing=eps)
    out = xce.binary_cross_entropy_with_logits(
        _as(backend, x, dtype), _as(backend, y, dtype), weight=_as(backend, w, dtype), reduction=reduction,
        pos_weight=_as(backend, pw, dtype), label_smoothing=eps)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_multilabel_soft_margin_matches_torch(backend, dtype, config):
    weighted, reduction = config[0], "sum" if config[0] else "mean"
    name = dtype_name(dtype)
    x, _, y, w = _case(2, (4, 6))
    x, w = rounded(x, name), (rounded(w, name) if weighted else None)
    expected = ref.multilabel_soft_margin_loss(x, y, weight=w, reduction=reduction)
    out = xce.multilabel_soft_margin_loss(_as(backend, x, dtype), _as(backend, y, dtype),
                                          weight=_as(backend, w, dtype), reduction=reduction)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_sigmoid_focal_matches_torchvision(backend, dtype, config):
    alpha, gamma, reduction, soft = (0.25, 2.0, "none", False) if config[0] else (-1.0, 0.5, "sum", True)
    name = dtype_name(dtype)
    x, p, y, _ = _case(3, (3, 2, 4))
    x, y = rounded(x, name), rounded(p if soft else y, name)
    expected = ref.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction=reduction)
    out = xce.sigmoid_focal_loss(_as(backend, x, dtype), _as(backend, y, dtype), alpha=alpha, gamma=gamma,
                                 reduction=reduction)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_stable_at_large_logits(backend):
    """|x| = 1e4 in float32: exact, finite values where log(sigmoid(x)) would give inf or NaN."""
    xp = backend.xp
    x = backend.asarray([1e4, -1e4, 1e4, -1e4], xp.float32)
    y = backend.asarray([1.0, 1.0, 0.0, 0.0], xp.float32)
    out = xce.binary_cross_entropy_with_logits(x, y, reduction="none")
    assert_close_to(out, [0.0, 1e4, 1e4, 0.0], dtype=xp.float32, backend=backend)
    focal = xce.sigmoid_focal_loss(x, y)
    assert_close_to(focal, [0.0, 0.25e4, 0.75e4, 0.0], dtype=xp.float32, backend=backend)
    ml = xce.multilabel_soft_margin_loss(xp.reshape(x, (2, 2)), xp.reshape(y, (2, 2)), reduction="none")
    assert_close_to(ml, [0.5e4, 0.5e4], dtype=xp.float32, backend=backend)


def test_probabilities_outside_unit_interval(backend):
    """Eager arrays raise naming the value; JAX / Dask give NaN, never a finite number."""
    xp = backend.xp
    p = backend.asarray([0.5, 1.5, 0.2], xp.float64)
    y = backend.asarray([1.0, 0.0, 0.0], xp.float64)
    if backend.lazy:
        out = xce.binary_cross_entropy(p, y, reduction="none")
        assert_close_to(out, [np.log(2), np.nan, -np.log(0.8)], dtype=xp.float64, backend=backend)
        assert_close_to(xce.binary_cross_entropy(p, y), np.nan, dtype=xp.float64, backend=backend)
    else:
        with pytest.raises(ValueError, match=r"input must lie in \[0.0, 1.0\]; got 1.5"):
            xce.binary_cross_entropy(p, y)


def test_integer_targets_are_cast(backend):
    xp = backend.xp
    x = backend.asarray(P, xp.float32)
    out = xce.binary_cross_entropy_with_logits(x, backend.asarray(Y, xp.int64))
    assert_close_to(out, ref.binary_cross_entropy_with_logits(np.asarray(P, np.float32), Y),
                    dtype=xp.float32, backend=backend)


def test_bad_arguments_are_named():
    x, y = np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(ValueError, match="target must have input's shape"):
        xce.binary_cross_entropy_with_logits(x, np.zeros(3))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(2,\) does not broadcast"):
        xce.binary_cross_entropy_with_logits(x, y, pos_weight=np.ones(2))
    with pytest.raises(ValueError, match=r"weight of shape \(4,\)"):
        xce.binary_cross_entropy(x, y, weight=np.ones(4))
    with pytest.raises(ValueError, match="label_smoothing"):
        xce.binary_cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"gamma must be a finite float >= 0\.0; got -1"):
        xce.sigmoid_focal_loss(x, y, gamma=-1)
    with pytest.raises(ValueError, match="alpha must be at most 1"):
        xce.sigmoid_focal_loss(x, y, alpha=2.0)
    with pytest.raises(ValueError, match="reduction"):
        xce.multilabel_soft_margin_loss(x, y, reduction="batchmean")
    with pytest.raises(TypeError, match="input must be a real floating"):
        xce.binary_cross_entropy(np.zeros((2, 3), dtype=np.int64), y)

"""softmax_focal_loss, poly1_cross_entropy, cross_entropy's off_target smoothing and z-loss
against float64 PyTorch formulas on every backend, with the issue's worked examples."""

from __future__ import annotations

import numpy as np
import pytest

import xce

import reference as ref
from conftest import assert_close_to, dtype_name
from reference import rounded

lazy_xp_modules = [xce]

X8 = [[1, 8, 1], [1, 1, 8]]
X5 = [[0, 0.2, 0.7, 0.1, 0], [0, 0.9, 0.2, 0.2, 1], [1, 0.2, 0.7, 0.9, 1]]
WORKED_EXAMPLES = [
    (X8, [1, 2], 0.05, "uniform", 0.2352),
    (X8, [1, 2], 0.05, "off_target", 0.3518),
    (X5, [2, 1, 0], 0.5, "off_target", 1.5161),
    (X5, [2, 1, 0], 0.3, "uniform", 1.3883),
]


def test_smoothing_worked_examples(backend):
    xp = backend.xp
    for logits, target, eps, mode, expected in WORKED_EXAMPLES:
        out = xce.cross_entropy(backend.asarray(logits, xp.float64), backend.asarray(target, xp.int64),
                                label_smoothing=eps, label_smoothing_mode=mode)
        assert_close_to(xp.round(out * 1e4) / 1e4, expected, dtype=xp.float64, backend=backend)


def _case(seed, shape=(6, 5, 2), axis=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=shape)
    ax = 1 if axis is None else axis % len(shape)
    t = rng.integers(0, shape[ax], size=shape[:ax] + shape[ax + 1 :])
    return x, t, rng.uniform(0.3, 2.0, size=shape[ax])


# (weighted, ignore_index, reduction, axis): every dtype runs the first, float64 the second
# (jax.jit compiles per configuration, which dominates the run time).
CONFIGS = [(True, 3, "mean", -1), (False, -100, "none", None)]


@pytest.fixture(params=[0, 1], ids=["all-dtypes", "float64"])
def config(request, backend, dtype):
    if request.param and dtype_name(dtype) != "float64":
        pytest.skip("secondary configuration: float64 only")
    return CONFIGS[request.param]


def _call(backend, dtype, fn, x, t, w, **kwargs):
    return fn(backend.asarray(x, dtype), backend.asarray(t, backend.xp.int64),
              weight=None if w is None else backend.asarray(w, dtype), **kwargs)


def test_softmax_focal_matches_torch(backend, dtype, config):
    weighted, ignore_index, reduction, axis = config
    x, t, w = _case(0, axis=axis)
    x, w = rounded(x, dtype_name(dtype)), (w if weighted else None)
    kw = {"ignore_index": ignore_index, "reduction": reduction, "axis": axis}
    expected = ref.softmax_focal_loss(x, t, gamma=2.0, weight=w, **kw)
    assert_close_to(_call(backend, dtype, xce.softmax_focal_loss, x, t, w, gamma=2.0, **kw), expected,
                    dtype=dtype, backend=backend)


@pytest.mark.parametrize(("weighted", "ignore_index", "reduction", "axis"), CONFIGS)
def test_poly1_matches_optax_formula(backend, weighted, ignore_index, reduction, axis):
    dtype = backend.xp.float64
    x, t, w = _case(1, axis=axis)
    x, w = rounded(x, dtype_name(dtype)), (w if weighted else None)
    kw = {"ignore_index": ignore_index, "reduction": reduction, "axis": axis}
    expected = ref.poly1_cross_entropy(x, t, epsilon=0.7, weight=w, **kw)
    assert_close_to(_call(backend, dtype, xce.poly1_cross_entropy, x, t, w, epsilon=0.7, **kw), expected,
                    dtype=dtype, backend=backend)


def test_gamma_zero_and_epsilon_zero_give_cross_entropy(backend):
    xp = backend.xp
    x, t, w = _case(2)
    kw = {"ignore_index": 1, "reduction": "sum"}
    ce = ref.cross_entropy(x, t, weight=w, **kw)
    for fn, extra in ((xce.softmax_focal_loss, {"gamma": 0.0}), (xce.poly1_cross_entropy, {"epsilon": 0.0})):
        assert_close_to(_call(backend, xp.float64, fn, x, t, w, **extra, **kw), ce, dtype=xp.float64,
                        backend=backend)


@pytest.mark.parametrize(("weighted", "ignore_index", "reduction", "axis"), CONFIGS)
def test_off_target_smoothing_matches_fairseq_formula(backend, weighted, ignore_index, reduction, axis):
    dtype = backend.xp.float64
    x, t, w = _case(3, axis=axis)
    x, w = rounded(x, dtype_name(dtype)), (w if weighted else None)
    kw = {"ignore_index": ignore_index, "reduction": reduction, "axis": axis}
    expected = ref.cross_entropy_off_target(x, t, 0.2, weight=w, **kw)
    out = _call(backend, dtype, xce.cross_entropy, x, t, w, label_smoothing=0.2, label_smoothing_mode="off_target",
                **kw)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_z_loss_index_targets(backend, dtype, config):
    weighted, ignore_index, reduction, axis = config
    """CE (weighted mean) + z·mean of logsumexp² over the non-ignored positions (unweighted)."""
    x, t, w = _case(4, axis=axis)
    x, w = rounded(x, dtype_name(dtype)), (w if weighted else None)
    kw = {"ignore_index": ignore_index, "reduction": reduction}
    expected = (ref.cross_entropy(x, t, weight=w, axis=axis, label_smoothing=0.1, **kw)
                + ref.z_loss_term(x, t, 1e-2, axis=axis, **kw))
    out = _call(backend, dtype, xce.cross_entropy, x, t, w, label_smoothing=0.1, z_loss=1e-2, axis=axis, **kw)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_z_loss_probability_targets(backend):
    xp = backend.xp
    rng = np.random.default_rng(5)
    x, q, w = rng.normal(size=(4, 3)), rng.dirichlet(np.ones(3), size=4), rng.uniform(0.5, 2, size=3)
    lse = np.log(np.exp(x).sum(axis=1))
    for reduction in ("mean", "none"):
        expected = ref.cross_entropy(x, q, weight=w, reduction=reduction) + ref._reduce(
            ref.torch.from_numpy(0.5 * lse**2), reduction).numpy()
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(q, xp.float64),
                                weight=backend.asarray(w, xp.float64), reduction=reduction, z_loss=0.5)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def test_all_ignored_and_out_of_range(backend):
    xp = backend.xp
    x = backend.asarray(np.zeros((3, 4)), xp.float64)
    ignored = backend.asarray([-100] * 3, xp.int64)
    for fn in (xce.softmax_focal_loss, xce.poly1_cross_entropy):
        assert_close_to(fn(x, ignored), np.nan, dtype=xp.float64, backend=backend)
        assert_close_to(fn(x, ignored, reduction="sum"), 0.0, dtype=xp.float64, backend=backend)
    assert_close_to(xce.cross_entropy(x, ignored, z_loss=0.1), np.nan, dtype=xp.float64, backend=backend)
    bad = backend.asarray([0, 4, 1], xp.int64)
    if backend.lazy:
        assert_close_to(xce.softmax_focal_loss(x, bad), np.nan, dtype=xp.float64, backend=backend)
        assert_close_to(xce.cross_entropy(x, bad, z_loss=0.1, reduction="none"),
                        [np.log(4) + 0.1 * np.log(4) ** 2, np.nan, np.log(4) + 0.1 * np.log(4) ** 2],
                        dtype=xp.float64, backend=backend)
    else:
        with pytest.raises(IndexError, match="class index 4"):
            xce.poly1_cross_entropy(x, bad)


def test_bad_arguments_are_named():
    x, t = np.zeros((2, 3)), np.asarray([0, 1])
    with pytest.raises(ValueError, match="label_smoothing_mode must be one of 'uniform', 'off_target'; got 'x'"):
        xce.cross_entropy(x, t, label_smoothing_mode="x")
    with pytest.raises(ValueError, match=r"z_loss must be a finite float >= 0\.0; got -1"):
        xce.cross_entropy(x, t, z_loss=-1)
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        xce.cross_entropy(np.zeros((2, 1)), np.asarray([0, 0]), label_smoothing=0.1, label_smoothing_mode="off_target")
    with pytest.raises(ValueError, match=r"gamma must be a finite float >= 0\.0"):
        xce.softmax_focal_loss(x, t, gamma=-0.5)
    with pytest.raises(ValueError, match="epsilon must be a finite float; got nan"):
        xce.poly1_cross_entropy(x, t, epsilon=float("nan"))
    with pytest.raises(ValueError, match="softmax_focal_loss takes class-index targets"):
        xce.softmax_focal_loss(x, np.ones((2, 3)) / 3)

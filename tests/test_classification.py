"""cross_entropy and nll_loss: PyTorch's semantics on every backend of the matrix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xce

from conftest import assert_close_to, dtype_name
from reference import cross_entropy as ref_cross_entropy
from reference import nll_loss as ref_nll_loss
from reference import rounded

lazy_xp_modules = [xce]

WORKED_EXAMPLES = [
    # (logits, target, kwargs, expected)
    ([[2, 1, 0.1], [0.5, 2, 0.3]], [0, 2], {}, 1.2288),
    ([[1, 8, 1], [1, 1, 8]], [1, 2], {}, 0.0018),
    ([[1, 8, 1], [1, 1, 8]], [1, 2], {"label_smoothing": 0.05}, 0.2352),
    ([[[1, 2], [3, 5]], [[4, 7], [4, 6]]], [[0, 0], [1, 1]], {}, 1.7955),
    ([[[1, 2], [3, 5]], [[4, 7], [4, 6]]], [[0, 0], [1, 1]], {"weight": [1, 9]}, 1.1617),
]


@pytest.mark.parametrize(("logits", "target", "kwargs", "expected"), WORKED_EXAMPLES)
def test_worked_examples(backend, logits, target, kwargs, expected):
    xp = backend.xp
    kwargs = {k: backend.asarray(v, xp.float64) if k == "weight" else v for k, v in kwargs.items()}
    out = xce.cross_entropy(backend.asarray(logits, xp.float64), backend.asarray(target, xp.int64), **kwargs)
    assert_close_to(xp.round(out * 1e4) / 1e4, expected, dtype=xp.float64, backend=backend)


def test_nll_loss_worked_example(backend):
    xp = backend.xp
    out = xce.nll_loss(backend.asarray([[2, 3, 1], [3, 7, 9]], xp.float64), backend.asarray([1, 2], xp.int64))
    assert_close_to(out, -6.0, dtype=xp.float64, backend=backend)


# Shapes as (input shape, class axis or None for PyTorch's default rule).
SHAPES = [((6, 5), None), ((5,), None), ((3, 4, 2, 3), None), ((2, 3, 7), -1), ((0, 4), None)]
CONFIGS = list(
    itertools.product(SHAPES, [False, True], [False, True], [0.0, 0.3], ["mean", "sum", "none"])
)


def _case(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=3.0, size=shape)
    ax = (0 if len(shape) == 1 else 1) if axis is None else axis % len(shape)
    n_classes = shape[ax]
    t_shape = shape[:ax] + shape[ax + 1 :]
    target = rng.integers(0, n_classes, size=t_shape)
    probs = rng.dirichlet(np.ones(n_classes), size=t_shape) if t_shape else rng.dirichlet(np.ones(n_classes))
    probs = np.moveaxis(probs, -1, ax)
    weight = rng.uniform(0.2, 2.0, size=n_classes)
    return x, target, probs, weight, n_classes


@pytest.mark.parametrize(("shape_axis", "weighted", "ignore", "eps", "reduction"), CONFIGS)
def test_index_targets_match_torch(backend, dtype, shape_axis, weighted, ignore, eps, reduction):
    shape, axis = shape_axis
    x, target, _, weight, n_classes = _case(shape, axis)
    ignore_index = -100
    if ignore and target.size:
        ignore_index = 1 % n_classes  # a real class: stays in the softmax, dropped from the loss
    x = rounded(x, dtype_name(dtype))
    w = weight if weighted else None
    expected = ref_cross_entropy(
        x, target, weight=w, axis=axis, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps
    )
    xp = backend.xp
    out = xce.cross_entropy(
        backend.asarray(x, dtype),
        backend.asarray(target, xp.int64),
        weight=None if w is None else backend.asarray(w, dtype),
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=eps,
        axis=axis,
    )
    assert_close_to(out, expected, dtype=dtype, backend=backend)


@pytest.mark.parametrize(("shape_axis", "weighted", "eps", "reduction"),
                         list(itertools.product(SHAPES, [False, True], [0.0, 0.3], ["mean", "sum", "none"])))
def test_probability_targets_match_torch(backend, dtype, shape_axis, weighted, eps, reduction):
    shape, axis = shape_axis
    x, _, probs, weight, _ = _case(shape, axis, seed=1)
    name = dtype_name(dtype)
    x, probs = rounded(x, name), rounded(probs, name)
    w = weight if weighted else None
    expected = ref_cross_entropy(x, probs, weight=w, axis=axis, reduction=reduction, label_smoothing=eps)
    out = xce.cross_entropy(
        backend.asarray(x, dtype),
        backend.asarray(probs, dtype),
        weight=None if w is None else backend.asarray(w, dtype),
        reduction=reduction,
        label_smoothing=eps,
        axis=axis,
    )
    assert_close_to(out, expected, dtype=dtype, backend=backend)


@pytest.mark.parametrize(("weighted", "ignore", "reduction"),
                         list(itertools.product([False, True], [False, True], ["mean", "sum", "none"])))
def test_nll_loss_matches_torch(backend, dtype, weighted, ignore, reduction):
    x, target, _, weight, _ = _case((7, 4, 3), None, seed=2)
    x = rounded(x, dtype_name(dtype))
    w = weight if weighted else None
    ignore_index = 2 if ignore else -100
    expected = ref_nll_loss(x, target, weight=w, ignore_index=ignore_index, reduction=reduction)
    xp = backend.xp
    out = xce.nll_loss(
        backend.asarray(x, dtype), backend.asarray(target, xp.int64),
        weight=None if w is None else backend.asarray(w, dtype), ignore_index=ignore_index, reduction=reduction,
    )
    assert_close_to(out, expected, dtype=dtype, backend=backend)


@pytest.mark.parametrize("target_dtype", ["int64", "int32", "int16", "int8", "uint8"])
def test_any_integer_target_dtype(backend, target_dtype):
    xp = backend.xp
    x, target, _, _, _ = _case((6, 5), None, seed=3)
    expected = ref_cross_entropy(x, target)
    out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(target, getattr(xp, target_dtype)))
    assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def test_all_ignored_and_empty(backend):
    xp = backend.xp
    x = backend.asarray(np.zeros((3, 4)), xp.float64)
    t = backend.asarray([-100, -100, -100], xp.int64)
    assert_close_to(xce.cross_entropy(x, t), np.nan, dtype=xp.float64, backend=backend)
    assert_close_to(xce.cross_entropy(x, t, label_smoothing=0.2), np.nan, dtype=xp.float64, backend=backend)
    assert_close_to(xce.cross_entropy(x, t, reduction="sum"), 0.0, dtype=xp.float64, backend=backend)
    assert_close_to(xce.cross_entropy(x, t, reduction="none"), [0.0, 0.0, 0.0], dtype=xp.float64, backend=backend)
    empty = backend.asarray(np.zeros((0, 4)), xp.float64)
    none = backend.asarray(np.zeros((0,), dtype=np.int64), xp.int64)
    assert_close_to(xce.cross_entropy(empty, none), np.nan, dtype=xp.float64, backend=backend)
    assert_close_to(xce.cross_entropy(empty, none, reduction="sum"), 0.0, dtype=xp.float64, backend=backend)


def test_label_smoothing_one_is_allowed(backend):
    xp = backend.xp
    x, target, _, weight, _ = _case((6, 5), None, seed=4)
    expected = ref_cross_entropy(x, target, weight=weight, label_smoothing=1.0)
    out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(target, xp.int64),
                            weight=backend.asarray(weight, xp.float64), label_smoothing=1.0)
    assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def test_masked_vocabulary_is_finite(backend):
    """-inf logits on non-target classes: finite loss without smoothing, inf with it (PyTorch)."""
    xp = backend.xp
    x = np.asarray([[0.0, -np.inf, 1.0], [2.0, 1.0, -np.inf]])
    t = np.asarray([0, 1])
    for eps in (0.0, 0.1):
        expected = ref_cross_entropy(x, t, label_smoothing=eps, reduction="none")
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(t, xp.int64),
                                label_smoothing=eps, reduction="none")
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    assert np.all(np.isfinite(ref_cross_entropy(x, t, reduction="none")))
    # Probability targets with no mass on the masked classes stay finite too (PyTorch gives NaN).
    q = np.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(q, xp.float64), reduction="none")
    assert_close_to(out, ref_cross_entropy(np.where(np.isinf(x), -1e300, x), q, reduction="none"),
                    dtype=xp.float64, backend=backend)


def test_large_logits_float32_within_1e6_of_float64(backend):
    xp = backend.xp
    rng = np.random.default_rng(5)
    x = rounded(rng.uniform(-1e4, 1e4, size=(16, 50)), "float32")
    t = rng.integers(0, 50, size=16)
    for eps in (0.0, 0.1):
        expected = ref_cross_entropy(x, t, label_smoothing=eps, reduction="none")
        out = xce.cross_entropy(backend.asarray(x, xp.float32), backend.asarray(t, xp.int64),
                                label_smoothing=eps, reduction="none")
        got = np.asarray(out if backend.name not in ("dask",) else out.compute(), dtype=np.float64) \
            if backend.name in ("numpy", "dask", "jax", "jax-jit") else None
        if got is not None:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-3)
        assert_close_to(out, expected, dtype=xp.float32, backend=backend)


def test_out_of_range_target(backend):
    """Eager arrays raise IndexError naming the value; lazy ones give NaN, never a finite number."""
    xp = backend.xp
    x = backend.asarray(np.zeros((3, 4)), xp.float64)
    for bad in (4, -1):
        t = backend.asarray([0, bad, 1], xp.int64)
        if backend.lazy:
            assert_close_to(xce.cross_entropy(x, t), np.nan, dtype=xp.float64, backend=backend)
            assert_close_to(xce.cross_entropy(x, t, reduction="none"), [np.log(4), np.nan, np.log(4)],
                            dtype=xp.float64, backend=backend)
            assert_close_to(xce.nll_loss(x, t), np.nan, dtype=xp.float64, backend=backend)
        else:
            with pytest.raises(IndexError, match=f"class index {bad}"):
                xce.cross_entropy(x, t)
            with pytest.raises(IndexError, match=f"class index {bad}"):
                xce.nll_loss(x, t)


def test_unbatched_and_axis(backend):
    xp = backend.xp
    x, target, _, _, _ = _case((2, 3, 7), -1, seed=6)
    expected = ref_cross_entropy(x, target, axis=-1, reduction="none")
    out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(target, xp.int64),
                            axis=-1, reduction="none")
    assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    one = xce.cross_entropy(backend.asarray(x[0, 0], xp.float64), backend.asarray(target[0, 0], xp.int64))
    assert_close_to(one, expected[0, 0], dtype=xp.float64, backend=backend)


def test_bad_arguments_are_named():
    x, t = np.zeros((2, 3)), np.asarray([0, 1])
    with pytest.raises(ValueError, match="reduction"):
        xce.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        xce.cross_entropy(x, t, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="target shape"):
        xce.cross_entropy(x, np.asarray([0, 1, 2]))
    with pytest.raises(ValueError, match="weight"):
        xce.cross_entropy(x, t, weight=np.ones(4))
    with pytest.raises(TypeError, match="input must be a real floating"):
        xce.cross_entropy(np.zeros((2, 3), dtype=np.int64), t)
    with pytest.raises(TypeError, match="target must be an array"):
        xce.cross_entropy(x, [0, 1])
    with pytest.raises(ValueError, match="axis=2"):
        xce.cross_entropy(x, t, axis=2)
    with pytest.raises(ValueError, match="ignore_index"):
        xce.cross_entropy(x, np.ones((2, 3)) / 3, ignore_index=0)


def test_mixed_libraries_are_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="input is a numpy array, target is a torch array"):
        xce.cross_entropy(np.zeros((2, 3)), torch.tensor([0, 1]))


ENGINE_CONFIGS = [
    # (shape, axis, probabilities, weighted, eps, z)
    ((13, 7), None, False, True, 0.2, 0.0),
    ((13, 7), None, True, True, 0.1, 0.0),
    ((5, 6, 4), None, False, False, 0.3, 1e-3),
    ((3, 4, 9), -1, False, True, 0.0, 0.0),
    ((6, 5, 2, 3), None, True, False, 0.0, 1e-2),
    ((9,), None, False, True, 0.1, 0.0),
]


@pytest.mark.parametrize(("shape", "axis", "probabilities", "weighted", "eps", "z"), ENGINE_CONFIGS)
@pytest.mark.parametrize("blocks", [{"block_rows": 2}, {"block_rows": 3, "class_chunk": 2}, {"threads": 2}])
def test_blocked_engine_equals_fused(backend, shape, axis, probabilities, weighted, eps, z, blocks):
    """Forcing the blocked engine (tiny blocks, class chunks, threads) changes nothing but rounding."""
    if backend.lazy:
        pytest.skip("the blocked engine runs on eager arrays only")
    xp = backend.xp
    x, target, probs, weight, _ = _case(shape, axis, seed=11)
    t = probs if probabilities else target
    kwargs = {"axis": axis, "label_smoothing": eps, "z_loss": z, "reduction": "none"}
    args = (backend.asarray(x, xp.float64), backend.asarray(t, xp.float64 if probabilities else xp.int64))
    w = backend.asarray(weight, xp.float64) if weighted else None
    with xce.config(enabled=False):
        fused = xce.cross_entropy(*args, weight=w, **kwargs)
    with xce.config(enabled=True, **blocks):
        blocked = xce.cross_entropy(*args, weight=w, **kwargs)
        focal = xce.softmax_focal_loss(*args, weight=w, axis=axis) if not probabilities else None
    assert_close_to(blocked, np.asarray(fused), dtype=xp.float64, backend=backend)
    if focal is not None:
        with xce.config(enabled=False):
            assert_close_to(focal, float(xce.softmax_focal_loss(*args, weight=w, axis=axis)),
                            dtype=xp.float64, backend=backend)

"""one_hot and smooth_labels (both smoothing conventions) on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xce

import reference as ref
from conftest import assert_close_to, dtype_name
from reference import rounded

lazy_xp_modules = [xce]


def test_one_hot_matches_torch(backend):
    xp = backend.xp
    t = np.asarray([[0, 3, 1], [2, 2, 0]])
    for axis in (-1, 1):
        out = xce.one_hot(backend.asarray(t, xp.int32), 4, dtype=xp.float32, axis=axis)
        assert_close_to(out, ref.one_hot(t, 4, axis=axis), dtype=xp.float32, backend=backend)
    ints = xce.one_hot(backend.asarray(t, xp.int64), 4, dtype=xp.int64)
    assert ints.dtype == xp.int64 and tuple(ints.shape) == (2, 3, 4)


def test_one_hot_out_of_range(backend):
    """Eager arrays raise naming the value; JAX / Dask give a NaN vector, never a valid-looking one."""
    xp = backend.xp
    t = backend.asarray([1, 3], xp.int64)
    if backend.lazy:
        out = xce.one_hot(t, 3, dtype=xp.float64)
        assert_close_to(out, [[0, 1, 0], [np.nan] * 3], dtype=xp.float64, backend=backend)
    else:
        with pytest.raises(IndexError, match=r"target must lie in \[0, 2\]; got 3"):
            xce.one_hot(t, 3)


@pytest.mark.parametrize(("mode", "eps", "axis"), [("uniform", 0.2, -1), ("off_target", 0.3, 0)])
def test_smooth_labels_matches_formula(backend, dtype, mode, eps, axis):
    name = dtype_name(dtype)
    rng = np.random.default_rng(0)
    y = rounded(np.moveaxis(rng.dirichlet(np.ones(5), size=3), -1, axis), name)
    out = xce.smooth_labels(backend.asarray(y, dtype), eps, mode=mode, axis=axis)
    assert_close_to(out, ref.smooth_labels(y, eps, mode=mode, axis=axis), dtype=dtype, backend=backend)


def test_off_target_values(backend):
    """fairseq's convention: 1-ε on the target, ε/(C-1) on each other class; rows keep their mass."""
    xp = backend.xp
    labels = xce.one_hot(backend.asarray([1, 0], xp.int64), 4, dtype=xp.float64)
    out = xce.smooth_labels(labels, 0.3, mode="off_target")
    assert_close_to(out, [[0.1, 0.7, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]], dtype=xp.float64, backend=backend)
    assert_close_to(xp.sum(out, axis=-1), [1.0, 1.0], dtype=xp.float64, backend=backend)


def test_dense_labels_match_index_smoothing(backend):
    """cross_entropy's index-path smoothing equals cross_entropy on smooth_labels(one_hot(y))."""
    xp = backend.xp
    rng = np.random.default_rng(1)
    x, t = backend.asarray(rng.normal(size=(4, 5)), xp.float64), backend.asarray([2, 1, 0, 4], xp.int64)
    for mode in ("uniform", "off_target"):
        dense = xce.smooth_labels(xce.one_hot(t, 5, dtype=xp.float64), 0.4, mode=mode)
        index = xce.cross_entropy(x, t, label_smoothing=0.4, label_smoothing_mode=mode)
        assert_close_to(xce.cross_entropy(x, dense), float(_np(index)), dtype=xp.float64, backend=backend)


def _np(a):
    from conftest import to_numpy

    return to_numpy(a)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes must be at least 1; got 0"):
        xce.one_hot(np.asarray([0]), 0)
    with pytest.raises(TypeError, match="target must hold integer class indices"):
        xce.one_hot(np.asarray([0.0]), 2)
    with pytest.raises(ValueError, match="axis=3 is out of range"):
        xce.one_hot(np.asarray([0, 1]), 2, axis=3)
    with pytest.raises(ValueError, match="mode must be one of 'uniform', 'off_target'; got 'fairseq'"):
        xce.smooth_labels(np.ones((2, 3)), 0.1, mode="fairseq")
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        xce.smooth_labels(np.ones((2, 1)), 0.1, mode="off_target")
    with pytest.raises(TypeError, match="labels must be a real floating"):
        xce.smooth_labels(np.ones((2, 3), dtype=np.int64), 0.1)

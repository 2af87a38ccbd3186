"""kl_div against float64 PyTorch on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xce

import reference as ref
from conftest import assert_close_to, dtype_name
from reference import rounded

lazy_xp_modules = [xce]


def _case(seed=0, shape=(4, 5)):
    rng = np.random.default_rng(seed)
    log_q = np.log(rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]))
    p = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    p[0, 1] = 0.0  # 0·log 0 = 0
    return log_q, p


@pytest.mark.parametrize(("reduction", "log_target"), [("batchmean", False), ("none", True)])
def test_matches_torch(backend, dtype, reduction, log_target):
    name = dtype_name(dtype)
    log_q, p = _case()
    if log_target:
        p = np.log(p + 0.01)
    log_q, p = rounded(log_q, name), rounded(p, name)
    expected = ref.kl_div(log_q, p, reduction=reduction, log_target=log_target)
    out = xce.kl_div(backend.asarray(log_q, dtype), backend.asarray(p, dtype), reduction=reduction,
                     log_target=log_target)
    assert_close_to(out, expected, dtype=dtype, backend=backend)


def test_sum_broadcast_and_zero_mass(backend):
    """A zero target contributes 0 even against log q = -inf (PyTorch: NaN); target broadcasts."""
    xp = backend.xp
    log_q, p = _case(1, (3, 4))
    out = xce.kl_div(backend.asarray(log_q, xp.float64), backend.asarray(p[0], xp.float64), reduction="sum")
    assert_close_to(out, ref.kl_div(log_q, np.broadcast_to(p[0], log_q.shape).copy(), reduction="sum"),
                    dtype=xp.float64, backend=backend)
    masked = backend.asarray([[-np.inf, 0.0]], xp.float64)
    out = xce.kl_div(masked, backend.asarray([[0.0, 1.0]], xp.float64), reduction="none")
    assert_close_to(out, [[0.0, 0.0]], dtype=xp.float64, backend=backend)
    out = xce.kl_div(backend.asarray(log_q, xp.float64), backend.asarray(p, xp.float64))  # "mean": all elements
    assert_close_to(out, ref.kl_div(log_q, p), dtype=xp.float64, backend=backend)


def test_bad_arguments_are_named():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="reduction must be one of 'none', 'mean', 'sum', 'batchmean'; got 'avg'"):
        xce.kl_div(x, x, reduction="avg")
    with pytest.raises(ValueError, match=r"target of shape \(4,\) does not broadcast"):
        xce.kl_div(x, np.zeros(4))
    with pytest.raises(TypeError, match="log_target must be a bool"):
        xce.kl_div(x, x, log_target=1)
    with pytest.raises(TypeError, match="target must be a real floating"):
        xce.kl_div(x, np.zeros((2, 3), dtype=np.int64))

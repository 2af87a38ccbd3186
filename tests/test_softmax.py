"""logsumexp, log_softmax, softmax: stable, half precision in float32, every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xce

from conftest import assert_close_to, dtype_name
from reference import rounded

lazy_xp_modules = [xce]


def _x(name, seed=0, shape=(4, 6), scale=5.0):
    return rounded(np.random.default_rng(seed).normal(scale=scale, size=shape), name)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_log_softmax_and_softmax_match_torch(backend, dtype, axis):
    x = _x(dtype_name(dtype))
    got_log = xce.log_softmax(backend.asarray(x, dtype), axis=axis)
    got = xce.softmax(backend.asarray(x, dtype), axis=axis)
    assert_close_to(got_log, torch.log_softmax(torch.from_numpy(x), dim=axis).numpy(), dtype=dtype, backend=backend)
    assert_close_to(got, torch.softmax(torch.from_numpy(x), dim=axis).numpy(), dtype=dtype, backend=backend)


@pytest.mark.parametrize(("axis", "keepdims"), [(None, False), (1, False), (0, True), ((0, 1), False), (-1, True)])
def test_logsumexp_matches_torch(backend, dtype, axis, keepdims):
    x = _x(dtype_name(dtype), seed=1)
    dims = tuple(range(x.ndim)) if axis is None else axis
    expected = torch.logsumexp(torch.from_numpy(x), dim=dims, keepdim=keepdims).numpy()
    got = xce.logsumexp(backend.asarray(x, dtype), axis=axis, keepdims=keepdims)
    assert_close_to(got, expected, dtype=dtype, backend=backend)


def test_infinities(backend):
    xp = backend.xp
    x = backend.asarray([[-np.inf, -np.inf], [0.0, -np.inf], [1e308, 1e308]], xp.float64)
    assert_close_to(xce.logsumexp(x, axis=1), [-np.inf, 0.0, 1e308 + np.log(2)], dtype=xp.float64, backend=backend)
    assert_close_to(xce.softmax(x, axis=1), [[np.nan, np.nan], [1.0, 0.0], [0.5, 0.5]],
                    dtype=xp.float64, backend=backend)
    assert_close_to(xce.log_softmax(x, axis=1), [[np.nan, np.nan], [0.0, -np.inf], [-np.log(2), -np.log(2)]],
                    dtype=xp.float64, backend=backend)


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="x must be a real floating"):
        xce.softmax(np.arange(3))

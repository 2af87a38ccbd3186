"""cross_entropy caches the checks that depend only on shapes, dtypes and hyper-parameters,
per call signature. What may differ between two calls with one signature (devices, values,
a bool given where an int was) must still be checked on every call."""

from __future__ import annotations

import numpy as np
import pytest

import xce
from xce.losses import cross_entropy as ce

RNG = np.random.default_rng(5)
X = RNG.normal(size=(4, 3))
Y = RNG.integers(0, 3, size=4)


def test_a_cached_signature_admits_no_equal_but_invalid_argument():
    xce.cross_entropy(X, Y, axis=1)  # cached with axis=1 ...
    with pytest.raises(TypeError, match="axis"):
        xce.cross_entropy(X, Y, axis=True)  # ... True == 1, but a bool is no axis


def test_values_are_checked_on_every_call():
    xce.cross_entropy(X, Y)
    bad = Y.copy()
    bad[0] = 3
    with pytest.raises(IndexError, match="outside"):
        xce.cross_entropy(X, bad)


def test_devices_are_checked_on_every_call():
    torch = pytest.importorskip("torch")
    x, y = torch.tensor(X), torch.tensor(Y)
    with xce.config(delegate=False):
        xce.cross_entropy(x, y, torch.ones(3, dtype=torch.float64))
        with pytest.raises(ValueError, match="weight is on device meta"):
            xce.cross_entropy(x, y, torch.ones(3, dtype=torch.float64, device="meta"))


def test_array_hyper_parameters_are_not_cached():
    before = dict(ce._STRUCTURES)
    ce._STRUCTURES.clear()
    try:
        out = xce.cross_entropy(X, Y, label_smoothing=np.asarray(0.1))
        assert float(out) == pytest.approx(float(xce.cross_entropy(X, Y, label_smoothing=0.1)), rel=1e-12)
        assert len(ce._STRUCTURES) == 1
        assert all(type(key[-1].label_smoothing) is float for key in ce._STRUCTURES)  # no array in a key
    finally:
        ce._STRUCTURES.update(before)


def test_the_cache_is_bounded():
    for n in range(1, 600):
        xce.cross_entropy(X[:1].repeat(n, 0), Y[:1].repeat(n, 0))
    assert len(ce._STRUCTURES) <= 512


def test_torch_compile_traces_past_a_filled_cache():
    """Under torch.compile the cache is neither read nor written: dynamo cannot compare its
    keys (fullgraph=True would fail on a module in a key)."""
    torch = pytest.importorskip("torch")
    x, y = torch.tensor(X), torch.tensor(Y)
    n = torch.tensor(9.0, dtype=torch.float64)
    eager = xce.cross_entropy(x, y, normalizer=n)  # fills the cache with this signature ...
    for k in range(2, 5):  # ... and others, from several libraries
        xce.cross_entropy(X[:k], Y[:k])
        xce.cross_entropy(x[:k], y[:k], label_smoothing=0.1)
        xce.cross_entropy(x[:k], y[:k], normalizer=n)
        xce.cross_entropy(x[:k], y[:k], reduction="none")
    compiled = torch.compile(lambda v: xce.cross_entropy(v, y, normalizer=n), backend="aot_eager", fullgraph=True)
    assert float(compiled(x)) == pytest.approx(float(eager), rel=1e-12)


def test_numpys_namespace_reduces_with_the_same_ufuncs():
    """Plain ndarrays get array-api-compat's NumPy namespace with sum/max/min called as the
    ufuncs' reduce (np.sum's wrapper costs more than an 8-element reduction): same bits, same
    dtypes, same errors; subclasses (masked arrays) keep the namespace as it is."""
    import array_api_compat.numpy as compat

    from xce._namespace import namespace

    xp = namespace(("input",), X)
    assert xp.__name__ == compat.__name__ and xp.exp is compat.exp
    a = RNG.normal(size=(5, 7)).astype(np.float32)
    for axis in (None, 0, 1, -1, (0, 1)):
        for keepdims in (False, True):
            for ours, theirs in ((xp.sum, np.sum), (xp.max, np.max), (xp.min, np.min)):
                got, want = ours(a, axis=axis, keepdims=keepdims), theirs(a, axis=axis, keepdims=keepdims)
                assert np.asarray(got).dtype == np.asarray(want).dtype and np.array_equal(got, want)
    ints = np.arange(6, dtype=np.int8)
    assert xp.sum(ints).dtype == np.sum(ints).dtype and xp.sum(ints, dtype=np.int16).dtype == np.int16
    with pytest.raises(ValueError):
        xp.max(np.zeros((0,)))
    masked = np.ma.masked_array(X, mask=X > 0)
    assert namespace(("input",), masked).sum is np.sum


@pytest.mark.parametrize("library", ["numpy", "torch", "array_api_strict"])
def test_the_seams_scatter_puts_values_at_the_targets_or_declines(library):
    """``put_along_class_axis``: the in-place gradient's target update. Where the library has a
    scatter it writes exactly ``x[i, t[i]] = v[i]`` and nothing else; elsewhere it returns False
    and leaves ``x`` as it was (the rule then assigns another way)."""
    from xce._namespace import put_along_class_axis

    lib = pytest.importorskip(library)
    base = np.arange(12.0).reshape(3, 4)
    t_np, v_np = np.asarray([3, 0, 2]), np.asarray([-1.0, -2.0, -3.0])
    x, t, v = (lib.asarray(a) for a in (base.copy(), t_np, v_np))
    done = put_along_class_axis(x, t, v, 1)
    want = base.copy()
    want[np.arange(3), t_np] = v_np
    assert done == (library != "array_api_strict")
    np.testing.assert_array_equal(np.asarray(x), want if done else base)

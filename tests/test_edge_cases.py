"""Edge cases pinned on every backend (issue 4), against PyTorch in float64 where it agrees,
plus the no-hidden-state guarantees (thread safety, global settings left alone)."""

from __future__ import annotations

import concurrent.futures
import warnings

import numpy as np
import pytest

import xce

from conftest import assert_close_to, dtype_name, to_numpy
from reference import cross_entropy as ref_cross_entropy
from reference import nll_loss as ref_nll_loss
from reference import rounded

lazy_xp_modules = [xce]

REDUCTIONS = ["mean", "sum", "none"]


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- empty and fully ignored batches --------------------------------------------------------


@pytest.mark.parametrize("shape", [(0, 4), (2, 4, 0)])
def test_empty_batch(backend, shape):
    xp = backend.xp
    x = backend.asarray(np.zeros(shape), xp.float64)
    t_shape = (shape[0], *shape[2:])
    t = backend.asarray(np.zeros(t_shape, dtype=np.int64), xp.int64)
    q = backend.asarray(np.zeros(shape), xp.float64)
    w = backend.asarray([1.0, 2.0, 3.0, 4.0], xp.float64)
    for reduction in REDUCTIONS:
        expected = ref_cross_entropy(np.zeros(shape), np.zeros(t_shape, dtype=np.int64), weight=np.arange(1.0, 5.0),
                                     reduction=reduction, label_smoothing=0.2)
        assert_close_to(xce.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.2), expected,
                        dtype=xp.float64, backend=backend)
    for reduction in ("mean", "sum"):
        expected = ref_cross_entropy(np.zeros(shape), np.zeros(shape), reduction=reduction)
        assert_close_to(xce.cross_entropy(x, q, reduction=reduction), expected, dtype=xp.float64, backend=backend)
    expected = ref_nll_loss(np.zeros(shape), np.zeros(t_shape, dtype=np.int64))
    assert_close_to(xce.nll_loss(x, t), expected, dtype=xp.float64, backend=backend)
    # "mean" of nothing is 0/0.
    assert_close_to(xce.cross_entropy(x, t), np.nan, dtype=xp.float64, backend=backend)


@pytest.mark.parametrize(("weighted", "eps"), [(False, 0.0), (True, 0.3)])
def test_all_targets_ignored(backend, weighted, eps):
    xp = backend.xp
    x = _rng(1).normal(size=(4, 3, 2))
    target = np.full((4, 2), 7)
    w = np.asarray([0.5, 1.0, 2.0]) if weighted else None
    for reduction in ("mean", "sum"):
        expected = ref_cross_entropy(x, target, weight=w, ignore_index=7, reduction=reduction, label_smoothing=eps)
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(target, xp.int64),
                                weight=None if w is None else backend.asarray(w, xp.float64), ignore_index=7,
                                reduction=reduction, label_smoothing=eps)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        expected = ref_nll_loss(x, target, weight=w, ignore_index=7, reduction=reduction)
        out = xce.nll_loss(backend.asarray(x, xp.float64), backend.asarray(target, xp.int64),
                           weight=None if w is None else backend.asarray(w, xp.float64), ignore_index=7,
                           reduction=reduction)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    assert np.isnan(ref_cross_entropy(x, target, ignore_index=7))  # PyTorch: 0/0


# --- non-finite logits ----------------------------------------------------------------------

INF = np.inf
NONFINITE_X = np.asarray([
    [0.0, -INF, 1.0],      # a masked non-target class
    [-INF, 2.0, -INF],     # only the target survives
    [-INF, -INF, -INF],    # everything masked: NaN (as PyTorch)
    [INF, 0.0, 1.0],       # +inf on the target
    [INF, 0.0, 1.0],       # +inf elsewhere
    [np.nan, 0.0, 1.0],    # NaN on another class propagates
    [0.0, np.nan, 1.0],    # NaN on the target
    [1.0, 2.0, 3.0],       # an ordinary row
])
NONFINITE_T = np.asarray([0, 1, 0, 0, 1, 1, 1, 2])


@pytest.mark.parametrize(("eps", "reduction"), [(0.0, "none"), (0.1, "none"), (0.0, "mean"), (0.1, "sum")])
def test_non_finite_logits_match_torch(backend, eps, reduction):
    """-inf (masked), +inf and NaN logits, row by row and reduced: NaN is never hidden."""
    xp = backend.xp
    x = backend.asarray(NONFINITE_X, xp.float64)
    t = backend.asarray(NONFINITE_T, xp.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = ref_cross_entropy(NONFINITE_X, NONFINITE_T, reduction=reduction, label_smoothing=eps)
        if reduction == "none" and eps == 0.0:
            # +inf on a non-target class: PyTorch's kernel computes inf - inf for the whole row (NaN);
            # xce shifts such a row by 0 and returns the limit, -log(0) = +inf. Not a hidden NaN: the
            # input had none. Documented in docs/errors.md.
            assert np.isnan(expected[4])
            expected[4] = np.inf
        out = xce.cross_entropy(x, t, reduction=reduction, label_smoothing=eps)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        if reduction != "none":
            assert np.isnan(to_numpy(out))


def test_masked_logits_rows(backend):
    """Rows 0-1 finite without smoothing, +inf with it; the all -inf row is NaN; ignoring it hides it."""
    xp = backend.xp
    x = backend.asarray(NONFINITE_X[:3], xp.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        none = to_numpy(xce.cross_entropy(x, backend.asarray(NONFINITE_T[:3], xp.int64), reduction="none"))
        smooth = to_numpy(xce.cross_entropy(x, backend.asarray(NONFINITE_T[:3], xp.int64), reduction="none",
                                            label_smoothing=0.1))
        ignored = xce.cross_entropy(x, backend.asarray([0, 1, -100], xp.int64))
    np.testing.assert_allclose(none[:2], [np.log1p(np.e), 0.0])
    assert np.isnan(none[2])
    assert np.all(np.isposinf(smooth[:2]))
    assert_close_to(ignored, np.log1p(np.e) / 2, dtype=xp.float64, backend=backend)


def test_nan_logits_in_nll_and_softmax_family(backend):
    xp = backend.xp
    x = np.asarray([[np.nan, 0.0, 1.0], [0.0, 1.0, 2.0]])
    t = np.asarray([1, 0])
    import torch

    xt = torch.from_numpy(x)
    assert_close_to(xce.nll_loss(backend.asarray(x, xp.float64), backend.asarray(t, xp.int64), reduction="none"),
                    ref_nll_loss(x, t, reduction="none"), dtype=xp.float64, backend=backend)
    assert_close_to(xce.softmax(backend.asarray(x, xp.float64), axis=1), torch.softmax(xt, 1).numpy(),
                    dtype=xp.float64, backend=backend)
    assert_close_to(xce.log_softmax(backend.asarray(x, xp.float64), axis=1), torch.log_softmax(xt, 1).numpy(),
                    dtype=xp.float64, backend=backend)
    assert_close_to(xce.logsumexp(backend.asarray(x, xp.float64), axis=1), torch.logsumexp(xt, 1).numpy(),
                    dtype=xp.float64, backend=backend)
    assert_close_to(xce.logsumexp(backend.asarray(x, xp.float64)), np.nan, dtype=xp.float64, backend=backend)


# --- large magnitudes and half precision ---------------------------------------------------


def test_logits_1e4_float32(backend):
    xp = backend.xp
    rng = _rng(2)
    x = rounded(rng.uniform(-1e4, 1e4, size=(8, 30)), "float32")
    x[:, 3] = 1e4  # ties at the maximum
    t = rng.integers(0, 30, size=8)
    w = rng.uniform(0.5, 2.0, size=30)
    for eps, reduction in ((0.0, "none"), (0.1, "none"), (0.1, "mean")):
        expected = ref_cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=eps)
        out = xce.cross_entropy(backend.asarray(x, xp.float32), backend.asarray(t, xp.int64),
                                weight=backend.asarray(w, xp.float32), reduction=reduction, label_smoothing=eps)
        assert_close_to(out, expected, dtype=xp.float32, backend=backend)
    assert_close_to(xce.logsumexp(backend.asarray(x, xp.float32), axis=1),
                    np.log(np.sum(np.exp(x - x.max(1, keepdims=True)), 1)) + x.max(1), dtype=xp.float32,
                    backend=backend)


def test_logits_6e4_float16(backend):
    """Near float16's maximum (65504): computed in float32, no overflow to inf or NaN."""
    xp = backend.xp
    if getattr(xp, "float16", None) is None:
        pytest.skip(f"{backend.name} has no float16")
    rng = _rng(3)
    # Spacing of float16 at 6e4 is 32: logits 6e4 - 32k keep the per-row losses representable.
    x = rounded(6e4 - 32.0 * rng.integers(0, 4, size=(6, 5)), "float16")
    x[1] = -6e4
    x[2, :2] = 6e4
    x[2, 2:] = -6e4
    t = np.asarray([0, 1, 1, 2, 3, 4])
    t[0] = int(np.argmax(x[0]))
    for reduction in ("none", "mean"):
        expected = ref_cross_entropy(x, t, reduction=reduction)
        out = xce.cross_entropy(backend.asarray(x, xp.float16), backend.asarray(t, xp.int64), reduction=reduction)
        assert_close_to(out, expected, dtype=xp.float16, backend=backend)
        assert np.all(np.isfinite(to_numpy(out)))
    import torch

    xt = torch.from_numpy(x)
    assert_close_to(xce.logsumexp(backend.asarray(x, xp.float16), axis=1), torch.logsumexp(xt, 1).numpy(),
                    dtype=xp.float16, backend=backend)
    assert_close_to(xce.softmax(backend.asarray(x, xp.float16), axis=1), torch.softmax(xt, 1).numpy(),
                    dtype=xp.float16, backend=backend)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"], indirect=True)
def test_half_precision_accumulates_in_float32(backend, dtype):
    """1000 classes: a half-precision sum of exponentials would be off by far more than the tolerance."""
    xp = backend.xp
    rng = _rng(4)
    name = dtype_name(dtype)
    x = rounded(rng.normal(scale=2.0, size=(4, 1000)), name)
    t = rng.integers(0, 1000, size=4)
    for eps in (0.0, 0.1):
        expected = ref_cross_entropy(x, t, reduction="none", label_smoothing=eps)
        out = xce.cross_entropy(backend.asarray(x, dtype), backend.asarray(t, xp.int64), reduction="none",
                                label_smoothing=eps)
        assert_close_to(out, expected, dtype=dtype, backend=backend)
    import torch

    assert_close_to(xce.logsumexp(backend.asarray(x, dtype), axis=1), torch.logsumexp(torch.from_numpy(x), 1).numpy(),
                    dtype=dtype, backend=backend)


# --- target dtypes ---------------------------------------------------------------------------


@pytest.mark.parametrize("target_dtype", ["int32", "uint8"])
def test_small_integer_targets(backend, target_dtype):
    xp = backend.xp
    rng = _rng(5)
    x = rng.normal(size=(6, 4, 2))
    t = rng.integers(0, 4, size=(6, 2))
    ignore = 255 if target_dtype == "uint8" else -100
    t[0, 0] = ignore
    w = rng.uniform(0.5, 2.0, size=4)
    for eps in (0.0, 0.2):
        expected = ref_cross_entropy(x, t, weight=w, ignore_index=ignore, label_smoothing=eps)
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(t, getattr(xp, target_dtype)),
                                weight=backend.asarray(w, xp.float64), ignore_index=ignore, label_smoothing=eps)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    expected = ref_nll_loss(x, t, ignore_index=ignore, reduction="none")
    out = xce.nll_loss(backend.asarray(x, xp.float64), backend.asarray(t, getattr(xp, target_dtype)),
                       ignore_index=ignore, reduction="none")
    assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    # -100 cannot occur in a uint8 target: nothing is ignored, nothing overflows.
    if target_dtype == "uint8":
        t[0, 0] = 1
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(t, xp.uint8))
        assert_close_to(out, ref_cross_entropy(x, t), dtype=xp.float64, backend=backend)


# --- layouts ---------------------------------------------------------------------------------


def test_non_contiguous_inputs(backend):
    """Transposed and strided views give the same numbers as contiguous copies."""
    xp = backend.xp
    rng = _rng(6)
    base = rng.normal(size=(5, 12))  # (C, 2N): transposed and every other row
    t_base = rng.integers(0, 5, size=12)
    w = rng.uniform(0.5, 2.0, size=5)
    xb = backend.asarray(base, xp.float64)
    x = xp.permute_dims(xb, (1, 0))[::2, :]
    t = backend.asarray(t_base, xp.int64)[::2]
    x_np, t_np = base.T[::2], t_base[::2]
    for reduction in ("none", "mean"):
        expected = ref_cross_entropy(x_np, t_np, weight=w, reduction=reduction, label_smoothing=0.1)
        out = xce.cross_entropy(x, t, weight=backend.asarray(w, xp.float64)[::1], reduction=reduction,
                                label_smoothing=0.1)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    q_np = np.exp(x_np) / np.exp(x_np).sum(1, keepdims=True)
    q = xp.permute_dims(backend.asarray(np.ascontiguousarray(q_np.T), xp.float64), (1, 0))
    assert_close_to(xce.cross_entropy(x, q), ref_cross_entropy(x_np, q_np), dtype=xp.float64, backend=backend)
    # Class axis 0 of the un-transposed view, i.e. strided classes-first logits.
    assert_close_to(xce.cross_entropy(xb[:, ::2], t, axis=0, reduction="none"),
                    ref_cross_entropy(x_np, t_np, reduction="none"), dtype=xp.float64, backend=backend)
    import torch

    assert_close_to(xce.softmax(x, axis=1), torch.softmax(torch.from_numpy(x_np), 1).numpy(),
                    dtype=xp.float64, backend=backend)


def test_k_dim_with_last_axis(backend):
    xp = backend.xp
    rng = _rng(7)
    x = rng.normal(size=(2, 3, 4, 5))  # (batch, time, height, vocab)
    t = rng.integers(0, 5, size=(2, 3, 4))
    t[0, 0, 0] = 2
    w = rng.uniform(0.5, 2.0, size=5)
    q = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    for reduction in ("none", "mean"):
        kw = {"reduction": reduction, "label_smoothing": 0.2}
        expected = ref_cross_entropy(x, t, weight=w, axis=-1, ignore_index=2, **kw)
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(t, xp.int64),
                                weight=backend.asarray(w, xp.float64), axis=-1, ignore_index=2, **kw)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        expected = ref_cross_entropy(x, q, weight=w, axis=-1, **kw)
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(q, xp.float64),
                                weight=backend.asarray(w, xp.float64), axis=-1, **kw)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        expected = ref_nll_loss(np.moveaxis(x, -1, 1), t, weight=w, reduction=reduction)
        out = xce.nll_loss(backend.asarray(x, xp.float64), backend.asarray(t, xp.int64),
                           weight=backend.asarray(w, xp.float64), axis=-1, reduction=reduction)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def test_single_class(backend):
    """C = 1: every log-probability is 0, so every loss is 0 (and 1 is out of range)."""
    xp = backend.xp
    x = np.asarray([[3.0], [-2.0], [0.5]])
    t = np.zeros(3, dtype=np.int64)
    for eps, reduction in ((0.0, "none"), (0.5, "none"), (0.5, "mean")):
        expected = ref_cross_entropy(x, t, reduction=reduction, label_smoothing=eps)
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(t, xp.int64), reduction=reduction,
                                label_smoothing=eps)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
        expected = ref_cross_entropy(x, np.ones((3, 1)), reduction=reduction, label_smoothing=eps)
        out = xce.cross_entropy(backend.asarray(x, xp.float64), backend.asarray(np.ones((3, 1)), xp.float64),
                                reduction=reduction, label_smoothing=eps)
        assert_close_to(out, expected, dtype=xp.float64, backend=backend)
    assert_close_to(xce.softmax(backend.asarray(x, xp.float64), axis=1), np.ones((3, 1)), dtype=xp.float64,
                    backend=backend)
    assert_close_to(xce.logsumexp(backend.asarray(x, xp.float64), axis=1), x[:, 0], dtype=xp.float64,
                    backend=backend)
    bad = backend.asarray([0, 1, 0], xp.int64)
    if backend.lazy:
        assert_close_to(xce.cross_entropy(backend.asarray(x, xp.float64), bad, reduction="none"), [0.0, np.nan, 0.0],
                        dtype=xp.float64, backend=backend)
    else:
        with pytest.raises(IndexError, match=r"class index 1, outside \[0, 0\] for 1 classes"):
            xce.cross_entropy(backend.asarray(x, xp.float64), bad)


# --- no hidden state -------------------------------------------------------------------------


def _calls(lib):
    """(function, args) pairs in ``lib`` with per-call distinct inputs."""
    rng = _rng(8)
    if lib == "torch":
        import torch

        conv = torch.from_numpy
    else:
        conv = np.asarray
    calls = []
    for i in range(24):
        x = rng.normal(size=(16, 7 + i % 3))
        t = rng.integers(0, x.shape[1], size=16)
        t[i % 16] = -100
        w = rng.uniform(0.5, 2.0, size=x.shape[1])
        calls.append((xce.cross_entropy, (conv(x), conv(t)), {"weight": conv(w), "label_smoothing": 0.1}))
        calls.append((xce.cross_entropy, (conv(x), conv(np.exp(x) / np.exp(x).sum(1, keepdims=True))), {}))
        calls.append((xce.nll_loss, (conv(x), conv(t)), {"reduction": "none"}))
        calls.append((xce.logsumexp, (conv(x),), {"axis": 1}))
        calls.append((xce.softmax, (conv(x),), {"axis": 0}))
    return calls


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_concurrent_calls_give_identical_results(lib):
    if lib == "torch":
        pytest.importorskip("torch")
    from xce import _namespace

    calls = _calls(lib)
    serial = [np.asarray(to_numpy(f(*a, **k))) for f, a, k in calls]
    # Cold caches, so that threads race to fill them.
    _namespace._NAMESPACE_CACHE.clear()
    _namespace._LAZY_CACHE.clear()
    _namespace._INDEX_DTYPE_CACHE.clear()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(f, *a, **k) for _ in range(3) for f, a, k in calls]
        results = [np.asarray(to_numpy(fut.result())) for fut in futures]
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, serial[i % len(calls)], rtol=1e-13, atol=0, err_msg=f"call {i % len(calls)}")


def _global_state():
    state = {"numpy_err": np.geterr()}
    try:
        import torch

        state.update(torch_dtype=torch.get_default_dtype(), torch_threads=torch.get_num_threads(),
                     torch_grad=torch.is_grad_enabled(), torch_det=torch.are_deterministic_algorithms_enabled())
    except ImportError:  # pragma: no cover
        pass
    try:
        import jax

        state.update(jax_x64=jax.config.jax_enable_x64, jax_platform=jax.config.jax_platforms)
    except ImportError:  # pragma: no cover
        pass
    return state


def test_calls_leave_global_settings_alone(backend):
    xp = backend.xp
    before = _global_state()
    x = backend.asarray(np.asarray([[0.0, -np.inf, 1.0], [2.0, 1.0, 0.0]]), xp.float32)
    t = backend.asarray([0, 2], xp.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outs = [xce.cross_entropy(x, t, label_smoothing=0.1), xce.nll_loss(x, t), xce.logsumexp(x),
                xce.softmax(x), xce.log_softmax(x, axis=0), xce.cross_entropy(xce.softmax(x), xce.softmax(x))]
        for out in outs:
            to_numpy(out)
    assert _global_state() == before


def test_jax_x64_toggled_between_calls():
    """Nothing cached from the x64 state: switching it off between calls gives float32 results, no warnings."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]])
    t = np.asarray([0, 2])
    expected = ref_cross_entropy(x, t)
    was = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", True)
        np.testing.assert_allclose(float(xce.cross_entropy(jnp.asarray(x), jnp.asarray(t))), expected, rtol=1e-12)
        jax.config.update("jax_enable_x64", False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = xce.cross_entropy(jnp.asarray(x, dtype=jnp.float32), jnp.asarray(t))
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(float(out), expected, rtol=2e-6)
        assert jax.config.jax_enable_x64 is False  # xce did not switch it back on
    finally:
        jax.config.update("jax_enable_x64", was)


def test_torch_default_dtype_is_respected_not_changed():
    torch = pytest.importorskip("torch")
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        out = xce.cross_entropy(torch.zeros(2, 3, dtype=torch.float32), torch.tensor([0, 1]))
        assert out.dtype == torch.float32
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(old)

"""The blocked engine (xce._engine, through the cross-entropy statistics) equals the fused,
unblocked formula on every eager backend."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from xce import _engine
from xce._engine import config, plan, supports
from xce._softmax import shifted_logsumexp
from xce.losses.cross_entropy import row_stats

EAGER = ["numpy", "torch", "array_api_strict"]
DTYPES = ["float32", "float64", "float16"]
# float16 inputs are computed in float32 on both paths.
RTOL = {"float32": 3e-6, "float64": 1e-13, "float16": 3e-6}


def _xp(name):
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp
    else:
        if importlib.util.find_spec("array_api_strict") is None:
            pytest.skip("array-api-strict is not installed")
        import array_api_strict as xp
    return xp


def _np(a):
    if type(a).__module__.startswith("torch"):
        return a.numpy()
    return np.asarray(a)


def _reference(x, index, weight, probs, smoothing, xp):
    """The unblocked (fused) statistics: whole-array upcast, one shifted_logsumexp."""
    dtype = xp.float32 if xp.finfo(x.dtype).bits < 32 else x.dtype
    work = xp.astype(x, dtype)
    shifted, lse = shifted_logsumexp(work, 1, xp=xp)
    out = {"lse": xp.squeeze(lse, axis=1)}
    out["target"] = xp.squeeze(xp.take_along_axis(shifted, xp.expand_dims(index, axis=1), axis=1), axis=1)
    w_shape = (1, -1) if x.ndim == 2 else (1, -1, 1)
    w = None if weight is None else xp.reshape(weight, w_shape)
    out["class_sum"] = xp.sum(shifted if w is None else shifted * w, axis=1)
    if probs is not None:
        q = xp.astype(probs, dtype)
        if smoothing:
            q = (1.0 - smoothing) * q + smoothing / x.shape[1]
        if w is not None:
            q = q * w
        out["prob_dot"] = xp.sum(xp.where(q == 0.0, xp.zeros_like(q), q * shifted), axis=1)
        out["prob_mass"] = xp.sum(q, axis=1)
    return out


def _data(shape, dtype_name, seed=0, scale=4.0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(scale=scale, size=shape) + offset).astype(dtype_name)
    index = rng.integers(0, shape[1], size=(shape[0], *shape[2:]))
    weight = rng.uniform(0.2, 2.0, size=shape[1])
    probs = rng.dirichlet(np.ones(shape[1]), size=(shape[0], *shape[2:]))
    probs = np.moveaxis(probs, -1, 1) if len(shape) == 3 else probs
    probs[probs < 0.2 / shape[1]] = 0.0  # some exact zeros
    return x, index, weight, probs


def _check(stats, ref, dtype_name, fields=("lse", "target", "class_sum", "prob_dot", "prob_mass")):
    for f in fields:
        got = getattr(stats, f)
        if ref.get(f) is None:
            continue
        assert got is not None, f
        expected = _np(ref[f]).astype(np.float64)
        scale = np.maximum(1.0, np.abs(expected))
        err = np.abs(_np(got).astype(np.float64) - expected) / scale
        # Relative to max(1, |value|): sums of C terms carry C-sized rounding.
        n_classes = 1 if f in ("lse", "target") else 8
        assert np.all((err <= RTOL[dtype_name] * n_classes * 4) | (expected == _np(got))), (f, err.max())


@pytest.mark.parametrize("name", EAGER)
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize(
    ("shape", "block_rows", "class_chunk"),
    [
        ((37, 10), 4, None),  # several blocks, one class chunk
        ((37, 10), 1, None),
        ((37, 10), 100, None),  # one block
        ((13, 50), 5, 7),  # classes in chunks of 7 (last one partial)
        ((13, 50), 5, 1),  # one class per chunk
        ((9, 12, 5), 2, None),  # (A, C, B): class axis in the middle
        ((9, 12, 5), 2, 5),
    ],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_blocked_equals_unblocked(name, dtype_name, shape, block_rows, class_chunk, weighted):
    xp = _xp(name)
    if not hasattr(xp, dtype_name):
        pytest.skip(f"{name} has no {dtype_name}")
    x_np, index_np, weight_np, probs_np = _data(shape, dtype_name, offset=30.0)
    x = xp.asarray(x_np)
    index = xp.asarray(index_np)
    dtype = xp.float32 if dtype_name == "float16" else x.dtype
    weight = xp.asarray(weight_np, dtype=dtype) if weighted else None
    probs = xp.asarray(probs_np, dtype=x.dtype)
    ref = _reference(x, index, weight, probs, 0.1, xp)
    with config(block_rows=block_rows, class_chunk=class_chunk, threads=2, enabled=True):
        stats = row_stats(x, index, xp=xp, weight=weight, class_sum=True, probs=probs, smoothing=0.1)
    assert stats.lse.dtype == dtype
    assert tuple(stats.lse.shape) == (shape[0], *shape[2:])
    _check(stats, ref, dtype_name)
    # shift + lse is the logsumexp of the logits either way.
    shift = _np(stats.shift).astype(np.float64)
    full = np.log(np.sum(np.exp(x_np.astype(np.float64) - np.expand_dims(shift, 1)), axis=1)) + shift
    np.testing.assert_allclose(shift + _np(stats.lse), full, rtol=1e-5 if dtype_name != "float64" else 1e-12)


@pytest.mark.parametrize("name", EAGER)
def test_unchunked_blocking_is_bitwise_identical(name):
    """Rows are independent: block boundaries change nothing, not even rounding."""
    xp = _xp(name)
    x_np, index_np, _, _ = _data((64, 300), "float32", seed=3)
    x, index = xp.asarray(x_np), xp.asarray(index_np)
    ref = _reference(x, index, None, None, 0.0, xp)
    for block_rows in (1, 7, 64):
        with config(block_rows=block_rows, threads=2, enabled=True):
            stats = row_stats(x, index, xp=xp)
        np.testing.assert_array_equal(_np(stats.lse), _np(ref["lse"]))
        np.testing.assert_array_equal(_np(stats.target), _np(ref["target"]))
        assert stats.class_sum is None and stats.prob_dot is None


@pytest.mark.parametrize("name", EAGER)
@pytest.mark.parametrize("class_chunk", [None, 2])
def test_infinities_match_the_fused_formula(name, class_chunk):
    xp = _xp(name)
    inf = np.inf
    x_np = np.asarray(
        [
            [-inf, -inf, -inf, -inf],  # all -inf: lse -inf
            [0.0, -inf, 1.0, -inf],  # some -inf
            [-inf, -inf, 2.0, 3.0],  # -inf first chunk, then finite
            [1.0, 2.0, 3.0, 4.0],
            [1.0, inf, 0.0, 0.0],  # +inf: lse +inf
        ],
        dtype=np.float32,
    )
    x = xp.asarray(x_np)
    index = xp.asarray(np.asarray([0, 2, 3, 1, 2]))
    ref = _reference(x, index, None, None, 0.0, xp)
    with config(block_rows=2, class_chunk=class_chunk, enabled=True):
        stats = row_stats(x, index, xp=xp)
    np.testing.assert_allclose(_np(stats.lse), _np(ref["lse"]), rtol=1e-6)
    np.testing.assert_allclose(_np(stats.target), _np(ref["target"]), rtol=1e-6)


@pytest.mark.parametrize("name", EAGER)
def test_no_rows(name):
    xp = _xp(name)
    x = xp.zeros((0, 5), dtype=xp.float32)
    index = xp.zeros((0,), dtype=xp.int64)
    stats = row_stats(x, index, xp=xp, class_sum=True)
    assert tuple(stats.lse.shape) == (0,) and tuple(stats.target.shape) == (0,)
    assert tuple(stats.class_sum.shape) == (0,) and stats.prob_dot is None


def test_plan_defaults_and_overrides():
    import array_api_compat.numpy as xp

    x = np.zeros((4096, 32000), np.float32)  # never touched: plan looks at shapes only
    p = plan(x, xp=xp)
    assert p.class_chunk == 32000
    assert p.block_rows * 32000 * 4 <= _engine._BLOCK_BYTES and p.block_rows >= 1
    assert 1 <= p.threads <= 8
    half = np.zeros((4096, 32000), np.float16)
    assert plan(half, xp=xp).block_rows == p.block_rows  # sized in the float32 compute dtype
    huge_row = np.zeros((2, 1 << 20), np.float32)
    assert plan(huge_row, xp=xp).class_chunk < (1 << 20)
    with config(block_rows=3, class_chunk=100, threads=1):
        assert plan(x, xp=xp) == (3, 100, 1)
        with config(threads=2):  # nesting keeps the outer settings
            assert plan(x, xp=xp) == (3, 100, 2)
    assert plan(x, xp=xp) == p


def test_supports_only_eager_arrays():
    x = np.zeros((1000, 100), np.float32)
    assert supports(x)
    assert not supports(np.zeros((2, 3), np.float32))  # small: fused formula
    with config(enabled=True):
        assert supports(np.zeros((2, 3), np.float32))
    with config(enabled=False):
        assert not supports(x)
    if importlib.util.find_spec("jax") is not None:
        import jax.numpy as jnp

        with config(enabled=True):
            assert not supports(jnp.zeros((1000, 100)))
    if importlib.util.find_spec("dask") is not None:
        import dask.array as da

        with config(enabled=True):
            assert not supports(da.zeros((1000, 100)))


@pytest.mark.parametrize("bad", [{"block_rows": 0}, {"threads": -1}, {"class_chunk": 1.5}, {"block_rows": True}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="positive integer"), config(**bad):
        pass


def test_no_oversubscription_inside_workers():
    """A call made from inside an engine worker runs its blocks in that worker."""
    import array_api_compat.numpy as xp

    x = np.zeros((100, 10), np.float32)
    seen = []

    def inner(_):
        seen.append(plan(x, xp=xp).threads)

    with config(threads=2):
        list(_engine._pool(2).map(inner, range(4)))
    assert seen == [1, 1, 1, 1]


def test_write_into_reuses_the_buffer_where_the_library_can():
    """NumPy and PyTorch write into ``out``; a namespace without ``out=`` allocates."""
    from xce._namespace import write_into, writes_into

    xp = _xp("numpy")
    x = xp.asarray([[0.0, 1.0], [2.0, -1.0]])
    out = xp.empty_like(x)
    assert writes_into(x) and write_into("exp", out, x, xp=xp) is out
    np.testing.assert_array_equal(out, np.exp(np.asarray(x)))
    assert write_into("exp", None, x, xp=xp) is not out
    if importlib.util.find_spec("array_api_strict") is not None:
        xs = _xp("array_api_strict")
        a = xs.asarray([1.0, 2.0])
        assert not writes_into(a)
        np.testing.assert_array_equal(_np(write_into("subtract", xs.empty_like(a), a, 1.0, xp=xs)), [0.0, 1.0])


def test_write_into_leaves_torch_autograd_alone():
    torch = pytest.importorskip("torch")
    from xce._namespace import write_into, writes_into

    xp = _xp("torch")
    leaf = torch.ones(3, requires_grad=True)
    assert not writes_into(leaf)
    y = write_into("exp", torch.empty(3), leaf, xp=xp)  # out= would raise under autograd
    y.sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), np.e)
    with torch.no_grad():
        assert writes_into(leaf)
    buf = torch.empty(3)
    assert write_into("exp", buf, torch.zeros(3), xp=xp) is buf


@pytest.mark.parametrize("name", ["numpy", "torch"])
def test_blocks_reuse_one_buffer_per_thread(name, monkeypatch):
    """Each block's shifted logits and exponentials go into the same per-thread buffer
    (fresh block-sized allocations were unmapped and faulted in again every block)."""
    xp = _xp(name)
    bases = []
    real = _engine.write_into

    def spy(fn, out, *args, xp):
        if fn == "exp":
            storage = out.untyped_storage().data_ptr() if name == "torch" else out.base.ctypes.data
            bases.append(storage)
        return real(fn, out, *args, xp=xp)

    monkeypatch.setattr(_engine, "write_into", spy)
    x_np, index_np, _, _ = _data((64, 300), "float32", seed=5)
    with config(block_rows=8, threads=1, enabled=True):
        stats = row_stats(xp.asarray(x_np), xp.asarray(index_np), xp=xp)
    assert len(bases) == 8 and len(set(bases)) == 1
    ref = _reference(xp.asarray(x_np), xp.asarray(index_np), None, None, 0.0, xp)
    np.testing.assert_array_equal(_np(stats.lse), _np(ref["lse"]))


# --- settings are the calling thread's --------------------------------------------------------


def _in_two_threads(inside, outside, **settings):
    """``inside()`` in a thread inside ``config(**settings)`` and ``outside()`` in another
    thread while that block is open; both results, or the first exception raised."""
    import threading

    opened, done = threading.Event(), threading.Event()
    results, errors = {}, []

    def holder():
        try:
            with config(**settings):
                opened.set()
                assert done.wait(120)
                results["inside"] = inside()
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)
        finally:
            opened.set()

    def other():
        try:
            assert opened.wait(120)
            results["outside"] = outside()
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    return results["inside"], results["outside"]


def test_eager_threads_see_only_their_own_settings():
    import array_api_compat.numpy as xp

    x = np.zeros((4096, 1000), np.float32)
    default = plan(x, xp=xp)
    inside, outside = _in_two_threads(lambda: (plan(x, xp=xp), supports(x)), lambda: (plan(x, xp=xp), supports(x)),
                                      block_rows=3, class_chunk=100, threads=1, enabled=False)
    assert inside == ((3, 100, 1), False)
    assert outside == (default, True)


def _compiled_cross_entropy():
    """``xce.cross_entropy`` under ``torch.compile(fullgraph=True)`` and the graphs it traced."""
    torch = pytest.importorskip("torch")
    import xce
    from xce._registry import adapter_for

    adapter_for(torch.zeros(()))  # the adapter's lazy import is no traceable first call (not tested here)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def loss(x, t):
        return xce.cross_entropy(x, t)

    return torch.compile(loss, backend=backend, fullgraph=True), graphs


def _calls_pytorch_kernel(gm) -> bool:
    return any("cross_entropy" in str(node.target) for node in gm.graph.nodes)


@pytest.fixture
def dynamo():
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()
    yield torch._dynamo
    torch._dynamo.reset()


def test_compiled_call_takes_the_calling_threads_delegate_setting(dynamo):
    """One thread compiling inside ``config(delegate=False)`` changes nothing for a function
    compiled by another thread meanwhile: that one still hands the call to PyTorch's kernel."""
    import torch

    x, t = torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    compiled, graphs = _compiled_cross_entropy()
    expected = torch.nn.functional.cross_entropy(x.double(), t).float()

    def call():
        before = len(graphs)
        out = compiled(x, t)
        return out, [_calls_pytorch_kernel(gm) for gm in graphs[before:]]

    (out_in, kernel_in), (out_out, kernel_out) = _in_two_threads(call, call, delegate=False)
    assert kernel_out == [True]  # traced with the defaults
    assert kernel_in == [False]  # retraced (guarded on its thread's block): xce's definition
    for out in (out_in, out_out):
        torch.testing.assert_close(out, expected)


def test_compiled_call_takes_the_calling_threads_check_values_setting(dynamo):
    """``config(check_values=True)`` reads values (a graph break: fullgraph raises) only in the
    thread whose block it is; another thread compiles meanwhile without reading any."""
    import torch

    x, t = torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    compiled, _ = _compiled_cross_entropy()

    def inside():
        with pytest.raises(Exception, match=r"(?i)data-dependent|graph break|unsupported"):
            compiled(x, t)

    _, out = _in_two_threads(inside, lambda: compiled(x, t), check_values=True)
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(x.double(), t).float())


def test_compiled_function_is_recompiled_when_the_settings_change(dynamo):
    import torch

    x, t = torch.randn(8, 5), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    compiled, graphs = _compiled_cross_entropy()
    compiled(x, t)
    with config(delegate=False):
        compiled(x, t)
    compiled(x, t)
    with config(delegate=False):
        compiled(x, t)
    assert [_calls_pytorch_kernel(gm) for gm in graphs] == [True, False]  # the guards pick the graph


# --- the thread count respects the process's limits ---------------------------------------------


def _plan_threads(env: dict[str, str], setup: str = "") -> tuple[int, int]:
    """(default threads, threads under ``config(threads=3)``) of a large NumPy input's plan in a
    fresh interpreter whose environment has ``env`` from the start."""
    import os
    import subprocess
    import sys

    code = f"""
import numpy as np, array_api_compat.numpy as xp
from xce import _engine
_engine._cpus = lambda: 8  # as on a machine with 8 CPUs or more
{setup}
x = np.zeros((4096, 32000), np.float32)  # 256 blocks: never touched, plan looks at shapes only
with _engine.config(threads=3):
    explicit = _engine.plan(x, xp=xp).threads
print(_engine.plan(x, xp=xp).threads, explicit)
"""
    full = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    full.update(env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's xce comes first
    out = subprocess.run([sys.executable, "-c", code], env=full, cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    default, explicit = out.stdout.split()
    return int(default), int(explicit)


@pytest.mark.parametrize(("omp", "most"), [("1", 1), ("2", 2), ("1,1", 1)])
def test_default_threads_respect_omp_num_threads(omp, most):
    """One thread per rank or per DataLoader worker (``OMP_NUM_THREADS=1``) starts no pool;
    an explicit ``config(threads=)`` still wins."""
    default, explicit = _plan_threads({"OMP_NUM_THREADS": omp})
    assert 1 <= default <= most
    assert explicit == 3


def test_default_threads_without_limits():
    assert _plan_threads({}) == (8, 3)


def test_default_threads_respect_torchs_thread_count():
    """PyTorch's DataLoader workers call ``torch.set_num_threads(1)``."""
    pytest.importorskip("torch")
    assert _plan_threads({}, "import torch; torch.set_num_threads(1)") == (1, 3)


def test_default_threads_respect_threadpoolctl_limits(monkeypatch):
    """Where threadpoolctl is imported, its current limit on the BLAS / OpenMP libraries (e.g.
    inside ``threadpool_limits(1)``) caps the pool; a stand-in controller reports the limit."""
    import sys
    import types

    import array_api_compat.numpy as xp

    class Library:
        def __init__(self, n):
            self.num_threads = n

    class Controller:
        def __init__(self):
            self.lib_controllers = [Library(4), Library(1)]

    monkeypatch.setitem(sys.modules, "threadpoolctl", types.SimpleNamespace(ThreadpoolController=Controller))
    monkeypatch.setattr(_engine, "_THREADPOOL", None)
    monkeypatch.setattr(_engine, "_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    x = np.zeros((4096, 32000), np.float32)
    assert plan(x, xp=xp).threads == 1
    with config(threads=3):
        assert plan(x, xp=xp).threads == 3

"""Scaling out (issue 7): Dask (chunked on both axes, lazy, distributed), JAX sharding on 8 CPU
devices, and vocabulary-parallel cross entropy (the array-API core of ``xce.parallel`` and its
``torch.distributed`` helper on a gloo group).

The JAX and torch.distributed checks run in subprocesses (``tests/scaling_workers/``): JAX's
device count must be set before it initialises, and process groups need their own processes.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xce
from xce.parallel import (
    combine_shard_statistics,
    loss_from_statistics,
    merge_shard_statistics,
    shard_statistics,
    shard_statistics_gradient,
)

WORKERS = Path(__file__).parent / "scaling_workers"
ROOT = Path(__file__).parent.parent

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _run_worker(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(WORKERS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


# --- the array-API core of xce.parallel --------------------------------------------------------


def _torch_reference(x: np.ndarray, y: np.ndarray, **kwargs) -> np.ndarray:
    return F.cross_entropy(torch.from_numpy(x), torch.from_numpy(y), **kwargs).numpy()


@pytest.fixture
def problem():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 23)) * 4
    y = rng.integers(0, 23, 9)
    y[[1, 5]] = -100
    x[:, 2] = -np.inf  # a masked vocabulary entry
    x[3, :12] = -np.inf  # a row whose first shards are entirely masked
    x[4, 12:] = -1e4  # and one whose max is very negative in a shard
    return x, y


@pytest.mark.parametrize("bounds", [(0, 23), (0, 12, 23), (0, 1, 7, 7, 16, 23)], ids=["1", "2", "5-uneven-empty"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_merge_equals_torch(problem, bounds, reduction, eps):
    x, y = problem
    shards = [
        shard_statistics(x[:, a:b], y, vocab_start=a, with_logit_sum=eps > 0) for a, b in itertools.pairwise(bounds)
    ]
    got = merge_shard_statistics(shards[::-1], y, reduction=reduction, label_smoothing=eps)
    np.testing.assert_allclose(got, _torch_reference(x, y, reduction=reduction, label_smoothing=eps), rtol=1e-12)


def test_combine_is_associative(problem):
    x, y = problem
    s = [shard_statistics(x[:, a:b], y, vocab_start=a, with_logit_sum=True) for a, b in [(0, 5), (5, 14), (14, 23)]]
    nested = combine_shard_statistics([combine_shard_statistics(s[:2]), s[2]])
    flat = combine_shard_statistics(s)
    whole = shard_statistics(x, y, vocab_start=0, with_logit_sum=True)
    for a, b, c in zip(nested, flat, whole):
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-13)
        np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(c, dtype=float), rtol=1e-13)


def test_ignore_index_real_class_and_out_of_range():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 8))
    y = np.asarray([3, 1, 3, 0, 7])
    parts = [shard_statistics(x[:, a:b], y, vocab_start=a, ignore_index=3) for a, b in [(0, 4), (4, 8)]]
    got = merge_shard_statistics(parts, y, ignore_index=3)
    np.testing.assert_allclose(got, _torch_reference(x, y, ignore_index=3), rtol=1e-12)
    bad = np.asarray([1, 8, 2, -1, 0])  # 8 and -1 belong to no shard: NaN, never a finite guess
    parts = [shard_statistics(x[:, a:b], bad, vocab_start=a) for a, b in [(0, 4), (4, 8)]]
    out = merge_shard_statistics(parts, bad, reduction="none")
    assert np.isnan(out[[1, 3]]).all() and np.isfinite(out[[0, 2, 4]]).all()


def test_gradient_matches_autograd(problem):
    x, y = problem
    x = np.where(np.isinf(x), -30.0, x)  # finite, so that autograd's reference is finite too
    eps = 0.1
    full = shard_statistics(x, y, vocab_start=0, with_logit_sum=True)
    log_z = np.log(full.sumexp) + full.max
    grads = [
        shard_statistics_gradient(x[:, a:b], y, log_z, vocab_start=a, n_classes=23, label_smoothing=eps)
        for a, b in [(0, 10), (10, 23)]
    ]
    xt = torch.from_numpy(x).requires_grad_(True)
    F.cross_entropy(xt, torch.from_numpy(y), reduction="sum", label_smoothing=eps).backward()
    np.testing.assert_allclose(np.concatenate(grads, axis=1), xt.grad.numpy(), rtol=1e-10, atol=1e-13)


def _core_namespaces():
    import array_api_compat.numpy as anp
    import array_api_compat.torch as atorch

    spaces = [pytest.param(anp, id="numpy"), pytest.param(atorch, id="torch")]
    if importlib.util.find_spec("array_api_strict"):
        import array_api_strict

        spaces.append(pytest.param(array_api_strict, id="array_api_strict"))
    if importlib.util.find_spec("jax"):
        import jax.numpy as jnp

        spaces.append(pytest.param(jnp, id="jax"))
    return spaces


@pytest.mark.parametrize("xp", _core_namespaces())
def test_core_on_every_namespace(problem, xp):
    """The same statistics and merge run on every Array API library, with (N, C, d) layouts too."""
    x, y = problem
    x3 = np.stack([x, x[::-1]], axis=-1)  # (N, C, 2): classes on axis 1
    y3 = np.stack([y, y[::-1]], axis=-1)
    xa, ya = xp.asarray(x3), xp.asarray(y3)
    shards = [shard_statistics(xa[:, a:b, :], ya, vocab_start=a, with_logit_sum=True) for a, b in [(0, 8), (8, 23)]]
    got = merge_shard_statistics(shards, ya, label_smoothing=0.05, reduction="none")
    expected = _torch_reference(x3, y3, label_smoothing=0.05, reduction="none")
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10)


def test_core_on_dask_class_chunks(problem):
    """Per-chunk statistics of a Dask array chunked on the class axis, merged lazily."""
    x, y = problem
    dx = da.from_array(x, chunks=(3, 6))
    dy = da.from_array(y, chunks=3)
    starts = np.cumsum((0, *dx.chunks[1]))
    counter = _CountingScheduler()
    with dask.config.set(scheduler=counter):
        shards = [
            shard_statistics(dx[:, a:b], dy, vocab_start=int(a), with_logit_sum=True)
            for a, b in itertools.pairwise(starts)
        ]
        loss = loss_from_statistics(combine_shard_statistics(shards), dy, label_smoothing=0.1)
    assert counter.calls == 0
    np.testing.assert_allclose(loss.compute(scheduler="sync"), _torch_reference(x, y, label_smoothing=0.1))


# --- Dask: xce's own losses on chunked arrays --------------------------------------------------


class _CountingScheduler:
    """A Dask scheduler that counts graph executions (building a graph must execute none)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        return dask.get(dsk, keys, **kwargs)


def _losses(rng):
    n, c = 24, 20
    x = rng.standard_normal((n, c)) * 3
    y = rng.integers(0, c, n)
    y[::7] = -100
    probs = rng.dirichlet(np.ones(c), n)
    w = rng.uniform(0.5, 2.0, c)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    binary = rng.integers(0, 2, (n, c)).astype(np.float64)
    return {
        "cross_entropy": (xce.cross_entropy, (x, y), {}),
        "cross_entropy-smoothing-weight-sum": (
            xce.cross_entropy,
            (x, y, w),
            {"label_smoothing": 0.1, "reduction": "sum"},
        ),
        "cross_entropy-none-z_loss": (xce.cross_entropy, (x, y), {"reduction": "none", "z_loss": 1e-3}),
        "cross_entropy-probabilities": (xce.cross_entropy, (x, probs), {"label_smoothing": 0.05}),
        "nll_loss": (xce.nll_loss, (logp, y, w), {}),
        "log_softmax": (xce.log_softmax, (x,), {"axis": 1}),
        "softmax": (xce.softmax, (x,), {"axis": 1}),
        "logsumexp": (xce.logsumexp, (x,), {"axis": 1}),
        "logsumexp-all": (xce.logsumexp, (x,), {}),
        "softmax_focal_loss": (xce.softmax_focal_loss, (x, y), {}),
        "poly1_cross_entropy": (xce.poly1_cross_entropy, (x, y), {}),
        "kl_div": (xce.kl_div, (logp, probs), {"reduction": "batchmean"}),
        "binary_cross_entropy_with_logits": (xce.binary_cross_entropy_with_logits, (x, binary), {}),
        "multilabel_soft_margin_loss": (xce.multilabel_soft_margin_loss, (x, binary), {}),
    }


LOSS_CASES = list(_losses(np.random.default_rng(0)))


@pytest.mark.parametrize("chunks", [(8, 20), (24, 7), (5, 6)], ids=["batch", "classes", "both"])
@pytest.mark.parametrize("case", LOSS_CASES)
def test_dask_chunked_lazy_equals_numpy(case, chunks):
    fn, args, kwargs = _losses(np.random.default_rng(0))[case]
    expected = np.asarray(fn(*args, **kwargs))

    def chunk(a):
        if a.ndim == 2:
            return da.from_array(a, chunks=chunks)
        return da.from_array(a, chunks=chunks[0] if a.shape[0] == 24 else chunks[1])  # targets / class weights

    dargs = [chunk(a) for a in args]
    counter = _CountingScheduler()
    with dask.config.set(scheduler=counter):
        out = fn(*dargs, **kwargs)
        assert counter.calls == 0, f"{case} computed while building its graph"
        assert isinstance(out, da.Array)
        value = out.compute()
    assert counter.calls == 1
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda x, y, p: xce.logsumexp(x, axis=1), id="logsumexp"),
        pytest.param(lambda x, y, p: xce.cross_entropy(x, p, label_smoothing=0.1), id="cross_entropy-probabilities"),
        pytest.param(lambda x, y, p: xce.cross_entropy(x, y), id="cross_entropy-index"),
        pytest.param(lambda x, y, p: xce.nll_loss(x, y), id="nll_loss"),
    ],
)
def test_dask_no_task_holds_more_than_a_chunk(make):
    """Bounded memory: chunked on both axes, no task of the graph produces more than one logits chunk."""
    from dask.callbacks import Callback

    class Largest(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.nbytes = 0

        def _posttask(self, key, result, dsk, state, worker_id):
            self.nbytes = max(self.nbytes, getattr(result, "nbytes", 0))

    rng = da.random.default_rng(0)
    x = rng.standard_normal((64, 1000), chunks=(16, 100))
    y = rng.integers(0, 1000, 64, chunks=16)
    p = rng.random((64, 1000), chunks=(16, 100))
    with Largest() as largest:
        value = make(x, y, p).compute(scheduler="sync")
    assert np.isfinite(value).all()
    assert largest.nbytes <= 16 * 100 * 8, f"a task produced {largest.nbytes} bytes; a logits chunk has 12800"


def test_dask_distributed_local_cluster():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 30)) * 2
    y = rng.integers(0, 30, 40)
    y[::9] = -100
    with (
        distributed.LocalCluster(
            processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None, silence_logs=40
        ) as cluster,
        distributed.Client(cluster, timeout="30s") as client,
    ):
        dx = da.from_array(x, chunks=(10, 12))
        dy = da.from_array(y, chunks=10)
        lazy = [
            xce.cross_entropy(dx, dy, label_smoothing=0.1),
            xce.nll_loss(xce.log_softmax(dx, axis=1), dy, reduction="sum"),
            xce.logsumexp(dx, axis=1),
        ]
        futures = client.compute(lazy)
        got = client.gather(futures)
    expected = [
        xce.cross_entropy(x, y, label_smoothing=0.1),
        xce.nll_loss(xce.log_softmax(x, axis=1), y, reduction="sum"),
        xce.logsumexp(x, axis=1),
    ]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12)


def test_out_of_core_example_small():
    spec = importlib.util.spec_from_file_location("out_of_core", ROOT / "docs" / "examples" / "out_of_core.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for vocab_chunk in (None, 300):
        r = module.run(rows=600, vocab=1000, chunk_rows=128, vocab_chunk=vocab_chunk, check=True)
        assert r["loss"] == pytest.approx(r["numpy_loss"], rel=1e-5)
        assert r["chunks"] == 5 * (1 if vocab_chunk is None else 4)


# --- JAX sharding on 8 virtual CPU devices (subprocess) ---------------------------------------


@pytest.fixture(scope="module")
def jax_report():
    pytest.importorskip("jax")
    done = _run_worker("jax_sharding.py", timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_jax_sharded_equals_single_device(jax_report):
    assert jax_report["devices"] == 8
    names = [c["name"] for c in jax_report["cases"]]
    assert any(n.startswith("batch/") for n in names) and any(n.startswith("vocab/") for n in names)
    for case in jax_report["cases"]:
        if case["name"].startswith("control/"):
            continue
        np.testing.assert_allclose(case["sharded"], case["single"], rtol=2e-6, atol=1e-6, err_msg=case["name"])


def test_jax_vocab_sharding_collectives_are_o_n(jax_report):
    """Vocabulary-sharded programs communicate O(N) values: no all-gather of the logits."""
    checked = 0
    for case in jax_report["cases"]:
        if not (case["name"].startswith(("vocab/", "2d-mesh/", "shard_map-"))):
            continue
        assert case["collectives"], f"{case['name']}: a vocabulary-sharded reduction needs a collective"
        for coll in case["collectives"]:
            assert coll["op"] != "all-gather", f"{case['name']}: {coll['hlo']}"
            assert coll["elements"] <= case["positions"], f"{case['name']}: {coll['hlo']}"
        checked += 1
    assert checked >= 10


def test_jax_hlo_check_detects_a_gather(jax_report):
    """The negative control: replicating vocab-sharded logits is an all-gather the check sees."""
    control = next(c for c in jax_report["cases"] if c["name"] == "control/replicate-logits")
    assert any(c["op"] == "all-gather" and c["elements"] >= control["logits"] for c in control["collectives"])


def test_jax_batch_sharding_communicates_scalars(jax_report):
    for case in jax_report["cases"]:
        if case["name"].startswith("batch/"):
            assert all(c["elements"] <= 1 for c in case["collectives"]), case["name"]


# --- torch.distributed (gloo, several processes on this machine) -------------------------------


def _run_torch(world: int, *extra: str) -> None:
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    done = _run_worker("torch_vocab_parallel.py", str(world), *extra, timeout=240)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-6000:])
    assert done.stdout.startswith("OK"), done.stdout


def test_torch_vocab_parallel_two_ranks():
    _run_torch(2, "--quick")


@pytest.mark.slow
@pytest.mark.parametrize("world", [3, 4])
def test_torch_vocab_parallel_full(world):
    _run_torch(world)

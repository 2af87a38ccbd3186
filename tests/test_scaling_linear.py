"""Scaling out (issue 7): ``xce.linear_cross_entropy`` under ``jax.jit`` with the weight sharded
over the vocabulary on 8 virtual CPU devices (``tests/scaling_workers/jax_linear_sharding.py``,
run in its own process so that its XLA device count does not leak into this one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def report():
    pytest.importorskip("jax")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the worker sets its own
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    worker = ROOT / "tests" / "scaling_workers" / "jax_linear_sharding.py"
    done = subprocess.run([sys.executable, str(worker)], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cases(report, *, controls=False):
    return [c for c in report["cases"] if c["name"].startswith("control/") == controls]


def _close(diffs, rtol, atol, name):
    for k, (diff, scale) in enumerate(diffs):
        assert diff <= atol + rtol * scale, f"{name}, output {k}: max |diff| {diff:.3g} for values up to {scale:.3g}"


def test_sharded_weight_equals_single_device_and_unfused(report):
    assert report["devices"] == 8
    cases = _cases(report)
    assert sum(c["grad"] for c in cases) >= 3 and sum(not c["grad"] for c in cases) >= 8
    for case in cases:
        assert len(case["sharded_vs_single"]) == (2 if case["grad"] else 1)
        _close(case["sharded_vs_single"], 2e-6, 1e-6, case["name"])  # jax.jit, one device
        _close(case["single_vs_unfused"], 2e-6, 1e-6, case["name"])  # cross_entropy(hidden @ weight.T + bias)
        _close(case["sharded_vs_numpy"], 1e-5, 1e-6, case["name"])  # xce's blocked path, float64


def test_gradients_stay_sharded_over_the_vocabulary(report):
    """d/dweight comes back sharded like the weight: it is never assembled on one device."""
    for case in _cases(report):
        if case["grad"]:
            assert "P('d',)" in case["out_shardings"][1] or "P('vocab',)" in case["out_shardings"][1], case


def test_no_gather_of_the_logits_or_the_weight(report):
    """Every collective is O(N) in the forward pass; the backward adds dL/dh's (N, D) partial sums
    and, with data parallelism, the data-axis sum of dL/dW's own shard. The only all-gather is of
    the (N, D) hidden states when batch and vocabulary share one mesh axis."""
    n, d, v = report["N"], report["D"], report["V"]
    for case in _cases(report):
        assert case["collectives"], f"{case['name']}: a vocabulary-sharded reduction needs a collective"
        assert case["bound"] < min(n * v, v * d)
        for coll in case["collectives"]:
            assert coll["elements"] <= case["bound"], f"{case['name']}: {coll['hlo']}"
            if coll["op"] == "all-gather":
                assert case["name"].startswith("same-axis/") and coll["elements"] <= n * d, coll["hlo"]


def test_hlo_check_detects_gathers(report):
    """Negative controls: replicating the weight, or the vocabulary-sharded logits, is seen."""
    n, d, v = report["N"], report["D"], report["V"]
    controls = {c["name"]: c["collectives"] for c in _cases(report, controls=True)}
    assert any(c["op"] == "all-gather" and c["elements"] == v * d for c in controls["control/replicate-weight"])
    assert any(c["op"] == "all-gather" and c["elements"] == n * v for c in controls["control/replicate-logits"])

"""``xce.keras``: Keras 3 losses (``keras.losses.Loss`` subclasses) computed by xce.

On the jax and torch Keras backends, each in its own process (Keras picks its backend at
import; the worker is ``tests/keras_workers/losses.py``): ``SparseCategoricalCrossentropy``,
``CategoricalCrossentropy`` and ``BinaryCrossentropy`` equal Keras's losses of the same name and
arguments (logits and probabilities, ``ignore_class``, ``label_smoothing``, reductions,
``sample_weight``) to float32 rounding; a ``keras.Sequential`` model fitted with one equals the
model fitted with Keras's from the same initial weights; ``get_config`` / ``from_config`` and
Keras serialisation round-trip; ``z_loss`` and ``softcap`` are xce's. Skipped without keras.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "keras_workers" / "losses.py"
BACKENDS = ("jax", "torch")
CHECKS = (
    "values_equal_keras_losses",
    "class_axis_1_equals_keras_on_the_last_axis",
    "calls_return_the_backends_arrays",
    "z_loss_and_softcap_are_xces",
    "config_round_trips",
    "fit_equals_fit_with_keras_losses",
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="keras not installed")


@functools.cache
def _report(backend: str) -> dict[str, str]:
    env = {**os.environ, "KERAS_BACKEND": backend}
    proc = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"worker failed on KERAS_BACKEND={backend}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_loss(backend, check):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    report = _report(backend)
    assert report.get(check) == "ok", report.get(check, f"check {check!r} not run; ran {sorted(report)}")


def test_every_check_of_the_worker_is_run():
    source = WORKER.read_text()
    assert sorted(CHECKS) == sorted(line[len("def check_"):].split("(")[0] for line in source.splitlines()
                                    if line.startswith("def check_"))


def test_import_xce_keras_imports_no_keras():
    code = ("import sys, xce.keras as xk; assert 'keras' not in sys.modules, 'keras imported'; "
            "assert set(xk.__all__) <= set(dir(xk))")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"})


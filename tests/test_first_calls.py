"""The first call of a process: every public function and loss object, its first xce call made
inside a transform in a fresh process (nothing of xce called before), equals eager in float64,
values and gradients.

Transforms: ``torch.compile(fullgraph=True)`` (Dynamo and AOTAutograd through the ``aot_eager``
backend for every case; Inductor for the first case of each process), ``torch.func.grad``,
``torch.vmap(torch.func.grad(...))``, ``torch.export.export`` and
``jax.jit(jax.value_and_grad(...))``. A warmed-up suite cannot see these failures: the first
call is where an adapter would be imported or a cache filled.

The cases share processes in groups (one process per transform and group, run two at a time);
each group starts with a different loss, so each of those is the first call of a process. The
worker is ``tests/first_call_workers/first_call.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "first_call_workers" / "first_call.py"

GROUPS = (
    ("cross_entropy", "cross_entropy_weight_smoothing_ignore", "cross_entropy_probabilities",
     "cross_entropy_softcap_z_loss", "cross_entropy_axis_last_3d", "cross_entropy_large",
     "cross_entropy_return_stats"),
    ("CrossEntropyLoss", "NLLLoss", "SoftmaxFocalLoss", "nll_loss", "poly1_cross_entropy", "softmax_focal_loss"),
    ("kl_div_with_logits", "KLDivWithLogitsLoss", "kl_div", "KLDivLoss", "log_softmax", "logsumexp", "softmax"),
    ("generalized_jsd", "GeneralizedJSDLoss", "smooth_labels", "shard_statistics", "sigmoid_focal_loss",
     "SigmoidFocalLoss"),
    ("linear_cross_entropy", "binary_cross_entropy", "binary_cross_entropy_with_logits", "BCELoss",
     "BCEWithLogitsLoss"),
    ("linear_distillation_loss", "LinearDistillationLoss", "multilabel_soft_margin_loss",
     "MultiLabelSoftMarginLoss"),
)
GROUPED = ("compile_aot_eager", "grad", "vmap_grad", "export", "jax_jit_value_and_grad")


def _runs() -> dict[tuple[str, str], tuple[str, tuple[str, ...]]]:
    """(transform, case) -> the process (transform, cases) that runs it."""
    runs = {}
    for group in GROUPS:
        for transform in GROUPED:
            for case in group:
                runs[transform, case] = (transform, group)
        # Inductor compiles slowly: the first case of each group, alone in its process.
        runs["compile", group[0]] = ("compile", (group[0],))
    return runs


RUNS = _runs()


def _needs(transform: str) -> str:
    return "jax" if transform.startswith("jax") else "torch"


def _run(transform: str, cases: tuple[str, ...]) -> dict[str, dict[str, object]]:
    proc = subprocess.run([sys.executable, str(WORKER), transform, *cases], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["case"]] = record
    for case in cases:
        results.setdefault(case, {"ok": False, "error": f"no result (exit {proc.returncode}): {proc.stderr[-3000:]}"})
    return results


@pytest.fixture(scope="session")
def first_call_processes(request: pytest.FixtureRequest) -> dict[tuple[str, tuple[str, ...]], Future]:
    """Starts every process the selected tests need, two at a time, once per session."""
    wanted = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        module = getattr(item, "module", None)
        if module is not None and module.__name__ == __name__ and "transform" in params:
            run = RUNS[params["transform"], params["case"]]
            if importlib.util.find_spec(_needs(run[0])) is not None and run not in wanted:
                wanted.append(run)
    pool = ThreadPoolExecutor(2)
    request.addfinalizer(pool.shutdown)
    return {run: pool.submit(_run, *run) for run in wanted}


@pytest.mark.parametrize(("transform", "case"), sorted(RUNS), ids=[f"{t}-{c}" for t, c in sorted(RUNS)])
def test_first_call_under_transform_equals_eager(first_call_processes, transform: str, case: str) -> None:
    pytest.importorskip(_needs(transform))
    result = first_call_processes[RUNS[transform, case]].result()[case]
    assert result["ok"], f"{result['error']}\n" + "\n".join(result.get("traceback", []))  # type: ignore[arg-type]


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("order", ["xce first", "library first"])
def test_adapter_is_ready_before_the_first_call(order: str) -> None:
    """The torch adapter (and the fast path it registers) is imported with torch, whichever is
    imported first, so the first call takes the path of every later one and imports nothing."""
    pytest.importorskip("torch")
    imports = "import xce; import torch" if order == "xce first" else "import torch; import xce"
    code = (f"import sys; {imports}; from xce._registry import fast_paths; "
            "print('xce.adapters.torch' in sys.modules, torch.Tensor in fast_paths('cross_entropy'))")
    assert _fresh(code) == "True True"


def test_importing_xce_imports_no_framework() -> None:
    code = "import sys, xce; print('torch' in sys.modules, 'jax' in sys.modules)"
    assert _fresh(code) == "False False"


def test_jax_adapter_is_imported_with_jax() -> None:
    pytest.importorskip("jax")
    assert _fresh("import sys, xce, jax; print('xce.adapters.jax' in sys.modules)") == "True"

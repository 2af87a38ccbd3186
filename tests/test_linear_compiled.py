"""``linear_cross_entropy`` under ``torch.compile`` and ``torch.export``: the fused sweep as the
custom ops ``xce::linear_cross_entropy_fwd`` / ``_bwd`` (``xce.adapters.torch_ops``), one
opaque graph node, so the compiled loss never holds the ``(N, V)`` logits.

Specified here: the ops' registration (``torch.library.opcheck``); a fresh process's first call
under ``torch.compile(fullgraph=True)`` is one graph holding the op; compiled values, statistics
and gradients (hidden, weight, bias) equal eager in float64 over the options, ignored targets
included; ``torch.export`` captures the op; compiled forward plus backward stays well below the
logits' memory where the compiled unfused formula exceeds them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import xce

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(31)
N, D, V = 14, 6, 9
H = RNG.normal(size=(N, D))
W = RNG.normal(size=(V, D))
B = RNG.normal(size=V)
T = RNG.integers(0, V, size=N)
T[[1, 6, 11]] = -100
CW = RNG.uniform(0.5, 2.0, size=V)
SW = RNG.uniform(0.0, 2.0, size=N)
COT = RNG.normal(size=N)


def _tensor(a):
    return torch.tensor(a, dtype=torch.float64)


OPTIONS = {
    "plain": {},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "smoothing": {"label_smoothing": 0.2},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.0},
    "temperature": {"temperature": 0.7},
    "smoothing-softcap-z_loss-none": {"label_smoothing": 0.1, "softcap": 3.0, "z_loss": 1e-3, "reduction": "none"},
    "class_weight": {"weight": CW, "label_smoothing": 0.1},
    "sample_weight": {"sample_weight": SW, "z_loss": 1e-2},
    "normalizer": {"normalizer": 5.0},
    "normalizer-tensor": {"normalizer": np.asarray(7.0)},
    "ignore_index": {"ignore_index": 3},
    "shift": {"shift": True, "sample_weight": SW},
    "shift-none": {"shift": True, "reduction": "none"},
    "block_rows": {"block_rows": 4, "label_smoothing": 0.1, "softcap": 3.0},
    "return_stats": {"return_stats": True, "z_loss": 1e-2},
    "return_stats-none": {"return_stats": True, "reduction": "none", "label_smoothing": 0.1},
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles its own functions (the closures share code objects across cases)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _kwargs(options: dict) -> dict:
    return {k: _tensor(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}


def _recording_backend(graphs: list):
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return aot_eager(gm, example_inputs)

    return backend


def _grads(out, options, inputs):
    """d/d(hidden, weight, bias) of a scalar of the loss (a random cotangent for ``"none"``)."""
    loss = out[0] if isinstance(out, tuple) else out
    if loss.ndim:
        loss = (loss * _tensor(COT)[: loss.shape[-1]]).sum()
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_compiled_values_statistics_and_gradients_equal_eager(name, bias):
    options = _kwargs(OPTIONS[name])
    h, w = _tensor(H).requires_grad_(True), _tensor(W).requires_grad_(True)
    b = _tensor(B).requires_grad_(True) if bias else None
    # the ignored positions carry ignore_index, whichever it is
    t = torch.as_tensor(np.where(T == -100, options.get("ignore_index", -100), T))
    inputs = (h, w, b) if bias else (h, w)

    def loss(h, w, t, b):
        return xce.linear_cross_entropy(h, w, t, linear_bias=b, **options)

    graphs: list[str] = []
    got = torch.compile(loss, fullgraph=True, backend=_recording_backend(graphs))(h, w, t, b)
    want = loss(h, w, t, b)
    # one graph (Dynamo may hand the same graph over twice), the op in it
    assert len(set(graphs)) == 1 and "xce.linear_cross_entropy_fwd" in graphs[0], graphs
    flat_got = [got[0], *got[1]] if isinstance(got, tuple) else [got]
    flat_want = [want[0], *want[1]] if isinstance(want, tuple) else [want]
    for g, e in zip(flat_got, flat_want, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    for g, e in zip(_grads(got, options, inputs), _grads(want, options, inputs), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_compiled_without_autograd_runs_the_forward_op():
    graphs: list[str] = []
    fn = torch.compile(lambda h, w, t: xce.linear_cross_entropy(h, w, t, label_smoothing=0.1), fullgraph=True,
                       backend=_recording_backend(graphs))
    h, w, t = _tensor(H), _tensor(W), torch.as_tensor(T)
    torch.testing.assert_close(fn(h, w, t), xce.linear_cross_entropy(h, w, t, label_smoothing=0.1))
    assert "xce.linear_cross_entropy_fwd" in graphs[0]


def test_torch_func_transforms_keep_the_formula():
    """The ops have no vmap or forward-mode rule: under torch.func the formula serves."""
    h, w, t = _tensor(H), _tensor(W), torch.as_tensor(T)
    got = torch.func.grad(lambda h: xce.linear_cross_entropy(h, w, t, z_loss=1e-2))(h)
    hg = h.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(xce.linear_cross_entropy(hg, w, t, z_loss=1e-2), hg)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# --- the ops' registration ------------------------------------------------------------------------


def _op_args(*, bias=True, class_weight=False, sample_weight=False, normalizer=None, reduction="mean",
             eps=0.0, z=0.0, softcap=None, temperature=1.0, return_stats=False, block_rows=None, want_grad=True):
    h, w = _tensor(H).requires_grad_(True), _tensor(W).requires_grad_(True)
    b = _tensor(B).requires_grad_(True) if bias else None
    norm_t = normalizer if isinstance(normalizer, torch.Tensor) else None
    norm_v = normalizer if isinstance(normalizer, float) else None
    return (h, w, torch.as_tensor(T), b, _tensor(CW) if class_weight else None,
            _tensor(SW) if sample_weight else None, norm_t, norm_v, reduction, -100, eps, z, softcap, temperature,
            return_stats, block_rows, want_grad)


OP_CASES = {
    "mean": {},
    "no-bias-no-grad": {"bias": False, "want_grad": False},
    "sum-weights-stats": {"reduction": "sum", "class_weight": True, "sample_weight": True, "return_stats": True},
    "none-smoothing-softcap-z": {"reduction": "none", "eps": 0.1, "softcap": 3.0, "z": 1e-3, "want_grad": False},
    "normalizer-tensor-temperature": {"normalizer": torch.tensor(4.0, dtype=torch.float64), "temperature": 0.5,
                                      "block_rows": 3},
    "normalizer-float-none-stats": {"normalizer": 4.0, "return_stats": True, "want_grad": False},
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_forward_op_passes_opcheck(case):
    torch.library.opcheck(torch.ops.xce.linear_cross_entropy_fwd.default, _op_args(**OP_CASES[case]))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_backward_op_passes_opcheck(bias):
    h, w, t, b, cw, sw, norm_t, norm_v, *rest = _op_args(bias=bias, reduction="none", class_weight=True, eps=0.1,
                                                         softcap=3.0)
    options = (*rest[:6], rest[7])  # without return_stats and want_grad
    args = (_tensor(COT), h.detach(), w.detach(), t, None if b is None else b.detach(), cw, sw, norm_t, norm_v,
            *options)
    torch.library.opcheck(torch.ops.xce.linear_cross_entropy_bwd.default, args)


# --- torch.export ----------------------------------------------------------------------------------


class _Head(torch.nn.Module):
    def __init__(self, **options):
        super().__init__()
        self.linear = torch.nn.Linear(D, V, dtype=torch.float64)
        self.options = options

    def forward(self, h, t):
        return xce.linear_cross_entropy(h, self.linear.weight, t, linear_bias=self.linear.bias, **self.options)


@pytest.mark.parametrize("options", [{}, {"reduction": "none", "label_smoothing": 0.1, "softcap": 3.0}],
                         ids=["mean", "none-smoothing-softcap"])
def test_export_captures_the_op(options):
    module = _Head(**options)
    h, t = _tensor(H), torch.as_tensor(T)
    program = torch.export.export(module, (h, t))
    assert "xce.linear_cross_entropy" in str(program.graph)
    torch.testing.assert_close(program.module()(h, t), module(h, t), rtol=1e-12, atol=1e-12)


# --- first call and memory, each in a fresh process ---------------------------------------------


def _fresh(code: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=900, env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_first_call_compiles_fullgraph_into_one_graph_holding_the_op():
    out = _fresh("""
        import torch, xce
        graphs = []
        inductor = torch._dynamo.lookup_backend("inductor")
        def backend(gm, example_inputs):
            graphs.append(str(gm.graph))
            return inductor(gm, example_inputs)
        h = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
        w = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
        t = torch.randint(0, 30, (40,)); t[::7] = -100
        fn = lambda h, w, t: xce.linear_cross_entropy(h, w, t, label_smoothing=0.1, z_loss=1e-3)
        got = torch.compile(fn, fullgraph=True, backend=backend)(h, w, t)
        g = torch.autograd.grad(got, (h, w))
        h2, w2 = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
        want = fn(h2, w2, t)
        e = torch.autograd.grad(want, (h2, w2))
        ok = torch.allclose(got, want) and all(torch.allclose(a, b) for a, b in zip(g, e))
        print(len(set(graphs)), "xce.linear_cross_entropy_fwd" in graphs[0], ok)
    """)
    assert out == "1 True True"


MEMORY = """
    import gc, re, torch, xce
    import torch.nn.functional as F
    torch.manual_seed(0)
    N, D, V = 2048, 256, 16000
    h = torch.randn(N, D, requires_grad=True)
    w = (0.05 * torch.randn(V, D)).requires_grad_(True)
    t = torch.randint(0, V, (N,))
    KIND = {kind!r}
    if KIND == "xce":
        fn = lambda h, w, t: xce.linear_cross_entropy(h, w, t)
    else:
        fn = lambda h, w, t: F.cross_entropy(h @ w.T, t)
    step = torch.compile(fn, fullgraph=True)

    def run():
        step(h, w, t).backward()
        h.grad = w.grad = None

    def kib(field):
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    run()  # compiles
    run()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark restarts at the current RSS
    base = kib("VmRSS")
    run()
    print((kib("VmHWM") - base) * 1024 / (N * V * 4))
"""


@pytest.mark.slow
def test_compiled_forward_and_backward_stay_well_below_the_logits():
    """Peak RSS growth of a compiled fwd+bwd (N=2048, D=256, V=16000 float32: 125 MiB of
    logits): xce under half the logits; the compiled unfused formula (the control) holds them."""
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError:
        pytest.skip("needs /proc/self/clear_refs (Linux)")
    # glibc maps every block above 128 KiB and unmaps it when freed: what a run frees leaves the
    # RSS, so the next run's growth is its own peak, not hidden in pages the heap kept.
    env = {"MALLOC_MMAP_THRESHOLD_": "131072"}
    fused = float(_fresh(MEMORY.format(kind="xce"), env))
    unfused = float(_fresh(MEMORY.format(kind="formula"), env))
    assert unfused >= 1.0, (fused, unfused)
    assert fused < 0.5, (fused, unfused)

"""``linear_cross_entropy`` under ``torch.compile``: eager xce, compiled xce (the custom ops of
``xce/adapters/torch_ops.py``) and the compiled unfused formula, forward+backward time and peak
extra memory on PyTorch CPU (float32).

Run ``python -m benchmarks compiled [N D V [repeats]]`` (default 4096 512 32000 3). Two option
sets: ``plain`` (the mean cross entropy) and ``llm`` (``label_smoothing=0.1``, ``softcap=30``,
``z_loss=1e-4``; the formula written out with ``F.cross_entropy`` and ``torch.logsumexp``).

Memory: each variant runs in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=131072`` (glibc
maps every block above 128 KiB and unmaps it when freed, so what a step frees leaves the
resident set): two warm-up steps (the compilation), then the high-water mark is reset
(``/proc/self/clear_refs``) and one step's peak resident growth (``VmHWM`` minus ``VmRSS``) is
reported against the logits (N·V floats). The gradients themselves (``dh`` N·D and ``dW`` V·D
floats) are part of the growth.

Time: one more subprocess (default allocator) compiles the variants, then alternates them
``repeats`` times, so that all see the same machine load (it may be shared); it reports each
variant's median and the median of the per-round ratios against the compiled unfused formula.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import gc, json, re, sys, time
import torch
import torch.nn.functional as F
import xce

variant, options, n, d, v, repeats = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
LLM = dict(label_smoothing=0.1, softcap=30.0, z_loss=1e-4)
torch.manual_seed(0)
h = torch.randn(n, d, requires_grad=True)
w = (torch.randn(v, d) * d ** -0.5).requires_grad_(True)
t = torch.randint(0, v, (n,))

def fused(h, w, t):
    return xce.linear_cross_entropy(h, w, t, **(LLM if options == "llm" else {}))

def formula(h, w, t):
    x = h @ w.T
    if options != "llm":
        return F.cross_entropy(x, t)
    x = LLM["softcap"] * torch.tanh(x / LLM["softcap"])
    return F.cross_entropy(x, t, label_smoothing=LLM["label_smoothing"]) + \
        LLM["z_loss"] * (torch.logsumexp(x, -1) ** 2).mean()

fns = {"eager-xce": fused, "compiled-xce": torch.compile(fused, fullgraph=True),
       "compiled-unfused": torch.compile(formula, fullgraph=True)}

def step(fn):
    fn(h, w, t).backward()
    h.grad = w.grad = None

def kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1))

if variant != "time":
    fn = fns[variant]
    step(fn); step(fn)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = kib("VmRSS")
    step(fn)
    print(json.dumps({"peak": (kib("VmHWM") - base) * 1024, "logits": n * v * 4}))
else:
    times = {name: [] for name in fns}
    for fn in fns.values():
        step(fn); step(fn)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter(); step(fn); times[name].append(time.perf_counter() - t0)
    print(json.dumps(times))
"""

VARIANTS = ("eager-xce", "compiled-xce", "compiled-unfused")


def run(variant: str, options: str, n: int, d: int, v: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if variant != "time":
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    proc = subprocess.run([sys.executable, "-c", _CHILD, variant, options, str(n), str(d), str(v), str(repeats)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {options}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    n, d, v, repeats = (list(map(int, argv)) + [4096, 512, 32000, 3][len(argv):])[:4]
    print(f"N={n} D={d} V={v} float32, logits {n * v * 4 / 2**20:.0f} MiB, fwd+bwd, {repeats} rounds")
    print(f"{'options':8} {'variant':17} {'peak extra':>12} {'x logits':>9} {'median':>8} {'x compiled unfused':>19}")
    for options in ("plain", "llm"):
        memory = {variant: run(variant, options, n, d, v, repeats) for variant in VARIANTS}
        times = run("time", options, n, d, v, repeats)
        base = times["compiled-unfused"]
        for variant in VARIANTS:
            peak, logits = memory[variant]["peak"], memory[variant]["logits"]
            ratio = statistics.median(a / b for a, b in zip(times[variant], base, strict=True))
            print(f"{options:8} {variant:17} {peak / 2**20:8.0f} MiB {peak / logits:8.2f}x "
                  f"{statistics.median(times[variant]):7.2f}s {ratio:18.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Fused ``linear_cross_entropy`` vs unfused ``F.linear`` + ``F.cross_entropy``: forward+backward
time and peak extra memory, on PyTorch CPU (float32).

Run ``python -m benchmarks.linear_ce [N D V [repeats [block_rows]]]`` (default 8192 1024 32000 3).

Memory: each variant runs two steps in a fresh subprocess, after a tiny warm-up step (so that
loading MKL, oneDNN and OpenMP is not counted), and reports two measures of the extra memory,
both compared with the size of the logits (N·V floats) and also shown net of the gradients
themselves (``dh`` N·D and ``dW`` V·D floats, which any implementation returns):

* ``rss``: the peak resident set size (``ru_maxrss``) minus the resident size once the
  inputs exist, over the two steps. This is what the machine sees, but it also counts
  what the C allocator keeps: glibc does not hand freed heap memory back to the OS below
  its trim threshold, so freed temporaries can stay resident, and library-internal buffers
  (BLAS packing) are included.
* ``live``: the peak of the bytes held by live tensors during one more step, from the
  allocation and free events of ``torch.profiler`` (``profile_memory=True``), summed in
  time order. It is not fooled by allocator caching, but does not see non-tensor buffers.

Time: one more subprocess alternates the variants ``repeats`` times, so that both see the
same machine load (it may be shared), and reports each variant's best and median time and
the median of the per-round ratios against the first variant. Compare ratios, not seconds.

Cases (``--case``, default ``default``): ``default`` fused vs unfused; ``shift`` causal
``shift=True`` on ``(1, N, D)`` vs the explicitly shifted call on a shifted copy of the hidden
states; ``ignored`` half the targets ``ignore_index`` (dropped before the matmul) vs none,
and the unfused path on the same; ``torch`` PyTorch 2.13's own ``F.linear_cross_entropy``
without and with ``options=LinearCrossEntropyOptions()`` vs xce. For example
``python -m benchmarks.linear_ce 512 64 2000 2 --case torch`` (small, to check it runs).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

_CHILD = r"""
import json, os, resource, sys, tempfile, time
import torch
import torch.nn.functional as F
from xce.linear import linear_cross_entropy

mode, n, d, v, repeats, block_rows = sys.argv[1], *map(int, sys.argv[2:7])
block_rows = block_rows or None
variants = tuple(sys.argv[7].split(",")) if mode == "time" else (mode,)

def make(n, d, v):
    torch.manual_seed(0)
    h = torch.randn(n, d, requires_grad=True)
    w = (torch.randn(v, d) * d ** -0.5).requires_grad_(True)
    return h, w, torch.randint(0, v, (n,))

def loss_of(h, w, t, variant):
    if variant.endswith("ignore50"):
        t = t.clone()
        t[::2] = -100  # half the rows ignored (padding, prompt tokens)
    if variant.startswith("unfused"):
        return F.cross_entropy(F.linear(h, w), t)
    if variant.startswith("torch-lce"):
        opts = torch.nn.LinearCrossEntropyOptions() if variant.endswith("options") else None
        return F.linear_cross_entropy(h, w, t, options=opts)
    if variant == "fused-shift":  # position i predicts t[i + 1]; no copy of h
        return linear_cross_entropy(h[None], w, t[None], shift=True, block_rows=block_rows)
    if variant == "fused-explicit-shift":  # the usual h[:-1], t[1:] (a copy of h)
        return linear_cross_entropy(h[:-1].contiguous(), w, t[1:], block_rows=block_rows)
    return linear_cross_entropy(h, w, t, block_rows=block_rows)

def step(h, w, t, variant):
    h.grad = w.grad = None
    loss = loss_of(h, w, t, variant)
    loss.backward()
    return float(loss)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def live_peak(h, w, t):
    # Replay the profiler's [memory] events (bytes > 0: allocation, < 0: free) in time order.
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(h, w, t, mode)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    mem = sorted((float(e["ts"]), int(e["args"]["Bytes"])) for e in events if e.get("name") == "[memory]")
    live = peak = 0
    for _, nbytes in mem:
        live += nbytes
        peak = max(peak, live)
    return peak

for variant in variants:  # warm-up: libraries and thread pools, not part of the measure
    step(*make(64, 32, 256), variant)
h, w, t = make(n, d, v)
if mode == "time":
    times = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant in variants:
            t0 = time.perf_counter(); step(h, w, t, variant); times[variant].append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "threads": torch.get_num_threads()}))
else:
    base = rss()
    for _ in range(2):  # a second step shows what the allocator keeps from the first
        loss = step(h, w, t, mode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    h.grad = w.grad = None
    print(json.dumps({"loss": loss, "rss_bytes": peak - base, "live_bytes": live_peak(h, w, t)}))
"""


CASES = {
    "default": ("unfused", "fused"),
    "shift": ("fused-explicit-shift", "fused-shift"),
    "ignored": ("fused", "fused-ignore50", "unfused-ignore50"),
    "torch": ("torch-lce", "torch-lce-options", "fused"),
}


def _child(mode: str, n: int, d: int, v: int, repeats: int, block_rows: int, variants: tuple[str, ...] = ()) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, mode, str(n), str(d), str(v), str(repeats), str(block_rows),
                          ",".join(variants)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(n: int, d: int, v: int, repeats: int, block_rows: int = 0, case: str = "default") -> dict:
    variants = CASES[case]
    mem = {variant: _child(variant, n, d, v, 1, block_rows) for variant in variants}
    timing = _child("time", n, d, v, repeats, block_rows, variants)
    times = timing["times"]
    logits = n * v * 4
    grads = (n * d + v * d) * 4
    mib = 2**20
    print(f"N={n} D={d} V={v} float32, torch CPU threads={timing['threads']}, case {case!r}; logits "
          f"{logits / mib:.0f} MiB, gradients dh+dW {grads / mib:.0f} MiB; extra memory in MiB (x logits), beyond "
          f"the gradients in [ ]")
    for variant, r in mem.items():
        cols = "  ".join(f"{key} {r[key + '_bytes'] / mib:6.0f} ({r[key + '_bytes'] / logits:.3f}) "
                         f"[{(r[key + '_bytes'] - grads) / mib:6.0f} ({(r[key + '_bytes'] - grads) / logits:.3f})]"
                         for key in ("rss", "live"))
        print(f"  {variant:20s} loss={r['loss']:.6f}  {cols}")
        ts = times[variant]
        print(f"  {'':20s} fwd+bwd best {min(ts):6.2f} s  median {statistics.median(ts):6.2f} s  "
              f"all {' '.join(f'{x:.2f}' for x in ts)}")
    first = variants[0]
    for variant in variants[1:]:
        ratios = [f / u for f, u in zip(times[variant], times[first])]
        print(f"  time ratio {variant}/{first}: median of {len(ratios)} alternating rounds "
              f"{statistics.median(ratios):.2f} (rounds {' '.join(f'{x:.2f}' for x in ratios)}); of the best times "
              f"{min(times[variant]) / min(times[first]):.2f}")
    return {"memory": mem, "times": times}


def main(argv: list[str]) -> None:
    case = "default"
    if "--case" in argv:
        i = argv.index("--case")
        case, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    n, d, v, repeats, block_rows = (list(map(int, argv)) + [8192, 1024, 32000, 3, 0][len(argv):])[:5]
    run(n, d, v, repeats, block_rows, case)


if __name__ == "__main__":
    main(sys.argv[1:])

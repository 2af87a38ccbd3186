"""Fused ``linear_cross_entropy`` vs unfused ``F.linear`` + ``F.cross_entropy``: forward+backward
time and peak extra memory, on PyTorch CPU (float32).

Run ``python -m benchmarks.linear_ce [N D V [repeats]]`` (default 8192 1024 32000 2). Each
variant runs in a fresh subprocess; "extra memory" is the peak resident set size minus the
resident size once the inputs exist, so it counts every temporary and the gradients
(``dh`` N·D and ``dW`` V·D floats), and is compared with the size of the logits (N·V floats).
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
import torch
import torch.nn.functional as F
from xce.linear import linear_cross_entropy

variant, n, d, v, repeats = sys.argv[1], *map(int, sys.argv[2:6])
torch.manual_seed(0)
h = torch.randn(n, d, requires_grad=True)
w = (torch.randn(v, d) * d ** -0.5).requires_grad_(True)
t = torch.randint(0, v, (n,))

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def step():
    h.grad = w.grad = None
    if variant == "unfused":
        loss = F.cross_entropy(F.linear(h, w), t)
    else:
        loss = linear_cross_entropy(h, w, t)
    loss.backward()
    return float(loss)

base = rss()
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); loss = step(); times.append(time.perf_counter() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"variant": variant, "loss": loss, "best_s": min(times), "times": times,
                  "extra_bytes": peak - base, "threads": torch.get_num_threads()}))
"""


def run(n: int, d: int, v: int, repeats: int) -> list[dict]:
    out = []
    for variant in ("unfused", "fused"):
        res = subprocess.run([sys.executable, "-c", _CHILD, variant, str(n), str(d), str(v), str(repeats)],
                             capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    logits = n * v * 4
    grads = (n * d + v * d) * 4
    print(f"N={n} D={d} V={v} float32, torch CPU threads={out[0]['threads']}; logits {logits / 2**20:.0f} MiB, "
          f"gradients dh+dW {grads / 2**20:.0f} MiB")
    for r in out:
        extra = r["extra_bytes"]
        print(f"  {r['variant']:8s} loss={r['loss']:.6f} best fwd+bwd {r['best_s']:.3f} s  "
              f"extra {extra / 2**20:7.0f} MiB = {extra / logits:.3f} x logits; beyond gradients "
              f"{(extra - grads) / 2**20:7.0f} MiB = {(extra - grads) / logits:.3f} x logits")
    print(f"  time ratio fused/unfused = {out[1]['best_s'] / out[0]['best_s']:.2f}")
    return out


def main(argv: list[str]) -> None:
    n, d, v, repeats = (list(map(int, argv)) + [8192, 1024, 32000, 2][len(argv):])[:4]
    run(n, d, v, repeats)


if __name__ == "__main__":
    main(sys.argv[1:])

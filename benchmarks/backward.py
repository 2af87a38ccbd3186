"""``xce.cross_entropy(x, t).backward()`` vs ``F.cross_entropy(x, t).backward()`` on PyTorch CPU:
forward+backward time and peak extra memory, float32 and bfloat16, with and without label
smoothing (0.1).

Run ``python -m benchmarks.backward [N C [repeats [threads]]]`` (default 4096 32000 5, and
PyTorch's default intra-op threads; ``threads`` calls ``torch.set_num_threads``). Each variant
runs in a fresh subprocess. "Extra memory" is the peak resident set size minus the resident size
once the inputs exist (and xce is imported), so it counts every temporary and the gradient
``x.grad`` itself; it is reported in MiB and as a multiple of the logits' size (N·C elements
of the input dtype). Allocators cache freed memory (glibc's heap, PyTorch's CPU allocator), so
the resident size is an upper bound on what was live at the peak. The time is the best of
``repeats`` fwd+bwd steps (the median, and forward and backward apart, are in the JSON line
printed per variant). On a CPU shared with other processes, PyTorch's intra-op threads wait
for each other at the end of every op, so many small ops (blocked loops) suffer more than a
few large ones: compare with ``threads`` 1 too.
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import json, resource, statistics, sys, time
import torch
import torch.nn.functional as F
import xce

variant, dtype_name, eps = sys.argv[1], sys.argv[2], float(sys.argv[3])
n, c, repeats, threads = map(int, sys.argv[4:8])
if threads:
    torch.set_num_threads(threads)
dtype = getattr(torch, dtype_name)
torch.manual_seed(0)
x = torch.randn(n, c, dtype=dtype).requires_grad_(True)
t = torch.randint(0, c, (n,))
loss_fn = F.cross_entropy if variant == "F.ce" else xce.cross_entropy

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

base = rss()
times, fwd, bwd = [], [], []
for _ in range(repeats):
    x.grad = None
    t0 = time.perf_counter()
    out = loss_fn(x, t, label_smoothing=eps)
    t1 = time.perf_counter()
    out.backward()
    t2 = time.perf_counter()
    loss = float(out)
    del out
    times.append(t2 - t0); fwd.append(t1 - t0); bwd.append(t2 - t1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
grad_sum = float(x.grad.double().abs().sum())
print(json.dumps({"variant": variant, "dtype": dtype_name, "label_smoothing": eps, "n": n, "c": c, "loss": loss,
                  "grad_abs_sum": grad_sum, "best_s": min(times), "median_s": statistics.median(times),
                  "best_fwd_s": min(fwd), "best_bwd_s": min(bwd),
                  "times": times, "extra_bytes": peak - base, "logits_bytes": x.numel() * x.element_size(),
                  "threads": torch.get_num_threads()}))
"""


def run_variant(variant: str, dtype: str, eps: float, n: int, c: int, repeats: int, threads: int = 0) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, variant, dtype, str(eps), str(n), str(c), str(repeats),
                          str(threads)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(n: int, c: int, repeats: int, threads: int = 0) -> list[dict]:
    out = []
    for dtype in ("float32", "bfloat16"):
        for eps in (0.0, 0.1):
            pair = [run_variant(v, dtype, eps, n, c, repeats, threads) for v in ("F.ce", "xce")]
            out.extend(pair)
            logits = pair[0]["logits_bytes"]
            print(f"N={n} C={c} {dtype} label_smoothing={eps}, torch CPU threads={pair[0]['threads']}; "
                  f"logits {logits / 2**20:.0f} MiB")
            for r in pair:
                extra = r["extra_bytes"]
                print(f"  {r['variant']:5s} loss={r['loss']:.6f} fwd+bwd best {r['best_s'] * 1e3:7.1f} ms "
                      f"(median {r['median_s'] * 1e3:7.1f}; fwd {r['best_fwd_s'] * 1e3:6.1f}, "
                      f"bwd {r['best_bwd_s'] * 1e3:6.1f})  extra {extra / 2**20:6.0f} MiB = "
                      f"{extra / logits:.2f} x logits")
            print(f"  time ratio xce/F.ce = {pair[1]['best_s'] / pair[0]['best_s']:.2f} (best), "
                  f"{pair[1]['median_s'] / pair[0]['median_s']:.2f} (median)")
            for r in pair:
                print(json.dumps(r))
    return out


def main(argv: list[str]) -> None:
    n, c, repeats, threads = (list(map(int, argv)) + [4096, 32000, 5, 0][len(argv):])[:4]
    run(n, c, repeats, threads)


if __name__ == "__main__":
    main(sys.argv[1:])

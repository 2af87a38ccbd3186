"""Fused ``linear_distillation_loss`` vs the unfused two-logits version: forward+backward time and
peak extra memory, on PyTorch CPU (float32).

Run ``python -m benchmarks linear_distill [N D_student D_teacher V [repeats [block_rows]]]``
(default 4096 1024 1024 32000 3), or ``python -m benchmarks.linear_distill ...``.

Variants, each a training step of the student (the teacher is frozen; generalized JSD, β=0.5,
temperature 2, 10% of the positions ignored):

* ``torch``: ``F.linear`` for both heads (the teacher under ``torch.no_grad``), then the
  generalized JSD written with ``F.log_softmax`` / ``F.kl_div(log_target=True)`` and a
  log-space mixture (TRL's ``generalized_jsd_loss``), masked mean over the kept positions;
* ``xce-unfused``: the same logits, then ``xce.generalized_jsd(s, t, y, axis=-1)``;
* ``fused``: ``xce.linear_distillation_loss(h_s, W_s, h_t, W_t, y)``: neither ``(N, V)``
  logits exists at once, the student's gradients come from the forward sweep.

Memory: each variant runs in a fresh subprocess; after a tiny warm-up step (libraries, thread
pools) the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``; Linux) is
measured over two steps, minus the resident size once the inputs exist. It is reported in MiB,
as a multiple of one model's logits (N·V floats), and net of the gradients (``dh`` N·D_s and
``dW`` V·D_s floats) that any implementation returns. Time: one more subprocess alternates the
variants ``repeats`` times (so that all see the same machine load) and reports the best and
median times and the median ratio to ``torch`` per round. Compare ratios, not seconds.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

VARIANTS = ("torch", "xce-unfused", "fused")

_CHILD = r"""
import json, math, sys, time
import torch
import torch.nn.functional as F
import xce

mode, n, ds, dt, v, repeats, block_rows = sys.argv[1], *map(int, sys.argv[2:8])
BETA, T = 0.5, 2.0

def make(n, ds, dt, v):
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(n, ds, generator=g).requires_grad_(True)
    ws = (torch.randn(v, ds, generator=g) * ds ** -0.5).requires_grad_(True)
    ht, wt = torch.randn(n, dt, generator=g), torch.randn(v, dt, generator=g) * dt ** -0.5
    y = torch.randint(0, v, (n,), generator=g)
    y[::10] = -100
    return hs, ws, ht, wt, y

def torch_jsd(s, t, y):
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    lm = torch.logsumexp(torch.stack([lt + math.log(BETA), ls + math.log1p(-BETA)]), 0)
    per = (BETA * F.kl_div(lm, lt, reduction="none", log_target=True)
           + (1 - BETA) * F.kl_div(lm, ls, reduction="none", log_target=True)).sum(-1)
    kept = y != -100
    return torch.where(kept, per, 0.0).sum() / kept.sum()

def step(hs, ws, ht, wt, y, variant):
    hs.grad = ws.grad = None
    if variant == "fused":
        loss = xce.linear_distillation_loss(hs, ws, ht, wt, y, beta=BETA, temperature=T,
                                            block_rows=block_rows or None)
    else:
        with torch.no_grad():
            t = F.linear(ht, wt)
        s = F.linear(hs, ws)
        loss = torch_jsd(s, t, y) if variant == "torch" else xce.generalized_jsd(s, t, y, beta=BETA,
                                                                                  temperature=T, axis=-1)
    loss.backward()
    return float(loss)

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

variants = mode.split(",")
for variant in variants:
    step(*make(64, 16, 16, 128), variant)
inputs = make(n, ds, dt, v)
if len(variants) > 1:  # time, alternating
    times = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant in variants:
            t0 = time.perf_counter(); step(*inputs, variant); times[variant].append(time.perf_counter() - t0)
    print(json.dumps({"times": times, "threads": torch.get_num_threads()}))
else:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    base = status("VmRSS")
    loss = [step(*inputs, mode) for _ in range(2)][-1]
    print(json.dumps({"loss": loss, "peak_bytes": status("VmHWM") - base}))
"""


def _child(mode: str, sizes: tuple[int, int, int, int], repeats: int, block_rows: int) -> dict:
    args = [sys.executable, "-c", _CHILD, mode, *map(str, sizes), str(repeats), str(block_rows)]
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(n: int, ds: int, dt: int, v: int, repeats: int = 3, block_rows: int = 0) -> dict:
    sizes = (n, ds, dt, v)
    memory = {variant: _child(variant, sizes, 1, block_rows) for variant in VARIANTS}
    times = _child(",".join(VARIANTS), sizes, repeats, block_rows)
    logits, grads, mib = n * v * 4, (n * ds + v * ds) * 4, 2**20
    print(f"N={n} D_student={ds} D_teacher={dt} V={v} float32, torch CPU threads={times['threads']}; one model's "
          f"logits {logits / mib:.0f} MiB, student gradients {grads / mib:.0f} MiB")
    for variant in VARIANTS:
        peak, ts = memory[variant]["peak_bytes"], times["times"][variant]
        ratios = [a / b for a, b in zip(ts, times["times"]["torch"])]
        print(f"  {variant:12s} loss={memory[variant]['loss']:.6f}  peak extra {peak / mib:7.0f} MiB "
              f"({peak / logits:.2f}x logits; {(peak - grads) / mib:7.0f} MiB beyond the gradients)  "
              f"fwd+bwd best {min(ts):.3f} s median {statistics.median(ts):.3f} s  "
              f"vs torch {statistics.median(ratios):.2f}x")
    return {"memory": memory, "times": times["times"]}


def main(argv: list[str]) -> int:
    defaults = [4096, 1024, 1024, 32000, 3, 0]
    n, ds, dt, v, repeats, block_rows = (list(map(int, argv)) + defaults[len(argv):])[:6]
    run(n, ds, dt, v, repeats, block_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

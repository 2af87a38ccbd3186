"""Fused ``linear_distillation_loss`` vs the unfused two-logits version, and the distillation losses on
logits vs TRL's plain formula: forward+backward time and peak extra memory, on PyTorch CPU (float32).

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

``python -m benchmarks linear_distill logits [N V [repeats]]`` (default 2048 32000 3): the losses on
given logits, a student ``(N, V)`` that requires grad and a constant teacher, 10% of the positions
ignored, temperature 2, for the generalized JSD (β=0.5) and forward KL:

* ``torch``: TRL's ``GKDTrainer.generalized_jsd_loss`` formula (``F.log_softmax``,
  ``F.kl_div(log_target=True)``, the log-space mixture), masked mean over the kept positions;
* ``xce``: ``xce.generalized_jsd`` / ``xce.kl_div_with_logits``: autograd sees one Function, whose
  forward and backward (the loss module's gradient rule) go a block of rows at a time;
* ``xce-autograd``: the same under ``xce.config(enabled=False)``: autograd through the formula's
  tensor operations, as before that Function.

Memory as above, net of the student's gradient (``N·V`` floats) that any implementation returns.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

VARIANTS = ("torch", "xce-unfused", "fused")

_COMMON = r"""
import json, math, sys, time
import torch
import torch.nn.functional as F
import xce

mode, repeats, block_rows, *sizes = sys.argv[1], *map(int, sys.argv[2:])
BETA, T = 0.5, 2.0

def kl_rows(log_input, log_target):  # per position: sum_c P (log P - log Q), P = exp(log_target)
    return F.kl_div(log_input, log_target, reduction="none", log_target=True).sum(-1)

def masked_mean(per, y):
    kept = y != -100
    return torch.where(kept, per, 0.0).sum() / kept.sum()

def torch_jsd(s, t, y, beta=BETA):  # TRL's GKDTrainer.generalized_jsd_loss (beta = 0: forward KL)
    ls, lt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    if beta == 0.0:
        return masked_mean(kl_rows(ls, lt), y)
    lm = torch.logsumexp(torch.stack([lt + math.log(beta), ls + math.log1p(-beta)]), 0)
    return masked_mean(beta * kl_rows(lm, lt) + (1 - beta) * kl_rows(lm, ls), y)
"""

# Defines make(*sizes) -> inputs (the student's first) and step(*inputs, variant) -> loss.
_LINEAR = r"""
VARIANTS = ("torch", "xce-unfused", "fused")

def make(n, ds, dt, v):
    g = torch.Generator().manual_seed(0)
    hs = torch.randn(n, ds, generator=g).requires_grad_(True)
    ws = (torch.randn(v, ds, generator=g) * ds ** -0.5).requires_grad_(True)
    ht, wt = torch.randn(n, dt, generator=g), torch.randn(v, dt, generator=g) * dt ** -0.5
    y = torch.randint(0, v, (n,), generator=g)
    y[::10] = -100
    return hs, ws, ht, wt, y

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
"""

_LOGITS = r"""
def make(n, v):
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(n, v, generator=g) * 2).requires_grad_(True)
    t = torch.randn(n, v, generator=g) * 2
    y = torch.randint(0, v, (n,), generator=g)
    y[::10] = -100
    return s, t, y

def step(s, t, y, variant):
    s.grad = None
    impl, loss_name = variant.rsplit("-", 1)
    beta = BETA if loss_name == "jsd" else 0.0
    if impl == "torch":
        loss = torch_jsd(s, t, y, beta)
    else:
        with xce.config(enabled=impl == "xce"):
            if loss_name == "jsd":
                loss = xce.generalized_jsd(s, t, y, beta=beta, temperature=T)
            else:
                loss = xce.kl_div_with_logits(s, t, y, temperature=T)
    loss.backward()
    return float(loss)
"""

_MEASURE = r"""
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

variants = mode.split(",")
for variant in variants:
    step(*make(*[min(x, 128) for x in sizes]), variant)
inputs = make(*sizes)
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

_CHILD = _COMMON + _LINEAR + _MEASURE
_LOGITS_CHILD = _COMMON + _LOGITS + _MEASURE
LOGITS_VARIANTS = tuple(f"{impl}-{loss}" for loss in ("jsd", "kl") for impl in ("torch", "xce", "xce-autograd"))


def _child(mode: str, sizes: tuple[int, ...], repeats: int, block_rows: int, child: str = _CHILD) -> dict:
    args = [sys.executable, "-c", child, mode, str(repeats), str(block_rows), *map(str, sizes)]
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _report(variants: tuple[str, ...], memory: dict, times: dict, baseline: dict[str, str], logits: int,
            grads: int) -> None:
    """One line per variant: its loss, peak extra memory (also net of the gradients ``grads``,
    in bytes) and times, with the median ratio to its ``baseline`` variant per round."""
    mib = 2**20
    for variant in variants:
        peak, ts = memory[variant]["peak_bytes"], times[variant]
        ratios = [a / b for a, b in zip(ts, times[baseline[variant]])]
        print(f"  {variant:18s} loss={memory[variant]['loss']:.6f}  peak extra {peak / mib:7.0f} MiB "
              f"({peak / logits:.2f}x logits; {(peak - grads) / mib:7.0f} MiB beyond the gradients)  "
              f"fwd+bwd best {min(ts):.3f} s median {statistics.median(ts):.3f} s  "
              f"vs {baseline[variant]} {statistics.median(ratios):.2f}x")


def run(n: int, ds: int, dt: int, v: int, repeats: int = 3, block_rows: int = 0) -> dict:
    sizes = (n, ds, dt, v)
    memory = {variant: _child(variant, sizes, 1, block_rows) for variant in VARIANTS}
    times = _child(",".join(VARIANTS), sizes, repeats, block_rows)
    logits, grads, mib = n * v * 4, (n * ds + v * ds) * 4, 2**20
    print(f"N={n} D_student={ds} D_teacher={dt} V={v} float32, torch CPU threads={times['threads']}; one model's "
          f"logits {logits / mib:.0f} MiB, student gradients {grads / mib:.0f} MiB")
    _report(VARIANTS, memory, times["times"], dict.fromkeys(VARIANTS, "torch"), logits, grads)
    return {"memory": memory, "times": times["times"]}


def run_logits(n: int, v: int, repeats: int = 3) -> dict:
    """The distillation losses on ``(N, V)`` logits (see the module)."""
    sizes = (n, v)
    memory = {variant: _child(variant, sizes, 1, 0, _LOGITS_CHILD) for variant in LOGITS_VARIANTS}
    times = _child(",".join(LOGITS_VARIANTS), sizes, repeats, 0, _LOGITS_CHILD)
    logits, mib = n * v * 4, 2**20
    print(f"N={n} V={v} float32 logits, torch CPU threads={times['threads']}; the logits {logits / mib:.0f} MiB "
          "(= the student's gradient)")
    baseline = {variant: "torch-" + variant.rsplit("-", 1)[1] for variant in LOGITS_VARIANTS}
    _report(LOGITS_VARIANTS, memory, times["times"], baseline, logits, logits)
    return {"memory": memory, "times": times["times"]}


def main(argv: list[str]) -> int:
    if argv[:1] == ["logits"]:
        n, v, repeats = (list(map(int, argv[1:])) + [2048, 32000, 3][len(argv) - 1:])[:3]
        run_logits(n, v, repeats)
        return 0
    defaults = [4096, 1024, 1024, 32000, 3, 0]
    n, ds, dt, v, repeats, block_rows = (list(map(int, argv)) + defaults[len(argv):])[:6]
    run(n, ds, dt, v, repeats, block_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

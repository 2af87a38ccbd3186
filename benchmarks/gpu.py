"""xce on a CUDA GPU: ``python -m benchmarks.gpu [--sizes 8x10,4096x32000] [--repeats N] [--huge] [--out DIR]``.

Self-contained (needs xce, and torch with CUDA and/or CuPy). For every size N x C (float32
logits, int64 index targets, ``reduction="mean"``, class axis last):

* torch-cuda: ``xce.cross_entropy`` vs ``torch.nn.functional.cross_entropy``, forward (under
  ``torch.no_grad``) and forward+backward (``x.grad = None``, ``loss.backward()``);
* CuPy: ``xce.cross_entropy`` vs the loss written by hand in CuPy (max-shifted logsumexp, pick, mean);
* timing: CUDA events around enough back-to-back calls to last ``--target-ms``, the two
  implementations taking turns in every repeat; the median per call is reported;
* the bandwidth bound: bytes that must move (the logits read once; for fwd+bwd also the
  gradient written once) divided by the device bandwidth measured with a large
  device-to-device copy (read + write), and how close each implementation comes to it;
* peak device memory beyond the inputs (``torch.cuda.max_memory_allocated``) of one warm call;
* host-device synchronisations of one warm call, counted as the warnings
  ``torch.cuda.set_sync_debug_mode("warn")`` raises (with a ``float(x.sum())`` control that must
  count at least one).

Without a CUDA device it prints why and exits with status 0. ``--dry-run-cpu`` runs the same
code on the CPU instead (torch CPU, NumPy in place of CuPy, wall-clock timing, no memory or
sync counts) to check the script itself; its numbers mean nothing.
Writes ``gpu.md`` and ``gpu.json`` (``gpu-dry-run.*``) to ``benchmarks/results`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.sweep import FwdBwd

SIZES: tuple[tuple[int, int], ...] = ((8, 10), (64, 100), (256, 1000), (1024, 10000), (4096, 32000))
HUGE = (8192, 131072)
RESULTS = Path(__file__).resolve().parent / "results"


# --- devices: how to synchronise and time one library ----------------------------------------


@dataclass
class Device:
    name: str
    sync: Callable[[], None]
    event: Callable[[], Any] | None = None  # a timing event factory; None: perf_counter
    record: Callable[[Any], None] = lambda ev: None
    elapsed_ms: Callable[[Any, Any], float] = lambda start, end: 0.0
    array: Any = None  # the array module (torch or cupy/numpy)
    where: str = "cuda"


def _nothing() -> None:
    return None


def torch_device(dry_run: bool) -> tuple[Device | None, str]:
    try:
        import torch
    except ImportError:
        return None, "torch: not installed"
    if dry_run:
        return Device("torch-cpu (dry run)", _nothing, array=torch, where="cpu"), "torch: CPU (dry run)"
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        return None, f"torch {torch.__version__} ({build}): torch.cuda.is_available() is False"

    def record(ev: Any) -> None:
        ev.record()

    dev = Device(
        f"torch-cuda ({torch.cuda.get_device_name()})",
        torch.cuda.synchronize,
        lambda: torch.cuda.Event(enable_timing=True),
        record,
        lambda start, end: start.elapsed_time(end),
        torch,
    )
    return dev, f"torch {torch.__version__}: {torch.cuda.get_device_name()}"


def cupy_device(dry_run: bool) -> tuple[Device | None, str]:
    if dry_run:
        import numpy

        return Device("numpy (dry run, in place of CuPy)", _nothing, array=numpy, where="cpu"), "cupy: NumPy (dry run)"
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        return None, f"cupy: not importable ({type(e).__name__})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return None, f"cupy {cupy.__version__}: no usable device ({type(e).__name__})"
    if count < 1:
        return None, f"cupy {cupy.__version__}: no device"

    def record(ev: Any) -> None:
        ev.record()

    dev = Device("cupy", cupy.cuda.Device().synchronize, cupy.cuda.Event, record, cupy.cuda.get_elapsed_time, cupy)
    return dev, f"cupy {cupy.__version__}: {count} device(s)"


# --- timing ---------------------------------------------------------------------------------


def time_device(
    fns: dict[str, Callable[[], Any]], dev: Device, repeats: int, target_s: float
) -> dict[str, list[float]]:
    """Seconds per call: per repeat and implementation, one event pair around ``inner`` calls
    (sized to last ~target_s); the implementations take turns, the order alternating."""
    inner: dict[str, int] = {}
    for name, f in fns.items():  # warm up, then size the inner loop on one synchronised call
        f()
        f()
        dev.sync()
        t0 = time.perf_counter()
        f()
        dev.sync()
        inner[name] = max(1, min(10_000, int(target_s / max(time.perf_counter() - t0, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            f, k = fns[name], inner[name]
            dev.sync()
            if dev.event is None:
                t0 = time.perf_counter()
                for _ in range(k):
                    f()
                dev.sync()
                seconds = time.perf_counter() - t0
            else:
                start, end = dev.event(), dev.event()
                dev.record(start)
                for _ in range(k):
                    f()
                dev.record(end)
                end.synchronize()
                seconds = dev.elapsed_ms(start, end) / 1e3
            samples[name].append(seconds / k)
    return samples


def bandwidth(dev: Device, nbytes: int) -> float:
    """Device memory bandwidth (bytes/s) of a device-to-device copy of ``nbytes`` (read + write)."""
    xp = dev.array
    if xp.__name__ == "torch":
        src = xp.ones(nbytes // 4, dtype=xp.float32, device=dev.where)
        dst = xp.empty_like(src)

        def copy() -> Any:
            return dst.copy_(src)
    else:
        src = xp.ones(nbytes // 4, dtype=xp.float32)
        dst = xp.empty_like(src)

        def copy() -> Any:
            xp.copyto(dst, src)

    s = time_device({"copy": copy}, dev, repeats=7, target_s=0.05)["copy"]
    return 2 * (nbytes // 4) * 4 / statistics.median(s)


def copy_bytes(dev: Device) -> int:
    """1 GiB, or a quarter of the free device memory if less (64 MiB on the CPU dry run)."""
    if dev.where == "cpu":
        return 64 << 20
    xp = dev.array
    free = xp.cuda.mem_get_info()[0] if xp.__name__ == "torch" else xp.cuda.runtime.memGetInfo()[0]
    return int(min(1 << 30, free // 4))


# --- peak memory and synchronisations (torch-cuda) --------------------------------------------


def peak_bytes(fn: Callable[[], Any], dev: Device, reset: Callable[[], None] | None = None) -> int | None:
    if dev.where != "cuda" or dev.array.__name__ != "torch":
        return None
    torch = dev.array
    fn()  # warm
    if reset is not None:
        reset()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    del out
    return int(torch.cuda.max_memory_allocated() - base)


def count_syncs(fn: Callable[[], Any], dev: Device) -> dict[str, Any] | None:
    """Synchronising CUDA operations during one warm call of ``fn`` (torch's sync debug mode)."""
    if dev.where != "cuda" or dev.array.__name__ != "torch":
        return None
    torch = dev.array
    fn()  # warm: lazy initialisation is not what is being counted
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    messages = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    return {"count": len(messages), "messages": sorted(set(messages))[:5]}


# --- cases ----------------------------------------------------------------------------------


@dataclass
class Result:
    n: int
    c: int
    library: str  # torch-cuda | cupy
    case: str  # fwd | fwd+bwd
    impls: tuple[str, str]
    median_s: dict[str, float] = field(default_factory=dict)
    min_s: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    ratio: float = float("nan")  # xce / reference (medians)
    bound_s: float | None = None  # bytes that must move / device bandwidth
    peak_extra_bytes: dict[str, int | None] = field(default_factory=dict)
    syncs: dict[str, Any] = field(default_factory=dict)
    abs_diff: float | None = None  # |xce loss - reference loss|


def _finish(res: Result, samples: dict[str, list[float]], bw: float | None, nbytes: int) -> Result:
    res.samples = samples
    res.median_s = {k: statistics.median(v) for k, v in samples.items()}
    res.min_s = {k: min(v) for k, v in samples.items()}
    res.ratio = res.median_s[res.impls[0]] / res.median_s[res.impls[1]]
    res.bound_s = None if bw is None else nbytes / bw
    return res


def torch_cases(n: int, c: int, dev: Device, bw: float | None, repeats: int, target_s: float) -> list[Result]:
    import torch
    import torch.nn.functional as F

    import xce

    gen = torch.Generator(device=dev.where).manual_seed(0)
    x = torch.randn(n, c, device=dev.where, generator=gen) * 3.0
    y = torch.randint(0, c, (n,), device=dev.where, generator=gen)
    logits = n * c * 4
    out = []
    with torch.no_grad():
        fns = {"xce": lambda: xce.cross_entropy(x, y), "F.cross_entropy": lambda: F.cross_entropy(x, y)}
        res = Result(n, c, dev.name, "fwd", ("xce", "F.cross_entropy"))
        res.abs_diff = abs(float(fns["xce"]()) - float(fns["F.cross_entropy"]()))
        res.peak_extra_bytes = {k: peak_bytes(f, dev) for k, f in fns.items()}
        res.syncs = {k: count_syncs(f, dev) for k, f in fns.items()}
        res.syncs["control: float(x.sum())"] = count_syncs(lambda: float(x.sum()), dev)
        out.append(_finish(res, time_device(fns, dev, repeats, target_s), bw, logits))
    xg = x.clone().requires_grad_(True)
    steps = {"xce": FwdBwd(xce.cross_entropy, xg, y), "F.cross_entropy": FwdBwd(F.cross_entropy, xg, y)}
    res = Result(n, c, dev.name, "fwd+bwd", ("xce", "F.cross_entropy"))
    grads = [steps[k]().detach().clone() for k in steps]
    res.abs_diff = float((grads[0] - grads[1]).abs().max())
    del grads
    res.peak_extra_bytes = {k: peak_bytes(f, dev, f.reset) for k, f in steps.items()}
    res.syncs = {k: count_syncs(f, dev) for k, f in steps.items()}
    res.syncs["xce.linear_cross_entropy, 1/4 ignored"] = count_syncs(_linear_step(n, c, dev, gen), dev)
    for f in steps.values():
        f.reset()
    out.append(_finish(res, time_device(dict(steps), dev, repeats, target_s), bw, 2 * logits))
    return out


def _linear_step(n: int, c: int, dev: Device, gen: Any, d: int = 256) -> Callable[[], Any]:
    """Forward and backward of ``xce.linear_cross_entropy`` (hidden size ``d``, vocabulary ``c``,
    every fourth target ``ignore_index``: where values are read those rows would be dropped)."""
    import torch

    import xce

    h = torch.randn(n, d, device=dev.where, generator=gen).requires_grad_(True)
    w = (torch.randn(c, d, device=dev.where, generator=gen) / d**0.5).requires_grad_(True)
    t = torch.randint(0, c, (n,), device=dev.where, generator=gen)
    t[::4] = -100

    def step() -> Any:
        h.grad = w.grad = None
        xce.linear_cross_entropy(h, w, t).backward()
        return h.grad

    return step


def cupy_by_hand(x: Any, y: Any, xp: Any) -> Any:
    m = xp.max(x, axis=1, keepdims=True)
    s = x - m
    lse = xp.log(xp.sum(xp.exp(s), axis=1))
    return xp.mean(lse - s[xp.arange(x.shape[0]), y])


def cupy_cases(n: int, c: int, dev: Device, bw: float | None, repeats: int, target_s: float) -> list[Result]:
    import xce

    xp = dev.array
    if dev.where == "cpu":
        rng = xp.random.default_rng(0)
        x = rng.standard_normal((n, c), dtype=xp.float32) * 3.0
        y = rng.integers(0, c, n)
    else:
        rs = xp.random.RandomState(0)
        x = rs.standard_normal((n, c), dtype=xp.float32) * 3.0
        y = rs.randint(0, c, n).astype(xp.int64)
    fns = {"xce": lambda: xce.cross_entropy(x, y), "by hand": lambda: cupy_by_hand(x, y, xp)}
    res = Result(n, c, dev.name, "fwd", ("xce", "by hand"))
    res.abs_diff = abs(float(fns["xce"]()) - float(fns["by hand"]()))
    return [_finish(res, time_device(fns, dev, repeats, target_s), bw, n * c * 4)]


# --- report ---------------------------------------------------------------------------------


def _us(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e6:,.1f}"


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    md = [f"# xce on the GPU{' (CPU dry run: numbers mean nothing)' if meta['dry_run'] else ''}", ""]
    md += [f"- {line}" for line in meta["devices"]]
    bws = ", ".join(f"{k}: {v / 1e9:,.0f} GB/s" for k, v in meta["bandwidth_Bps"].items())
    md.append(f"- Device bandwidth (copy of {meta['copy_bytes'] / 2**20:.0f} MiB, read + write): {bws}")
    md.append(
        f"- Python {meta['python']}; {meta['date']}. Median of {meta['repeats']} repeats, each one event pair around "
        f"calls lasting ≥ {meta['target_s'] * 1e3:.0f} ms, the two implementations taking turns. float32 logits, "
        "int64 index targets, mean. Bound = bytes that must move (logits read once; fwd+bwd: + gradient written "
        "once) / bandwidth; '% of bound' = bound / time."
    )
    md += [
        "",
        "| N×C | library | case | xce µs | reference | ref µs | xce/ref | bound µs | xce % of bound | "
        "ref % of bound | peak extra MiB xce / ref | max abs diff |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        a, b = r.impls
        pct = ["n/a" if r.bound_s is None else f"{100 * r.bound_s / r.median_s[k]:.0f}%" for k in (a, b)]
        peak = f"{_mib(r.peak_extra_bytes.get(a))} / {_mib(r.peak_extra_bytes.get(b))}"
        md.append(
            f"| {r.n}×{r.c} | {r.library} | {r.case} | {_us(r.median_s[a])} | {b} | {_us(r.median_s[b])} | "
            f"{r.ratio:.2f}× | {_us(r.bound_s)} | {pct[0]} | {pct[1]} | {peak} | {r.abs_diff:.1e} |"
        )
    sync_rows = [r for r in results if r.syncs and any(v is not None for v in r.syncs.values())]
    if sync_rows:
        md += ["", 'Synchronising CUDA operations in one warm call (`torch.cuda.set_sync_debug_mode("warn")`):', ""]
        md += ["| N×C | case | call | syncs | messages |", "|---|---|---|---:|---|"]
        for r in sync_rows:
            for call, s in r.syncs.items():
                if s is not None:
                    msgs = "; ".join(m.replace("|", "/")[:120] for m in s["messages"])
                    md.append(f"| {r.n}×{r.c} | {r.case} | {call} | {s['count']} | {msgs} |")
        controls = [r.syncs.get("control: float(x.sum())") for r in sync_rows]
        if any(c is not None and c["count"] == 0 for c in controls):
            md += ["", "**The control counted no synchronisation: the counts above are not reliable.**"]
    return "\n".join(md) + "\n"


# --- the command line -----------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.replace("×", "x").lower().split(","):
        if part.strip():
            n, sep, c = part.strip().partition("x")
            if not (sep and n.isdigit() and c.isdigit() and int(n) > 0 and int(c) > 0):
                raise argparse.ArgumentTypeError(f"bad size {part!r}: expected NxC, e.g. 256x1000")
            sizes.append((int(n), int(c)))
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=parse_sizes, default=None, help="comma-separated NxC (default: 8x10 … 4096x32000)")
    p.add_argument("--huge", action="store_true", help="also 8192x131072")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--target-ms", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--dry-run-cpu", action="store_true", help="run on the CPU to check the script (no GPU numbers)")
    args = p.parse_args(argv)
    sizes = list(args.sizes or SIZES)
    if args.huge and HUGE not in sizes:
        sizes.append(HUGE)

    tdev, tmsg = torch_device(args.dry_run_cpu)
    cdev, cmsg = cupy_device(args.dry_run_cpu)
    if tdev is None and cdev is None:
        print(f"benchmarks.gpu: no CUDA device here, nothing to run ({tmsg}; {cmsg}).", file=sys.stderr)
        return 0
    import xce

    meta: dict[str, Any] = {
        "dry_run": args.dry_run_cpu,
        "devices": [tmsg, cmsg, f"xce {getattr(xce, '__version__', '?')} from {xce.__file__}"],
        "repeats": args.repeats,
        "target_s": args.target_ms / 1e3,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "bandwidth_Bps": {},
    }
    first = tdev or cdev
    assert first is not None
    meta["copy_bytes"] = copy_bytes(first)
    for dev in (tdev, cdev):
        if dev is not None:
            meta["bandwidth_Bps"][dev.name] = bandwidth(dev, meta["copy_bytes"])
    results: list[Result] = []
    for n, c in sizes:
        print(f"{n}x{c} ...", file=sys.stderr)
        for dev, cases in ((tdev, torch_cases), (cdev, cupy_cases)):
            if dev is not None:
                results += cases(n, c, dev, meta["bandwidth_Bps"][dev.name], args.repeats, args.target_ms / 1e3)
    text = markdown(results, meta)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-dry-run" if args.dry_run_cpu else "gpu"
    (args.out / f"{stem}.md").write_text(text)
    dump = {"meta": meta, "results": [asdict(r) for r in results]}
    (args.out / f"{stem}.json").write_text(json.dumps(dump, indent=1, default=str))
    print(args.out / f"{stem}.md")
    print(args.out / f"{stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Markdown table, JSON dump and PNG plot of a run, with the machine noted."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

LIBS = ("xce", "numpy", "scipy", "torch", "jax", "jaxlib", "optax", "dask", "array-api-compat", "cupy")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    versions = {}
    for lib in LIBS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[lib] = metadata.version(lib)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    mem = None
    with contextlib.suppress(OSError, IndexError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_bytes": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_end": load,
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def _fmt_mem(b: int | None) -> str:
    if b is None:
        return ""
    return f"{b / 2**20:.1f} MiB"


def write_report(rows, overhead: dict[str, Any], out: Path, *, quick: bool, elapsed: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    stem = "quick" if quick else "results"
    md = [f"# xce benchmarks ({'quick' if quick else 'full'} run)", ""]
    md += [
        f"- Machine: {info['cpu']}, {info['cores']} cores, "
        f"{(info['memory_bytes'] or 0) / 2**30:.0f} GiB RAM; {info['platform']}; Python {info['python']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"- Date: {info['date']}; run took {elapsed:.0f} s; load average at the end: {info['load_average_at_end']}",
        "- Times: median (and min) over interleaved repeats; each sample averages enough calls to last "
        "20–50 ms. Ratios are medians of the same run: `floor` is one `sum` over the logits on the same "
        "backend.",
        "- Peak extra memory: bytes beyond the inputs during one (warm) call, measured in a fresh "
        "subprocess: `tracemalloc` for NumPy, peak RSS delta (`/proc/self/status` VmHWM after "
        "resetting it via `/proc/self/clear_refs`) for torch CPU, JAX and Dask.",
        "",
    ]
    cases: dict[str, list] = {}
    for r in rows:
        cases.setdefault(r.case, []).append(r)
    md += [
        "| case | implementation | median | min | ratios (median / median) | peak extra memory | memory method |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for case, rs in cases.items():
        for r in rs:
            ratios = ", ".join(f"{v:.2f}× {k}" for k, v in r.ratios.items())
            md.append(
                f"| {case} | {r.impl} | {_fmt_time(r.median_s)} | {_fmt_time(r.min_s)} | {ratios} | "
                f"{_fmt_mem(r.peak_extra_bytes)} | {r.memory_method if r.peak_extra_bytes is not None else ''} |"
            )
    md += ["", "## Dispatch overhead (8x10 float32, forward)", ""]
    md += ["| call | median |", "|---|---:|"]
    md += [f"| {k} | {_fmt_time(v)} |" for k, v in overhead["median_s"].items()]
    md += [""] + [f"- {k}: **{v:.2f}×**" for k, v in overhead["ratios"].items()]
    for lib, text in overhead["profiles"].items():
        md += ["", f"### Where xce[{lib}]'s small-call time goes (cProfile, 3000 calls, by tottime)", "", "```"]
        md += [text, "```"]
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(md) + "\n")
    json_path = out / f"{stem}.json"
    json_path.write_text(
        json.dumps({"machine": info, "rows": [asdict(r) for r in rows], "overhead": overhead}, indent=1, default=str)
    )
    paths = [md_path, json_path]
    png = _plot(cases, out / f"{stem}.png", info)
    if png is not None:
        paths.append(png)
    return paths


def _plot(cases: dict[str, list], path: Path, info: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    chosen = [c for c in cases if c.endswith("float32 plain fwd")]
    if not chosen:
        return None
    fig, axes = plt.subplots(1, len(chosen), figsize=(5.5 * len(chosen), 5), squeeze=False)
    for ax, case in zip(axes[0], chosen):
        rs = cases[case]
        names = [r.impl for r in rs]
        times = [r.median_s * 1e3 for r in rs]
        palette = {"xce": "C0", "engine": "C2", "reference": "C1", "floor": "C7", "exp-floor": "C8"}
        colors = [palette[r.kind] for r in rs]
        ax.barh(names, times, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("median time per call (ms, log)")
        ax.set_title(case)
        for y, t in enumerate(times):
            ax.text(t, y, f" {t:.3g}", va="center", fontsize=7)
    fig.suptitle(
        f"xce vs native losses — {info['cpu']}, {info['cores']} cores; "
        "blue xce, green blocked engine, orange reference, grey one-pass floor",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

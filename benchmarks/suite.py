"""Cases, implementations, interleaved timing and the command line."""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
VARIANTS = ("plain", "smooth", "weight", "ignore", "probs")


@dataclass(frozen=True)
class Case:
    n: int
    c: int
    dtype: str  # "float32" | "bfloat16"
    variant: str  # one of VARIANTS
    mode: str  # "fwd" | "fwd+bwd"

    @property
    def label(self) -> str:
        return f"{self.n}x{self.c} {self.dtype} {self.variant} {self.mode}"


@dataclass
class Impl:
    name: str  # e.g. "xce[numpy]", "F.cross_entropy"
    backend: str  # numpy, torch, jax, dask
    kind: str  # xce | engine | reference | floor | exp-floor
    fn: Callable[[], Any]
    memory: str = ""  # how peak memory is measured for this backend


@dataclass
class Row:
    case: str
    impl: str
    backend: str
    kind: str
    median_s: float
    min_s: float
    repeats: int
    inner: int
    ratios: dict[str, float] = field(default_factory=dict)
    peak_extra_bytes: int | None = None
    memory_method: str = ""


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# --- inputs --------------------------------------------------------------------------------


def make_data(case: Case, seed: int = 0) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case.n, case.c), dtype=np.float32) * 3.0
    y = rng.integers(0, case.c, case.n)
    data: dict[str, Any] = {"x": x, "y": y, "w": None, "probs": None, "eps": 0.0, "ignore_index": -100}
    if case.variant == "smooth":
        data["eps"] = 0.1
    elif case.variant == "weight":
        data["w"] = rng.uniform(0.5, 1.5, case.c).astype(np.float32)
    elif case.variant == "ignore":
        y[rng.random(case.n) < 0.1] = -100
    elif case.variant == "probs":
        p = rng.random((case.n, case.c), dtype=np.float32)
        data["probs"] = p / p.sum(axis=1, keepdims=True)
    return data


# --- implementations -----------------------------------------------------------------------


def implementations(case: Case, data: dict[str, Any]) -> list[Impl]:
    """Every implementation that applies to ``case`` (skipping missing libraries)."""
    impls: list[Impl] = []
    for build in (_numpy_impls, _torch_impls, _jax_impls, _dask_impls, _gpu_impls):
        impls.extend(build(case, data))
    return impls


def _numpy_impls(case: Case, data: dict[str, Any]) -> list[Impl]:
    if case.dtype != "float32" or case.mode != "fwd":
        return []  # NumPy has no bfloat16 and no autograd
    import array_api_compat.numpy as xnp

    import xce

    x, y, w, probs, eps, ii = (data[k] for k in ("x", "y", "w", "probs", "eps", "ignore_index"))
    target = probs if probs is not None else y
    mem = "tracemalloc (in a subprocess)"
    out = [
        Impl(
            "xce[numpy]",
            "numpy",
            "xce",
            lambda: xce.cross_entropy(x, target, w, ignore_index=ii, label_smoothing=eps),
            mem,
        ),
        Impl("plain numpy", "numpy", "reference", lambda: _plain_numpy(x, target, w, ii, eps), mem),
    ]
    if have("scipy"):
        out.append(Impl("scipy log_softmax", "numpy", "reference", lambda: _scipy(x, target, w, ii, eps), mem))
    if case.n * case.c <= SMALL:
        out.append(Impl("array-API by hand[numpy]", "numpy", "reference", lambda: _by_hand(x, y, xp=xnp), mem))
    out.append(Impl("floor[numpy]", "numpy", "floor", lambda: np.sum(x), mem))
    buf = np.empty_like(x)
    out.append(Impl("exp pass[numpy]", "numpy", "exp-floor", lambda: np.exp(x, out=buf), mem))
    return out


# Below this many logits the cases are dispatch-bound; "array-API by hand" shows what the
# fewest standard calls that compute the loss cost through array-api-compat.
SMALL = 1 << 16


def _by_hand(x: Any, y: Any, *, xp: Any) -> Any:
    """Plain-target cross entropy in the fewest Array API calls (no checks, no edge cases
    beyond a finite max): the dispatch floor of any array-API implementation."""
    m = xp.max(x, axis=1, keepdims=True)
    s = x - m
    lse = xp.log(xp.sum(xp.exp(s), axis=1))
    picked = xp.take_along_axis(s, xp.expand_dims(y, axis=1), axis=1)
    return xp.mean(lse - picked[:, 0])


def _nll_from_log_softmax(logp: np.ndarray, target: np.ndarray, w, ii: int, eps: float) -> Any:
    """The textbook loss given a full N×C log-softmax (PyTorch semantics, mean)."""
    n, c = logp.shape
    if target.ndim == 2:
        q = target if eps == 0.0 else (1.0 - eps) * target + eps / c
        if w is not None:
            q = q * w
        return -np.mean(np.sum(q * logp, axis=1))
    keep = target != ii
    safe = np.where(keep, target, 0)
    wy = np.ones(n, logp.dtype) if w is None else w[safe]
    loss = -wy * logp[np.arange(n), safe]
    if eps > 0.0:
        smooth = -(logp.sum(axis=1) if w is None else logp @ w)
        loss = (1.0 - eps) * loss + eps / c * smooth
    wy = wy * keep
    return np.sum(loss * keep) / np.sum(wy)


def _plain_numpy(x, target, w, ii, eps):
    m = np.max(x, axis=1, keepdims=True)
    shifted = x - m
    logp = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
    return _nll_from_log_softmax(logp, target, w, ii, eps)


def _scipy(x, target, w, ii, eps):
    from scipy.special import log_softmax

    return _nll_from_log_softmax(log_softmax(x, axis=1), target, w, ii, eps)


def _torch_impls(case: Case, data: dict[str, Any]) -> list[Impl]:
    if not have("torch"):
        return []
    import array_api_compat.torch as xtorch
    import torch
    import torch.nn.functional as F

    import xce

    dt = torch.float32 if case.dtype == "float32" else torch.bfloat16
    x = torch.from_numpy(data["x"]).to(dt)
    y = torch.from_numpy(data["y"])
    w = None if data["w"] is None else torch.from_numpy(data["w"])
    target = y if data["probs"] is None else torch.from_numpy(data["probs"]).to(dt)
    ii, eps = data["ignore_index"], data["eps"]
    wt = None if w is None else w.to(dt)  # F.cross_entropy wants weight in input's dtype
    mem = "peak RSS Δ (subprocess, /proc VmHWM)"
    if case.mode == "fwd":
        out = [
            Impl("xce[torch]", "torch", "xce", lambda: xce.cross_entropy(x, target, w, ii, "mean", eps), mem),
            Impl(
                "F.cross_entropy",
                "torch",
                "reference",
                lambda: F.cross_entropy(x, target, wt, None, ii, None, "mean", eps),
                mem,
            ),
            Impl("floor[torch]", "torch", "floor", lambda: torch.sum(x), mem),
        ]
        if case.n * case.c <= SMALL and case.variant == "plain":
            out.append(Impl("array-API by hand[torch]", "torch", "reference", lambda: _by_hand(x, y, xp=xtorch), mem))
        buf = torch.empty_like(x)
        out.append(Impl("exp pass[torch]", "torch", "exp-floor", lambda: torch.exp(x, out=buf), mem))
        return out
    xg = x.clone().requires_grad_(True)

    def xce_bwd():
        xg.grad = None
        xce.cross_entropy(xg, target, w, ii, "mean", eps).backward()

    def ref_bwd():
        xg.grad = None
        F.cross_entropy(xg, target, wt, None, ii, None, "mean", eps).backward()

    def floor_bwd():
        xg.grad = None
        torch.sum(xg).backward()

    return [
        Impl("xce[torch]", "torch", "xce", xce_bwd, mem),
        Impl("F.cross_entropy", "torch", "reference", ref_bwd, mem),
        Impl("floor[torch]", "torch", "floor", floor_bwd, mem),
    ]


def _jax_impls(case: Case, data: dict[str, Any]) -> list[Impl]:
    if not have("jax"):
        return []
    import jax
    import jax.numpy as jnp

    import xce

    dt = jnp.float32 if case.dtype == "float32" else jnp.bfloat16
    x = jnp.asarray(data["x"]).astype(dt)
    y = jnp.asarray(data["y"].astype(np.int32))
    w = None if data["w"] is None else jnp.asarray(data["w"])
    probs = None if data["probs"] is None else jnp.asarray(data["probs"]).astype(dt)
    target = y if probs is None else probs
    ii, eps = data["ignore_index"], data["eps"]
    mem = "peak RSS Δ (subprocess, /proc VmHWM)"

    def xce_loss(x):
        return xce.cross_entropy(x, target, w, ii, "mean", eps)

    def floor_loss(x):
        return jnp.sum(x.astype(jnp.float32))

    losses = [("xce[jax jit]", "xce", xce_loss)]
    if have("optax") and case.variant in ("plain", "probs", "smooth"):
        import optax

        if case.variant == "plain":

            def optax_loss(x):
                return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x.astype(jnp.float32), y))

        else:
            c = case.c

            def optax_loss(x):
                q = jax.nn.one_hot(y, c) if probs is None else probs.astype(jnp.float32)
                q = optax.smooth_labels(q, eps) if eps else q
                return jnp.mean(optax.softmax_cross_entropy(x.astype(jnp.float32), q))

        losses.append(("optax (jit)", "reference", optax_loss))
    losses.append(("floor[jax jit]", "floor", floor_loss))
    if case.mode == "fwd":
        losses.append(("exp pass[jax jit]", "exp-floor", lambda x: jnp.sum(jnp.exp(x.astype(jnp.float32)))))
    out = []
    for name, kind, f in losses:
        compiled = jax.jit(f if case.mode == "fwd" else jax.grad(f))
        out.append(Impl(name, "jax", kind, (lambda g=compiled: g(x).block_until_ready()), mem))
    return out


def _dask_impls(case: Case, data: dict[str, Any]) -> list[Impl]:
    if not have("dask") or case.dtype != "float32" or case.mode != "fwd":
        return []
    import dask.array as da

    import xce

    chunk_rows = max(1, min(case.n, (64 << 20) // (4 * case.c)))  # ~64 MiB chunks
    x = da.from_array(data["x"], chunks=(chunk_rows, case.c))
    y = da.from_array(data["y"], chunks=(chunk_rows,))
    w = None if data["w"] is None else da.from_array(data["w"])
    target = y if data["probs"] is None else da.from_array(data["probs"], chunks=(chunk_rows, case.c))
    ii, eps = data["ignore_index"], data["eps"]
    mem = "peak RSS Δ (subprocess, /proc VmHWM)"
    return [
        Impl("xce[dask]", "dask", "xce", lambda: xce.cross_entropy(x, target, w, ii, "mean", eps).compute(), mem),
        Impl("floor[dask]", "dask", "floor", lambda: da.sum(x).compute(), mem),
    ]


def _gpu_impls(case: Case, data: dict[str, Any]) -> list[Impl]:
    """torch-cuda and cupy, when a GPU is present (forward, float32 and bfloat16)."""
    out: list[Impl] = []
    if case.mode != "fwd":
        return out
    import xce

    if have("torch"):
        import torch

        if torch.cuda.is_available():
            import torch.nn.functional as F

            dt = torch.float32 if case.dtype == "float32" else torch.bfloat16
            x = torch.from_numpy(data["x"]).to("cuda", dt)
            y = torch.from_numpy(data["y"]).cuda()
            sync = torch.cuda.synchronize
            mem = "torch.cuda.max_memory_allocated Δ"
            out += [
                Impl("xce[torch-cuda]", "torch-cuda", "xce", lambda: (xce.cross_entropy(x, y), sync()), mem),
                Impl("F.cross_entropy[cuda]", "torch-cuda", "reference", lambda: (F.cross_entropy(x, y), sync()), mem),
                Impl("floor[torch-cuda]", "torch-cuda", "floor", lambda: (torch.sum(x), sync()), mem),
            ]
    if have("cupy") and case.dtype == "float32" and case.variant == "plain":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                x = cupy.asarray(data["x"])
                y = cupy.asarray(data["y"])
                sync = cupy.cuda.Device().synchronize
                mem = "cupy memory pool Δ"
                out += [
                    Impl("xce[cupy]", "cupy", "xce", lambda: (xce.cross_entropy(x, y), sync()), mem),
                    Impl("floor[cupy]", "cupy", "floor", lambda: (cupy.sum(x), sync()), mem),
                ]
        except Exception:  # no usable device
            pass
    return out


# --- timing --------------------------------------------------------------------------------


def time_interleaved(impls: list[Impl], repeats: int, target_s: float) -> dict[str, list[float]]:
    """Median-ready samples: each sample averages ``inner`` calls so it lasts ~target_s;
    the implementations take turns within every repeat (load drifts hit all of them)."""
    inner: dict[str, int] = {}
    for impl in impls:  # warm up (jit compilation, caches) and size the inner loop
        impl.fn()
        t0 = time.perf_counter()
        impl.fn()
        dt = time.perf_counter() - t0
        inner[impl.name] = max(1, min(10_000, int(target_s / max(dt, 1e-7))))
    samples: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(repeats):
        order = impls if r % 2 == 0 else impls[::-1]
        for impl in order:
            k = inner[impl.name]
            t0 = time.perf_counter()
            for _ in range(k):
                impl.fn()
            samples[impl.name].append((time.perf_counter() - t0) / k)
    samples["__inner__"] = [float(inner[i.name]) for i in impls]
    return samples


# --- peak memory (one subprocess per measurement) --------------------------------------------


def _rss_kib() -> tuple[int, int]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def measure_memory_child(case: Case, impl_name: str) -> dict[str, Any]:
    """Run in a fresh process: build the inputs, warm up once, then measure one call."""
    import gc

    data = make_data(case)
    impl = next(i for i in implementations(case, data) if i.name == impl_name)
    impl.fn()
    gc.collect()
    if impl.backend == "numpy":
        import tracemalloc

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        impl.fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return {"bytes": int(peak - base), "method": "tracemalloc"}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS
    except OSError:
        return {"bytes": None, "method": "n/a (no /proc/self/clear_refs)"}
    before, _ = _rss_kib()
    impl.fn()
    _, peak = _rss_kib()
    return {"bytes": int(max(0, peak - before) * 1024), "method": "peak RSS Δ"}


def measure_memory(case: Case, impl_name: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks", "--memory-child", json.dumps([asdict(case), impl_name])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        return {"bytes": None, "method": f"failed: {type(e).__name__}"}


# --- the suite -----------------------------------------------------------------------------


def build_cases(quick: bool, huge: bool) -> list[Case]:
    if quick:
        sizes = [(8, 10), (256, 1000), (4096, 32000)]
        cases = [Case(n, c, "float32", "plain", "fwd") for n, c in sizes]
        cases += [Case(256, 1000, "float32", v, "fwd") for v in ("smooth", "weight", "ignore", "probs")]
        cases += [Case(256, 1000, "float32", "plain", "fwd+bwd"), Case(256, 1000, "bfloat16", "plain", "fwd")]
        cases += [Case(4096, 32000, "bfloat16", "plain", "fwd"), Case(4096, 32000, "float32", "plain", "fwd+bwd")]
        return cases
    sizes = [(8, 10), (256, 1000), (4096, 32000)]
    if huge:
        sizes.append((8192, 131072))
    cases = []
    for n, c in sizes:
        for dtype in ("float32", "bfloat16"):
            for mode in ("fwd", "fwd+bwd"):
                variants = VARIANTS if (dtype == "float32" and mode == "fwd") else ("plain", "smooth")
                if (n, c) == (8192, 131072):
                    variants = ("plain",)
                cases += [Case(n, c, dtype, v, mode) for v in variants]
    return cases


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)
    except ImportError:
        return _TextBar(total)


class _TextBar:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.time()

    def set_description(self, text: str) -> None:
        self.text = text

    def update(self, k: int = 1) -> None:
        self.done += k
        width = 30
        filled = int(width * self.done / max(1, self.total))
        elapsed = time.time() - self.t0
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {elapsed:5.0f}s "
            f"{getattr(self, 'text', '')[:40]:40s}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def run(cases: list[Case], repeats: int, target_s: float, memory: bool) -> list[Row]:
    rows: list[Row] = []
    bar = _progress(len(cases))
    for case in cases:
        bar.set_description(case.label)
        data = make_data(case)
        impls = implementations(case, data)
        samples = time_interleaved(impls, repeats, target_s)
        inner = dict(zip((i.name for i in impls), samples.pop("__inner__")))
        medians = {k: statistics.median(v) for k, v in samples.items()}
        case_rows = []
        for impl in impls:
            row = Row(
                case.label,
                impl.name,
                impl.backend,
                impl.kind,
                medians[impl.name],
                min(samples[impl.name]),
                repeats,
                int(inner[impl.name]),
                memory_method=impl.memory,
            )
            case_rows.append(row)
        _add_ratios(case_rows)
        big = case.n * case.c >= 4096 * 32000
        if memory and big and case.variant == "plain":
            for row in case_rows:
                m = measure_memory(case, row.impl)
                row.peak_extra_bytes = m["bytes"]
                row.memory_method = m["method"] + " (subprocess)"
        rows += case_rows
        del data, impls
        bar.update(1)
    bar.close()
    return rows


def _add_ratios(rows: list[Row]) -> None:
    """xce/engine rows get ratios to the floor of their backend and to every reference
    that runs on the same data (torch refs for torch, numpy refs for numpy, optax for jax)."""
    by_name = {r.impl: r for r in rows}
    refs_for = {
        "numpy": ["plain numpy", "scipy log_softmax", "F.cross_entropy", "array-API by hand[numpy]"],
        "torch": ["F.cross_entropy", "array-API by hand[torch]"],
        "jax": ["optax (jit)"],
        "dask": ["plain numpy"],
        "torch-cuda": ["F.cross_entropy[cuda]"],
        "cupy": [],
    }
    for r in rows:
        if r.kind not in ("xce", "engine"):
            continue
        floor = next((x for x in rows if x.kind == "floor" and x.backend == r.backend), None)
        if floor is not None:
            r.ratios["floor"] = r.median_s / floor.median_s
        exp_floor = next((x for x in rows if x.kind == "exp-floor" and x.backend == r.backend), None)
        if exp_floor is not None:
            r.ratios["exp pass"] = r.median_s / exp_floor.median_s
        for ref in refs_for.get(r.backend, []):
            if ref in by_name:
                r.ratios[ref] = r.median_s / by_name[ref].median_s
        if r.kind == "engine":
            xce_row = by_name.get(f"xce[{r.backend}]")
            if xce_row is not None:
                r.ratios["xce"] = r.median_s / xce_row.median_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        epilog="Size sweep: python -m benchmarks sweep --help (benchmarks/sweep.py).",
    )
    parser.add_argument("--quick", action="store_true", help="a small subset (< 2 minutes)")
    parser.add_argument("--huge", action="store_true", help="also 8192x131072 (needs ~12 GiB and time)")
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per implementation")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        case_dict, impl_name = json.loads(args.memory_child)
        print(json.dumps(measure_memory_child(Case(**case_dict), impl_name)))
        return 0
    from benchmarks.overhead import dispatch_overhead
    from benchmarks.report import write_report

    repeats = args.repeats or (5 if args.quick else 7)
    target_s = 0.02 if args.quick else 0.05
    cases = build_cases(args.quick, args.huge)
    t0 = time.time()
    rows = run(cases, repeats, target_s, memory=not args.no_memory)
    overhead = dispatch_overhead(repeats=repeats * 3)
    paths = write_report(rows, overhead, args.out, quick=args.quick, elapsed=time.time() - t0)
    for p in paths:
        print(p)
    return 0

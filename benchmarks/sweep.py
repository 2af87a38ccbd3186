"""Size sweep: ``xce.cross_entropy`` against the native losses from 8x10 to 4096x32000 logits.

Run from the repository root::

    python -m benchmarks sweep [--sizes 8x10,256x1000] [--repeats N] [--huge] [--busy] [--no-memory]
    python -m benchmarks sweep --compare PATH [--sizes ...] [--repeats N] [--busy]

Every case is float32 logits, int64 index targets (int32 under JAX), ``reduction="mean"``,
class axis last, called through the public API only (``xce.cross_entropy(x, y)``):

* ``torch fwd``: ``xce.cross_entropy`` vs ``torch.nn.functional.cross_entropy`` under ``torch.no_grad``;
* ``torch fwd+bwd``: the same with ``x.requires_grad`` and ``loss.backward()`` (``x.grad = None`` first);
* ``numpy fwd``: vs plain NumPy (max-shift log-softmax, pick, mean; ``benchmarks.suite._plain_numpy``);
* ``jit fwd`` / ``jit grad``: ``jax.jit`` (of ``jax.grad``) of both xce and
  ``optax.softmax_cross_entropy_with_integer_labels(x, y).mean()``, compiled before the timing.

The two implementations of a case take turns within every repeat (``suite.time_interleaved``)
in this one process; the table gives RATIO = median xce time / median native time and the
native medians in µs. Peak extra memory of the torch cases is measured afterwards, one fresh
subprocess per measurement (as the main suite does), for sizes of at least 256x1000.

``--busy`` runs a competing CPU-bound process (a pure-Python loop, or a NumPy matmul loop with
``--busy-kind matmul``; no CPU affinity) for as long as the timing lasts, then kills it.

``--compare PATH`` times the current ``xce`` against another source checkout of it (a directory
holding an ``xce/`` package, e.g. a ``git worktree`` of an older commit), imported under the
name ``xce_old``; cases torch fwd, torch fwd+bwd, numpy fwd and jit grad; RATIO = new / old.
Absolute imports of ``xce`` inside that copy (``importlib.import_module("xce.adapters.torch")``)
are rewritten to ``xce_old`` when it is compiled, so it never runs the current checkout's
modules; every loaded module's ``__file__`` is checked. ``--compare .`` (a second copy of the
current checkout) is an A/A test of the method: its ratios show the noise floor.

Results: ``benchmarks/results/{sweep,sweep-busy,compare,compare-busy}.{md,json}`` (``--out``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.report import machine
from benchmarks.suite import RESULTS, Impl, _plain_numpy, _progress, _rss_kib, have, time_interleaved

LossFn = Callable[[Any, Any], Any]

SIZES: tuple[tuple[int, int], ...] = ((8, 10), (64, 100), (256, 1000), (1024, 10000), (4096, 32000))
HUGE = (8192, 131072)
CASES = ("torch fwd", "torch fwd+bwd", "numpy fwd", "jit fwd", "jit grad")
COMPARE_CASES = ("torch fwd", "torch fwd+bwd", "numpy fwd", "jit grad")
MEMORY_CASES = ("torch fwd", "torch fwd+bwd")
MEMORY_MIN_ELEMENTS = 256 * 1000  # below ~1 MiB of logits a peak-RSS delta is allocator noise
ALIAS = "xce_old"
REPO = Path(__file__).resolve().parent.parent


# --- inputs and the timed calls -------------------------------------------------------------


def make_inputs(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c), dtype=np.float32)
    x *= 3.0
    return x, rng.integers(0, c, n)


# Peak memory of a case, in copies of the logits beyond the NumPy inputs, for its hungrier side
# (the native one: F.cross_entropy keeps an (N, C) log-softmax, its backward a gradient and a
# temporary, 3.00x measured, beside the case's own clone of x; plain NumPy two temporaries;
# XLA a device copy, the exponentials and the gradient), with a copy to spare.
PEAK_COPIES = {"torch fwd": 2, "torch fwd+bwd": 5, "numpy fwd": 3, "jit fwd": 3, "jit grad": 5}


def available_bytes() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def case_available(case: str, *, native: bool, n: int = 0, c: int = 0, free: int | None = None) -> str | None:
    """None when ``case`` can run here at ``n x c``, else why not (a library missing, or
    memory: the case's estimated peak above 90% of ``free`` bytes, so that a huge size is
    skipped rather than swapped or killed)."""
    need = ["torch"] if case.startswith("torch") else ["jax"] if case.startswith("jit") else []
    if native and case.startswith("jit"):
        need.append("optax")
    missing = [m for m in need if not have(m)]
    if missing:
        return f"{', '.join(missing)} not installed"
    peak = PEAK_COPIES.get(case, 4) * n * c * 4
    if free is not None and peak > 0.9 * free:
        return f"needs ~{peak / 2**30:.0f} GiB, {free / 2**30:.0f} GiB available"
    return None


def native_loss(case: str) -> tuple[str, LossFn]:
    """The native implementation a sweep case is measured against (same ``(x, y)`` signature)."""
    if case.startswith("torch"):
        import torch.nn.functional as F

        return "F.cross_entropy", F.cross_entropy
    if case == "numpy fwd":
        return "plain NumPy", lambda x, y: _plain_numpy(x, y, None, -100, 0.0)
    import optax

    return "optax", lambda x, y: optax.softmax_cross_entropy_with_integer_labels(x, y).mean()


def build_impls(
    case: str, losses: dict[str, LossFn], x_np: np.ndarray, y_np: np.ndarray
) -> tuple[list[Impl], contextlib.AbstractContextManager[Any]]:
    """One timed thunk per loss (each returns what it computed: a loss, or the gradient), and
    the context the timing loop runs in (``torch.no_grad()`` for the torch forward)."""
    kinds = ("xce", "reference")
    if case.startswith("torch"):
        import torch

        y = torch.from_numpy(y_np)
        if case == "torch fwd":
            x = torch.from_numpy(x_np)
            impls = [Impl(name, "torch", k, _bind(f, x, y)) for (name, f), k in zip(losses.items(), kinds)]
            return impls, torch.no_grad()
        xg = torch.from_numpy(x_np).clone().requires_grad_(True)
        impls = [Impl(name, "torch", k, FwdBwd(f, xg, y)) for (name, f), k in zip(losses.items(), kinds)]
        return impls, torch.enable_grad()
    if case == "numpy fwd":
        impls = [Impl(name, "numpy", k, _bind(f, x_np, y_np)) for (name, f), k in zip(losses.items(), kinds)]
        return impls, contextlib.nullcontext()
    import jax
    import jax.numpy as jnp

    xj, yj = jnp.asarray(x_np), jnp.asarray(y_np.astype(np.int32))
    impls = []
    for (name, f), k in zip(losses.items(), kinds):

        def loss(x: Any, y: Any, f: LossFn = f) -> Any:
            return f(x, y)

        compiled = jax.jit(loss if case == "jit fwd" else jax.grad(loss))
        compiled(xj, yj).block_until_ready()  # compile outside the timing
        impls.append(Impl(name, "jax", k, _bind_blocking(compiled, xj, yj)))
    return impls, contextlib.nullcontext()


def _bind(f: LossFn, x: Any, y: Any) -> Callable[[], Any]:
    return lambda: f(x, y)


def _bind_blocking(f: LossFn, x: Any, y: Any) -> Callable[[], Any]:
    return lambda: f(x, y).block_until_ready()


class FwdBwd:
    """``x.grad = None``, then ``loss_fn(x, y).backward()``; returns the gradient."""

    def __init__(self, loss_fn: LossFn, x: Any, y: Any) -> None:
        self.loss_fn, self.x, self.y = loss_fn, x, y

    def __call__(self) -> Any:
        self.x.grad = None
        self.loss_fn(self.x, self.y).backward()
        return self.x.grad

    def reset(self) -> None:
        self.x.grad = None


def _as_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
    return np.asarray(v, dtype=np.float64)


def max_rel_diff(impls: list[Impl], ctx: contextlib.AbstractContextManager[Any]) -> float:
    """max |a - b| / max |b| between the first two implementations' results (run once each)."""
    with ctx:
        a, b = (_as_numpy(impl.fn()) for impl in impls[:2])
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


# --- timing ---------------------------------------------------------------------------------


@dataclass
class CaseResult:
    n: int
    c: int
    case: str
    numerator: str  # RATIO = numerator / denominator (medians)
    denominator: str
    median_s: dict[str, float] = field(default_factory=dict)
    min_s: dict[str, float] = field(default_factory=dict)
    inner: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    ratio: float = float("nan")
    paired: dict[str, float] = field(default_factory=dict)  # per-repeat ratios: median, p25, p75, min, max
    max_rel_diff: float | None = None
    skipped: str | None = None


def run_case(
    case: str,
    n: int,
    c: int,
    losses: dict[str, LossFn],
    x_np: np.ndarray,
    y_np: np.ndarray,
    repeats: int,
    target_s: float,
) -> CaseResult:
    num, den = losses
    res = CaseResult(n, c, case, num, den)
    impls, ctx = build_impls(case, losses, x_np, y_np)
    res.max_rel_diff = max_rel_diff(impls, ctx)
    with ctx:
        samples = time_interleaved(impls, repeats, target_s)
    inner = samples.pop("__inner__")
    res.inner = {impl.name: int(k) for impl, k in zip(impls, inner)}
    res.samples = samples
    res.median_s = {k: statistics.median(v) for k, v in samples.items()}
    res.min_s = {k: min(v) for k, v in samples.items()}
    res.ratio = res.median_s[num] / res.median_s[den]
    pairs = [a / b for a, b in zip(samples[num], samples[den])]  # the same repeat: adjacent in time
    q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else [pairs[0]] * 3
    res.paired = {"median": statistics.median(pairs), "p25": q[0], "p75": q[2], "min": min(pairs), "max": max(pairs)}
    return res


# --- a competing CPU-bound process (--busy) --------------------------------------------------

_SPIN = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:  # exits by itself if the benchmark dies
    for _ in range(1_000_000):
        pass
"""

_MATMUL = """
import os, sys
import numpy as np
parent = int(sys.argv[1])
a = np.random.default_rng(0).standard_normal((512, 512))
while os.getppid() == parent:
    for _ in range(20):
        a @ a
"""


class CompetingLoad:
    """``procs`` CPU-bound subprocesses (no affinity set) from ``start`` until ``stop``."""

    def __init__(self, kind: str, procs: int) -> None:
        self.kind, self.procs = kind, procs
        self._popen: list[subprocess.Popen[bytes]] = []
        self.info: dict[str, Any] = {"kind": kind, "processes": procs}

    def start(self) -> None:
        code = _SPIN if self.kind == "spin" else _MATMUL
        for _ in range(self.procs):
            self._popen.append(
                subprocess.Popen([sys.executable, "-c", code, str(os.getpid())], stdin=subprocess.DEVNULL)
            )
        self._t0 = time.perf_counter()
        self.info["pids"] = [p.pid for p in self._popen]

    def stop(self) -> None:
        wall = time.perf_counter() - self._t0
        cpu = [self._cpu_seconds(p.pid) for p in self._popen]
        alive = [p.poll() is None for p in self._popen]
        for p in self._popen:
            p.kill()
        for p in self._popen:
            p.wait(timeout=30)
        self.info.update(wall_s=wall, cpu_s=cpu, alive_at_stop=alive)
        self._popen = []

    @staticmethod
    def _cpu_seconds(pid: int) -> float | None:
        try:  # utime + stime, fields 14 and 15 of /proc/PID/stat (after the parenthesised name)
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def __enter__(self) -> CompetingLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- another checkout of xce, imported as "xce_old" (--compare) ------------------------------

_MODULE_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class _Rename(ast.NodeTransformer):
    """Rewrites absolute references to package ``old`` into references to ``new``: ``import
    xce...``, ``from xce... import``, and string constants that name an ``xce`` module (such as
    ``importlib.import_module("xce.adapters.torch")``). Without this the copy at PATH would
    silently run the current checkout's modules wherever it imports itself absolutely."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def rename(self, name: str) -> str:
        if name == self.old or name.startswith(self.old + "."):
            return self.new + name[len(self.old) :]
        return name

    def visit_Import(self, node: ast.Import) -> ast.Import:
        names: list[ast.alias] = []
        for a in node.names:
            new = self.rename(a.name)
            if new == a.name:
                names.append(a)
            elif a.asname or "." not in a.name:  # import xce [as m] -> import xce_old as xce / m
                names.append(ast.alias(new, a.asname or a.name))
            else:  # import xce.sub -> import xce_old.sub, xce_old as xce
                names += [ast.alias(new, None), ast.alias(self.new, self.old)]
        node.names = names
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom:
        if node.level == 0 and node.module:
            node.module = self.rename(node.module)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if isinstance(node.value, str) and _MODULE_PATH.fullmatch(node.value):
            node.value = self.rename(node.value)
        return node


class _RenamingLoader(importlib.machinery.SourceFileLoader):
    """Compiles the checkout's source with :class:`_Rename` applied; never reads or writes
    ``__pycache__`` (a cached rewritten module must not be picked up as that checkout's own)."""

    def __init__(self, fullname: str, path: str, old: str, new: str) -> None:
        super().__init__(fullname, path)
        self._rename = _Rename(old, new)

    def get_code(self, fullname: str) -> Any:
        tree = ast.parse(self.get_data(self.path), filename=self.path)
        tree = ast.fix_missing_locations(self._rename.visit(tree))
        return compile(tree, self.path, "exec", dont_inherit=True)


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``alias`` and ``alias.*`` (imported eagerly or lazily) in ``package_dir`` only."""

    def __init__(self, alias: str, package_dir: Path, old: str = "xce") -> None:
        self.alias, self.package_dir, self.old = alias, package_dir, old

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> Any:
        if fullname != self.alias and not fullname.startswith(self.alias + "."):
            return None
        base = self.package_dir.joinpath(*fullname.split(".")[1:])
        if (base / "__init__.py").is_file():
            file, search = base / "__init__.py", [str(base)]
        elif base.with_name(base.name + ".py").is_file():
            file, search = base.with_name(base.name + ".py"), None
        else:
            return None
        loader = _RenamingLoader(fullname, str(file), self.old, self.alias)
        return importlib.util.spec_from_file_location(fullname, file, loader=loader, submodule_search_locations=search)


def package_dir(path: str | Path) -> Path:
    """The ``xce`` package inside a checkout (``PATH/xce``), or PATH itself if it is that package."""
    path = Path(path).expanduser().resolve()
    for candidate in (path / "xce", path):
        if (candidate / "__init__.py").is_file() and candidate.name == "xce":
            return candidate
    raise SystemExit(f"--compare {path}: no xce/__init__.py there (give a source checkout of xce)")


def load_checkout(path: str | Path, alias: str = ALIAS) -> ModuleType:
    """Import the ``xce`` package of another checkout as ``alias``, its own files only."""
    pkg = package_dir(path)
    if alias in sys.modules:
        raise RuntimeError(f"{alias} is already imported")
    finder = _CheckoutFinder(alias, pkg)
    sys.meta_path.insert(0, finder)  # stays: xce imports its framework adapters lazily
    module = importlib.import_module(alias)
    if Path(module.__file__ or "").resolve() != pkg / "__init__.py":
        raise RuntimeError(f"{alias} was loaded from {module.__file__}, not {pkg / '__init__.py'}")
    return module


def module_files(prefix: str) -> dict[str, str]:
    return {
        name: str(getattr(m, "__file__", None))
        for name, m in sorted(sys.modules.items())
        if (name == prefix or name.startswith(prefix + ".")) and m is not None
    }


def check_isolation(new: ModuleType, old: ModuleType) -> dict[str, Any]:
    """Every ``xce.*`` module comes from the current checkout and every ``xce_old.*`` one from
    PATH (call after the timing too: the framework adapters are imported on first use)."""
    new_dir = Path(new.__file__ or "").resolve().parent
    old_dir = Path(old.__file__ or "").resolve().parent
    new_files, old_files = module_files(new.__name__), module_files(old.__name__)
    bad = [f"{k}: {v}" for k, v in new_files.items() if not Path(v).resolve().is_relative_to(new_dir)]
    bad += [f"{k}: {v}" for k, v in old_files.items() if not Path(v).resolve().is_relative_to(old_dir)]
    if bad:
        raise RuntimeError("modules loaded from the wrong checkout:\n  " + "\n  ".join(bad))
    return {
        "new_dir": str(new_dir),
        "old_dir": str(old_dir),
        "same_dir": new_dir == old_dir,
        "new_modules": new_files,
        "old_modules": old_files,
    }


def git_state(path: Path) -> str:
    """``<short commit>`` (``+ uncommitted changes`` when xce/ differs from it); read-only."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    return commit + (" + uncommitted changes" if dirty else "")


# --- peak memory (torch cases, one fresh subprocess per measurement) --------------------------


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build one case, call it once (warm-up), then measure one more call."""
    import xce

    case, impl = spec["case"], spec["impl"]
    x_np, y_np = make_inputs(spec["n"], spec["c"])
    losses: dict[str, LossFn] = {"xce": xce.cross_entropy}
    name, native = native_loss(case)
    losses[name] = native
    impls, ctx = build_impls(case, losses, x_np, y_np)
    fn = next(i.fn for i in impls if i.name == impl)
    with ctx:
        fn()
        if isinstance(fn, FwdBwd):
            fn.reset()  # the warm-up's gradient must not be in the baseline (the call frees it first)
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM)
        except OSError:
            return {"bytes": None, "method": "n/a (no /proc/self/clear_refs)"}
        before, _ = _rss_kib()
        fn()
        _, peak = _rss_kib()
    return {"bytes": max(0, peak - before) * 1024, "method": "peak RSS Δ"}


def measure_memory(n: int, c: int, case: str, impl: str) -> dict[str, Any]:
    spec = json.dumps({"n": n, "c": c, "case": case, "impl": impl})
    cmd = [sys.executable, "-m", "benchmarks", "sweep", "--memory-child", spec]
    # glibc: every allocation of 64 KiB or more gets its own mapping, returned to the OS when freed,
    # so the warm-up's freed temporaries are not reused unseen (the peak RSS counts what is live).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=True, cwd=REPO, env=env)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError) as e:
        return {"bytes": None, "method": f"failed: {type(e).__name__}"}


# --- report ---------------------------------------------------------------------------------


def _us(s: float | None) -> str:
    if s is None:
        return "n/a"
    us = s * 1e6
    return f"{us:.1f}" if us < 1000 else f"{us:,.0f}"


def _cell(r: CaseResult | None, compare: bool) -> str:
    if r is None:
        return "n/a"
    if r.skipped:
        return "skipped"
    text = f"{r.ratio:.2f}×"
    if compare:
        text += f" ({r.paired['p25']:.2f}–{r.paired['p75']:.2f})"
        if r.ratio > 1.05:
            text = f"**{text}**"
    return text


def markdown(
    results: list[CaseResult],
    cases: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    meta: dict[str, Any],
    memory: dict[str, Any],
) -> str:
    compare = meta["mode"] == "compare"
    info = meta["machine"]
    load = meta.get("busy")
    label = "busy" if load else "quiet"
    title = "xce vs its other checkout" if compare else "xce size sweep"
    md = [f"# {title} ({label})", ""]
    md.append(
        f"- Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}; torch intra-op threads: "
        f"{meta.get('torch_threads', 'n/a')}; date {info['date']}; took {meta['elapsed_s']:.0f} s; "
        f"load average at the end: {info['load_average_at_end']}"
    )
    md.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if compare:
        iso = meta["isolation"]
        md.append(f"- new: `xce` from {iso['new_dir']} ({meta['new_git']})")
        md.append(
            f"- old: `{ALIAS}` from {iso['old_dir']} ({meta['old_git']}); every `{ALIAS}.*` module checked "
            f"to come from there ({len(iso['old_modules'])} modules), every `xce.*` one from new"
        )
        if iso["same_dir"]:
            md.append("- **new and old are the same directory**")
    else:
        md.append(f"- xce: {meta['xce_file']} ({meta['new_git']})")
    if load:
        cpu = ", ".join("?" if s is None else f"{s:.0f}" for s in load["cpu_s"])
        md.append(
            f"- **Busy**: {load['processes']} competing CPU-bound process(es) ({load['kind']}, no CPU affinity) ran "
            f"during all the timing: {cpu} CPU-s each over {load['wall_s']:.0f} s wall"
        )
    md.append(
        f'- Method: float32 logits (N(0, 3²)), int64 index targets (int32 under JAX), reduction "mean", class '
        f"axis last. Median over {meta['repeats']} repeats in one process; in every repeat the two "
        f"implementations take turns (order alternating), each sample averaging enough calls to last "
        f"≥ {meta['target_s'] * 1e3:.0f} ms. JAX functions are compiled before the timing."
    )
    if compare:
        md.append(
            "- RATIO = median new time / median old time (> 1: the current checkout is slower); in brackets the "
            "25th–75th percentiles of the per-repeat ratios (new and old timed back to back), a gauge of the "
            "noise; ratios above 1.05 in bold."
        )
    else:
        md.append(
            "- RATIO = median xce time / median native time (< 1: xce faster). Native: `F.cross_entropy` "
            "(forward under `torch.no_grad`; fwd+bwd with `x.grad = None` before each call), plain NumPy "
            "(`benchmarks.suite._plain_numpy`), `optax.softmax_cross_entropy_with_integer_labels(x, y).mean()` "
            "under `jax.jit` (and `jax.jit(jax.grad(...))`)."
        )
    md.append(f"- Memory: {memory['note']}")
    md.append("")
    by_key = {(r.n, r.c, r.case): r for r in results}
    other = "old" if compare else "native"
    head = ["N×C", *cases] + [f"{other} {c} µs" for c in cases]
    md += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for n, c in sizes:
        rs = [by_key.get((n, c, case)) for case in cases]
        cells = [_cell(r, compare) for r in rs]
        cells += [_us(r.median_s[r.denominator]) if r and not r.skipped else "n/a" for r in rs]
        md.append(f"| {n}×{c} | " + " | ".join(cells) + " |")
    skipped = sorted({f"{r.case}: {r.skipped}" for r in results if r.skipped})
    if skipped:
        md += ["", "Skipped: " + "; ".join(skipped)]
    if compare:
        timed = [r for r in results if not r.skipped]
        if timed:
            worst = max(timed, key=lambda r: r.ratio)
            over = [f"{r.n}×{r.c} {r.case} {r.ratio:.3f}" for r in timed if r.ratio > 1.05]
            md += [
                "",
                f"Slowest relative to old: {worst.n}×{worst.c} {worst.case}, {worst.ratio:.3f}×. "
                + (f"Above 1.05: {', '.join(over)}." if over else "No case above 1.05."),
            ]
    if memory.get("rows"):
        md += ["", "Peak extra memory of one warm call (MiB; × the logits' size), fresh subprocess, peak RSS Δ:", ""]
        md += ["| N×C | case | xce | F.cross_entropy |", "|---|---|---:|---:|"]
        for row in memory["rows"]:
            cells = []
            for impl in ("xce", "F.cross_entropy"):
                b = row[impl]["bytes"]
                cells.append(row[impl]["method"] if b is None else f"{b / 2**20:.1f} ({b / row['logits_bytes']:.2f}×)")
            md.append(f"| {row['n']}×{row['c']} | {row['case']} | {cells[0]} | {cells[1]} |")
    disagree = [r for r in results if r.max_rel_diff is not None and r.max_rel_diff > 1e-4]
    if disagree:
        md += [
            "",
            "**Results differ** (max relative difference > 1e-4): "
            + ", ".join(f"{r.n}×{r.c} {r.case} {r.max_rel_diff:.2e}" for r in disagree),
        ]
    return "\n".join(md) + "\n"


# --- the command line -----------------------------------------------------------------------


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.replace("×", "x").lower().split(","):
        if not part.strip():
            continue
        n, sep, c = part.strip().partition("x")
        if not (sep and n.isdigit() and c.isdigit() and int(n) > 0 and int(c) > 0):
            raise argparse.ArgumentTypeError(f"bad size {part!r}: expected NxC, e.g. 256x1000")
        sizes.append((int(n), int(c)))
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes given")
    return sizes


def parse_cases(text: str) -> tuple[str, ...]:
    """``"torch fwd,numpy fwd"`` -> the cases, each one of :data:`CASES`."""
    cases = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [case for case in cases if case not in CASES]
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown or text!r}: choose from {', '.join(CASES)}")
    return cases


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sizes = ",".join(f"{n}x{c}" for n, c in SIZES)
    p.add_argument("--sizes", type=parse_sizes, default=None, help=f"comma-separated NxC (default {sizes})")
    p.add_argument(
        "--huge",
        action="store_true",
        help="also 8192x131072 (4 GiB of logits; a case whose estimated peak exceeds the available memory is skipped)",
    )
    p.add_argument(
        "--cases",
        type=parse_cases,
        default=None,
        help=f"comma-separated subset of the cases (default all: {', '.join(CASES)})",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed samples per implementation (default 7)")
    p.add_argument("--target-ms", type=float, default=20.0, help="each sample lasts at least this (default 20)")
    p.add_argument("--busy", action="store_true", help="time under a competing CPU-bound process")
    p.add_argument(
        "--busy-kind",
        choices=("spin", "matmul"),
        default="spin",
        help="spin: a pure-Python loop (one core); matmul: a NumPy 512x512 matmul loop (BLAS threads)",
    )
    p.add_argument("--busy-procs", type=int, default=1, help="competing processes for --busy (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N) for the timing (default: torch's own choice); on a shared machine, "
        "torch's intra-op threads wait for a descheduled peer at every parallel op",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument(
        "--compare",
        type=Path,
        metavar="PATH",
        help="time against the xce of another checkout (PATH/xce) instead of the native losses",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    if args.repeats < 1 or args.busy_procs < 1:
        raise SystemExit("--repeats and --busy-procs must be at least 1")
    sizes = list(args.sizes or SIZES)
    if args.huge and HUGE not in sizes:
        sizes.append(HUGE)
    import xce

    compare = args.compare is not None
    meta: dict[str, Any] = {
        "mode": "compare" if compare else "sweep",
        "repeats": args.repeats,
        "target_s": args.target_ms / 1e3,
        "sizes": sizes,
        "xce_file": xce.__file__,
        "new_git": git_state(Path(xce.__file__).parent),
    }
    old = None
    if compare:
        old = load_checkout(args.compare)
        meta["old_git"] = git_state(Path(old.__file__ or "").parent)
        meta["isolation"] = check_isolation(xce, old)
        if meta["isolation"]["same_dir"]:
            print(f"warning: {args.compare} holds the very xce being compared", file=sys.stderr)
    cases = COMPARE_CASES if compare else CASES
    if args.cases is not None:
        cases = tuple(case for case in cases if case in args.cases)
        if not cases:
            raise SystemExit(f"--cases: none of {', '.join(args.cases)} runs in this mode (cases: {', '.join(cases)})")
    if have("torch"):
        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        meta["torch_threads"] = torch.get_num_threads()

    results: list[CaseResult] = []
    load = CompetingLoad(args.busy_kind, args.busy_procs) if args.busy else None
    bar = _progress(len(sizes) * len(cases))
    t0 = time.time()
    with load if load is not None else contextlib.nullcontext():
        for n, c in sizes:
            x_np, y_np = make_inputs(n, c)
            for case in cases:
                bar.set_description(f"{n}x{c} {case}")
                why = case_available(case, native=not compare, n=n, c=c, free=available_bytes())
                if why is not None:
                    results.append(CaseResult(n, c, case, "", "", skipped=why))
                    bar.update(1)
                    continue
                if old is not None:
                    losses: dict[str, LossFn] = {"new": xce.cross_entropy, "old": old.cross_entropy}
                else:
                    name, native = native_loss(case)
                    losses = {"xce": xce.cross_entropy, name: native}
                results.append(run_case(case, n, c, losses, x_np, y_np, args.repeats, args.target_ms / 1e3))
                bar.update(1)
                gc.collect()
            del x_np, y_np
            gc.collect()
    bar.close()
    meta["elapsed_s"] = time.time() - t0
    if load is not None:
        meta["busy"] = load.info
    if old is not None:
        meta["isolation"] = check_isolation(xce, old)  # again, now that the adapters are imported

    memory: dict[str, Any] = {"rows": []}
    big = [(n, c) for n, c in sizes if n * c >= MEMORY_MIN_ELEMENTS]
    if compare:
        memory["note"] = "not measured in compare mode."
    elif args.busy:
        memory["note"] = "not measured under --busy (see the quiet sweep)."
    elif args.no_memory:
        memory["note"] = "skipped (--no-memory)."
    elif not have("torch"):
        memory["note"] = "not measured (torch not installed)."
    elif not big:
        memory["note"] = (
            f"not measured: every size is below {MEMORY_MIN_ELEMENTS} logits, where a peak-RSS delta "
            "is allocator noise."
        )
    else:
        memory["note"] = (
            f"torch cases only, sizes ≥ {MEMORY_MIN_ELEMENTS} logits; one fresh subprocess per "
            "measurement: peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before one warm "
            "call, with glibc's MALLOC_MMAP_THRESHOLD_=65536 (freed blocks go back to the OS, not reused "
            "unseen); fwd+bwd includes x.grad itself (1× logits). NumPy and JAX: not measured."
        )
        for n, c in big:
            for case in MEMORY_CASES:
                if case not in cases or case_available(case, native=True, n=n, c=c, free=available_bytes()):
                    continue  # (not run, or too big for this machine's memory)
                row: dict[str, Any] = {"n": n, "c": c, "case": case, "logits_bytes": n * c * 4}
                for impl in ("xce", "F.cross_entropy"):
                    row[impl] = measure_memory(n, c, case, impl)
                memory["rows"].append(row)
    meta["machine"] = machine()

    text = markdown(results, cases, sizes, meta, memory)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = meta["mode"] + ("-busy" if args.busy else "")
    md_path, json_path = args.out / f"{stem}.md", args.out / f"{stem}.json"
    md_path.write_text(text)
    dump = {"meta": meta, "memory": memory, "results": [asdict(r) for r in results]}
    json_path.write_text(json.dumps(dump, indent=1, default=str))
    print(md_path)
    print(json_path)
    return 0

"""``python -m xce``: run fixed cases on every installed array library and device.

The reference is exact float64 arithmetic in pure Python (``math.fsum``), so the check
needs no array library of its own and trusts none of the ones it checks.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import xce

Rows = list[list[float]]


def _reference(logits: Rows, target: list[Any], weight: list[float] | None, ignore_index: int, reduction: str,
               eps: float) -> float | list[float]:
    """PyTorch's cross_entropy over rows of (N, C) logits, in exact-ish float64."""
    n_classes = len(logits[0])
    w = weight or [1.0] * n_classes
    losses, denominator = [], []
    for row, y in zip(logits, target):
        m = max(row)
        lse = m + math.log(math.fsum(math.exp(v - m) for v in row))
        logp = [v - lse for v in row]
        if isinstance(y, list):  # probabilities
            q = [(1 - eps) * p + eps / n_classes for p in y]
            losses.append(-math.fsum(wc * qc * lc for wc, qc, lc in zip(w, q, logp)))
            denominator.append(1.0)
        elif y == ignore_index:
            losses.append(0.0)
            denominator.append(0.0)
        else:
            smooth = -math.fsum(wc * lc for wc, lc in zip(w, logp))
            losses.append((1 - eps) * -w[y] * logp[y] + eps / n_classes * smooth)
            denominator.append(w[y])
    if reduction == "none":
        return losses
    if reduction == "sum":
        return math.fsum(losses)
    return math.fsum(losses) / math.fsum(denominator)


@dataclass
class Case:
    name: str
    logits: Rows
    target: list[Any]
    kwargs: dict[str, Any]


def cases() -> list[Case]:
    rng = random.Random(0)
    out = [
        Case("worked example", [[2, 1, 0.1], [0.5, 2, 0.3]], [0, 2], {}),
        Case("smoothing", [[1, 8, 1], [1, 1, 8]], [1, 2], {"label_smoothing": 0.05}),
    ]
    for i, (weighted, ignore, eps, reduction) in enumerate(
        [(False, False, 0.0, "mean"), (True, False, 0.0, "mean"), (True, True, 0.0, "sum"),
         (False, True, 0.2, "mean"), (True, True, 0.3, "none"), (True, False, 0.1, "mean")]
    ):
        n, c = 9, 7
        logits = [[rng.gauss(0, 3) for _ in range(c)] for _ in range(n)]
        target = [rng.randrange(c) for _ in range(n)]
        kwargs: dict[str, Any] = {"reduction": reduction, "label_smoothing": eps}
        if weighted:
            kwargs["weight"] = [rng.uniform(0.2, 2) for _ in range(c)]
        if ignore:
            kwargs["ignore_index"] = target[0]
        out.append(Case(f"random {i}", logits, target, kwargs))
    probs = []
    for _ in range(5):
        raw = [rng.random() for _ in range(4)]
        probs.append([r / sum(raw) for r in raw])
    out.append(Case("probabilities", [[rng.gauss(0, 2) for _ in range(4)] for _ in range(5)], probs,
                    {"label_smoothing": 0.1, "weight": [1.0, 2.0, 0.5, 1.5]}))
    return out


@dataclass
class Backend:
    name: str
    version: str
    device: str
    make: Callable[[Any, str], Any]  # (nested lists, dtype name) -> array
    dtypes: tuple[str, ...]
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda f: f
    to_float: Callable[[Any], list[Any]] = lambda a: a


def _tolist(a: Any) -> Any:
    if hasattr(a, "unwrap_numpy"):  # ndonnx
        a = a.unwrap_numpy()
    if type(a).__name__ == "MArray":  # marray: the data (the check's results are never masked)
        a = a.data
    if hasattr(a, "compute"):
        a = a.compute()
    if hasattr(a, "detach"):
        a = a.detach().cpu()
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        a = a.get()
    if hasattr(a, "tolist"):
        return a.tolist()
    try:  # array-api-strict and other libraries without tolist
        return float(a) if a.ndim == 0 else [float(a[i]) for i in range(a.shape[0])]
    except TypeError:
        return a


def backends() -> Iterator[Backend | str]:
    """Every importable library and device; a string explains one that is skipped."""
    have: Callable[[str], bool] = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    if have("numpy"):
        import numpy as np

        yield Backend("numpy", np.__version__, "cpu", lambda d, t: np.asarray(d, dtype=t), ("float32", "float64"))
    if have("array_api_strict"):
        import array_api_strict as s

        yield Backend("array_api_strict", s.__version__, "cpu",
                      lambda d, t: s.asarray(d, dtype=getattr(s, t)), ("float32", "float64"))
    if have("torch"):
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:

            def make(d: Any, t: str, dev: str = dev) -> Any:
                return torch.tensor(d, dtype=getattr(torch, t), device=dev)

            yield Backend("torch", torch.__version__, dev, make, ("float32", "float64", "bfloat16"))
    if have("jax"):
        import jax
        import jax.numpy as jnp

        # float32 only: float64 needs JAX's global x64 flag, which xce never changes.
        for dev in jax.devices():
            make = lambda d, t, dev=dev: jax.device_put(jnp.asarray(d, dtype=getattr(jnp, t)), dev)  # noqa: E731
            yield Backend("jax", jax.__version__, str(dev), make, ("float32", "bfloat16"))
            yield Backend("jax.jit", jax.__version__, str(dev), make, ("float32",),
                          wrap=lambda f: jax.jit(f, static_argnames=("reduction", "label_smoothing", "ignore_index")))
    if have("cupy"):
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                yield Backend("cupy", cupy.__version__, "cuda:0", lambda d, t: cupy.asarray(d, dtype=t),
                              ("float32", "float64"))
            else:
                yield "cupy: installed, but no CUDA device"
        except Exception as e:  # CUDA driver missing and the like
            yield f"cupy: installed, but unusable here ({type(e).__name__})"
    if have("dask"):
        import dask
        import dask.array as da
        import numpy as np

        yield Backend("dask", dask.__version__, "cpu",
                      lambda d, t: da.from_array(np.asarray(d, dtype=t), chunks=3), ("float32", "float64"))
    if have("ndonnx"):
        import ndonnx as ndx
        import numpy as np

        version = getattr(ndx, "__version__", "")
        yield Backend("ndonnx", version, "cpu", lambda d, t: ndx.asarray(np.asarray(d, dtype=t)),
                      ("float32", "float64"))
    if have("marray") and have("numpy"):
        import marray
        import numpy as np

        mxp = marray.masked_namespace(np)
        yield Backend("marray", getattr(marray, "__version__", ""), "cpu",
                      lambda d, t: mxp.asarray(np.asarray(d, dtype=t)), ("float32", "float64"))


TOLERANCE = {"float64": 1e-9, "float32": 2e-5, "bfloat16": 2e-2}


def run_backend(b: Backend) -> tuple[int, int, float, float]:
    passed = total = 0
    worst = 0.0
    start = time.perf_counter()
    for dtype in b.dtypes:
        for case in cases():
            total += 1
            kwargs = dict(case.kwargs)
            ref = _reference(case.logits, case.target, kwargs.get("weight"), kwargs.get("ignore_index", -100),
                             kwargs.get("reduction", "mean"), kwargs.get("label_smoothing", 0.0))
            if "weight" in kwargs:
                kwargs["weight"] = b.make(kwargs["weight"], dtype)
            is_prob = isinstance(case.target[0], list)
            target = b.make(case.target, dtype) if is_prob else b.make(case.target, "int32")
            try:
                got = _tolist(b.wrap(xce.cross_entropy)(b.make(case.logits, dtype), target, **kwargs))
            except Exception as e:  # report, don't crash: the table is the product
                print(f"  {b.name}/{b.device}/{dtype} {case.name}: {type(e).__name__}: {e}")
                continue
            got_l, ref_l = (got, ref) if isinstance(ref, list) else ([got], [ref])
            err = max((abs(g - r) / max(abs(r), 1.0) for g, r in zip(got_l, ref_l)), default=0.0)
            worst = max(worst, err)
            if len(got_l) == len(ref_l) and err <= TOLERANCE[dtype]:
                passed += 1
            else:
                print(f"  {b.name}/{b.device}/{dtype} {case.name}: got {got}, expected {ref}")
    return passed, total, worst, time.perf_counter() - start


USAGE = """usage: python -m xce [--help]

Runs xce's self-check: fixed cross-entropy cases (index and probability targets, class
weights, ignore_index, label smoothing, every reduction) on every installed array library and
device, against an exact float64 reference computed in pure Python, and prints one row per
library. Exits 0 when every library agrees, 1 otherwise.

  -h, --help  print this message and exit
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        if args[0] in ("-h", "--help"):
            print(USAGE, end="")
            return 0
        print(f"python -m xce: unknown argument {args[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    print(f"xce {xce.__version__} self-check: cross_entropy on every installed array library "
          "(numpy, array_api_strict, torch, jax, cupy, dask, ndonnx, marray)\n")
    rows, notes = [], []
    for b in backends():
        if isinstance(b, str):
            notes.append(b)
            continue
        passed, total, worst, seconds = run_backend(b)
        rows.append((b.name, b.version, b.device, ",".join(b.dtypes), f"{passed}/{total}", f"{worst:.1e}",
                     f"{seconds * 1e3:.0f} ms", passed == total))
    if not rows:
        print("No array library found. Install one, e.g. `pip install numpy`.")
        return 1
    header = ("backend", "version", "device", "dtypes", "cases passed", "max rel error", "time")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r[:-1]))
    for note in notes:
        print(f"skipped {note}")
    ok = all(r[-1] for r in rows)
    print("\nall backends agree with the float64 reference" if ok else "\nDISAGREEMENT: see the lines above")
    return 0 if ok else 1

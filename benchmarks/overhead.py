"""Dispatch overhead of a small call (8x10): xce against hand-written NumPy and
``F.cross_entropy``, and a profile of where xce's time goes."""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
import time
from typing import Any

import numpy as np


def _handwritten(x: np.ndarray, y: np.ndarray) -> Any:
    m = np.max(x, axis=1, keepdims=True)
    s = x - m
    lse = np.log(np.sum(np.exp(s), axis=1))
    return np.mean(lse - s[np.arange(x.shape[0]), y])


def dispatch_overhead(repeats: int = 15, inner: int = 2000) -> dict[str, Any]:
    import xce

    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 10), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    fns = {"xce[numpy]": lambda: xce.cross_entropy(x, y), "handwritten numpy": lambda: _handwritten(x, y)}
    import array_api_compat.numpy as xnp

    fns["xce[numpy] xp="] = lambda: xce.cross_entropy(x, y, xp=xnp)
    try:
        import torch
        import torch.nn.functional as F

        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        fns["xce[torch]"] = lambda: xce.cross_entropy(xt, yt)
        fns["F.cross_entropy"] = lambda: F.cross_entropy(xt, yt)
    except ImportError:
        pass
    for f in fns.values():
        for _ in range(200):
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append((time.perf_counter() - t0) / inner)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {"xce[numpy] / handwritten numpy": med["xce[numpy]"] / med["handwritten numpy"]}
    ratios["xce[numpy] xp= / handwritten numpy"] = med["xce[numpy] xp="] / med["handwritten numpy"]
    if "F.cross_entropy" in med:
        ratios["xce[torch] / F.cross_entropy"] = med["xce[torch]"] / med["F.cross_entropy"]
    profiles = {"numpy": _profile(fns["xce[numpy]"])}
    if "xce[torch]" in fns:
        profiles["torch"] = _profile(fns["xce[torch]"])
    return {"median_s": med, "ratios": ratios, "profiles": profiles}


def _profile(f, calls: int = 3000, top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        f()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    # Keep the table only, with paths shortened.
    lines = [ln.replace("/work/venv/lib/python3.11/site-packages/", "") for ln in text.splitlines()]
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    return "\n".join(ln for ln in lines[start:] if ln.strip())

"""Crossover of PyTorch's CPU forward: ``F.cross_entropy`` in one piece against the same kernel
one block of rows at a time (what ``xce.adapters.torch._blocked_native`` runs above
``DELEGATE_MAX_ELEMENTS_CPU``). The constant should sit where the blocks start to win.

Run from the repository root::

    python -m benchmarks crossover [--sizes 1024x1000,...] [--repeats N]

Every size is float32 logits (N(0, 3²)), int64 index targets, ``reduction="mean"``, under
``torch.no_grad`` (``fwd``) or with ``x.requires_grad`` and ``backward()`` (``fwd+bwd``, where above
the constant the analytic-backward Function serves). ``one piece`` is ``F.cross_entropy(x, y)``; ``blocks`` is
``xce.cross_entropy(x, y)`` with the adapter's threshold set to 0 and the engine enabled at every
size for the timing, so every size takes the blocked route with the blocks the engine's plan gives
it (the route itself, not a copy of it). Medians of interleaved repeats in one process; RATIO = blocks / one piece
(< 1: the blocks win). The last line names the smallest size from which the blocks win at every
larger size measured, beside the current constant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

DEFAULT_SIZES = ((256, 1000), (1024, 1000), (2048, 1000), (1024, 2048), (4096, 1000), (1024, 4096),
                 (2048, 4096), (1024, 10000))


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        n, _, c = part.strip().partition("x")
        if not (n.isdigit() and c.isdigit()):
            raise argparse.ArgumentTypeError(f"bad size {part!r}: expected NxC, e.g. 1024x4096")
        sizes.append((int(n), int(c)))
    return sizes


def time_pair(one: Any, blocks: Any, repeats: int, number: int) -> tuple[float, float]:
    """Medians (s per call) of ``one`` and ``blocks``, taking turns within every repeat."""
    a: list[float] = []
    b: list[float] = []
    for r in range(repeats):
        for fn, out in ((one, a), (blocks, b)) if r % 2 == 0 else ((blocks, b), (one, a)):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            out.append((time.perf_counter() - t0) / number)
    return statistics.median(a), statistics.median(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks crossover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES), help="comma-separated NxC")
    p.add_argument("--repeats", type=int, default=9, help="timed samples per route (default 9)")
    p.add_argument("--modes", type=lambda t: tuple(t.split(",")), default=("fwd", "fwd+bwd"),
                   help="fwd, fwd+bwd or both (default both)")
    args = p.parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("torch is not installed: nothing to measure", file=sys.stderr)
        return 1
    import xce
    from xce.adapters import torch as adapter

    threshold = adapter.DELEGATE_MAX_ELEMENTS_CPU
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads; "
          f"DELEGATE_MAX_ELEMENTS_CPU = {threshold} (2^{threshold.bit_length() - 1})")
    for mode in args.modes:
        rows = []
        print(f"\n{mode}: {'F.cross_entropy' if mode == 'fwd' else 'autograd through F.cross_entropy'} in one "
              f"piece against {'its blocks' if mode == 'fwd' else 'the analytic-backward Function'}")
        print(f"{'N x C':>12} {'elements':>10} {'one piece':>11} {'blocks':>11} {'RATIO':>6}")
        for n, c in args.sizes:
            x = torch.randn(n, c, generator=gen) * 3.0
            y = torch.randint(0, c, (n,), generator=gen)
            number = max(1, int(4e6 // (n * c)))
            if mode == "fwd":
                one_fn, blocks_fn = _forward(F.cross_entropy, x, y), _forward(xce.cross_entropy, x, y)
            else:
                xg = x.clone().requires_grad_(True)
                one_fn = _forward_backward(F.cross_entropy, xg, y)
                blocks_fn = _forward_backward(xce.cross_entropy, xg, y)
            adapter.DELEGATE_MAX_ELEMENTS_CPU = 0  # every size takes the blocked route ...
            try:
                with xce.config(enabled=True):  # ... which the engine then plans at every size
                    assert torch.allclose(one_fn(), blocks_fn(), rtol=1e-5, atol=1e-8)
                    one, blocks = time_pair(one_fn, blocks_fn, args.repeats, number)
            finally:
                adapter.DELEGATE_MAX_ELEMENTS_CPU = threshold
            rows.append((n, c, one, blocks))
            print(f"{n:>5} x {c:<6} {n * c:>10} {one * 1e6:>9.0f}µs {blocks * 1e6:>9.0f}µs {blocks / one:>5.2f}×")
        by_size = sorted(rows, key=lambda r: r[0] * r[1])
        wins = [r[3] < r[2] for r in by_size]
        first = next((i for i in range(len(wins)) if all(wins[i:])), None)
        if first is None:
            print("the blocks win at no size from which they win at every larger one measured")
        else:
            n, c = by_size[first][:2]
            print(f"the blocks win from {n}x{c} ({n * c} elements) up; DELEGATE_MAX_ELEMENTS_CPU = {threshold}")
    return 0


def _forward(loss: Any, x: Any, y: Any) -> Any:
    import torch

    def run() -> Any:
        with torch.no_grad():
            return loss(x, y)

    return run


def _forward_backward(loss: Any, x: Any, y: Any) -> Any:
    def run() -> Any:
        x.grad = None
        loss(x, y).backward()
        return x.grad

    return run


if __name__ == "__main__":
    raise SystemExit(main())

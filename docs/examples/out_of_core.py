"""Out-of-core cross entropy with Dask: logits far larger than memory, reduced in bounded memory.

The logits are generated lazily and deterministically (``da.random.default_rng(seed)``, one
independent stream per chunk), so no file is needed and nothing the size of the logits ever
exists: each chunk is created, reduced to a few numbers by ``xce.cross_entropy`` and dropped.
The default size is 50 GB of virtual float32 logits (250,000 positions x 50,000 classes)::

    python docs/examples/out_of_core.py                          # ~50 GB virtual
    python docs/examples/out_of_core.py --rows 20000 --check     # small, checked against NumPy

It prints the virtual size, wall time, throughput, peak resident memory (RSS) and the loss.
``xce.cross_entropy`` is the unchanged library function: Dask's own scheduler does the work.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import dask
import dask.array as da
import numpy as np

import xce


def lazy_problem(rows: int, vocab: int, *, chunk_rows: int, vocab_chunk: int, seed: int):
    """(logits, target) as lazy Dask arrays: float32 logits, int64 targets with ~1% ignored."""
    rng = da.random.default_rng(seed)
    logits = rng.standard_normal((rows, vocab), dtype=np.float32, chunks=(chunk_rows, vocab_chunk)) * 3.0
    target = rng.integers(0, vocab, rows, chunks=chunk_rows)
    target = da.where(rng.random(rows, chunks=chunk_rows) < 0.01, -100, target)
    return logits, target


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(
    rows: int = 250_000,
    vocab: int = 50_000,
    *,
    chunk_rows: int = 128,
    vocab_chunk: int | None = None,
    seed: int = 0,
    label_smoothing: float = 0.1,
    workers: int = 2,
    check: bool = False,
) -> dict:
    logits, target = lazy_problem(rows, vocab, chunk_rows=chunk_rows, vocab_chunk=vocab_chunk or vocab, seed=seed)
    rss_before = peak_rss_mib()
    loss = xce.cross_entropy(logits, target, label_smoothing=label_smoothing)  # a lazy 0-d array: nothing computed
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=workers):
        value = float(loss.compute())
    seconds = time.perf_counter() - start
    result = {
        "rows": rows,
        "vocab": vocab,
        "virtual_gb": rows * vocab * 4 / 1e9,
        "chunk_mb": chunk_rows * (vocab_chunk or vocab) * 4 / 1e6,
        "chunks": logits.npartitions,
        "seconds": seconds,
        "gb_per_s": rows * vocab * 4 / 1e9 / seconds,
        "peak_rss_mib_before": rss_before,
        "peak_rss_mib": peak_rss_mib(),
        "loss": value,
    }
    if check:  # small sizes only: materialise the same logits and compare with NumPy
        x, y = dask.compute(logits, target, scheduler="threads")
        result["numpy_loss"] = float(xce.cross_entropy(x, y, label_smoothing=label_smoothing))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--chunk-rows", type=int, default=128)
    parser.add_argument("--vocab-chunk", type=int, default=None, help="chunk the class axis too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=2, help="threads of Dask's threaded scheduler")
    parser.add_argument("--check", action="store_true", help="also compute the loss with NumPy (small sizes only)")
    args = parser.parse_args(argv)
    r = run(
        args.rows,
        args.vocab,
        chunk_rows=args.chunk_rows,
        vocab_chunk=args.vocab_chunk,
        seed=args.seed,
        label_smoothing=args.label_smoothing,
        workers=args.workers,
        check=args.check,
    )
    print(
        f"{r['rows']} x {r['vocab']} float32 logits = {r['virtual_gb']:.2f} GB virtual, {r['chunks']} chunks of "
        f"{r['chunk_mb']:.1f} MB\n"
        f"time {r['seconds']:.1f} s ({r['gb_per_s']:.2f} GB/s), peak RSS {r['peak_rss_mib']:.0f} MiB "
        f"(before computing: {r['peak_rss_mib_before']:.0f} MiB)\n"
        f"loss {r['loss']:.6f}" + (f" (NumPy: {r['numpy_loss']:.6f})" if "numpy_loss" in r else "")
    )


if __name__ == "__main__":
    main()

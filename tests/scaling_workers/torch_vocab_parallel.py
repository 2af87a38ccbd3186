"""Entry point for tests/test_scaling.py: vocab-parallel cross entropy on a gloo group.

``python torch_vocab_parallel.py WORLD_SIZE [--quick]`` spawns WORLD_SIZE processes on 127.0.0.1, each
holding an uneven slice of the vocabulary, and checks on every rank that
``xce.parallel.vocab_parallel_cross_entropy`` and its gradient equal ``F.cross_entropy`` on the
full logits. Prints ``OK <cases>`` and exits 0 on success; every wait is bounded.
"""

from __future__ import annotations

import datetime
import multiprocessing
import socket
import sys
import time
import traceback

TIMEOUT_S = 90


def bounds(vocab: int, world: int) -> list[int]:
    """Uneven contiguous slices: the first ranks get one class more."""
    sizes = [vocab // world + (r < vocab % world) for r in range(world)]
    return [sum(sizes[:r]) for r in range(world + 1)]


def cases(quick: bool, torch):
    """(shape, class axis, dtype, reduction, label_smoothing, ignore_index); ``quick`` keeps a covering subset."""
    layouts = (((13, 37), 1), ((3, 37, 4), 1), ((2, 5, 37), -1))
    dtypes = (torch.float64, torch.float32)
    for i, (shape, ax) in enumerate(layouts):
        for j, dtype in enumerate(dtypes):
            for k, red in enumerate(("mean", "sum", "none")):
                for eps in (0.0, 0.1):
                    for ignore_index in (-100, 5):
                        if quick and (i + j + k) % 3:
                            continue
                        yield shape, ax, dtype, red, eps, ignore_index


def run_rank(rank: int, world: int, port: int, quick: bool) -> None:
    try:
        check_rank(rank, world, port, quick)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)


def check_rank(rank: int, world: int, port: int, quick: bool) -> None:
    # torch is imported here, in the ranks only: the launcher stays light.
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from xce.parallel import vocab_parallel_cross_entropy

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        t0 = time.perf_counter()
        n = 0
        gen = torch.Generator().manual_seed(1234)
        for shape, ax, dtype, red, eps, ignore_index in cases(quick, torch):
            full = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
            vocab = shape[ax]
            pos_shape = tuple(s for i, s in enumerate(shape) if i != ax % len(shape))
            target = torch.randint(0, vocab, pos_shape, generator=gen)
            target.view(-1)[::3] = ignore_index  # some ignored positions
            full[..., 0] = -float("inf") if ax == -1 else full[..., 0]  # masked vocabulary entries
            b = bounds(vocab, world)
            lo, hi = b[rank], b[rank + 1]
            local = full.narrow(ax, lo, hi - lo).detach().clone().requires_grad_(True)
            got = vocab_parallel_cross_entropy(
                local,
                target,
                vocab_start=lo,
                ignore_index=ignore_index,
                reduction=red,
                label_smoothing=eps,
                axis=ax,
            )
            ref_in = full.detach().clone().requires_grad_(True)
            ref_x = ref_in if ax == 1 else torch.movedim(ref_in, ax, 1)
            ref = F.cross_entropy(ref_x, target, ignore_index=ignore_index, reduction=red, label_smoothing=eps)
            tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}
            where = f"rank {rank}: shape={shape} axis={ax} {dtype} reduction={red} eps={eps} ignore={ignore_index}"
            torch.testing.assert_close(got, ref, **tol, equal_nan=True, msg=lambda m, w=where: f"{w}: {m}")
            # Backward: each rank's gradient is its slice of the full gradient.
            seed = torch.Generator().manual_seed(n)
            upstream = torch.randn(ref.shape, generator=seed, dtype=torch.float64).to(dtype)
            (got * upstream).sum().backward()
            (ref * upstream).sum().backward()
            expected_grad = ref_in.grad.narrow(ax, lo, hi - lo)
            torch.testing.assert_close(local.grad, expected_grad, **tol, msg=lambda m, w=where: f"{w} (grad): {m}")
            n += 1
        # An out-of-range target is found in no shard: NaN, never a plausible number.
        full = torch.randn(4, 10, generator=gen, dtype=torch.float64)
        b = bounds(10, world)
        local = full[:, b[rank] : b[rank + 1]]
        bad = vocab_parallel_cross_entropy(local, torch.tensor([1, 2, 10, 3]), vocab_start=b[rank], reduction="none")
        assert torch.isnan(bad[2]) and not torch.isnan(bad[[0, 1, 3]]).any(), bad
        # An explicit vocab_size skips the size all-reduce and gives the same smoothed loss.
        y = torch.tensor([1, 2, 9, 3])
        a = vocab_parallel_cross_entropy(local, y, vocab_start=b[rank], label_smoothing=0.2, vocab_size=10)
        torch.testing.assert_close(a, F.cross_entropy(full, y, label_smoothing=0.2))
        # bfloat16 logits: computed in float32, returned in bfloat16.
        h = full.to(torch.bfloat16)
        lb = vocab_parallel_cross_entropy(h[:, b[rank] : b[rank + 1]], y, vocab_start=b[rank])
        assert lb.dtype == torch.bfloat16
        torch.testing.assert_close(lb.float(), F.cross_entropy(h.float(), y), rtol=1.6e-2, atol=1e-2)
        if rank == 0:
            print(f"OK {n + 3} cases in {time.perf_counter() - t0:.1f} s", flush=True)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    quick = "--quick" in sys.argv
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=run_rank, args=(r, world, port, quick)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 2 * TIMEOUT_S
    while any(p.is_alive() for p in procs):
        failed = [p for p in procs if p.exitcode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.is_alive():
                    p.kill()
            print("FAILED" if failed else "TIMEOUT", flush=True)
            return 1 if failed else 2
        time.sleep(0.2)
    codes = [p.exitcode for p in procs]
    if any(codes):
        print(f"FAILED exit codes {codes}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Entry point for tests/test_scaling.py: xce under JAX sharding on 8 virtual CPU devices.

Run as a separate process: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set
before JAX initialises, and must not leak into the test process. Prints one JSON document:
for every case the sharded and single-device results and the collectives of the compiled
program (op name and element count of each).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import math
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import xce
from xce.parallel import ShardStatistics, loss_from_statistics, rescale_sumexp, shard_statistics

COLLECTIVE = re.compile(
    r"=\s*(?P<type>.+?)\s+(?P<op>all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute|"
    r"collective-broadcast)(?:-start)?\("
)
SHAPE = re.compile(r"\b[a-z]+[0-9]*\[([0-9,]*)\]")


def collectives(compiled_text: str) -> list[dict]:
    """Every collective of an HLO module: its op and the element count of its largest operand/result."""
    found = []
    for line in compiled_text.splitlines():
        match = COLLECTIVE.search(line)
        if match:
            sizes = [math.prod(int(d) for d in dims.split(",") if d) for dims in SHAPE.findall(match["type"])]
            found.append({"op": match["op"], "elements": max(sizes, default=0), "hlo": line.strip()[:200]})
    return found


def vocab_parallel_shard_map(mesh: Mesh, axis_name: str, eps: float, ignore_index: int):
    """Cross entropy from xce.parallel's statistics inside shard_map: collectives on O(N) values only."""

    def local(x, y):
        start = jax.lax.axis_index(axis_name) * x.shape[-1]
        # vocab_start is a traced value inside shard_map; shard_statistics wants a Python int, so the
        # offset is applied to the target instead (same thing: local index = target - start).
        shifted_y = jnp.where(y == ignore_index, ignore_index, y - start)
        s = shard_statistics(x, shifted_y, vocab_start=0, axis=-1, ignore_index=ignore_index, with_logit_sum=eps > 0)
        m = jax.lax.pmax(s.max, axis_name)
        summed = jax.lax.psum(
            (rescale_sumexp(s.sumexp, s.max, m, xp=jnp), s.target_logit, s.in_shard.astype(x.dtype), s.logit_sum),
            axis_name,
        )
        n_classes = x.shape[-1] * mesh.shape[axis_name]
        full = ShardStatistics(m, summed[0], summed[1], summed[2] > 0.5, summed[3], n_classes)
        return loss_from_statistics(full, y, ignore_index=ignore_index, reduction="none", label_smoothing=eps)

    def loss(x, y):
        per_position = jax.shard_map(local, mesh=mesh, in_specs=(P(None, axis_name), P()), out_specs=P())(x, y)
        kept = jnp.where(y == ignore_index, 0.0, 1.0)
        return jnp.sum(per_position) / jnp.sum(kept)

    return loss


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(7)
    mesh = Mesh(np.array(jax.devices()), ("d",))
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "vocab"))
    n, v = 32, 8192
    x = (rng.standard_normal((n, v)) * 3).astype(np.float32)
    y = rng.integers(0, v, n).astype(np.int32)
    y[::5] = -100
    x3 = (rng.standard_normal((8, 4, 1024)) * 3).astype(np.float32)
    y3 = rng.integers(0, 1024, (8, 4)).astype(np.int32)
    probs = rng.dirichlet(np.ones(v), n).astype(np.float32)

    cases = []

    def record(name, fn, args, specs, *, mesh_=mesh, positions):
        placed = [jax.device_put(a, NamedSharding(mesh_, s)) for a, s in zip(args, specs)]
        jitted = jax.jit(fn)
        sharded = np.asarray(jitted(*placed))
        single = np.asarray(jax.jit(fn)(*[jnp.asarray(a) for a in args]))
        text = jitted.lower(*placed).compile().as_text()
        cases.append(
            {
                "name": name,
                "sharded": sharded.tolist(),
                "single": single.tolist(),
                "collectives": collectives(text),
                "positions": positions,
                "logits": int(np.prod(args[0].shape)),
            }
        )

    for red in ("mean", "sum", "none"):
        for eps in (0.0, 0.1):
            f = partial(xce.cross_entropy, reduction=red, label_smoothing=eps)
            record(f"batch/{red}/eps={eps}", f, (x, y), (P("d", None), P("d")), positions=n)
            record(f"vocab/{red}/eps={eps}", f, (x, y), (P(None, "d"), P()), positions=n)
    f3 = partial(xce.cross_entropy, axis=-1)
    record("vocab/btv-axis-1", f3, (x3, y3), (P(None, None, "d"), P()), positions=32)
    record("batch/btv-axis-1", f3, (x3, y3), (P("d", None, None), P("d", None)), positions=32)
    record("2d-mesh/data+vocab", xce.cross_entropy, (x, y), (P("data", "vocab"), P("data")), mesh_=mesh2, positions=n)
    record("vocab/probability-target", xce.cross_entropy, (x, probs), (P(None, "d"), P(None, "d")), positions=n)
    record("vocab/nll_loss", xce.nll_loss, (x, y), (P(None, "d"), P()), positions=n)
    record("vocab/logsumexp", partial(xce.logsumexp, axis=1), (x,), (P(None, "d"),), positions=n)
    record("vocab/z_loss", partial(xce.cross_entropy, z_loss=1e-4), (x, y), (P(None, "d"), P()), positions=n)
    # Negative control: replicating vocabulary-sharded logits must show up as a full-size all-gather.
    record(
        "control/replicate-logits",
        lambda a: jax.lax.with_sharding_constraint(a * 2.0, NamedSharding(mesh, P())),
        (x,),
        (P(None, "d"),),
        positions=n,
    )
    for eps in (0.0, 0.1):
        sm = vocab_parallel_shard_map(mesh, "d", eps, -100)
        placed = (jax.device_put(x, NamedSharding(mesh, P(None, "d"))), jax.device_put(y, NamedSharding(mesh, P())))
        jitted = jax.jit(sm)
        text = jitted.lower(*placed).compile().as_text()
        cases.append(
            {
                "name": f"shard_map-statistics/eps={eps}",
                "sharded": np.asarray(jitted(*placed)).tolist(),
                "single": np.asarray(jax.jit(partial(xce.cross_entropy, label_smoothing=eps))(x, y)).tolist(),
                "collectives": collectives(text),
                "positions": n,
                "logits": n * v,
            }
        )
    print(json.dumps({"devices": len(jax.devices()), "cases": cases}))


if __name__ == "__main__":
    main()

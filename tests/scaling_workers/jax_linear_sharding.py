"""Entry point for tests/test_scaling_linear.py: ``xce.linear_cross_entropy`` with the weight
``(V, D)`` sharded over the vocabulary on 8 virtual CPU devices, values and ``jax.grad``.

A separate process for the same reason as ``jax_sharding.py`` (whose HLO parser it reuses):
the device count must be set before JAX initialises. Prints one JSON document: per case the
largest difference between the sharded and the single-device results, between the
single-device result and ``cross_entropy(hidden @ weight.T + bias)``, and between the sharded
result and xce's blocked NumPy path in float64; the collectives of the compiled sharded
program; and ``bound``, the most elements any of its collectives may have.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax_sharding import collectives

import xce

N, D, V = 32, 64, 8192


def unfused(hidden, weight, target, bias=None, **kwargs):
    logits = hidden @ weight.T
    return xce.cross_entropy(logits if bias is None else logits + bias, target, axis=-1, **kwargs)


def linear(hidden, weight, target, bias=None, **kwargs):
    """``xce.linear_cross_entropy`` with the bias positional, as ``unfused`` takes it."""
    return xce.linear_cross_entropy(hidden, weight, target, linear_bias=bias, **kwargs)


def _diffs(got, want) -> list[list[float]]:
    """Per output: [max |got - want|, max |want|]."""
    return [
        [float(np.max(np.abs(np.asarray(g) - np.asarray(w)), initial=0.0)), float(np.max(np.abs(w), initial=0.0))]
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))
    ]


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(11)
    mesh = Mesh(np.array(jax.devices()), ("d",))
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "vocab"))
    h = rng.standard_normal((N, D)).astype(np.float32)
    w = (rng.standard_normal((V, D)) * 0.3).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)
    t = rng.integers(0, V, N).astype(np.int32)
    t[::5] = -100
    cases = []

    def record(name, fn, ref, args, specs, *, bound, mesh_=mesh, grad=False, kw=None):
        kw = kw or {}
        fn, ref = partial(fn, **kw), partial(ref, **kw)
        wide = [np.asarray(a, dtype=np.float64) if a.dtype == np.float32 else a for a in args]
        if grad:
            fn, ref = jax.grad(fn, argnums=(0, 1)), jax.grad(ref, argnums=(0, 1))
            numpy = xce.value_and_grad(xce.linear_cross_entropy)(*wide, **kw)[1][:2]
        else:
            numpy = linear(*wide, **kw)
        placed = [jax.device_put(a, NamedSharding(mesh_, s)) for a, s in zip(args, specs)]
        jitted = jax.jit(fn)
        sharded = jitted(*placed)
        local = [jnp.asarray(a) for a in args]
        single = jax.jit(fn)(*local)
        cases.append(
            {
                "name": name,
                "grad": grad,
                "sharded_vs_single": _diffs(sharded, single),
                "single_vs_unfused": _diffs(single, jax.jit(ref)(*local)),
                "sharded_vs_numpy": _diffs(sharded, numpy),
                "out_shardings": [str(getattr(o, "sharding", None)) for o in jax.tree.leaves(sharded)],
                "collectives": collectives(jitted.lower(*placed).compile().as_text()),
                "bound": bound,
            }
        )

    vocab_1d = (P(), P("d", None), P())  # hidden replicated, weight sharded on V, target replicated
    vocab_2d = (P("data", None), P("vocab", None), P("data"))  # hidden and target batch-sharded too
    lce = linear
    # Forward: O(N) statistics only. Backward: also dL/dh's partial sums over the vocabulary shards,
    # (N, D); with data parallelism, also dL/dW's (V/4, D) shard summed over the data axis.
    for red in ("mean", "none"):
        for eps in (0.0, 0.1):
            kw = {"reduction": red, "label_smoothing": eps}
            record(f"vocab/{red}/eps={eps}", lce, unfused, (h, w, t), vocab_1d, kw=kw, bound=N)
    record("vocab/z_loss", lce, unfused, (h, w, t), vocab_1d, kw={"z_loss": 1e-3}, bound=N)
    record("vocab/bias", lce, unfused, (h, w, t, b), (*vocab_1d, P("d")), bound=N)
    record("2d-mesh/data+vocab", lce, unfused, (h, w, t), vocab_2d, mesh_=mesh2, bound=N)
    # Batch and vocabulary on the same 1-D axis: XLA all-gathers the (N, D) hidden states.
    record("same-axis/batch+vocab", lce, unfused, (h, w, t), (P("d", None), P("d", None), P("d")), bound=N * D)
    record("grad/vocab", lce, unfused, (h, w, t), vocab_1d, grad=True, bound=N * D)
    record("grad/vocab/eps=0.1", lce, unfused, (h, w, t), vocab_1d, grad=True, kw={"label_smoothing": 0.1},
           bound=N * D)
    record("grad/2d-mesh/data+vocab", lce, unfused, (h, w, t), vocab_2d, mesh_=mesh2, grad=True, bound=V // 4 * D)
    # Negative controls: replicating the weight, or the vocabulary-sharded logits, is a full all-gather.
    def constrain(a, *specs):
        for spec in specs:
            a = jax.lax.with_sharding_constraint(a, NamedSharding(mesh, spec))
        return a

    record("control/replicate-weight", lambda a, c, y: lce(a, constrain(c, P()), y), unfused, (h, w, t), vocab_1d,
           bound=N)
    record("control/replicate-logits", lambda a, c, y: xce.cross_entropy(constrain(a @ c.T, P(None, "d"), P()), y),
           unfused, (h, w, t), vocab_1d, bound=N)
    print(json.dumps({"devices": len(jax.devices()), "N": N, "D": D, "V": V, "cases": cases}))


if __name__ == "__main__":
    main()

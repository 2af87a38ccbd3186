"""``xce.linear_cross_entropy`` on JAX (a scan over vocabulary chunks) vs the unfused formula
``xce.cross_entropy(h @ W.T, t)``: XLA's temporary memory and the time of ``jax.jit`` forward and
``jax.jit(jax.grad)`` (w.r.t. ``h`` and ``W``), plain and with label smoothing, soft cap and z-loss.

Run ``python -m benchmarks jax_linear [N D V [repeats]]`` (default 4096 512 32000 5). Memory is
``jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes`` (XLA's own figure, no run),
shown as a multiple of the float32 logits (N·V·4 bytes). Time: the variants alternate, each
``repeats`` times after one warm-up call; the median is reported, and the ratio of the medians.
Also: xce's eager call (no ``jit``: the scan runs as one compiled loop per call).
"""

from __future__ import annotations

import statistics
import sys
import time


def main(argv: list[str]) -> int:
    import jax
    import jax.numpy as jnp

    import xce

    n, d, v, repeats = (list(map(int, argv)) + [4096, 512, 32000, 5][len(argv):])[:4]
    key = jax.random.PRNGKey(0)
    kh, kw, kt = jax.random.split(key, 3)
    h = jax.random.normal(kh, (n, d), jnp.float32)
    w = jax.random.normal(kw, (v, d), jnp.float32) * d**-0.5
    t = jax.random.randint(kt, (n,), 0, v)
    logits = n * v * 4
    print(f"N={n} D={d} V={v} (logits {logits / 2**20:.0f} MiB), jax {jax.__version__}, {jax.devices()[0]}")
    print("| options | variant | fwd temp × logits | grad temp × logits | fwd ms | grad ms |")
    print("|---|---|---|---|---|---|")
    for label, kw_ in (("plain", {}), ("smoothing+softcap+z", {"label_smoothing": 0.1, "softcap": 30.0,
                                                                "z_loss": 1e-4})):
        def ours(h, w, t, kw_=kw_):
            return xce.linear_cross_entropy(h, w, t, **kw_)

        def unfused(h, w, t, kw_=kw_):
            x = h @ w.T
            if "softcap" in kw_:
                x = kw_["softcap"] * jnp.tanh(x / kw_["softcap"])
            return xce.cross_entropy(x, t, label_smoothing=kw_.get("label_smoothing", 0.0),
                                     z_loss=kw_.get("z_loss", 0.0))

        fns = {}
        for name, f in (("xce scan", ours), ("unfused formula", unfused)):
            fwd, grad = jax.jit(f), jax.jit(jax.grad(f, argnums=(0, 1)))
            temps = [fn.lower(h, w, t).compile().memory_analysis().temp_size_in_bytes / logits for fn in (fwd, grad)]
            fns[name] = (fwd, grad, temps)
        fns["xce eager"] = (ours, None, [float("nan")] * 2)
        times: dict[tuple[str, int], list[float]] = {}
        for fwd, grad, _ in fns.values():  # warm-up (compiles)
            for fn in (fwd, grad):
                if fn is not None:
                    jax.block_until_ready(fn(h, w, t))
        for _ in range(repeats):
            for name, (fwd, grad, _) in fns.items():
                for i, fn in enumerate((fwd, grad)):
                    if fn is None:
                        continue
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn(h, w, t))
                    times.setdefault((name, i), []).append(time.perf_counter() - t0)
        med = {k: statistics.median(x) * 1e3 for k, x in times.items()}
        for name, (_, grad, temps) in fns.items():
            g = f"{med[(name, 1)]:.0f}" if grad is not None else "–"
            print(f"| {label} | {name} | {temps[0]:.3f} | {temps[1]:.3f} | {med[(name, 0)]:.0f} | {g} |")
        print(f"| {label} | ratio scan / formula | | | {med[('xce scan', 0)] / med[('unfused formula', 0)]:.2f} | "
              f"{med[('xce scan', 1)] / med[('unfused formula', 1)]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

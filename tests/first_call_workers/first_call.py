"""Runs xce's public functions and loss objects for the first time in this process under one
transform, then again eagerly, and prints one JSON line per case.

``python first_call.py TRANSFORM CASE [CASE ...]``: TRANSFORM is one of ``TRANSFORMS``; each
CASE's first xce call is the transformed one (nothing of it ran eagerly before), and the first
CASE is also the first xce call of the process. Values and gradients are compared in float64.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

TRANSFORMS = ("compile", "compile_aot_eager", "grad", "vmap_grad", "export", "jax_jit_value_and_grad")
RTOL, ATOL = 1e-9, 1e-12


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n, c, d = 8, 10, 6
    t = rng.integers(0, c, size=n)
    t_ignored = t.copy()
    t_ignored[1] = -100
    q = rng.dirichlet(np.ones(c), size=n)
    return {
        "x": rng.standard_normal((n, c)) * 2,
        "x_large": rng.standard_normal((512, 160)),
        "t_large": rng.integers(0, 160, size=512),
        "x3": rng.standard_normal((2, 4, c)),
        "t3": rng.integers(0, c, size=(2, 4)),
        "t": t,
        "t_ignored": t_ignored,
        "q": q,
        "w": rng.uniform(0.5, 2.0, size=c),
        "y": (rng.uniform(size=(n, c)) > 0.5).astype(np.float64),
        "teacher": rng.standard_normal((n, c)),
        "h": rng.standard_normal((n, d)),
        "W": rng.standard_normal((c, d)) / 3,
        "ht": rng.standard_normal((n, d)),
        "Wt": rng.standard_normal((c, d)) / 3,
    }


def cases(lib: str) -> dict[str, tuple[Callable[..., Any], list[str]]]:
    """name -> (fn, names of its array arguments in ``_data``); fn's first argument is the one
    differentiated."""
    import xce

    sigmoid: Callable[[Any], Any]
    if lib == "torch":
        import torch

        sigmoid = torch.sigmoid
    else:
        import jax

        sigmoid = jax.nn.sigmoid

    def shards(x: Any, t: Any) -> Any:
        stats = [xce.shard_statistics(x[:, :4], t, vocab_start=0), xce.shard_statistics(x[:, 4:], t, vocab_start=4)]
        return xce.merge_shard_statistics(stats, t)

    return {
        "cross_entropy": (xce.cross_entropy, ["x", "t"]),
        "cross_entropy_weight_smoothing_ignore": (
            lambda x, t, w: xce.cross_entropy(x, t, w, label_smoothing=0.1), ["x", "t_ignored", "w"]),
        "cross_entropy_probabilities": (xce.cross_entropy, ["x", "q"]),
        "cross_entropy_softcap_z_loss": (lambda x, t: xce.cross_entropy(x, t, softcap=5.0, z_loss=1e-3), ["x", "t"]),
        "cross_entropy_axis_last_3d": (lambda x, t: xce.cross_entropy(x, t, axis=-1), ["x3", "t3"]),
        "cross_entropy_large": (xce.cross_entropy, ["x_large", "t_large"]),
        "cross_entropy_return_stats": (
            lambda x, t: xce.cross_entropy(x, t, return_stats=True)[0], ["x", "t"]),
        "nll_loss": (lambda x, t: xce.nll_loss(xce.log_softmax(x, axis=1), t), ["x", "t"]),
        "poly1_cross_entropy": (xce.poly1_cross_entropy, ["x", "t"]),
        "softmax_focal_loss": (xce.softmax_focal_loss, ["x", "t"]),
        "sigmoid_focal_loss": (xce.sigmoid_focal_loss, ["x", "y"]),
        "binary_cross_entropy": (lambda x, y: xce.binary_cross_entropy(sigmoid(x), y), ["x", "y"]),
        "binary_cross_entropy_with_logits": (xce.binary_cross_entropy_with_logits, ["x", "y"]),
        "multilabel_soft_margin_loss": (xce.multilabel_soft_margin_loss, ["x", "y"]),
        "kl_div": (lambda x, q: xce.kl_div(xce.log_softmax(x), q, reduction="batchmean"), ["x", "q"]),
        "kl_div_with_logits": (xce.kl_div_with_logits, ["x", "teacher"]),
        "generalized_jsd": (xce.generalized_jsd, ["x", "teacher"]),
        "linear_cross_entropy": (xce.linear_cross_entropy, ["h", "W", "t"]),
        "linear_distillation_loss": (xce.linear_distillation_loss, ["h", "W", "ht", "Wt", "t"]),
        "log_softmax": (xce.log_softmax, ["x"]),
        "logsumexp": (lambda x: xce.logsumexp(x, axis=-1), ["x"]),
        "softmax": (xce.softmax, ["x"]),
        "smooth_labels": (lambda q: xce.smooth_labels(q, 0.1), ["q"]),
        "shard_statistics": (shards, ["x", "t"]),
        "BCELoss": (lambda x, y: xce.BCELoss()(sigmoid(x), y), ["x", "y"]),
        "BCEWithLogitsLoss": (lambda x, y: xce.BCEWithLogitsLoss()(x, y), ["x", "y"]),
        "CrossEntropyLoss": (lambda x, t, w: xce.CrossEntropyLoss(w, label_smoothing=0.1)(x, t), ["x", "t", "w"]),
        "GeneralizedJSDLoss": (lambda x, z: xce.GeneralizedJSDLoss()(x, z), ["x", "teacher"]),
        "KLDivLoss": (lambda x, q: xce.KLDivLoss("batchmean")(xce.log_softmax(x), q), ["x", "q"]),
        "KLDivWithLogitsLoss": (lambda x, z: xce.KLDivWithLogitsLoss()(x, z), ["x", "teacher"]),
        "LinearDistillationLoss": (lambda *a: xce.LinearDistillationLoss()(*a), ["h", "W", "ht", "Wt", "t"]),
        "MultiLabelSoftMarginLoss": (lambda x, y: xce.MultiLabelSoftMarginLoss()(x, y), ["x", "y"]),
        "NLLLoss": (lambda x, t: xce.NLLLoss()(xce.log_softmax(x, axis=1), t), ["x", "t"]),
        "SigmoidFocalLoss": (lambda x, y: xce.SigmoidFocalLoss(reduction="mean")(x, y), ["x", "y"]),
        "SoftmaxFocalLoss": (lambda x, t: xce.SoftmaxFocalLoss()(x, t), ["x", "t"]),
    }


# Cases whose inputs are not differentiable in their first argument.
NO_GRAD: frozenset[str] = frozenset()


def _scalar(out: Any) -> Any:
    """A scalar of ``out`` with a nonzero gradient (softmax rows sum to 1, so not the sum)."""
    return out if out.ndim == 0 else (out * out).sum()


def _max_error(got: Any, want: Any) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != {want.shape}")
    if not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
        raise AssertionError(f"max abs error {np.max(np.abs(got - want)):.3g}")
    return float(np.max(np.abs(got - want), initial=0.0))


def run_torch(transform: str, fn: Callable[..., Any], arrays: list[np.ndarray]) -> float:
    import torch

    args = [torch.from_numpy(a) for a in arrays]
    x, rest = args[0], args[1:]

    def scalar(x: Any, *rest: Any) -> Any:
        return _scalar(fn(x, *rest))

    def eager_grad(x: Any) -> Any:
        x = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(scalar(x, *rest), x)
        return g

    if transform.startswith("compile"):
        # aot_eager: Dynamo and AOTAutograd as under Inductor, without generating kernels
        backend = "aot_eager" if transform == "compile_aot_eager" else "inductor"
        xg = x.detach().clone().requires_grad_(True)
        got = torch.compile(fn, fullgraph=True, backend=backend)(xg, *rest)
        (g,) = torch.autograd.grad(_scalar(got), xg)
        return max(_max_error(got.detach(), fn(x, *rest)), _max_error(g, eager_grad(x)))
    if transform == "grad":
        return _max_error(torch.func.grad(scalar)(x, *rest), eager_grad(x))
    if transform == "vmap_grad":
        xb = torch.stack([x, 0.5 * x])
        got = torch.vmap(torch.func.grad(scalar), in_dims=(0, *([None] * len(rest))))(xb, *rest)
        return _max_error(got, torch.stack([eager_grad(x), eager_grad(0.5 * x)]))
    if transform == "export":

        class Loss(torch.nn.Module):
            def forward(self, *a: Any) -> Any:
                return fn(*a)

        program = torch.export.export(Loss(), tuple(args))
        return _max_error(program.module()(*args), fn(*args))
    raise ValueError(transform)


def run_jax(fn: Callable[..., Any], arrays: list[np.ndarray]) -> float:
    import jax
    import jax.numpy as jnp

    args = [jnp.asarray(a) for a in arrays]

    def scalar(x: Any, *rest: Any) -> Any:
        return _scalar(fn(x, *rest))

    value, grad = jax.jit(jax.value_and_grad(scalar))(*args)
    with jax.disable_jit():
        want_value, want_grad = jax.value_and_grad(scalar)(*args)
    return max(_max_error(value, want_value), _max_error(grad, want_grad))


def main(transform: str, names: list[str]) -> None:
    lib = "jax" if transform.startswith("jax") else "torch"
    if lib == "jax":
        os.environ["JAX_ENABLE_X64"] = "1"
    import xce  # noqa: F401  (nothing called: the first call below is the transformed one)

    data = _data()
    table = cases(lib)
    for name in names:
        fn, arg_names = table[name]
        try:
            arrays = [data[a] for a in arg_names]
            err = run_jax(fn, arrays) if lib == "jax" else run_torch(transform, fn, arrays)
            print(json.dumps({"case": name, "ok": True, "max_error": err}), flush=True)
        except Exception as e:  # reported to the test, which fails with this text
            tail = traceback.format_exc().strip().splitlines()[-12:]
            print(json.dumps({"case": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:2000],
                              "traceback": tail}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

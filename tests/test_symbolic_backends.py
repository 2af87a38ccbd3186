"""The optional backends without autodiff: ndonnx (eager, and an ONNX export with symbolic
dimensions run by onnxruntime) and marray (masked arrays).

Every public loss is checked against a float64 PyTorch reference: the value, and the gradient
that ``xce.value_and_grad`` gives (its analytic rule, written against the standard, runs on these
namespaces too; neither library differentiates). The export builds one graph per case with a
dynamic batch dimension (two in the spatial and sequence cases) and runs it at two batch sizes.
Skipped when ndonnx / onnxruntime / marray are not installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xce
from xce._arrays import count
from xce._engine import supports
from xce._namespace import device_of

import reference as ref

C = 5  # classes


@dataclass(frozen=True)
class Case:
    """One call: ``make(rng, n)`` gives its NumPy inputs for batch size ``n`` (the first is the
    differentiated input), ``call(f, a)`` calls ``f`` (the loss, or its ``value_and_grad``) on
    them, ``oracle(t)`` is the float64 torch reference on tensors, ``symbolic`` the export's
    shape of each batched input (str: a dynamic dimension); inputs not listed are static."""

    name: str
    loss: Callable[..., Any]
    make: Callable[[np.random.Generator, int], dict[str, np.ndarray]]
    call: Callable[[Callable[..., Any], dict[str, Any]], Any]
    oracle: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    symbolic: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    grad: bool = True  # xce.value_and_grad supports the loss


def _logits(rng: np.random.Generator, n: int, *shape: int) -> np.ndarray:
    return rng.normal(size=(n, *shape)) * 2.0


def _index(rng: np.random.Generator, n: int, ignore: bool = True) -> dict[str, np.ndarray]:
    y = rng.integers(0, C, size=n)
    if ignore:
        y[::3] = -100
    return {"x": _logits(rng, n, C), "y": y, "w": rng.uniform(0.5, 2.0, size=C)}


def _probs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"x": _logits(rng, n, C), "q": rng.dirichlet(np.ones(C), size=n), "w": rng.uniform(0.5, 2.0, size=C)}


def _binary(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    x = _logits(rng, n, C)
    return {"x": x, "b": (rng.random((n, C)) < 0.4).astype(np.float64), "w": rng.uniform(0.5, 2.0, size=C)}


def _ce_index(reduction: str) -> Case:
    return Case(
        f"cross_entropy-index-{reduction}", xce.cross_entropy, _index,
        lambda f, a: f(a["x"], a["y"], a["w"], label_smoothing=0.1, reduction=reduction),
        lambda t: F.cross_entropy(t["x"], t["y"], t["w"], label_smoothing=0.1, reduction=reduction),
        {"x": ("N", C), "y": ("N",)},
    )


def _ce_probs(reduction: str) -> Case:
    return Case(
        f"cross_entropy-probs-{reduction}", xce.cross_entropy, _probs,
        lambda f, a: f(a["x"], a["q"], a["w"], label_smoothing=0.2, reduction=reduction),
        lambda t: F.cross_entropy(t["x"], t["q"], t["w"], label_smoothing=0.2, reduction=reduction),
        {"x": ("N", C), "q": ("N", C)},
    )


def _spatial(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    d = 2 + n % 3  # the second dynamic dimension changes with the batch
    y = rng.integers(0, C, size=(n, d))
    y[0, 0] = -100
    return {"x": rng.normal(size=(n, C, d)), "y": y, "w": rng.uniform(0.5, 2.0, size=C)}


def _sequence(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    t = 1 + n % 4
    y = rng.integers(0, C, size=(n, t))
    y[-1, -1] = -100
    return {"x": rng.normal(size=(n, t, C)), "y": y}


def _z_oracle(t: dict[str, torch.Tensor]) -> torch.Tensor:
    kept = t["y"] != -100
    z = torch.where(kept, 1e-2 * torch.logsumexp(t["x"], dim=1) ** 2, 0.0).sum() / kept.sum()
    return F.cross_entropy(t["x"], t["y"]) + z


def _kl_logits_oracle(t: dict[str, torch.Tensor], beta: float | None) -> torch.Tensor:
    log_q, log_p = F.log_softmax(t["x"], dim=1), F.log_softmax(t["t"], dim=1)
    if beta is None:  # forward KL(teacher ‖ student)
        per = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(1)
    else:
        log_m = torch.logsumexp(torch.stack([log_p + np.log(beta), log_q + np.log(1 - beta)]), dim=0)
        per = beta * (log_p.exp() * (log_p - log_m)).sum(1) + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(1)
    kept = t["y"] != -100
    return torch.where(kept, per, 0.0).sum() / kept.sum()


def _distill(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    a = _index(rng, n)
    return {"x": a["x"], "t": _logits(rng, n, C), "y": a["y"]}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


CASES = [
    *(_ce_index(r) for r in ("mean", "sum", "none")),
    *(_ce_probs(r) for r in ("mean", "none")),
    Case("cross_entropy-z_loss", xce.cross_entropy, _index, lambda f, a: f(a["x"], a["y"], z_loss=1e-2), _z_oracle,
         {"x": ("N", C), "y": ("N",)}),
    Case("cross_entropy-where", xce.cross_entropy,
         lambda rng, n: {**_index(rng, n, ignore=False), "m": np.arange(n) % 2 == 0},
         lambda f, a: f(a["x"], a["y"], where=a["m"]),
         lambda t: F.cross_entropy(t["x"], torch.where(t["m"], t["y"], -100)),
         {"x": ("N", C), "y": ("N",), "m": ("N",)}),
    Case("cross_entropy-spatial", xce.cross_entropy, _spatial, lambda f, a: f(a["x"], a["y"], a["w"]),
         lambda t: F.cross_entropy(t["x"], t["y"], t["w"]), {"x": ("N", C, "D"), "y": ("N", "D")}),
    Case("cross_entropy-classes-last", xce.cross_entropy, _sequence,
         lambda f, a: f(a["x"], a["y"], axis=-1, label_smoothing=0.1),
         lambda t: F.cross_entropy(t["x"].movedim(-1, 1), t["y"], label_smoothing=0.1),
         {"x": ("B", "T", C), "y": ("B", "T")}),
    Case("nll_loss", xce.nll_loss, _index, lambda f, a: f(a["x"], a["y"], a["w"]),
         lambda t: F.nll_loss(t["x"], t["y"], t["w"]), {"x": ("N", C), "y": ("N",)}),
    Case("softmax_focal_loss", xce.softmax_focal_loss, _index, lambda f, a: f(a["x"], a["y"], weight=a["w"]),
         lambda t: ref.softmax_focal_loss(t["x"], t["y"].numpy(), weight=t["w"]), {"x": ("N", C), "y": ("N",)}),
    Case("poly1_cross_entropy", xce.poly1_cross_entropy, _index, lambda f, a: f(a["x"], a["y"], 2.0),
         lambda t: ref.poly1_cross_entropy(t["x"], t["y"].numpy(), 2.0), {"x": ("N", C), "y": ("N",)}),
    Case("poly1_cross_entropy-probs", xce.poly1_cross_entropy, _probs, lambda f, a: f(a["x"], a["q"], 2.0),
         lambda t: (F.cross_entropy(t["x"], t["q"], reduction="none")
                    + 2.0 * (1 - (t["q"] * t["x"].softmax(1)).sum(1))).mean(),
         {"x": ("N", C), "q": ("N", C)}),
    Case("binary_cross_entropy_with_logits", xce.binary_cross_entropy_with_logits, _binary,
         lambda f, a: f(a["x"], a["b"], pos_weight=a["w"]),
         lambda t: F.binary_cross_entropy_with_logits(t["x"], t["b"], pos_weight=t["w"]),
         {"x": ("N", C), "b": ("N", C)}),
    Case("binary_cross_entropy", xce.binary_cross_entropy,
         lambda rng, n: {**_binary(rng, n), "x": _sigmoid(_logits(rng, n, C))},
         lambda f, a: f(a["x"], a["b"], reduction="sum"),
         lambda t: F.binary_cross_entropy(t["x"], t["b"], reduction="sum"), {"x": ("N", C), "b": ("N", C)}),
    Case("multilabel_soft_margin_loss", xce.multilabel_soft_margin_loss, _binary,
         lambda f, a: f(a["x"], a["b"], a["w"]),
         lambda t: F.multilabel_soft_margin_loss(t["x"], t["b"], t["w"]), {"x": ("N", C), "b": ("N", C)}),
    Case("sigmoid_focal_loss", xce.sigmoid_focal_loss, _binary, lambda f, a: f(a["x"], a["b"], reduction="mean"),
         lambda t: ref.sigmoid_focal_loss(t["x"], t["b"], reduction="mean"), {"x": ("N", C), "b": ("N", C)}),
    Case("kl_div-batchmean", xce.kl_div,
         lambda rng, n: {"x": np.log(rng.dirichlet(np.ones(C), size=n)), "q": rng.dirichlet(np.ones(C), size=n)},
         lambda f, a: f(a["x"], a["q"], reduction="batchmean"),
         lambda t: F.kl_div(t["x"], t["q"], reduction="batchmean"), {"x": ("N", C), "q": ("N", C)}, grad=False),
    Case("kl_div-mean-log_target", xce.kl_div,
         lambda rng, n: {"x": np.log(rng.dirichlet(np.ones(C), size=n)),
                         "q": np.log(rng.dirichlet(np.ones(C), size=n))},
         lambda f, a: f(a["x"], a["q"], log_target=True),
         lambda t: ref.kl_div(t["x"], t["q"], reduction="mean", log_target=True), {"x": ("N", C), "q": ("N", C)},
         grad=False),
    Case("kl_div_with_logits", xce.kl_div_with_logits, _distill, lambda f, a: f(a["x"], a["t"], a["y"]),
         lambda t: _kl_logits_oracle(t, None), {"x": ("N", C), "t": ("N", C), "y": ("N",)}),
    Case("generalized_jsd", xce.generalized_jsd, _distill, lambda f, a: f(a["x"], a["t"], a["y"], beta=0.3),
         lambda t: _kl_logits_oracle(t, 0.3), {"x": ("N", C), "t": ("N", C), "y": ("N",)}),
]


def _reference(case: Case, a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """The float64 torch value, and d(value.sum())/d(first input) by autograd."""
    t = {k: torch.tensor(v) for k, v in a.items()}
    first = next(iter(a))
    t[first].requires_grad_(True)
    value = case.oracle(t)
    if not case.grad:
        return value.detach().numpy(), None
    value.sum().backward()
    return value.detach().numpy(), t[first].grad.numpy()


def _check(case: Case, a: dict[str, np.ndarray], value: np.ndarray, grad: np.ndarray | None) -> None:
    expected, expected_grad = _reference(case, a)
    np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-12, err_msg=f"{case.name}: value")
    if expected_grad is not None:
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-12, err_msg=f"{case.name}: gradient")


def _run(case: Case, arrays: dict[str, Any]) -> tuple[Any, Any]:
    """``(loss, gradient)`` of the case on one library's arrays (the gradient None where not checked)."""
    if case.grad:
        return case.call(xce.value_and_grad(case.loss), arrays)
    return case.call(case.loss, arrays), None


CASE_IDS = [c.name for c in CASES]


# --- ndonnx: eager (value propagation) ---------------------------------------------------------


@pytest.fixture(scope="module")
def ndx():
    pytest.importorskip("onnxruntime")  # ndonnx's eager values are computed by onnxruntime
    return pytest.importorskip("ndonnx")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ndonnx_eager(ndx, case: Case):
    a = case.make(np.random.default_rng(0), 7)
    loss, grad = _run(case, {k: ndx.asarray(v) for k, v in a.items()})
    assert isinstance(loss, ndx.Array)
    _check(case, a, loss.unwrap_numpy(), None if grad is None else grad.unwrap_numpy())


# --- ndonnx: an ONNX export with dynamic dimensions, run by onnxruntime --------------------------


def _export(ndx: Any, case: Case, a: dict[str, np.ndarray]) -> Any:
    """An onnxruntime session of the case's graph: the loss (and gradient) of symbolic inputs."""
    import onnxruntime as ort

    args = {k: ndx.argument(shape=case.symbolic.get(k, v.shape), dtype=ndx.from_numpy_dtype(v.dtype))
            for k, v in a.items()}
    for k in case.symbolic:
        assert None in args[k].shape, "the export must see a dynamic dimension"
    loss, grad = _run(case, args)
    outputs = {"loss": loss} if grad is None else {"loss": loss, "grad": grad}
    model = ndx.build(args, outputs, drop_unused=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_onnx_export_dynamic_batch(ndx, case: Case):
    rng = np.random.default_rng(1)
    session = _export(ndx, case, case.make(rng, 4))
    names = {i.name for i in session.get_inputs()}
    for n in (3, 8):  # one graph, two batch sizes (and two spatial / sequence lengths)
        a = case.make(rng, n)
        out = session.run(None, {k: v for k, v in a.items() if k in names})
        _check(case, a, out[0], out[1] if case.grad else None)


def test_symbolic_class_axis_is_refused(ndx):
    x = ndx.argument(shape=("N", "C"), dtype=ndx.float32)
    y = ndx.argument(shape=("N",), dtype=ndx.int64)
    with pytest.raises(ValueError, match="class axis 1 has no known length"):
        xce.cross_entropy(x, y)


def test_symbolic_arrays_take_the_fused_path(ndx):
    """The engine plans blocks from the shape: a symbolic one is left to the fused formula, and
    counts come from the array (a 0-d array), while known shapes keep Python numbers."""
    x = ndx.argument(shape=("N", C), dtype=ndx.float64)
    assert not supports(x)
    n = count(x, xp=ndx)
    assert isinstance(n, ndx.Array) and n.ndim == 0
    assert count(np.zeros((3, 4)), xp=np) == 12 and isinstance(count(np.zeros((3, 4)), xp=np), int)


def test_arrays_without_device_use_the_default_device():
    """mlx's arrays have no ``.device``: xce passes ``device=None`` (the default device) on."""

    class NoDevice:
        shape, ndim = (2,), 1

    assert device_of(NoDevice()) is None
    assert device_of(np.zeros(2)) == "cpu"


# --- marray: masked arrays ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mxp():
    marray = pytest.importorskip("marray")
    import array_api_compat.numpy as anp

    return marray.masked_namespace(anp)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_marray_unmasked(mxp, case: Case):
    a = case.make(np.random.default_rng(2), 6)
    loss, grad = _run(case, {k: mxp.asarray(v) for k, v in a.items()})
    assert not np.any(np.asarray(loss.mask))
    _check(case, a, np.asarray(loss.data), None if grad is None else np.asarray(grad.data))


def test_marray_masked_target_is_ignored(mxp):
    """A masked target leaves the loss as ``ignore_index`` does: masked in ``"none"``, out of
    the sum and of the mean's count (weighted or not); its gradient row is masked."""
    a = _index(np.random.default_rng(3), 6, ignore=False)
    hidden = np.zeros(6, dtype=bool)
    hidden[[1, 4]] = True
    x, y, w = mxp.asarray(a["x"]), mxp.asarray(a["y"], mask=hidden), mxp.asarray(a["w"])
    ignored = {**a, "y": np.where(hidden, -100, a["y"])}
    for reduction in ("mean", "sum"):
        case = _ce_index(reduction)
        loss, grad = _run(case, {"x": x, "y": y, "w": w})
        value, expected_grad = _reference(case, ignored)
        np.testing.assert_allclose(np.asarray(loss.data), value, rtol=1e-10)
        assert np.array_equal(np.asarray(grad.mask), np.broadcast_to(hidden[:, None], (6, C)))
        np.testing.assert_allclose(np.asarray(grad.data)[~hidden], expected_grad[~hidden], rtol=1e-9, atol=1e-12)
    none = xce.cross_entropy(x, y, reduction="none")
    assert np.array_equal(np.asarray(none.mask), hidden)


def test_marray_masked_logit_leaves_the_softmax(mxp):
    """A masked logit is excluded from its row's softmax: the loss of a ``-inf`` logit there."""
    a = _index(np.random.default_rng(4), 4, ignore=False)
    a["y"][0] = 0
    hidden = np.zeros((4, C), dtype=bool)
    hidden[0, 3] = True
    out = xce.cross_entropy(mxp.asarray(a["x"], mask=hidden), mxp.asarray(a["y"]), reduction="none")
    x_inf = np.where(hidden, -np.inf, a["x"])
    expected = F.cross_entropy(torch.tensor(x_inf), torch.tensor(a["y"]), reduction="none").numpy()
    np.testing.assert_allclose(np.asarray(out.data), expected, rtol=1e-10)
    assert not np.any(np.asarray(out.mask))


def test_marray_masked_elements_leave_the_binary_mean(mxp):
    """Elementwise losses: masked elements are out of the sum and of the mean's count."""
    a = _binary(np.random.default_rng(5), 4)
    hidden = np.zeros((4, C), dtype=bool)
    hidden[1, :2] = hidden[3, 4] = True
    out = xce.binary_cross_entropy_with_logits(mxp.asarray(a["x"], mask=hidden), mxp.asarray(a["b"]))
    per = F.binary_cross_entropy_with_logits(torch.tensor(a["x"]), torch.tensor(a["b"]), reduction="none").numpy()
    np.testing.assert_allclose(np.asarray(out.data), per[~hidden].mean(), rtol=1e-10)

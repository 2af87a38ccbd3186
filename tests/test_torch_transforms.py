"""Every public loss under ``torch.func`` (grad, vmap, vmap of grad, jacrev, functional_call)
and ``torch.compile`` (issue 15, item 3).

References are the ``torch.nn.functional`` losses (the formulas of ``reference.py`` for the
focal and poly-1 losses, torchvision's for the sigmoid focal loss) differentiated by plain
autograd in float64. ``cross_entropy`` also runs at a large size (>= 65,536 elements) with
xce's own definitions forced (``xce.config(delegate=False)`` where that option exists), where
an input under autograd goes through the adapter's ``torch.autograd.Function``
(``xce.adapters.torch``) in plain eager autograd; ``test_large_inputs_take_the_autograd_function``
checks that it does.

Under ``torch.compile`` and ``torch.func`` xce reads no values, writes with no ``out=`` and
takes the fused formula (no blocks, no custom Function), so every case traces without a
graph break and batches under ``vmap`` (``linear_cross_entropy`` under ``torch.compile`` is the
custom op of ``tests/test_linear_compiled.py``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import xce

torch = pytest.importorskip("torch")

import array_api_compat.torch as txp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad, jacrev, vmap  # noqa: E402

import reference as ref  # noqa: E402
from conftest import Backend, assert_close_to  # noqa: E402

TORCH = Backend("torch", txp, torch.device("cpu"), lazy=False)
SMALL, LARGE, TINY = (6, 5), (512, 160), (3, 4)  # (rows, classes); LARGE has 81,920 elements
# Whether xce can hand a call to PyTorch's own kernel (then "-own" cases force xce's definitions).
DELEGATES = "delegate" in inspect.signature(xce.config).parameters


def check(actual: Any, expected: Any) -> None:
    """``actual`` (a float64 tensor) equals ``expected`` (a tensor or array) at float64 tolerance."""
    if torch.is_tensor(expected):
        expected = expected.detach().numpy()
    assert_close_to(actual, expected, dtype=torch.float64, backend=TORCH)


def own_definitions(own: bool):
    """xce's own definitions (no delegation to ``F.cross_entropy``) when ``own``."""
    return xce.config(delegate=False) if own and DELEGATES else contextlib.nullcontext()


# --- the losses ------------------------------------------------------------------------------------


def _reduce(out, reduction: str):
    """Reduce an elementwise output (log_softmax, softmax, logsumexp weighted by the "target")."""
    return {"none": out, "sum": out.sum(), "mean": out.mean()}[reduction]


# A fixed classifier for linear_cross_entropy: hidden size = number of classes = n, weight LINEAR_W[:n, :n].
LINEAR_W = torch.from_numpy(np.random.default_rng(99).normal(scale=0.5, size=(LARGE[1], LARGE[1])))


def _linear_weight(n: int):
    return LINEAR_W[:n, :n]


# linear_distillation_loss: the student's head as above, and a fixed teacher of hidden size 5.
_TEACHER_RNG = np.random.default_rng(98)
TEACHER_H = torch.from_numpy(_TEACHER_RNG.normal(size=(LARGE[0], 5)))
TEACHER_W = torch.from_numpy(_TEACHER_RNG.normal(scale=0.5, size=(LARGE[1], 5)))


def _xce_distill(h, t, r):
    n, c = h.shape
    return xce.linear_distillation_loss(h, _linear_weight(c), TEACHER_H[:n], TEACHER_W[:c], t, beta=0.3,
                                        temperature=2.0, reduction=r)


def _ref_distill(h, t, r):
    """Generalized JSD (beta 0.3, temperature 2) of the two heads' logits with F.log_softmax / F.kl_div."""
    n, c = h.shape
    ls = F.log_softmax(h @ _linear_weight(c).T / 2.0, -1)
    lt = F.log_softmax(TEACHER_H[:n] @ TEACHER_W[:c].T / 2.0, -1)
    lm = torch.logsumexp(torch.stack([lt + np.log(0.3), ls + np.log(0.7)]), 0)
    per = (0.3 * F.kl_div(lm, lt, reduction="none", log_target=True).sum(-1)
           + 0.7 * F.kl_div(lm, ls, reduction="none", log_target=True).sum(-1))
    kept = t != -100
    per = torch.where(kept, per, 0.0)
    return {"none": per, "sum": per.sum(), "mean": per.sum() / kept.sum()}[r]


def _ref_kl_logits(s, t, r, beta: float = 0.0):
    """Generalized JSD of softmax(t) (teacher) and softmax(s) (student); beta 0: KL(P‖Q)."""
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    if beta == 0.0:
        per = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)
    else:
        lm = torch.logsumexp(torch.stack([lt + np.log(beta), ls + np.log(1 - beta)]), 0)
        per = (beta * F.kl_div(lm, lt, reduction="none", log_target=True).sum(-1)
               + (1 - beta) * F.kl_div(lm, ls, reduction="none", log_target=True).sum(-1))
    return _reduce(per, r)


def _teacher_logits(rng, n, c):
    return _logits(rng, n, c), _logits(rng, n, c)


# cross_entropy's LLM arguments: soft cap, per-token weights, z-loss and a global normaliser.
_LLM_CAP, _LLM_NORM = 3.0, 7.0


def _llm_weights(n: int):
    return torch.linspace(0.5, 1.5, n, dtype=torch.float64)


def _xce_llm(x, t, r):
    return xce.cross_entropy(x, t, reduction=r, softcap=_LLM_CAP, sample_weight=_llm_weights(x.shape[0]),
                             z_loss=0.01, normalizer=_LLM_NORM if r == "mean" else None)


def _ref_llm(x, t, r):
    y = _LLM_CAP * torch.tanh(x / _LLM_CAP)
    per = _llm_weights(x.shape[0]) * (F.cross_entropy(y, t, reduction="none") + 0.01 * torch.logsumexp(y, -1) ** 2)
    return {"none": per, "sum": per.sum(), "mean": per.sum() / _LLM_NORM}[r]


@dataclass(frozen=True)
class Case:
    """A loss as ``fn(x, t, reduction)``, its float64 torch reference with the same signature,
    and how to draw ``(x, t)`` for ``(rows, classes)``."""

    name: str
    fn: Callable[..., Any]
    ref: Callable[..., Any]
    make: Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]
    reduction: str = "mean"  # the reduction of the scalar losses (grad, vmap, compile)
    size: tuple[int, int] = SMALL
    own: bool = False  # xce's own definitions forced (no delegation to PyTorch's kernel)

    @property
    def id(self) -> str:
        size = "" if self.size == SMALL else f"-{self.size[0]}x{self.size[1]}"
        return f"{self.name}{size}{'-own' if self.own else ''}"

    def inputs(self, size: tuple[int, int] | None = None, seed: int = 0):
        x, t = self.make(np.random.default_rng(seed), *(size or self.size))
        return torch.from_numpy(np.asarray(x, dtype=np.float64)), torch.from_numpy(np.asarray(t))

    def loss(self, x, t, reduction: str | None = None):
        with own_definitions(self.own):
            return self.fn(x, t, self.reduction if reduction is None else reduction)

    def expected(self, x, t, reduction: str | None = None):
        return torch.as_tensor(self.ref(x, t, self.reduction if reduction is None else reduction))


def _logits(rng, n, c):
    return rng.normal(scale=2.0, size=(n, c))


def _index(rng, n, c):
    return _logits(rng, n, c), rng.integers(0, c, size=n)


def _index_ignored(rng, n, c):
    x, y = _index(rng, n, c)
    y[1::4] = -100
    return x, y


def _probs(rng, n, c):
    return _logits(rng, n, c), rng.dirichlet(np.ones(c), size=n)


def _log_probs_index(rng, n, c):
    x, y = _index(rng, n, c)
    return x - np.log(np.exp(x).sum(1, keepdims=True)), y


def _probabilities_labels(rng, n, c):
    return rng.uniform(0.05, 0.95, size=(n, c)), rng.uniform(size=(n, c))


def _logits_labels(rng, n, c):
    return _logits(rng, n, c), rng.uniform(size=(n, c))


def _logits_binary(rng, n, c):
    return _logits(rng, n, c), rng.integers(0, 2, size=(n, c)).astype(np.float64)


def _log_q_p(rng, n, c):
    return np.log(rng.dirichlet(np.ones(c), size=n)), rng.dirichlet(np.ones(c), size=n)


def _logits_row_weights(rng, n, c):
    return _logits(rng, n, c), rng.uniform(0.5, 1.5, size=n)


def _xce_zloss(x, t, r):
    return xce.cross_entropy(x, t, reduction=r, z_loss=0.01)


def _ref_zloss(x, t, r):
    """PaLM's z-loss on top of PyTorch's loss: 0.01·logsumexp² at kept positions, its mean over
    their number (what xce delegates as F.cross_entropy plus the z part)."""
    kept = t != -100
    z = torch.where(kept, 0.01 * torch.logsumexp(x, -1) ** 2, 0.0)
    return {"none": F.cross_entropy(x, t, reduction="none") + z,
            "sum": F.cross_entropy(x, t, reduction="sum") + z.sum(),
            "mean": F.cross_entropy(x, t) + z.sum() / kept.sum()}[r]


def _logits_weights(rng, n, c):
    return _logits(rng, n, c), rng.uniform(0.5, 1.5, size=(n, c))


def _xce_ce(x, t, r):
    return xce.cross_entropy(x, t, reduction=r)


def _ref_ce(x, t, r):
    return F.cross_entropy(x, t, reduction=r)


CROSS_ENTROPY = [
    Case("cross_entropy-index", _xce_ce, _ref_ce, _index),
    Case("cross_entropy-probs", _xce_ce, _ref_ce, _probs),
    Case("cross_entropy-ignore", _xce_ce, _ref_ce, _index_ignored),
    Case("cross_entropy-zloss", _xce_zloss, _ref_zloss, _index_ignored),
]
LOSSES = [
    *CROSS_ENTROPY,
    Case("nll_loss", lambda x, t, r: xce.nll_loss(x, t, reduction=r),
         lambda x, t, r: F.nll_loss(x, t, reduction=r), _log_probs_index),
    Case("softmax_focal_loss", lambda x, t, r: xce.softmax_focal_loss(x, t, gamma=2.0, reduction=r),
         lambda x, t, r: ref.softmax_focal_loss(x, t.numpy(), gamma=2.0, reduction=r), _index),
    Case("poly1_cross_entropy", lambda x, t, r: xce.poly1_cross_entropy(x, t, epsilon=0.5, reduction=r),
         lambda x, t, r: ref.poly1_cross_entropy(x, t.numpy(), epsilon=0.5, reduction=r), _index),
    Case("binary_cross_entropy", lambda x, t, r: xce.binary_cross_entropy(x, t, reduction=r),
         lambda x, t, r: F.binary_cross_entropy(x, t, reduction=r), _probabilities_labels),
    Case("binary_cross_entropy_with_logits", lambda x, t, r: xce.binary_cross_entropy_with_logits(x, t, reduction=r),
         lambda x, t, r: F.binary_cross_entropy_with_logits(x, t, reduction=r), _logits_labels),
    Case("multilabel_soft_margin_loss", lambda x, t, r: xce.multilabel_soft_margin_loss(x, t, reduction=r),
         lambda x, t, r: F.multilabel_soft_margin_loss(x, t, reduction=r), _logits_binary),
    Case("sigmoid_focal_loss", lambda x, t, r: xce.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction=r),
         lambda x, t, r: ref.sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction=r), _logits_binary),
    Case("kl_div", lambda x, t, r: xce.kl_div(x, t, reduction=r),
         lambda x, t, r: F.kl_div(x, t, reduction=r), _log_q_p, reduction="batchmean"),
    Case("linear_cross_entropy",
         lambda h, t, r: xce.linear_cross_entropy(h, _linear_weight(h.shape[-1]), t, reduction=r),
         lambda h, t, r: F.cross_entropy(h @ _linear_weight(h.shape[-1]).T, t, reduction=r), _index),
    Case("linear_distillation_loss", _xce_distill, _ref_distill, _index_ignored),
    Case("kl_div_with_logits", lambda s, t, r: xce.kl_div_with_logits(s, t, reduction=r), _ref_kl_logits,
         _teacher_logits),
    Case("generalized_jsd", lambda s, t, r: xce.generalized_jsd(s, t, beta=0.3, reduction=r),
         lambda s, t, r: _ref_kl_logits(s, t, r, beta=0.3), _teacher_logits),
    Case("cross_entropy-llm", _xce_llm, _ref_llm, _index),
    Case("log_softmax", lambda x, t, r: _reduce(xce.log_softmax(x, axis=-1) * t, r),
         lambda x, t, r: _reduce(torch.log_softmax(x, -1) * t, r), _logits_weights),
    Case("softmax", lambda x, t, r: _reduce(xce.softmax(x, axis=-1) * t, r),
         lambda x, t, r: _reduce(torch.softmax(x, -1) * t, r), _logits_weights),
    Case("logsumexp", lambda x, t, r: _reduce(xce.logsumexp(x, axis=-1) * t, r),
         lambda x, t, r: _reduce(torch.logsumexp(x, -1) * t, r), _logits_row_weights),
]
# xce's own cross entropy: small (autograd through the definition; index targets are otherwise
# handed to F.cross_entropy) and large (the adapter's autograd.Function).
OWN = [Case(c.name, c.fn, c.ref, c.make, c.reduction, SMALL, own=True) for c in CROSS_ENTROPY
       if DELEGATES and c.name != "cross_entropy-probs"]  # probability targets are never delegated
LARGE_CASES = [Case(c.name, c.fn, c.ref, c.make, c.reduction, LARGE, own=True) for c in CROSS_ENTROPY]
CASES = LOSSES + OWN + LARGE_CASES

# (test, case id) of the cases that take over two seconds each (Dynamo tracing xce's Python).
SLOW = {(test, case.id) for test in ("compile_graph_breaks", "compile") for case in CASES
        if case.size == LARGE or case.name in ("linear_cross_entropy", "linear_distillation_loss")}


def params(test: str, cases: list[Case]) -> list[Any]:
    out = []
    for case in cases:
        marks = []
        if (test, case.id) in SLOW:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def expected_grad(case: Case, x, t):
    """d loss / d x by autograd through the float64 reference."""
    xr = x.clone().requires_grad_(True)
    case.expected(xr, t).backward()
    return xr.grad


def _batch(case: Case):
    """Three different inputs of the case's size and one shared target."""
    return torch.stack([case.inputs(seed=seed)[0] for seed in (1, 2, 3)]), case.inputs()[1]


@pytest.mark.parametrize("case", params("autograd_function", LARGE_CASES))
def test_large_inputs_take_the_autograd_function(case: Case):
    """The large cases exercise what they are here for: the adapter's custom autograd.Function."""
    x, t = case.inputs()
    loss = case.loss(x.requires_grad_(True), t)
    assert isinstance(loss.grad_fn, torch.autograd.function.BackwardCFunction), type(loss.grad_fn)


# --- 1. grad -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", params("grad", CASES))
def test_grad(case: Case):
    x, t = case.inputs()
    check(grad(case.loss)(x, t), expected_grad(case, x, t))


# --- 2. vmap, vmap of grad ------------------------------------------------------------------------


@pytest.mark.parametrize("case", params("vmap", CASES))
def test_vmap(case: Case):
    xs, t = _batch(case)
    out = vmap(case.loss, in_dims=(0, None))(xs, t)
    check(out, torch.stack([case.loss(v, t) for v in xs]))
    check(out, torch.stack([case.expected(v, t) for v in xs]))


@pytest.mark.parametrize("case", params("vmap_grad", CASES))
def test_vmap_grad(case: Case):
    xs, t = _batch(case)
    out = vmap(grad(case.loss), in_dims=(0, None))(xs, t)
    check(out, torch.stack([expected_grad(case, v, t) for v in xs]))


# --- 3. jacrev -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", params("jacrev", LOSSES + OWN))
def test_jacrev(case: Case):
    x, t = case.inputs(TINY)
    jac = jacrev(lambda v: case.loss(v, t, "none"))(x)
    check(jac, torch.autograd.functional.jacobian(lambda v: case.expected(v, t, "none"), x))


# --- 4. functional_call of a module --------------------------------------------------------------


class Classifier(torch.nn.Module):
    """A linear layer followed by a loss (``xce.cross_entropy`` or ``F.cross_entropy``)."""

    def __init__(self, features: int, classes: int, loss: Callable[..., Any]):
        super().__init__()
        self.linear = torch.nn.Linear(features, classes, dtype=torch.float64)
        self.loss = loss

    def forward(self, x, t):
        return self.loss(self.linear(x), t)


@pytest.mark.parametrize("case", params("functional_call", CROSS_ENTROPY + OWN + LARGE_CASES))
def test_functional_call(case: Case):
    rows, classes = case.size
    x = torch.from_numpy(np.random.default_rng(7).normal(size=(rows, 8)))
    t = case.inputs()[1]
    torch.manual_seed(0)
    ours = Classifier(8, classes, xce.cross_entropy)
    theirs = Classifier(8, classes, F.cross_entropy)
    state = {k: v.detach().clone() for k, v in ours.named_parameters()}

    def loss(model, p):
        with own_definitions(case.own):
            return functional_call(model, p, (x, t))

    check(loss(ours, state), loss(theirs, state))
    g_ours = grad(lambda p: loss(ours, p))(state)
    g_theirs = grad(lambda p: loss(theirs, p))(state)
    assert g_ours.keys() == g_theirs.keys() == {"linear.weight", "linear.bias"}
    for name in g_ours:
        check(g_ours[name], g_theirs[name])


# --- 5. torch.compile ------------------------------------------------------------------------------


def _step(case: Case):
    """A training step's forward: a learnable per-class scale (1 at the start, so every input
    stays in its loss's domain), then the loss."""

    def step(scale, x, t):
        return case.fn(x * scale, t, case.reduction)

    return step


@pytest.fixture
def dynamo():
    torch._dynamo.reset()
    yield torch._dynamo
    torch._dynamo.reset()


def _break_reasons(explanation) -> str:
    """One line per distinct graph break: where it happened and Dynamo's explanation."""
    out: list[str] = []
    for b in explanation.break_reasons:
        lines = [line.strip() for line in str(b.reason).splitlines() if line.strip()]
        where = f"{b.user_stack[-1].filename.rpartition('/')[2]}:{b.user_stack[-1].lineno}" if b.user_stack else "?"
        text = f"{where}: {' '.join(lines[:2])[:200]}"
        if text not in out:
            out.append(text)
    return f"{explanation.graph_break_count} graph break(s):\n" + "\n".join(out)


# The large probability and ignore_index cases break where the large index case does (the engine),
# and ignore_index's own checks are covered by the small "-own" case: left out to save time.
@pytest.mark.filterwarnings("ignore:Dynamo:UserWarning")
@pytest.mark.parametrize("case", params("compile_graph_breaks", LOSSES + OWN + LARGE_CASES[:1]))
def test_compile_graph_breaks(case: Case, dynamo):
    x, t = case.inputs()
    scale = torch.ones(x.shape[-1], dtype=torch.float64, requires_grad=True)
    with own_definitions(case.own):
        explanation = dynamo.explain(_step(case))(scale, x, t)
    if explanation.graph_break_count:
        pytest.fail(_break_reasons(explanation), pytrace=False)


@pytest.mark.filterwarnings("ignore:Dynamo:UserWarning")
@pytest.mark.parametrize("case", params("compile", CASES))
def test_compile_matches_eager(case: Case, dynamo):
    """The compiled step (aot_eager: AOTAutograd traces the backward, no code generation)
    gives eager's loss and gradients, and those are the reference's."""
    x, t = case.inputs()
    step = _step(case)
    compiled = torch.compile(step, backend="aot_eager")

    def value_and_grads(fn):
        scale = torch.ones(x.shape[-1], dtype=torch.float64, requires_grad=True)
        xr = x.clone().requires_grad_(True)
        with own_definitions(case.own):
            loss = fn(scale, xr, t)
        return (loss, *torch.autograd.grad(loss, (scale, xr)))

    actual = value_and_grads(compiled)
    for a, e in zip(actual, value_and_grads(step)):
        check(a, e)
    check(actual[0], case.expected(x, t))
    check(actual[2], expected_grad(case, x, t))

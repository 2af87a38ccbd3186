"""``xce.nn``: every loss object as a ``torch.nn.Module``, used as PyTorch code uses its own losses.

A module has its object's name, constructor and checks, and returns its object's result; its
arrays (``weight``, ``pos_weight``) are buffers, so they move with ``.to()`` / ``.double()``, are
saved and loaded by ``state_dict``, and the module lives in ``nn.ModuleDict``, deep-copies,
pickles and compiles (``fullgraph=True``) inside a model. ``import xce`` does not import torch.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

import xce

torch = pytest.importorskip("torch")
F = torch.nn.functional

from xce import nn as xnn  # noqa: E402  (imports torch)

RNG = np.random.default_rng(0)


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


LOGITS = t64(RNG.normal(size=(6, 3)))
INDEX = torch.as_tensor([0, 2, 1, 2, 0, 1])
PROBS = t64(RNG.uniform(0.05, 0.95, size=(6, 3)))
BINARY = t64(RNG.uniform(size=(6, 3)) > 0.5)
W = t64([0.5, 1.0, 2.0])

# (name, config, call arguments): every loss object of xce.objects, with its arrays where it takes them
CASES = [
    ("CrossEntropyLoss", {"weight": W, "label_smoothing": 0.1, "z_loss": 0.01}, (LOGITS, INDEX)),
    ("NLLLoss", {"weight": W, "ignore_index": 1}, (LOGITS, INDEX)),
    ("BCELoss", {"weight": W, "reduction": "sum"}, (PROBS, BINARY)),
    ("BCEWithLogitsLoss", {"weight": W, "pos_weight": 2 * W, "label_smoothing": 0.2}, (LOGITS, BINARY)),
    ("MultiLabelSoftMarginLoss", {"weight": W, "reduction": "none"}, (LOGITS, BINARY)),
    ("KLDivLoss", {"reduction": "batchmean"}, (PROBS.log(), PROBS)),
    ("SigmoidFocalLoss", {"alpha": 0.4, "gamma": 1.5, "reduction": "mean"}, (LOGITS, BINARY)),
    ("SoftmaxFocalLoss", {"gamma": 1.0, "weight": W, "ignore_index": 2}, (LOGITS, INDEX)),
    ("KLDivWithLogitsLoss", {"direction": "reverse", "temperature": 2.0}, (LOGITS, 2 * LOGITS, INDEX)),
    ("GeneralizedJSDLoss", {"beta": 0.3, "softcap": 5.0}, (LOGITS, 2 * LOGITS)),
    ("LinearDistillationLoss", {"loss": "forward_kl", "temperature": 2.0},
     (t64(RNG.normal(size=(6, 4))), t64(RNG.normal(size=(3, 4))), t64(RNG.normal(size=(6, 5))),
      t64(RNG.normal(size=(3, 5))), INDEX)),
]


def test_every_loss_object_has_a_module_with_its_constructor():
    assert [name for name, _, _ in CASES] == sorted(xce.objects.__all__, key=[n for n, _, _ in CASES].index)
    assert set(xnn.__all__) == {*xce.objects.__all__, "LinearCrossEntropyLoss"}
    for name in xce.objects.__all__:
        module, obj = getattr(xnn, name), getattr(xce, name)
        assert issubclass(module, torch.nn.Module)
        assert inspect.signature(module) == inspect.signature(obj)


@pytest.mark.parametrize(("name", "config", "args"), CASES, ids=[c[0] for c in CASES])
def test_module_returns_its_objects_result(name, config, args):
    expected = getattr(xce, name)(**config)(*args)
    out = getattr(xnn, name)(**config)(*args)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("name", "config", "args"), CASES, ids=[c[0] for c in CASES])
def test_arrays_are_buffers_the_rest_attributes(name, config, args):
    loss = getattr(xnn, name)(**config)
    arrays = {k for k, v in config.items() if isinstance(v, torch.Tensor)}
    assert dict(loss.named_buffers()).keys() == arrays
    assert set(loss.state_dict()) == arrays
    for key, value in config.items():
        got = getattr(loss, key)
        assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value


def test_an_absent_array_is_a_none_buffer():
    loss = xnn.BCEWithLogitsLoss()
    assert loss.weight is None and loss.pos_weight is None
    assert loss.state_dict() == {}
    loss.pos_weight = torch.ones(3)  # a None buffer is a buffer: assigning a tensor registers it
    assert set(loss.state_dict()) == {"pos_weight"}


def test_configuration_is_checked_by_the_objects_checks():
    for make in (lambda m: m.CrossEntropyLoss(reduction="avg"), lambda m: m.NLLLoss(ignore_index=1.5),
                 lambda m: m.KLDivLoss(log_target=1), lambda m: m.SigmoidFocalLoss(gamma=-1.0),
                 lambda m: m.KLDivWithLogitsLoss(temperature=0.0)):
        with pytest.raises((ValueError, TypeError)) as theirs:
            make(xce)
        with pytest.raises(type(theirs.value), match=re.escape(str(theirs.value))):
            make(xnn)


def test_repr_shows_the_arguments():
    assert repr(xnn.SigmoidFocalLoss()) == "SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='none')"
    assert repr(xnn.NLLLoss(weight=torch.ones(3))) == (
        "NLLLoss(weight=<torch array shape=(3,) dtype=torch.float32>, ignore_index=-100, reduction='mean', axis=None)")
    assert repr(torch.nn.ModuleDict({"ce": xnn.CrossEntropyLoss(label_smoothing=0.1)})) == (
        "ModuleDict(\n  (ce): CrossEntropyLoss(weight=None, ignore_index=-100, reduction='mean', label_smoothing=0.1, "
        "axis=None, label_smoothing_mode='uniform', z_loss=0.0)\n)")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(64, 8, generator=g)
    return X, X[:, :3].argmax(dim=1)  # learnable labels


def _train(model, loss_fn, steps=8):
    X, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_a_training_loop_equals_torch_nn_cross_entropy_loss():
    weight = torch.tensor([1.0, 2.0, 0.5])
    ours = _train(_model(), xnn.CrossEntropyLoss(weight=weight, label_smoothing=0.05))
    theirs = _train(_model(), torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05))
    assert ours[-1] < 0.8 * ours[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_to_float64_moves_the_buffers():
    loss = xnn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    model = torch.nn.ModuleDict({"net": _model(), "loss": loss}).to(torch.float64)
    assert loss.weight.dtype == torch.float64 and model["net"][0].weight.dtype == torch.float64
    X, y = _data()
    out = model["loss"](model["net"](X.double()), y)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.cross_entropy(model["net"](X.double()), y, weight=loss.weight), rtol=1e-12,
                               atol=0)
    assert xnn.BCEWithLogitsLoss(pos_weight=torch.ones(3)).double().pos_weight.dtype == torch.float64


def test_state_dict_saves_and_loads_the_class_weight():
    saved = xnn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))
    buffer = io.BytesIO()
    torch.save(torch.nn.ModuleDict({"loss": saved}).state_dict(), buffer)
    buffer.seek(0)
    restored = torch.nn.ModuleDict({"loss": xnn.CrossEntropyLoss(weight=torch.ones(3))})
    restored.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(restored["loss"].weight, saved.weight, rtol=0, atol=0)
    X, y = _data()
    torch.testing.assert_close(restored["loss"](X[:, :3], y), saved(X[:, :3], y), rtol=0, atol=0)


def test_deepcopy_and_pickle_keep_the_configuration():
    loss = xnn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 3.0]), reduction="sum", label_smoothing=0.1)
    x, y = torch.randn(4, 2), torch.rand(4, 2).round()
    for other in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert repr(other) == repr(loss) and other.pos_weight is not loss.pos_weight
        torch.testing.assert_close(other(x, y), loss(x, y), rtol=0, atol=0)


class _Classifier(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.net = _model()
        self.loss = loss

    def forward(self, x, y):
        return self.loss(self.net(x), y)


@pytest.mark.parametrize("loss", [lambda: xnn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), z_loss=0.01),
                                  lambda: xnn.SoftmaxFocalLoss(gamma=2.0, weight=torch.tensor([1.0, 2.0, 0.5]))],
                         ids=["CrossEntropyLoss", "SoftmaxFocalLoss"])
def test_a_model_containing_the_loss_compiles_fullgraph_and_equals_eager(loss):
    X, y = _data()
    eager = _Classifier(loss())
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    expected, got = eager(X, y), compiled(X, y)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    expected.backward()
    got.backward()
    for a, b in zip(eager.parameters(), compiled_model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)


def test_linear_cross_entropy_loss_holds_its_configuration_not_the_head():
    g = torch.Generator().manual_seed(2)
    hidden, head = torch.randn(2, 5, 8, generator=g, dtype=torch.float64), torch.randn(7, 8, generator=g,
                                                                                      dtype=torch.float64)
    target = torch.randint(0, 7, (2, 5), generator=g)
    weight = torch.rand(7, generator=g, dtype=torch.float64)
    config = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0, "shift": True}
    loss = xnn.LinearCrossEntropyLoss(weight=weight, **config)
    assert list(loss.state_dict()) == ["weight"] and not list(loss.parameters())
    torch.testing.assert_close(loss(hidden, head, target),
                               xce.linear_cross_entropy(hidden, head, target, weight=weight, **config),
                               rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="temperature"):
        xnn.LinearCrossEntropyLoss(temperature=0.0)
    with pytest.raises(ValueError, match="block_rows"):
        xnn.LinearCrossEntropyLoss(block_rows=0)


def test_import_xce_does_not_import_torch():
    code = "import sys, xce; assert 'torch' not in sys.modules, 'import xce imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)

"""PyTorch's fast path (``xce.adapters.torch.fast_cross_entropy``): the commonest delegated
call of :func:`xce.cross_entropy` goes to ``F.cross_entropy`` before any of xce's own work.
It must serve exactly the calls it claims, give the definition's result there (values and
gradients), and hand every other call, valid or not, to the general path, which names errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xce

torch = pytest.importorskip("torch")
F = torch.nn.functional
fast = pytest.importorskip("xce.adapters.torch").fast_cross_entropy

RNG = np.random.default_rng(31)
SHAPES = [((6, 5), (6,)), ((5,), ()), ((3, 4, 2, 2), (3, 2, 2))]  # batched, unbatched, K-dim


def _data(shape, target_shape, dtype=torch.float64):
    x = torch.tensor(RNG.normal(size=shape), dtype=dtype)
    c = shape[1] if len(shape) > 1 else shape[0]
    y = torch.tensor(RNG.integers(0, c, size=target_shape), dtype=torch.int64)
    return x, y


def _call(x, y, **kwargs):
    options = dict(weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, axis=None,
                   mode="uniform", z_loss=0.0)
    options.update(kwargs)
    return fast(x, y, *options.values())


@pytest.mark.parametrize(("shape", "target_shape"), SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.2, 1])
def test_served_calls_equal_the_definition(shape, target_shape, reduction, eps):
    x, y = _data(shape, target_shape)
    ii = 2 if y.ndim else -100  # (an unbatched target equal to it would be all ignored: NaN)
    if y.ndim:
        y.view(-1)[0] = 2  # an ignored position
    served = _call(x, y, ignore_index=ii, reduction=reduction, label_smoothing=eps)
    assert served is not None
    xg = x.clone().requires_grad_(True)
    out = xce.cross_entropy(xg, y, ignore_index=ii, reduction=reduction, label_smoothing=eps)
    out.sum().backward()
    xd = x.clone().requires_grad_(True)
    with xce.config(delegate=False):
        definition = xce.cross_entropy(xd, y, ignore_index=ii, reduction=reduction, label_smoothing=eps)
    definition.sum().backward()
    for a, b in ((served, definition), (out, definition), (xg.grad, xd.grad)):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("change", [
    {"weight": "w"}, {"axis": 1}, {"mode": "off_target", "label_smoothing": 0.1}, {"z_loss": 1e-3},
    {"label_smoothing": "tensor"}, {"target_dtype": torch.int32}, {"dtype": torch.float16},
    {"ignore_index": True}, {"ignore_index": 1.0}, {"reduction": "avg"}, {"label_smoothing": 1.5},
    {"reduction": ["mean"]},
])
def test_other_calls_take_the_general_path(change):
    x, y = _data((6, 5), (6,), change.pop("dtype", torch.float32))
    y = y.to(change.pop("target_dtype", torch.int64))
    if change.get("weight") == "w":
        change["weight"] = torch.ones(5)
    if change.get("label_smoothing") == "tensor":
        change["label_smoothing"] = torch.tensor(0.1)
    _call(x, y)  # the same tensors served ...
    assert _call(x, y, **change) is None  # ... but not with this change


def test_inside_a_config_block_the_general_path_serves():
    x, y = _data((6, 5), (6,))
    with xce.config(check_values=True):
        assert _call(x, y) is None
    assert _call(x, y) is not None


def test_cached_options_do_not_admit_equal_invalid_ones():
    """True == 1 as a dict key: a cached ignore_index=1 must not let ignore_index=True through."""
    x, y = _data((6, 5), (6,))
    assert _call(x, y, ignore_index=1) is not None
    with pytest.raises(TypeError, match="ignore_index"):
        xce.cross_entropy(x, y, ignore_index=True)
    with pytest.raises(ValueError, match="reduction"):
        xce.cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        xce.cross_entropy(x, y, label_smoothing=1.5)


def test_invalid_targets_raise_xces_error():
    x, y = _data((6, 5), (6,))
    y[0] = 5
    assert _call(x, y) is None
    with pytest.raises(IndexError, match="target"):
        xce.cross_entropy(x, y)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_plus_inf_logits_give_the_limit_not_pytorchs_nan(reduction):
    """F.cross_entropy gives NaN for a row with +inf on another class; xce the limit +inf
    (docs/errors.md). On the CPU the fast path reads its one result to tell."""
    x, y = _data((4, 3), (4,))
    y[:] = 0
    x[1, 2] = math.inf
    assert math.isnan(float(F.cross_entropy(x, y)))
    assert _call(x, y, reduction=reduction) is None
    out = xce.cross_entropy(x, y, reduction=reduction)
    assert torch.isinf(out).any() and not torch.isnan(out).any()


@pytest.mark.parametrize("n", [4, 32, 33, 200])  # "none": a Python sum of few values, a kernel's of many
@pytest.mark.parametrize("weighted", [False, True])  # the fast path, the general dispatch
def test_a_single_plus_inf_position_is_seen_among_many(n, weighted):
    x, y = _data((n, 3), (n,))
    y[:] = 0
    x[n - 1, 2] = math.inf  # the last position only
    weight = torch.ones(3, dtype=x.dtype) if weighted else None
    if not weighted:
        assert _call(x, y, reduction="none") is None
    out = xce.cross_entropy(x, y, weight, reduction="none")
    assert math.isinf(out[n - 1]) and not torch.isnan(out).any()
    with xce.config(delegate=False):
        expected = xce.cross_entropy(x, y, weight, reduction="none")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_the_options_cache_is_bounded():
    from xce.adapters import torch as adapter

    x, y = _data((6, 5), (6,))
    for k in range(1100):
        _call(x, y, ignore_index=-k - 1)
    assert len(adapter._FAST_OPTIONS) <= 1024


def test_an_invalid_equal_key_does_not_poison_the_cache():
    """ignore_index=True first (refused: not cached, its key would be 1's), then 1 is served."""
    from xce.adapters import torch as adapter

    x, y = _data((6, 5), (6,))
    adapter._FAST_OPTIONS.clear()
    assert _call(x, y, ignore_index=True) is None
    assert _call(x, y, ignore_index=1) is not None


def test_a_torch_function_mode_sees_f_cross_entropy():
    """The fast path calls PyTorch's kernel directly only where no override applies: under a
    TorchFunctionMode (FLOP counters, tracers) the mode sees ``F.cross_entropy`` itself."""
    from torch.overrides import TorchFunctionMode

    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x, y = _data((6, 5), (6,))
    with Record():
        out = _call(x, y, label_smoothing=0.1, reduction="sum")
    assert F.cross_entropy in seen
    np.testing.assert_allclose(out.numpy(), F.cross_entropy(x, y, label_smoothing=0.1, reduction="sum").numpy(),
                               rtol=1e-14)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_target_tensor_subclass_sees_f_cross_entropy(weighted):
    """A Tensor subclass with ``__torch_function__`` is an override: a delegated call with such
    a target (the fast path leaves it, by type, to the general dispatch) is ``F.cross_entropy``
    itself, which the subclass sees, not the kernel behind it. (An ``input`` of a subclass
    defined outside torch has no adapter: the definition serves it.)"""
    seen = []

    class Recorded(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            seen.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    x, y = _data((6, 5), (6,))
    weight = torch.linspace(0.5, 1.5, 5, dtype=x.dtype) if weighted else None
    out = xce.cross_entropy(x, y.as_subclass(Recorded), weight)
    assert F.cross_entropy in seen
    np.testing.assert_allclose(torch.as_tensor(out).numpy(), F.cross_entropy(x, y, weight).numpy(), rtol=1e-14)

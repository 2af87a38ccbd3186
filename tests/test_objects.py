"""Loss objects: the function's result on every backend, validation at construction, readable repr."""

from __future__ import annotations

import numpy as np
import pytest

import xce

from conftest import assert_close_to, to_numpy

lazy_xp_modules = [xce]

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(4, 3))
INDEX = np.asarray([0, 2, 1, 2])
PROBS = RNG.uniform(0.05, 0.95, size=(4, 3))
BINARY = (RNG.uniform(size=(4, 3)) > 0.5).astype(np.float64)
W = np.asarray([0.5, 1.0, 2.0])

# (class, config with arrays as numpy, function, input, target)
CASES = [
    (xce.CrossEntropyLoss, {"weight": W, "label_smoothing": 0.1, "label_smoothing_mode": "off_target", "z_loss": 0.01},
     xce.cross_entropy, LOGITS, INDEX),
    (xce.NLLLoss, {"weight": W, "ignore_index": 1}, xce.nll_loss, LOGITS, INDEX),
    (xce.BCELoss, {"weight": W, "reduction": "sum"}, xce.binary_cross_entropy, PROBS, BINARY),
    (xce.BCEWithLogitsLoss, {"pos_weight": W, "label_smoothing": 0.2}, xce.binary_cross_entropy_with_logits, LOGITS,
     BINARY),
    (xce.MultiLabelSoftMarginLoss, {"weight": W, "reduction": "none"}, xce.multilabel_soft_margin_loss, LOGITS, BINARY),
    (xce.KLDivLoss, {"reduction": "batchmean"}, xce.kl_div, np.log(PROBS), PROBS),
    (xce.SigmoidFocalLoss, {"alpha": 0.4, "gamma": 1.5, "reduction": "mean"}, xce.sigmoid_focal_loss, LOGITS, BINARY),
    (xce.SoftmaxFocalLoss, {"gamma": 1.0, "weight": W, "ignore_index": 2}, xce.softmax_focal_loss, LOGITS, INDEX),
]


def test_objects_equal_their_functions(backend):
    xp = backend.xp

    def arr(a):
        return backend.asarray(a, xp.int64 if a.dtype.kind == "i" else xp.float64)

    for cls, config, fn, x, t in CASES:
        config = {k: arr(v) if isinstance(v, np.ndarray) else v for k, v in config.items()}
        expected = to_numpy(fn(arr(x), arr(t), **config))
        out = cls(**config)(arr(x), arr(t))
        assert_close_to(out, expected, dtype=xp.float64, backend=backend, shape=expected.shape)


def test_objects_under_jax_jit():
    jax = pytest.importorskip("jax")
    loss = xce.CrossEntropyLoss(weight=jax.numpy.asarray(W), label_smoothing=0.1)
    out = jax.jit(loss)(jax.numpy.asarray(LOGITS), jax.numpy.asarray(INDEX))
    np.testing.assert_allclose(float(out), float(xce.cross_entropy(LOGITS, INDEX, weight=W, label_smoothing=0.1)),
                               rtol=1e-12)


def test_repr_is_readable():
    assert repr(xce.SigmoidFocalLoss()) == "SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction='none')"
    assert repr(xce.NLLLoss(weight=np.ones(3))) == (
        "NLLLoss(weight=<numpy array shape=(3,) dtype=float64>, ignore_index=-100, reduction='mean', axis=None)"
    )
    loss = xce.BCEWithLogitsLoss(reduction="sum")
    assert loss.reduction == "sum" and loss.pos_weight is None
    with pytest.raises(AttributeError, match="no attribute 'gamma'"):
        _ = loss.gamma


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda: xce.CrossEntropyLoss(reduction="avg"), ValueError, "reduction must be one of"),
    (lambda: xce.CrossEntropyLoss(label_smoothing=2.0), ValueError, "label_smoothing must lie in"),
    (lambda: xce.CrossEntropyLoss(label_smoothing_mode="fairseq"), ValueError, "label_smoothing_mode must be one of"),
    (lambda: xce.CrossEntropyLoss(z_loss=-0.1), ValueError, "z_loss must be"),
    (lambda: xce.NLLLoss(ignore_index=1.5), TypeError, "ignore_index must be an integer"),
    (lambda: xce.BCELoss(label_smoothing=-1), ValueError, "label_smoothing"),
    (lambda: xce.BCEWithLogitsLoss(reduction="batchmean"), ValueError, "reduction"),
    (lambda: xce.MultiLabelSoftMarginLoss(reduction=None), ValueError, "reduction"),
    (lambda: xce.KLDivLoss(log_target="yes"), TypeError, "log_target must be a bool"),
    (lambda: xce.SigmoidFocalLoss(alpha=1.5), ValueError, "alpha must be at most 1"),
    (lambda: xce.SoftmaxFocalLoss(gamma=-2), ValueError, "gamma must be"),
    (lambda: xce.SoftmaxFocalLoss(axis="last"), TypeError, "axis must be an integer"),
])
def test_configuration_is_validated_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()

"""One signature per loss (xce issue 12): each gradient takes its loss's parameters plus ``cotangent=``."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import xce
from xce import grad
from xce._signatures import derivative_of
from xce.linear_distillation import value_and_grad_linear_distillation_loss

COTANGENT = inspect.Parameter("cotangent", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Array | None")

# (loss, its gradient, the loss's parameters the gradient does not take)
PAIRS = [
    (xce.cross_entropy, grad.cross_entropy_grad, ("return_stats",)),
    (xce.nll_loss, grad.nll_loss_grad, ()),
    (xce.softmax_focal_loss, grad.softmax_focal_loss_grad, ()),
    (xce.poly1_cross_entropy, grad.poly1_cross_entropy_grad, ()),
    (xce.binary_cross_entropy, grad.binary_cross_entropy_grad, ()),
    (xce.binary_cross_entropy_with_logits, grad.binary_cross_entropy_with_logits_grad, ()),
    (xce.multilabel_soft_margin_loss, grad.multilabel_soft_margin_loss_grad, ()),
    (xce.sigmoid_focal_loss, grad.sigmoid_focal_loss_grad, ()),
    (xce.kl_div_with_logits, grad.kl_div_with_logits_grad, ()),
    (xce.generalized_jsd, grad.generalized_jsd_grad, ()),
]


def _plus_cotangent(loss, drop=(), before="xp"):
    params = [p for p in inspect.signature(loss).parameters.values() if p.name not in drop]
    params.insert([p.name for p in params].index(before), COTANGENT)
    return params


@pytest.mark.parametrize(("loss", "grad_fn", "drop"), PAIRS, ids=[p[1].__name__ for p in PAIRS])
def test_gradient_takes_the_loss_parameters_plus_cotangent(loss, grad_fn, drop):
    sig = inspect.signature(grad_fn)
    assert list(sig.parameters.values()) == _plus_cotangent(loss, drop)
    assert sig.return_annotation == inspect.signature(loss).return_annotation
    assert grad_fn.__name__ == f"{loss.__name__}_grad"
    assert "Examples" in grad_fn.__doc__
    # xce.value_and_grad's function takes the same arguments
    assert list(inspect.signature(xce.value_and_grad(loss)).parameters.values()) == list(sig.parameters.values())


def test_fused_value_and_grad_takes_the_loss_parameters_plus_cotangent():
    fn = value_and_grad_linear_distillation_loss
    params = _plus_cotangent(xce.linear_distillation_loss, before="block_rows")
    assert list(inspect.signature(fn).parameters.values()) == params
    assert xce.value_and_grad(xce.linear_distillation_loss) is fn


def test_derived_gradient_binds_like_a_def():
    x, y = np.asarray([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]]), np.asarray([2, 0])
    w = np.asarray([1.0, 2.0, 0.5])
    by_name = grad.softmax_focal_loss_grad(x, y, gamma=1.5, weight=w, reduction="sum", cotangent=np.asarray(2.0))
    by_position = grad.softmax_focal_loss_grad(x, y, 1.5, w, -100, "sum", cotangent=np.asarray(2.0))
    np.testing.assert_array_equal(by_name, by_position)
    np.testing.assert_array_equal(grad.softmax_focal_loss_grad(x, y), grad.softmax_focal_loss_grad(x, y, gamma=2.0))
    with pytest.raises(TypeError, match=r"^softmax_focal_loss_grad\(\) got an unexpected keyword argument 'gama'"):
        grad.softmax_focal_loss_grad(x, y, gama=1.0)
    with pytest.raises(TypeError, match=r"^nll_loss_grad\(\) missing 1 required positional argument: 'target'"):
        grad.nll_loss_grad(x)
    with pytest.raises(TypeError, match=r"takes from 2 to 5 positional arguments but 6 were given"):
        grad.nll_loss_grad(x, y, None, -100, "mean", 1)
    with pytest.raises(TypeError, match="multiple values for argument 'weight'"):
        grad.nll_loss_grad(x, y, w, weight=w)


def test_value_and_grad_of_a_loss_whose_target_is_a_keyword():
    s, t = np.asarray([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]]), np.asarray([[1.0, 1.0, -1.0], [0.0, 3.0, 0.0]])
    labels = np.asarray([1, -100])
    loss, g = xce.value_and_grad(xce.generalized_jsd)(s, t, target=labels, beta=0.3, cotangent=np.asarray(2.0))
    assert float(loss) == float(xce.generalized_jsd(s, t, labels, beta=0.3))
    np.testing.assert_array_equal(g, grad.generalized_jsd_grad(s, t, labels, beta=0.3, cotangent=np.asarray(2.0)))


def test_implementation_must_name_the_derived_parameters():
    def loss(input, target, reduction="mean", *, xp=None):
        return input

    with pytest.raises(TypeError, match=r"must take the parameters \(input, target, reduction, cotangent, xp\)"):

        @derivative_of(loss)
        def loss_grad(input, target, *, cotangent, xp):
            return input

"""The error catalogue of issue 4 for the rest of the family: the binary / multi-label losses,
``one_hot`` and ``smooth_labels``, the focal losses, ``label_smoothing_mode``, ``kl_div`` and the
loss objects (``tests/test_errors.py`` covers ``cross_entropy`` / ``nll_loss`` / softmax).

Every bad argument raises ``ValueError`` / ``TypeError`` / ``IndexError`` with a message that names
the argument and the value (or shape, or dtype) received. Eager backends (NumPy, array-api-strict,
PyTorch, CuPy where present) are checked value by value; the lazy contract (JAX eager and under
``jax.jit``, Dask) is checked after: an invalid value gives NaN, never a plausible finite number,
and shape / dtype errors still raise at trace / graph-build time. Two hypothesis properties close
the file.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xce

from conftest import assert_close_to, to_numpy

lazy_xp_modules = [xce]

EAGER = ["numpy", "array_api_strict", "torch", "cupy", "torch-cuda", "cupy-standin"]
LAZY = ["jax", "jax-jit", "dask"]


def on_eager(test):
    """Run ``test`` on the eager backends, the value checks on (check_values=True on a GPU)."""
    return pytest.mark.usefixtures("values_read")(pytest.mark.parametrize("backend", EAGER, indirect=True)(test))


on_lazy = pytest.mark.parametrize("backend", LAZY, indirect=True)

BINARY = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "multilabel_soft_margin_loss",
          "sigmoid_focal_loss"]
WEIGHTED = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "multilabel_soft_margin_loss"]
SMOOTHED = ["binary_cross_entropy", "binary_cross_entropy_with_logits"]


def call(name, *args, **kwargs):
    """``xce.<name>`` looked up at call time (the lazy backends patch the module's attributes)."""
    return getattr(xce, name)(*args, **kwargs)


def _xy(b, shape=(2, 3), dtype="float64"):
    """Valid probabilities / logits in (0, 1) and 0/1 targets of ``shape``."""
    xp = b.xp
    x = np.linspace(0.1, 0.9, int(np.prod(shape))).reshape(shape)
    y = (np.arange(int(np.prod(shape))).reshape(shape) % 2).astype(np.float64)
    return b.asarray(x, getattr(xp, dtype)), b.asarray(y, getattr(xp, dtype))


def _dtype(b, name):
    dt = getattr(b.xp, name, None)
    if dt is None:
        pytest.skip(f"{b.name} has no {name}")
    return dt


def _lib(b):
    return {"numpy": "numpy", "array_api_strict": "array_api_strict", "torch": "torch", "torch-cuda": "torch",
            "cupy": "cupy", "cupy-standin": "cupy"}[b.name]


def _value(v):
    """How check_values_in prints a float it received (``float(value)`` in an f-string)."""
    return re.escape(str(float(v)))


# --- BCE on probabilities: values outside [0, 1] ---------------------------------------------


@on_eager
@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan"), float("inf"), -float("inf"), 1.0 + 1e-6])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_bce_probability_outside_unit_interval(backend, bad, dtype):
    xp = backend.xp
    p = np.asarray([[0.0, 0.5, 1.0], [0.25, bad, 0.75]])
    x = backend.asarray(p, getattr(xp, dtype))
    y = backend.asarray(np.ones((2, 3)), getattr(xp, dtype))
    received = float(np.asarray(bad, dtype=dtype))  # what the array holds after rounding
    msg = rf"input must lie in \[0\.0, 1\.0\]; got {_value(received)}\. binary_cross_entropy takes probabilities"
    for kwargs in ({}, {"reduction": "none"}, {"label_smoothing": 0.1},
                   {"weight": backend.asarray(np.zeros(3), getattr(xp, dtype))}):
        with pytest.raises(ValueError, match=msg):
            xce.binary_cross_entropy(x, y, **kwargs)


@on_eager
def test_bce_reports_the_first_bad_value(backend):
    x = backend.asarray([0.5, 2.0, -3.0, 7.0], backend.xp.float64)
    y = backend.asarray([1.0, 0.0, 1.0, 0.0], backend.xp.float64)
    with pytest.raises(ValueError, match=r"input must lie in \[0\.0, 1\.0\]; got 2\.0\."):
        xce.binary_cross_entropy(x, y)


@on_eager
def test_bce_boundary_probabilities_are_valid(backend):
    """0 and 1 are probabilities: PyTorch's -100 clamp, no error."""
    xp = backend.xp
    x = backend.asarray([0.0, 1.0, 0.0, 1.0], xp.float64)
    y = backend.asarray([1.0, 0.0, 0.0, 1.0], xp.float64)
    assert_close_to(xce.binary_cross_entropy(x, y, reduction="none"), [100.0, 100.0, 0.0, 0.0], dtype=xp.float64,
                    backend=backend)


# --- shapes ------------------------------------------------------------------------------


@on_eager
@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("t_shape", [(2,), (3,), (3, 2), (2, 3, 1), (1, 3), (6,), ()])
def test_binary_target_shape_mismatch(backend, name, t_shape):
    x, _ = _xy(backend)
    t = backend.asarray(np.zeros(t_shape), backend.xp.float64)
    msg = rf"target must have input's shape \(2, 3\) \(one value per element\); got shape {re.escape(str(t_shape))}"
    with pytest.raises(ValueError, match=msg):
        call(name, x, t)


@on_eager
@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("w_shape", [(4,), (2,), (3, 2), (1, 2, 3), (2, 3, 1), (2, 2)])
def test_weight_not_broadcastable(backend, name, w_shape):
    x, y = _xy(backend)
    w = backend.asarray(np.ones(w_shape), backend.xp.float64)
    msg = rf"^weight of shape {re.escape(str(w_shape))} does not broadcast to input's shape \(2, 3\)"
    with pytest.raises(ValueError, match=msg):
        call(name, x, y, weight=w)


@on_eager
@pytest.mark.parametrize("p_shape", [(2,), (4,), (3, 3), (1, 2, 3), (2, 2)])
def test_pos_weight_not_broadcastable(backend, p_shape):
    x, y = _xy(backend)
    pw = backend.asarray(np.ones(p_shape), backend.xp.float64)
    msg = rf"^pos_weight of shape {re.escape(str(p_shape))} does not broadcast to input's shape \(2, 3\)\. " \
          r"pos_weight runs along the last axis"
    with pytest.raises(ValueError, match=msg):
        xce.binary_cross_entropy_with_logits(x, y, pos_weight=pw)


@on_eager
@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("w_shape", [(), (3,), (1, 3), (2, 1), (2, 3)])
def test_broadcastable_weights_are_accepted(backend, name, w_shape):
    """The other side of the check: every shape that broadcasts to input's shape is accepted."""
    xp = backend.xp
    x, y = _xy(backend)
    base = call(name, x, y, reduction="sum")
    out = call(name, x, y, weight=backend.asarray(np.full(w_shape, 2.0), xp.float64), reduction="sum")
    assert_close_to(out, 2.0 * to_numpy(base), dtype=xp.float64, backend=backend)
    if name == "binary_cross_entropy_with_logits":
        call(name, x, y, pos_weight=backend.asarray(np.full(w_shape, 2.0), xp.float64))


# --- dtypes --------------------------------------------------------------------------------


@on_eager
@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("bad", ["bool", "complex128", "int64", "int32", "uint8"])
def test_binary_non_floating_input(backend, name, bad):
    _, y = _xy(backend)
    x = backend.asarray(np.zeros((2, 3), dtype=bad), _dtype(backend, bad))
    with pytest.raises(TypeError, match=rf"^input must be a real floating-point array; got dtype \S*{bad}\b"):
        call(name, x, y)


@on_eager
@pytest.mark.parametrize("name", BINARY)
def test_binary_complex_target(backend, name):
    x, _ = _xy(backend)
    t = backend.asarray(np.zeros((2, 3), dtype=np.complex128), _dtype(backend, "complex128"))
    with pytest.raises(TypeError, match=r"^target must hold real values in \[0, 1\]; got dtype \S*complex128"):
        call(name, x, t)


@on_eager
@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("dtype", ["bool", "int64", "uint8"])
def test_binary_bool_or_integer_target_is_accepted(backend, name, dtype):
    """Documented: 0/1 targets of a bool or integer dtype are cast, as for a floating target."""
    xp = backend.xp
    x, y = _xy(backend)
    t = backend.asarray(to_numpy(y).astype(dtype), _dtype(backend, dtype))
    assert_close_to(call(name, x, t, reduction="sum"), to_numpy(call(name, x, y, reduction="sum")),
                    dtype=xp.float64, backend=backend)


@on_eager
@pytest.mark.parametrize(("name", "which"), [(n, "weight") for n in WEIGHTED]
                         + [("binary_cross_entropy_with_logits", "pos_weight")])
@pytest.mark.parametrize("bad", ["int64", "bool", "complex128"])
def test_non_floating_weight(backend, name, which, bad):
    x, y = _xy(backend)
    w = backend.asarray(np.ones(3, dtype=bad), _dtype(backend, bad))
    with pytest.raises(TypeError, match=rf"^{which} must be a real floating-point array; got dtype \S*{bad}\b"):
        call(name, x, y, **{which: w})


# --- libraries -----------------------------------------------------------------------------


def _other_library(b):
    if b.name == "numpy":
        torch = pytest.importorskip("torch")
        return "torch", lambda a: torch.asarray(np.asarray(a))
    return "numpy", np.asarray


MIXED = [(n, w) for n in BINARY for w in ("input", "target")] + [(n, "weight") for n in WEIGHTED] + [
    ("binary_cross_entropy_with_logits", "pos_weight")]


@on_eager
@pytest.mark.parametrize(("name", "which"), MIXED)
def test_binary_losses_from_two_libraries(backend, name, which):
    x, y = _xy(backend)
    other, convert = _other_library(backend)
    args = {"input": x, "target": y}
    kwargs = {}
    if which in ("input", "target"):
        args[which] = convert(to_numpy(args[which]))
    else:
        kwargs[which] = convert(np.ones(3))
    mine = _lib(backend)
    article = "an" if mine[0] in "aeiou" else "a"
    msg = rf"^arrays from different libraries cannot be mixed \(.*\b{which} is a {other} array\b"
    with pytest.raises(TypeError, match=msg):
        call(name, args["input"], args["target"], **kwargs)
    # the message names the library of the other side too
    mine_name = "target" if which == "input" else "input"
    with pytest.raises(TypeError, match=rf"\b{mine_name} is {article} {mine} array"):
        call(name, args["input"], args["target"], **kwargs)


@on_eager
@pytest.mark.parametrize("name", BINARY)
def test_binary_python_list(backend, name):
    _, y = _xy(backend)
    msg = r"^input must be an array \(NumPy, PyTorch, JAX, CuPy, Dask or any Array API library\), got list"
    with pytest.raises(TypeError, match=msg):
        call(name, [[0.5, 0.5, 0.5]] * 2, y)


# --- hyper-parameters of the binary losses ---------------------------------------------------


@on_eager
@pytest.mark.parametrize("name", SMOOTHED)
@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf"), -1e-12, 1.0 + 1e-9])
def test_binary_label_smoothing_out_of_range(backend, name, eps):
    x, y = _xy(backend)
    with pytest.raises(ValueError, match=rf"^label_smoothing must lie in \[0, 1\]; got {re.escape(repr(eps))}\.$"):
        call(name, x, y, label_smoothing=eps)


@on_eager
@pytest.mark.parametrize("name", SMOOTHED)
@pytest.mark.parametrize("eps", ["0.1", None, [0.1], True])
def test_binary_label_smoothing_not_a_number(backend, name, eps):
    x, y = _xy(backend)
    msg = rf"^label_smoothing must be a float in \[0, 1\]; got {type(eps).__name__} {re.escape(repr(eps))}"
    with pytest.raises(TypeError, match=msg):
        call(name, x, y, label_smoothing=eps)


@on_eager
@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("reduction", ["avg", "batchmean", "MEAN", None])
def test_binary_unknown_reduction(backend, name, reduction):
    x, y = _xy(backend)
    msg = rf"^reduction must be one of 'none', 'mean', 'sum'; got {re.escape(repr(reduction))}\.$"
    with pytest.raises(ValueError, match=msg):
        call(name, x, y, reduction=reduction)


@on_eager
@pytest.mark.parametrize("alpha", [1.5, 2, 1.0 + 1e-9])
def test_sigmoid_focal_alpha_above_one(backend, alpha):
    x, y = _xy(backend)
    msg = rf"^alpha must be at most 1 \(or negative to disable the alpha term\); got {re.escape(repr(alpha))}\.$"
    with pytest.raises(ValueError, match=msg):
        xce.sigmoid_focal_loss(x, y, alpha=alpha)


@on_eager
@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_sigmoid_focal_alpha_not_finite(backend, alpha):
    x, y = _xy(backend)
    with pytest.raises(ValueError, match=rf"^alpha must be a finite float; got {re.escape(repr(alpha))}\.$"):
        xce.sigmoid_focal_loss(x, y, alpha=alpha)


@on_eager
def test_sigmoid_focal_alpha_edges_are_valid(backend):
    """alpha in [0, 1] or negative (torchvision's off switch) is accepted."""
    xp = backend.xp
    x, y = _xy(backend)
    off = xce.sigmoid_focal_loss(x, y, alpha=-1.0, reduction="sum")
    half = xce.sigmoid_focal_loss(x, y, alpha=0.5, reduction="sum")
    assert_close_to(half, 0.5 * to_numpy(off), dtype=xp.float64, backend=backend)
    xce.sigmoid_focal_loss(x, y, alpha=1.0)
    xce.sigmoid_focal_loss(x, y, alpha=0.0)


@on_eager
@pytest.mark.parametrize("loss", ["sigmoid_focal_loss", "softmax_focal_loss"])
@pytest.mark.parametrize("gamma", [-0.5, -1, -1e-12, float("nan"), float("inf"), -float("inf")])
def test_focal_gamma_negative_or_not_finite(backend, loss, gamma):
    x, y = _xy(backend)
    if loss == "softmax_focal_loss":
        y = backend.asarray([0, 2], backend.xp.int64)
    msg = rf"^gamma must be a finite float >= 0\.0; got {re.escape(repr(gamma))}\.$"
    with pytest.raises(ValueError, match=msg):
        call(loss, x, y, gamma=gamma)


@on_eager
@pytest.mark.parametrize("loss", ["sigmoid_focal_loss", "softmax_focal_loss"])
@pytest.mark.parametrize("gamma", ["2", None, True])
def test_focal_gamma_not_a_number(backend, loss, gamma):
    x, y = _xy(backend)
    if loss == "softmax_focal_loss":
        y = backend.asarray([0, 2], backend.xp.int64)
    msg = rf"^gamma must be a float >= 0\.0; got {type(gamma).__name__} {re.escape(repr(gamma))}"
    with pytest.raises(TypeError, match=msg):
        call(loss, x, y, gamma=gamma)


# --- label_smoothing_mode ----------------------------------------------------------------------


@on_eager
@pytest.mark.parametrize("mode", ["Uniform", "fairseq", "off-target", "", None])
@pytest.mark.parametrize("probabilities", [False, True])
def test_unknown_label_smoothing_mode(backend, mode, probabilities):
    xp = backend.xp
    x = backend.asarray(np.zeros((2, 3)), xp.float64)
    t = backend.asarray(np.full((2, 3), 1 / 3), xp.float64) if probabilities else backend.asarray([0, 2], xp.int64)
    msg = rf"^label_smoothing_mode must be one of 'uniform', 'off_target'; got {re.escape(repr(mode))}\.$"
    for eps in (0.0, 0.1):  # checked whether or not smoothing is on
        with pytest.raises(ValueError, match=msg):
            xce.cross_entropy(x, t, label_smoothing=eps, label_smoothing_mode=mode)


@on_eager
@pytest.mark.parametrize("eps", [0.1, 1.0, 1e-9])
@pytest.mark.parametrize("probabilities", [False, True])
def test_off_target_with_one_class(backend, eps, probabilities):
    xp = backend.xp
    x = backend.asarray(np.zeros((2, 1)), xp.float64)
    t = backend.asarray(np.ones((2, 1)), xp.float64) if probabilities else backend.asarray([0, 0], xp.int64)
    msg = rf"^label_smoothing={re.escape(repr(eps))} in the 'off_target' mode needs at least 2 classes .*; got 1\."
    with pytest.raises(ValueError, match=msg):
        xce.cross_entropy(x, t, label_smoothing=eps, label_smoothing_mode="off_target")
    # No smoothing, or the uniform mode, is fine with one class (the loss is 0).
    for kwargs in ({"label_smoothing": 0.0, "label_smoothing_mode": "off_target"},
                   {"label_smoothing": eps, "label_smoothing_mode": "uniform"}):
        assert_close_to(xce.cross_entropy(x, t, **kwargs), 0.0, dtype=xp.float64, backend=backend)


# --- one_hot -------------------------------------------------------------------------------


@on_eager
@pytest.mark.parametrize(("target", "value"), [([0, 3], 3), ([0, -1], -1), ([0, 1, 7, -5], 7),
                                               ([[0, 2], [-100, 1]], -100), ([2, 1, 0, 4], 4)])
def test_one_hot_out_of_range_reports_value(backend, target, value):
    t = backend.asarray(np.asarray(target), backend.xp.int64)
    msg = rf"^target must lie in \[0, 2\]; got {value}\. one_hot needs indices in \[0, 2\] for num_classes=3\."
    with pytest.raises(IndexError, match=msg):
        xce.one_hot(t, 3)
    with pytest.raises(IndexError, match=msg):
        xce.one_hot(t, 3, axis=0, dtype=backend.xp.float32)


@on_eager
@pytest.mark.parametrize(("dtype", "n_classes", "target", "bad"),
                         [("int8", 200, [0, 5, 127], None), ("int8", 200, [0, -3], -3), ("int16", 40000, [0, 7], None),
                          ("uint8", 100, [0, 150], 150), ("uint8", 300, [0, 255], None), ("int32", 3, [0, -7], -7)])
def test_one_hot_any_integer_dtype(request, backend, dtype, n_classes, target, bad):
    """No false alarms when num_classes exceeds the dtype's range; the true value when out of range."""
    xp = backend.xp
    t = backend.asarray(np.asarray(target, dtype=dtype), getattr(xp, dtype))
    if bad is None:
        out = xce.one_hot(t, n_classes, dtype=xp.float64)
        assert_close_to(out, np.eye(n_classes)[np.asarray(target)], dtype=xp.float64, backend=backend)
    else:
        msg = rf"^target must lie in \[0, {n_classes - 1}\]; got {bad}\. one_hot needs indices"
        with pytest.raises(IndexError, match=msg):
            xce.one_hot(t, n_classes)


@on_eager
@pytest.mark.parametrize("num_classes", [0, -1, -100])
def test_one_hot_num_classes_not_positive(backend, num_classes):
    t = backend.asarray([0, 0], backend.xp.int64)
    with pytest.raises(ValueError, match=rf"^num_classes must be at least 1; got {num_classes}\.$"):
        xce.one_hot(t, num_classes)


@on_eager
@pytest.mark.parametrize("num_classes", [3.0, 2.5, "3", None, True, [3]])
def test_one_hot_num_classes_not_an_integer(backend, num_classes):
    t = backend.asarray([0, 0], backend.xp.int64)
    msg = rf"^num_classes must be an integer; got {type(num_classes).__name__} {re.escape(repr(num_classes))}\.$"
    with pytest.raises(TypeError, match=msg):
        xce.one_hot(t, num_classes)


@on_eager
def test_one_hot_numpy_integer_num_classes_is_accepted(backend):
    xp = backend.xp
    out = xce.one_hot(backend.asarray([2, 0], xp.int64), np.int64(3), dtype=xp.float64)
    assert_close_to(out, [[0, 0, 1], [1, 0, 0]], dtype=xp.float64, backend=backend)


@on_eager
@pytest.mark.parametrize("bad", ["float64", "bool", "complex128"])
def test_one_hot_non_integer_target(backend, bad):
    t = backend.asarray(np.zeros(2, dtype=bad), _dtype(backend, bad))
    with pytest.raises(TypeError, match=rf"^target must hold integer class indices; got dtype \S*{bad}\b"):
        xce.one_hot(t, 3)


# --- smooth_labels -----------------------------------------------------------------------


@on_eager
@pytest.mark.parametrize("smoothing", [-0.1, 1.5, float("nan"), float("inf")])
def test_smooth_labels_smoothing_out_of_range(backend, smoothing):
    y = backend.asarray(np.eye(3), backend.xp.float64)
    with pytest.raises(ValueError, match=rf"^smoothing must lie in \[0, 1\]; got {re.escape(repr(smoothing))}\.$"):
        xce.smooth_labels(y, smoothing)


@on_eager
@pytest.mark.parametrize("smoothing", ["0.1", None, True])
def test_smooth_labels_smoothing_not_a_number(backend, smoothing):
    y = backend.asarray(np.eye(3), backend.xp.float64)
    msg = rf"^smoothing must be a float in \[0, 1\]; got {type(smoothing).__name__} {re.escape(repr(smoothing))}"
    with pytest.raises(TypeError, match=msg):
        xce.smooth_labels(y, smoothing)


@on_eager
@pytest.mark.parametrize("mode", ["fairseq", "Uniform", None, ""])
def test_smooth_labels_unknown_mode(backend, mode):
    y = backend.asarray(np.eye(3), backend.xp.float64)
    msg = rf"^mode must be one of 'uniform', 'off_target'; got {re.escape(repr(mode))}\.$"
    with pytest.raises(ValueError, match=msg):
        xce.smooth_labels(y, 0.1, mode=mode)


@on_eager
def test_smooth_labels_off_target_with_one_class(backend):
    y = backend.asarray(np.ones((2, 1)), backend.xp.float64)
    msg = r"^smoothing=0\.2 in the 'off_target' mode needs at least 2 classes .*got 1\."
    with pytest.raises(ValueError, match=msg):
        xce.smooth_labels(y, 0.2, mode="off_target")
    with pytest.raises(ValueError, match=msg):
        xce.smooth_labels(backend.asarray(np.ones((1, 4)), backend.xp.float64), 0.2, mode="off_target", axis=0)


# --- kl_div --------------------------------------------------------------------------------


@on_eager
@pytest.mark.parametrize("reduction", ["avg", "batch_mean", "MEAN", None, ""])
def test_kl_div_unknown_reduction(backend, reduction):
    q = backend.asarray(np.log(np.full((2, 3), 1 / 3)), backend.xp.float64)
    p = backend.asarray(np.full((2, 3), 1 / 3), backend.xp.float64)
    msg = rf"^reduction must be one of 'none', 'mean', 'sum', 'batchmean'; got {re.escape(repr(reduction))}\.$"
    with pytest.raises(ValueError, match=msg):
        xce.kl_div(q, p, reduction=reduction)


# --- loss objects: configuration checked when the object is built ---------------------------------

NAN = float("nan")
CONSTRUCTION = {
    "CrossEntropyLoss reduction": (lambda: xce.CrossEntropyLoss(reduction="avg"), ValueError,
                                   r"^reduction must be one of 'none', 'mean', 'sum'; got 'avg'\.$"),
    "CrossEntropyLoss label_smoothing": (lambda: xce.CrossEntropyLoss(label_smoothing=1.5), ValueError,
                                         r"^label_smoothing must lie in \[0, 1\]; got 1\.5\.$"),
    "CrossEntropyLoss label_smoothing NaN": (lambda: xce.CrossEntropyLoss(label_smoothing=NAN), ValueError,
                                             r"^label_smoothing must lie in \[0, 1\]; got nan\.$"),
    "CrossEntropyLoss label_smoothing_mode": (lambda: xce.CrossEntropyLoss(label_smoothing_mode="fairseq"), ValueError,
                                              r"^label_smoothing_mode must be one of 'uniform', 'off_target'; "
                                              r"got 'fairseq'\.$"),
    "CrossEntropyLoss ignore_index": (lambda: xce.CrossEntropyLoss(ignore_index=1.5), TypeError,
                                      r"^ignore_index must be an integer; got float 1\.5\.$"),
    "CrossEntropyLoss z_loss": (lambda: xce.CrossEntropyLoss(z_loss=-1e-4), ValueError,
                                r"^z_loss must be a finite float >= 0\.0; got -0\.0001\.$"),
    "CrossEntropyLoss axis": (lambda: xce.CrossEntropyLoss(axis="1"), TypeError,
                              r"^axis must be an integer; got str '1'\.$"),
    "NLLLoss reduction": (lambda: xce.NLLLoss(reduction="batchmean"), ValueError,
                          r"^reduction must be one of 'none', 'mean', 'sum'; got 'batchmean'\.$"),
    "NLLLoss ignore_index": (lambda: xce.NLLLoss(ignore_index=None), TypeError,
                             r"^ignore_index must be an integer; got NoneType None\.$"),
    "BCELoss reduction": (lambda: xce.BCELoss(reduction="avg"), ValueError,
                          r"^reduction must be one of 'none', 'mean', 'sum'; got 'avg'\.$"),
    "BCELoss label_smoothing": (lambda: xce.BCELoss(label_smoothing=NAN), ValueError,
                                r"^label_smoothing must lie in \[0, 1\]; got nan\.$"),
    "BCEWithLogitsLoss reduction": (lambda: xce.BCEWithLogitsLoss(reduction="MEAN"), ValueError,
                                    r"^reduction must be one of 'none', 'mean', 'sum'; got 'MEAN'\.$"),
    "BCEWithLogitsLoss label_smoothing": (lambda: xce.BCEWithLogitsLoss(label_smoothing=-0.1), ValueError,
                                          r"^label_smoothing must lie in \[0, 1\]; got -0\.1\.$"),
    "MultiLabelSoftMarginLoss reduction": (lambda: xce.MultiLabelSoftMarginLoss(reduction="batchmean"), ValueError,
                                           r"^reduction must be one of 'none', 'mean', 'sum'; got 'batchmean'\.$"),
    "KLDivLoss reduction": (lambda: xce.KLDivLoss(reduction="avg"), ValueError,
                            r"^reduction must be one of 'none', 'mean', 'sum', 'batchmean'; got 'avg'\.$"),
    "KLDivLoss log_target": (lambda: xce.KLDivLoss(log_target=1), TypeError,
                             r"^log_target must be a bool; got int 1\.$"),
    "SigmoidFocalLoss alpha": (lambda: xce.SigmoidFocalLoss(alpha=1.5), ValueError,
                               r"^alpha must be at most 1 .*; got 1\.5\.$"),
    "SigmoidFocalLoss gamma": (lambda: xce.SigmoidFocalLoss(gamma=-2.0), ValueError,
                               r"^gamma must be a finite float >= 0\.0; got -2\.0\.$"),
    "SigmoidFocalLoss reduction": (lambda: xce.SigmoidFocalLoss(reduction="avg"), ValueError,
                                   r"^reduction must be one of 'none', 'mean', 'sum'; got 'avg'\.$"),
    "SoftmaxFocalLoss gamma": (lambda: xce.SoftmaxFocalLoss(gamma=-0.5), ValueError,
                               r"^gamma must be a finite float >= 0\.0; got -0\.5\.$"),
    "SoftmaxFocalLoss ignore_index": (lambda: xce.SoftmaxFocalLoss(ignore_index=0.5), TypeError,
                                      r"^ignore_index must be an integer; got float 0\.5\.$"),
    "SoftmaxFocalLoss reduction": (lambda: xce.SoftmaxFocalLoss(reduction=None), ValueError,
                                   r"^reduction must be one of 'none', 'mean', 'sum'; got None\.$"),
}


@pytest.mark.parametrize("case", list(CONSTRUCTION))
def test_loss_object_validates_at_construction(case):
    """No array is needed: a bad configuration fails where it is written, not at the first call."""
    build, error, msg = CONSTRUCTION[case]
    with pytest.raises(error, match=msg):
        build()


@on_eager
def test_loss_object_checks_arrays_at_call_time(backend):
    """Array arguments are checked against the input when it is known: same errors as the function."""
    xp = backend.xp
    x, y = _xy(backend)
    loss = xce.BCEWithLogitsLoss(pos_weight=backend.asarray(np.ones(4), xp.float64))  # no input to check against yet
    with pytest.raises(ValueError, match=r"^pos_weight of shape \(4,\) does not broadcast to input's shape \(2, 3\)"):
        loss(x, y)
    with pytest.raises(ValueError, match=r"^input must lie in \[0\.0, 1\.0\]; got 2\.0\."):
        xce.BCELoss()(backend.asarray(np.full((2, 3), 2.0), xp.float64), y)
    with pytest.raises(ValueError, match=r"^weight of shape \(2,\) does not broadcast to input's shape \(2, 3\)"):
        xce.MultiLabelSoftMarginLoss(weight=backend.asarray(np.ones(2), xp.float64))(x, y)


# --- the lazy contract: JAX (eager and jit) and Dask ---------------------------------------------


def _bce_reference(p, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return -(y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))


@on_lazy
@pytest.mark.parametrize(("bad", "dtype"), [(1.5, "float64"), (-0.25, "float32"), (float("inf"), "float64"),
                                            (1.0 + 1e-6, "float32")])
def test_lazy_bce_probability_outside_unit_interval_is_nan(backend, bad, dtype):
    xp = backend.xp
    dt = getattr(xp, dtype)
    p = np.asarray([[0.0, 0.5, 1.0], [0.25, bad, 0.75]])
    y = np.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    x, t = backend.asarray(p, dt), backend.asarray(y, dt)
    expected = _bce_reference(p, y)
    expected[1, 1] = np.nan
    assert_close_to(xce.binary_cross_entropy(x, t, reduction="none"), expected, dtype=dt, backend=backend)
    w = backend.asarray(np.asarray([1.0, 0.0, 2.0]), dt)  # even a zero weight on that column keeps the NaN
    for kwargs in ({}, {"reduction": "sum"}, {"label_smoothing": 0.1}, {"weight": w},
                   {"weight": w, "reduction": "sum"}):
        out = xce.binary_cross_entropy(x, t, **kwargs)
        assert_close_to(out, np.nan, dtype=dt, backend=backend)


@on_lazy
def test_lazy_bce_valid_probabilities_are_not_nan(backend):
    """The NaN mask only hits invalid values: 0 and 1 keep PyTorch's clamped value."""
    xp = backend.xp
    p = np.asarray([0.0, 1.0, 0.3, 1.0])
    y = np.asarray([1.0, 0.0, 1.0, 1.0])
    out = xce.binary_cross_entropy(backend.asarray(p, xp.float64), backend.asarray(y, xp.float64), reduction="none")
    assert_close_to(out, _bce_reference(p, y), dtype=xp.float64, backend=backend)


@on_lazy
@pytest.mark.parametrize(("target", "bad_rows", "dtype"), [([1, 3], [1], "float64"), ([-1, 2, 0], [0], "float32"),
                                                           ([5, -7, 1, 0], [0, 1], "float64")])
def test_lazy_one_hot_out_of_range_is_nan(backend, target, bad_rows, dtype):
    xp = backend.xp
    dt = getattr(xp, dtype)
    t = np.asarray(target)
    expected = np.zeros((len(t), 3))
    for i, v in enumerate(t):
        if i in bad_rows:
            expected[i] = np.nan
        else:
            expected[i, v] = 1.0
    out = xce.one_hot(backend.asarray(t, xp.int64), 3, dtype=dt)
    assert_close_to(out, expected, dtype=dt, backend=backend)
    out = xce.one_hot(backend.asarray(t, xp.int64), 3, dtype=dt, axis=0)
    assert_close_to(out, expected.T, dtype=dt, backend=backend)


@on_lazy
@pytest.mark.parametrize(("dtype", "n_classes", "target", "nan"),
                         [("int8", 200, [0, 5], False), ("int8", 200, [0, -3], True), ("uint8", 100, [0, 150], True),
                          ("uint8", 300, [0, 255], False)])
def test_lazy_one_hot_any_integer_dtype(request, backend, dtype, n_classes, target, nan):
    xp = backend.xp
    expected = np.eye(n_classes)[np.asarray(target) % n_classes]
    if nan:
        expected[1] = np.nan
    out = xce.one_hot(backend.asarray(np.asarray(target, dtype=dtype), getattr(xp, dtype)), n_classes,
                      dtype=xp.float64)
    assert_close_to(out, expected, dtype=xp.float64, backend=backend)


def _lazy_bad_calls(b):
    xp = b.xp
    x = b.asarray(np.full((2, 3), 0.5), xp.float64)
    y = b.asarray(np.zeros((2, 3)), xp.float64)
    short = b.asarray(np.zeros((2, 2)), xp.float64)
    w4 = b.asarray(np.ones(4), xp.float64)
    ints = b.asarray(np.zeros((2, 3), dtype=np.int64), xp.int64)
    idx = b.asarray([0, 1], xp.int64)
    return {
        "bce target shape": (ValueError, r"target must have input's shape \(2, 3\) .*got shape \(2, 2\)",
                             lambda: xce.binary_cross_entropy(x, short)),
        "bce-logits target shape": (ValueError, r"target must have input's shape \(2, 3\) .*got shape \(2, 2\)",
                                    lambda: xce.binary_cross_entropy_with_logits(x, short)),
        "multilabel target shape": (ValueError, r"target must have input's shape \(2, 3\) .*got shape \(2, 2\)",
                                    lambda: xce.multilabel_soft_margin_loss(x, short)),
        "sigmoid focal target shape": (ValueError, r"target must have input's shape \(2, 3\) .*got shape \(2, 2\)",
                                       lambda: xce.sigmoid_focal_loss(x, short)),
        "bce weight": (ValueError, r"^weight of shape \(4,\) does not broadcast to input's shape \(2, 3\)",
                       lambda: xce.binary_cross_entropy(x, y, weight=w4)),
        "pos_weight": (ValueError, r"^pos_weight of shape \(4,\) does not broadcast to input's shape \(2, 3\)",
                       lambda: xce.binary_cross_entropy_with_logits(x, y, pos_weight=w4)),
        "bce integer input": (TypeError, r"^input must be a real floating-point array; got dtype \S*int64",
                              lambda: xce.binary_cross_entropy(ints, y)),
        "focal gamma": (ValueError, r"^gamma must be a finite float >= 0\.0; got -1\.0\.",
                        lambda: xce.sigmoid_focal_loss(x, y, gamma=-1.0)),
        "bce label_smoothing": (ValueError, r"^label_smoothing must lie in \[0, 1\]; got nan\.",
                                lambda: xce.binary_cross_entropy(x, y, label_smoothing=float("nan"))),
        "one_hot num_classes": (ValueError, r"^num_classes must be at least 1; got 0\.",
                                lambda: xce.one_hot(idx, 0)),
        "one_hot float target": (TypeError, r"^target must hold integer class indices; got dtype \S*float64",
                                 lambda: xce.one_hot(x, 3)),
        "off_target C=1": (ValueError, r"^label_smoothing=0\.1 in the 'off_target' mode needs at least 2 classes",
                           lambda: xce.cross_entropy(b.asarray(np.zeros((2, 1)), xp.float64),
                                                     b.asarray([0, 0], xp.int64), label_smoothing=0.1,
                                                     label_smoothing_mode="off_target")),
        "kl_div shape": (ValueError, r"^target of shape \(2, 2\) does not broadcast with input of shape \(2, 3\)",
                         lambda: xce.kl_div(x, short)),
    }


LAZY_CASES = ["bce target shape", "bce-logits target shape", "multilabel target shape", "sigmoid focal target shape",
              "bce weight", "pos_weight", "bce integer input", "focal gamma", "bce label_smoothing",
              "one_hot num_classes", "one_hot float target", "off_target C=1", "kl_div shape"]


@on_lazy
@pytest.mark.parametrize("case", LAZY_CASES)
def test_lazy_shape_and_config_errors_raise_at_trace_time(backend, case):
    """Under jax.jit the call only traces; on Dask a compute() inside the call would itself raise."""
    error, msg, bad_call = _lazy_bad_calls(backend)[case]
    with pytest.raises(error, match=msg):
        bad_call()


# --- properties ----------------------------------------------------------------------------

PROPERTY = settings(max_examples=5, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
on_property_backends = pytest.mark.parametrize(
    "backend", ["numpy", "array_api_strict", "torch", "jax", "cupy", "torch-cuda", "cupy-standin"], indirect=True)


def _close(a, b, rtol=1e-9, atol=1e-10):
    np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=rtol, atol=atol, equal_nan=True)


def _shape(data, backend):
    if backend.name == "jax":  # jax compiles each op per new shape: keep to two
        return data.draw(st.sampled_from([(4, 3), (1, 5)]), label="shape")
    return data.draw(st.integers(1, 5), label="N"), data.draw(st.integers(2, 6), label="C")


@on_property_backends
@PROPERTY
@given(data=st.data(), reduction=st.sampled_from(["mean", "sum", "none"]), eps=st.sampled_from([0.0, 0.2]),
       soft=st.booleans(), weighted=st.booleans())
def test_bce_with_logits_is_bce_of_sigmoid(backend, data, reduction, eps, soft, weighted):
    """binary_cross_entropy_with_logits(x, y) == binary_cross_entropy(sigmoid(x), y) for |x| <= 10."""
    xp = backend.xp
    shape = _shape(data, backend)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x = rng.uniform(-10.0, 10.0, size=shape)
    x.flat[0] = data.draw(st.sampled_from([10.0, -10.0, 0.0]), label="edge logit")
    y = rng.uniform(0.0, 1.0, size=shape) if soft else rng.integers(0, 2, size=shape).astype(np.float64)
    w = backend.asarray(rng.uniform(0.1, 3.0, size=shape[-1:]), xp.float64) if weighted else None
    p = 1.0 / (1.0 + np.exp(-x))
    kw = {"weight": w, "reduction": reduction, "label_smoothing": eps}
    t = backend.asarray(y, xp.float64)
    _close(xce.binary_cross_entropy_with_logits(backend.asarray(x, xp.float64), t, **kw),
           xce.binary_cross_entropy(backend.asarray(p, xp.float64), t, **kw))


@on_property_backends
@PROPERTY
@given(data=st.data(), fraction=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
       reduction=st.sampled_from(["mean", "sum", "none"]), probabilities=st.booleans(), weighted=st.booleans())
def test_off_target_is_uniform_with_rescaled_epsilon(backend, data, fraction, reduction, probabilities, weighted):
    """cross_entropy(ε, "off_target") == cross_entropy(ε·C/(C-1)) for ε <= (C-1)/C."""
    xp = backend.xp
    n, c = _shape(data, backend)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    eps = fraction * (c - 1) / c
    uniform_eps = min(1.0, eps * c / (c - 1))  # rounding may put (C-1)/C · C/(C-1) a hair above 1
    x = backend.asarray(rng.normal(scale=3.0, size=(n, c)), xp.float64)
    if probabilities:
        t = backend.asarray(rng.dirichlet(np.ones(c), size=n), xp.float64)
        ignore_index = -100
    else:
        ignore_index = 0 if data.draw(st.booleans(), label="ignore class 0") else -100
        t = backend.asarray(rng.integers(0, c, size=n), xp.int64)
    w = backend.asarray(rng.uniform(0.1, 3.0, size=c), xp.float64) if weighted else None
    kw = {"weight": w, "ignore_index": ignore_index, "reduction": reduction}
    _close(xce.cross_entropy(x, t, label_smoothing=eps, label_smoothing_mode="off_target", **kw),
           xce.cross_entropy(x, t, label_smoothing=uniform_eps, **kw), rtol=1e-12, atol=1e-12)

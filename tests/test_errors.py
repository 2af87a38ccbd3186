"""The error catalogue (issue 4): every bad argument raises ValueError / TypeError / IndexError
with a message naming the argument, what was received and what was expected.

Eager backends (NumPy, PyTorch, array-api-strict, CuPy where present) are checked value by
value; the lazy contract (JAX eager and under ``jax.jit``, Dask) is checked at the end: shape
and dtype errors raise at trace / graph-build time, out-of-range targets become NaN.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import xce

from conftest import GPU_BACKENDS, _make_backend, assert_close_to

lazy_xp_modules = [xce]

EAGER = ["numpy", "array_api_strict", "torch", "cupy", "torch-cuda", "cupy-standin"]
LOSSES = {"cross_entropy": xce.cross_entropy, "nll_loss": xce.nll_loss}


@pytest.fixture(params=EAGER)
def eager(request):
    """An eager backend; on a GPU under ``check_values=True`` (its values are otherwise not read)."""
    b = _make_backend(request.param)
    if b.name in GPU_BACKENDS:
        with xce.config(check_values=True):
            yield b
    else:
        yield b


@pytest.fixture(params=list(LOSSES))
def loss(request):
    """The loss by name, looked up at call time (the lazy backends patch ``xce``'s attributes)."""
    name = request.param
    return lambda *a, **kw: getattr(xce, name)(*a, **kw)


def _xt(b, shape=(2, 3), target=(0, 1)):
    return b.asarray(np.zeros(shape), b.xp.float64), b.asarray(np.asarray(target), b.xp.int64)


def _dtype(b, name):
    if name == "bfloat16" and b.name.startswith("torch"):
        import torch

        return torch.bfloat16
    dt = getattr(b.xp, name, None)
    if dt is None:
        pytest.skip(f"{b.name} has no {name}")
    return dt


# --- shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "expected"),
    [((2, 3), (3,), "(2,)"), ((2, 3), (2, 1), "(2,)"), ((2, 3, 4), (2, 5), "(2, 4)"), ((3,), (2,), "()"),
     ((2, 3), (), "(2,)")],
)
def test_target_batch_mismatch(eager, loss, x_shape, t_shape, expected):
    x = eager.asarray(np.zeros(x_shape), eager.xp.float64)
    t = eager.asarray(np.zeros(t_shape, dtype=np.int64), eager.xp.int64)
    msg = rf"target shape {re.escape(str(t_shape))} does not match input shape {re.escape(str(x_shape))}.*" \
          rf"expected {re.escape(expected)}"
    with pytest.raises(ValueError, match=msg):
        loss(x, t)


def test_probability_target_shape_mismatch(eager):
    x, _ = _xt(eager)
    q = eager.asarray(np.full((2, 4), 0.25), eager.xp.float64)
    with pytest.raises(ValueError, match=r"floating-point target must have input's shape \(2, 3\).*got shape \(2, 4\)"):
        xce.cross_entropy(x, q)


def test_floating_target_with_index_shape(eager):
    x, _ = _xt(eager)
    t = eager.asarray([0.0, 1.0], eager.xp.float64)
    msg = r"got shape \(2,\)\. For class indices use an integer dtype with shape \(2,\)"
    with pytest.raises(ValueError, match=msg):
        xce.cross_entropy(x, t)
    with pytest.raises(ValueError, match=r"floating-point target must have input's shape"):
        xce.nll_loss(x, t)


def test_nll_loss_rejects_probability_targets(eager):
    x, _ = _xt(eager)
    q = eager.asarray(np.full((2, 3), 1 / 3), eager.xp.float64)
    with pytest.raises(ValueError, match=r"target has input's shape \(2, 3\).*integer class indices of shape \(2,\)"):
        xce.nll_loss(x, q)


# --- dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["bool", "complex128"])
def test_bool_or_complex_target(eager, loss, bad):
    x, _ = _xt(eager)
    t = eager.asarray(np.zeros(2, dtype=bad), _dtype(eager, bad))
    with pytest.raises(TypeError, match=rf"target must hold integer class indices \(shape \(2,\)\).*got dtype .*{bad}"):
        loss(x, t)


@pytest.mark.parametrize("bad", ["bool", "complex128"])
def test_bool_or_complex_probability_shaped_target(eager, bad):
    x, _ = _xt(eager)
    q = eager.asarray(np.zeros((2, 3), dtype=bad), _dtype(eager, bad))
    with pytest.raises(TypeError, match=rf"read as class probabilities and must be floating-point; got dtype .*{bad}"):
        xce.cross_entropy(x, q)


def test_integer_probability_shaped_target(eager):
    x, _ = _xt(eager)
    t = eager.asarray(np.zeros((2, 3), dtype=np.int64), eager.xp.int64)
    with pytest.raises(TypeError, match=r"read as class probabilities and must be floating-point; got dtype .*int64"):
        xce.cross_entropy(x, t)


@pytest.mark.parametrize("bad", ["bool", "complex128", "int64", "int32", "uint8"])
def test_non_floating_input(eager, loss, bad):
    _, t = _xt(eager)
    x = eager.asarray(np.zeros((2, 3), dtype=bad), _dtype(eager, bad))
    with pytest.raises(TypeError, match=rf"input must be a real floating-point array; got dtype .*{bad}"):
        loss(x, t)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("bad", ["bool", "complex128", "int64"])
def test_non_floating_x_softmax_family(eager, fn, bad):
    x = eager.asarray(np.zeros((2, 3), dtype=bad), _dtype(eager, bad))
    with pytest.raises(TypeError, match=rf"x must be a real floating-point array; got dtype .*{bad}"):
        getattr(xce, fn)(x)


@pytest.mark.parametrize("bad", ["int64", "bool", "complex128"])
def test_weight_dtype(eager, loss, bad):
    x, t = _xt(eager)
    w = eager.asarray(np.ones(3, dtype=bad), _dtype(eager, bad))
    with pytest.raises(TypeError, match=rf"weight must be a real floating-point array; got dtype .*{bad}"):
        loss(x, t, weight=w)


# --- the class axis ------------------------------------------------------------------------


def test_zero_dimensional_input(eager, loss):
    x = eager.asarray(np.float64(1.0), eager.xp.float64)
    t = eager.asarray(np.int64(0), eager.xp.int64)
    with pytest.raises(ValueError, match=r"input must have a class axis; got a 0-d array.*\(C,\), \(N, C\)"):
        loss(x, t)


def test_zero_classes(eager, loss):
    x = eager.asarray(np.zeros((2, 0)), eager.xp.float64)
    _, t = _xt(eager)
    with pytest.raises(ValueError, match=r"input has zero classes along axis 1 \(shape \(2, 0\)\); need at least one"):
        loss(x, t)
    with pytest.raises(ValueError, match=r"input has zero classes along axis 0 \(shape \(0,\)\)"):
        loss(eager.asarray(np.zeros(0), eager.xp.float64), eager.asarray(np.int64(0), eager.xp.int64))


@pytest.mark.parametrize("axis", [2, -3, 7])
def test_axis_out_of_range(eager, loss, axis):
    x, t = _xt(eager)
    msg = rf"axis={axis} is out of range for input with 2 dimensions \(shape \(2, 3\)\)"
    with pytest.raises(ValueError, match=msg):
        loss(x, t, axis=axis)


@pytest.mark.parametrize("axis", [1.0, "1", True])
def test_axis_not_an_integer(eager, loss, axis):
    x, t = _xt(eager)
    with pytest.raises(TypeError, match=rf"axis must be an integer; got {type(axis).__name__}"):
        loss(x, t, axis=axis)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_axis_out_of_range(eager, fn):
    x = eager.asarray(np.zeros((2, 3)), eager.xp.float64)
    with pytest.raises(ValueError, match=r"axis=5 is out of range for an array with 2 dimensions"):
        getattr(xce, fn)(x, axis=5)


def test_logsumexp_repeated_axis(eager):
    x = eager.asarray(np.zeros((2, 3)), eager.xp.float64)
    with pytest.raises(ValueError, match=r"axis=\(0, -2\) repeats an axis"):
        xce.logsumexp(x, axis=(0, -2))


def test_check_axes_validator():
    from xce._validate import check_axes

    x = np.zeros((2, 3, 4))
    assert check_axes(x, None) is None
    assert check_axes(x, -1) == 2
    assert check_axes(x, (0, -1)) == (0, 2)
    assert check_axes(np.float64(1.0), -1) == -1  # 0-d: NumPy and PyTorch accept 0 and -1
    with pytest.raises(ValueError, match=r"axis=3 is out of range for an array with 3 dimensions.*\[-3, 2\]"):
        check_axes(x, 3)
    with pytest.raises(ValueError, match=r"axis=\(1, -2\) repeats an axis"):
        check_axes(x, (1, -2))
    with pytest.raises(TypeError, match="axis must be an integer; got float"):
        check_axes(x, 1.5)


# --- values --------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "value"), [([0, 3], 3), ([-1, 0], -1), ([0, 1, 2, 7, -5], 7), ([-100, 9], 9)])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_target_out_of_range_reports_value(eager, target, value, eps):
    xp = eager.xp
    x = eager.asarray(np.zeros((len(target), 3)), xp.float64)
    t = eager.asarray(np.asarray(target), xp.int64)
    msg = rf"target contains class index {value}, outside \[0, 2\] for 3 classes"
    with pytest.raises(IndexError, match=msg):
        xce.cross_entropy(x, t, label_smoothing=eps)
    with pytest.raises(IndexError, match=msg):
        xce.nll_loss(x, t)


def test_ignore_index_outside_range_is_not_an_error(eager):
    xp = eager.xp
    x = eager.asarray(np.zeros((3, 3)), xp.float64)
    out = xce.cross_entropy(x, eager.asarray([0, -1, 2], xp.int64), ignore_index=-1, reduction="none")
    assert_close_to(out, [np.log(3), 0.0, np.log(3)], dtype=xp.float64, backend=eager)
    with pytest.raises(IndexError, match="class index -1"):  # -1 is not the ignore_index here
        xce.cross_entropy(x, eager.asarray([0, -1, 2], xp.int64), ignore_index=5)


@pytest.mark.parametrize(("dtype", "n_classes", "target", "bad"),
                         [("uint8", 300, [0, 255], None), ("int8", 200, [0, 127], None), ("int8", 200, [0, -3], -3),
                          ("uint8", 5, [0, 200], 200), ("int16", 3, [0, 300], 300), ("int32", 3, [0, -7], -7)])
def test_target_range_any_integer_dtype(eager, dtype, n_classes, target, bad):
    """No false alarms when C exceeds the dtype's range; the true value when out of range."""
    xp = eager.xp
    x = eager.asarray(np.zeros((2, n_classes)), xp.float64)
    t = eager.asarray(np.asarray(target, dtype=dtype), getattr(xp, dtype))
    if bad is None:
        assert_close_to(xce.cross_entropy(x, t), np.log(n_classes), dtype=xp.float64, backend=eager)
    else:
        with pytest.raises(IndexError, match=rf"class index {bad}, outside \[0, {n_classes - 1}\]"):
            xce.cross_entropy(x, t)


# --- weight --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (2,), (1, 3), (3, 1), ()])
def test_weight_shape(eager, loss, shape):
    x, t = _xt(eager)
    w = eager.asarray(np.ones(shape), eager.xp.float64)
    msg = rf"weight must be a 1-D array with one entry per class, shape \(3,\); got shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=msg):
        loss(x, t, weight=w)


def test_weight_from_another_library(eager, loss):
    x, t = _xt(eager)
    if eager.name == "numpy":
        torch = pytest.importorskip("torch")
        w, lib = torch.ones(3, dtype=torch.float64), "torch"
    else:
        w, lib = np.ones(3), "numpy"
    with pytest.raises(TypeError, match=rf"cannot be mixed \(.*weight is a {lib} array\)"):
        loss(x, t, weight=w)


# --- hyper-parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), float("inf"), -1e-12])
def test_label_smoothing_out_of_range(eager, eps):
    x, t = _xt(eager)
    with pytest.raises(ValueError, match=rf"label_smoothing must lie in \[0, 1\]; got {re.escape(repr(eps))}"):
        xce.cross_entropy(x, t, label_smoothing=eps)


@pytest.mark.parametrize("eps", ["0.1", None, [0.1], True])
def test_label_smoothing_not_a_number(eager, eps):
    x, t = _xt(eager)
    with pytest.raises(TypeError, match=rf"label_smoothing must be a float in \[0, 1\]; got {type(eps).__name__}"):
        xce.cross_entropy(x, t, label_smoothing=eps)


@pytest.mark.parametrize("reduction", ["avg", "batchmean", "MEAN", None, ""])
def test_unknown_reduction(eager, loss, reduction):
    x, t = _xt(eager)
    msg = rf"reduction must be one of 'none', 'mean', 'sum'; got {re.escape(repr(reduction))}"
    with pytest.raises(ValueError, match=msg):
        loss(x, t, reduction=reduction)


@pytest.mark.parametrize("ignore_index", [1.5, 0.0, None, "1", True])
def test_ignore_index_not_an_integer(eager, loss, ignore_index):
    x, t = _xt(eager)
    with pytest.raises(TypeError, match=rf"ignore_index must be an integer; got {type(ignore_index).__name__}"):
        loss(x, t, ignore_index=ignore_index)


def test_ignore_index_numpy_integer_is_accepted(eager):
    x, _ = _xt(eager)
    t = eager.asarray([0, 2], eager.xp.int64)
    out = xce.cross_entropy(x, t, ignore_index=np.int64(2), reduction="sum")
    assert_close_to(out, np.log(3), dtype=eager.xp.float64, backend=eager)


@pytest.mark.parametrize("ignore_index", [0, 1, -1])
def test_ignore_index_with_probability_targets(eager, ignore_index):
    x, _ = _xt(eager)
    q = eager.asarray(np.full((2, 3), 1 / 3), eager.xp.float64)
    with pytest.raises(ValueError, match=rf"ignore_index={ignore_index} cannot be used with probability targets"):
        xce.cross_entropy(x, q, ignore_index=ignore_index)


# --- what is passed: libraries, devices, non-arrays ----------------------------------------


def _other_library(b):
    if b.name == "numpy":
        torch = pytest.importorskip("torch")
        return torch, "torch", lambda a: torch.asarray(np.asarray(a))
    return np, "numpy", np.asarray


@pytest.mark.parametrize("which", ["input", "target"])
def test_inputs_from_two_libraries(eager, loss, which):
    x, t = _xt(eager)
    _, other, convert = _other_library(eager)
    mine = {"numpy": "numpy", "array_api_strict": "array_api_strict", "torch": "torch", "torch-cuda": "torch",
            "cupy": "cupy", "cupy-standin": "cupy"}[eager.name]
    article = "an" if mine[0] in "aeiou" else "a"
    if which == "input":
        x = convert(np.zeros((2, 3)))
        msg = rf"different libraries cannot be mixed \(input is a {other} array, target is {article} {mine} array\)"
    else:
        t = convert(np.asarray([0, 1]))
        msg = rf"different libraries cannot be mixed \(input is {article} {mine} array, target is a {other} array\)"
    with pytest.raises(TypeError, match=msg):
        loss(x, t)


def _second_device(b):
    if b.name.startswith("torch"):
        import torch

        return torch.device("meta")
    if b.name == "array_api_strict":
        return b.xp.Device("device1")
    pytest.skip(f"no second device for {b.name} here")


@pytest.mark.parametrize("which", ["target", "weight"])
def test_arrays_on_different_devices(eager, loss, which):
    other = _second_device(eager)
    xp = eager.xp
    x, t = _xt(eager)
    kwargs = {}
    if which == "target":
        t = xp.asarray(np.asarray([0, 1]), device=other)
    else:
        kwargs["weight"] = xp.ones(3, dtype=xp.float64, device=other)
    msg = rf"{which} is on device .*{re.escape(str(other))}.* but input is on device .*; move it to"
    with pytest.raises(ValueError, match=msg):
        loss(x, t, **kwargs)


def test_probability_target_on_another_device(eager):
    other = _second_device(eager)
    xp = eager.xp
    x, _ = _xt(eager)
    q = xp.full((2, 3), 1 / 3, dtype=xp.float64, device=other)
    with pytest.raises(ValueError, match=rf"target is on device .*{re.escape(str(other))}.* but input is on device"):
        xce.cross_entropy(x, q)


def test_input_on_a_second_device(eager):
    other = _second_device(eager)
    xp = eager.xp
    x = xp.zeros((2, 3), dtype=xp.float64, device=other)
    _, t = _xt(eager)
    with pytest.raises(ValueError, match=rf"target is on device .* but input is on device .*{re.escape(str(other))}"):
        xce.cross_entropy(x, t)


def test_everything_on_the_meta_device_is_not_an_error():
    """Meta tensors hold no values: value checks are skipped, shapes still propagate."""
    torch = pytest.importorskip("torch")
    x = torch.zeros(4, 3, device="meta")
    t = torch.zeros(4, dtype=torch.int64, device="meta")
    for fn in (xce.cross_entropy, xce.nll_loss):
        out = fn(x, t, reduction="none", weight=torch.ones(3, device="meta"))
        assert out.device.type == "meta" and tuple(out.shape) == (4,)
    with pytest.raises(ValueError, match=r"target shape \(3,\) does not match"):
        xce.cross_entropy(x, t[:3])


def _meta_calls(torch):
    """Every loss, forward and backward, with the options that take other code paths (ignored
    targets, class and sample weights, smoothing, z-loss, soft cap, statistics, shift)."""
    n, c, d = 6, 5, 4

    def z(*shape, grad=False, dtype=None):
        return torch.zeros(*shape, device="meta", dtype=dtype, requires_grad=grad)

    x, h, w_lin = z(n, c, grad=True), z(n, d, grad=True), z(c, d, grad=True)
    t, q, p = z(n, dtype=torch.int64), torch.full((n, c), 1 / c, device="meta"), torch.full((n, c), 0.5, device="meta")
    cw, sw = torch.ones(c, device="meta"), torch.ones(n, device="meta")
    teacher = z(n, c)
    for r in ("mean", "sum", "none"):
        batch = "batchmean" if r == "mean" else r
        yield f"cross_entropy {r}", lambda r=r: xce.cross_entropy(x, t, cw, reduction=r, label_smoothing=0.1,
                                                                  z_loss=1e-4)
        yield f"cross_entropy probs {r}", lambda r=r: xce.cross_entropy(x, q, reduction=r)
        yield f"cross_entropy extras {r}", lambda r=r: xce.cross_entropy(x, t, reduction=r, softcap=30.0,
                                                                         sample_weight=sw, return_stats=True)[0]
        yield f"nll_loss {r}", lambda r=r: xce.nll_loss(torch.log_softmax(x, 1), t, reduction=r)
        yield f"softmax_focal_loss {r}", lambda r=r: xce.softmax_focal_loss(x, t, reduction=r)
        yield f"poly1_cross_entropy {r}", lambda r=r: xce.poly1_cross_entropy(x, t, reduction=r)
        yield f"binary_cross_entropy {r}", lambda r=r: xce.binary_cross_entropy(torch.sigmoid(x), p, reduction=r)
        yield f"binary_cross_entropy_with_logits {r}", lambda r=r: xce.binary_cross_entropy_with_logits(
            x, p, reduction=r)
        yield f"multilabel_soft_margin_loss {r}", lambda r=r: xce.multilabel_soft_margin_loss(x, p, reduction=r)
        yield f"sigmoid_focal_loss {r}", lambda r=r: xce.sigmoid_focal_loss(x, p, reduction=r)
        yield f"kl_div {batch}", lambda b=batch: xce.kl_div(torch.log_softmax(x, 1), q, reduction=b)
        yield f"kl_div_with_logits {batch}", lambda b=batch: xce.kl_div_with_logits(x, teacher, reduction=b)
        yield f"generalized_jsd {batch}", lambda b=batch: xce.generalized_jsd(x, teacher, reduction=b)
        yield f"linear_cross_entropy {r}", lambda r=r: xce.linear_cross_entropy(
            h, w_lin, t, reduction=r, weight=cw, sample_weight=sw, label_smoothing=0.1, z_loss=1e-4)
        yield f"linear_cross_entropy softcap stats {r}", lambda r=r: xce.linear_cross_entropy(
            h, w_lin, t, reduction=r, softcap=20.0, return_stats=True)[0]
        yield f"linear_cross_entropy shift {r}", lambda r=r: xce.linear_cross_entropy(
            z(2, 3, d, grad=True), w_lin, z(2, 3, dtype=torch.int64), reduction=r, shift=True)
        yield f"linear_distillation_loss {batch}", lambda b=batch: xce.linear_distillation_loss(
            h, w_lin, h.detach(), w_lin.detach(), t, reduction=b)


def test_no_loss_reads_a_value_on_the_meta_device():
    """The rule for accelerators (docs/semantics.md): no value is read on the host, so no
    device-to-host sync. Meta tensors hold no values and raise on any read (``.item()``,
    ``bool``, ``nonzero``): every loss, forward and backward, runs on them. (On a GPU machine
    ``benchmarks/gpu.py`` counts the syncs with ``torch.cuda.set_sync_debug_mode``.)"""
    torch = pytest.importorskip("torch")
    failed = []
    for name, call in _meta_calls(torch):
        try:
            out = call()
            assert out.device.type == "meta"
            (out.sum() if out.ndim else out).backward()
        except Exception as error:  # (collected: one report names every loss that reads)
            failed.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0]}")
    assert not failed, "\n".join(failed)


def test_value_and_grad_reads_no_value_on_the_meta_device():
    """The analytic gradients (``xce.value_and_grad``: no autograd, the fused linear sweep
    itself) read no value either."""
    torch = pytest.importorskip("torch")
    x, t = torch.zeros(6, 5, device="meta"), torch.zeros(6, dtype=torch.int64, device="meta")
    h, w = torch.zeros(6, 4, device="meta"), torch.zeros(5, 4, device="meta")
    t_ignored = torch.full((6,), -100, dtype=torch.int64, device="meta")
    calls = {
        "cross_entropy": lambda: xce.value_and_grad(xce.cross_entropy)(x, t, label_smoothing=0.1, z_loss=1e-4),
        "softmax_focal_loss": lambda: xce.value_and_grad(xce.softmax_focal_loss)(x, t),
        "linear_cross_entropy": lambda: xce.value_and_grad(xce.linear_cross_entropy)(
            h, w, t_ignored, weight=torch.ones(5, device="meta"), label_smoothing=0.1, block_rows=2),
        "linear_cross_entropy none": lambda: xce.value_and_grad(xce.linear_cross_entropy)(
            h, w, t, reduction="none", softcap=20.0, cotangent=torch.ones(6, device="meta")),
        "linear_distillation_loss": lambda: xce.value_and_grad(xce.linear_distillation_loss)(h, w, h, w, t),
    }
    for name, call in calls.items():
        loss, grads = call()
        assert loss.device.type == "meta", name
        assert all(g is None or g.device.type == "meta" for g in (grads if isinstance(grads, tuple) else (grads,)))


@pytest.mark.parametrize("which", ["input", "target", "weight"])
def test_python_list_instead_of_array(eager, loss, which):
    x, t = _xt(eager)
    args = {"input": x, "target": t, "weight": None}
    args[which] = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]] if which == "input" else [0, 1] if which == "target" else [1.0] * 3
    msg = rf"{which} must be an array \(NumPy, PyTorch, JAX, CuPy, Dask or any Array API library\), got list; " \
          rf"convert it first, e\.g\. numpy\.asarray\({which}\)"
    with pytest.raises(TypeError, match=msg):
        loss(args["input"], args["target"], weight=args["weight"])


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_python_list_softmax_family(fn):
    with pytest.raises(TypeError, match=r"x must be an array .*got list"):
        getattr(xce, fn)([1.0, 2.0])


@pytest.mark.parametrize("which", ["input", "target"])
def test_none_for_a_required_array(eager, loss, which):
    x, t = _xt(eager)
    args = {"input": x, "target": t, which: None}
    with pytest.raises(TypeError, match=rf"{which} must be an array .*got NoneType"):
        loss(args["input"], args["target"])


# --- the lazy contract: JAX (eager and jit) and Dask ---------------------------------------


def _bad_calls(b):
    xp = b.xp
    x = b.asarray(np.zeros((4, 3)), xp.float64)
    t = b.asarray([0, 1, 2, 0], xp.int64)
    f = b.asarray(np.zeros(4), xp.float64)
    return {
        "target shape": (ValueError, r"target shape \(3,\) does not match input shape \(4, 3\)",
                         lambda: xce.cross_entropy(x, t[:3])),
        "probability shape": (ValueError, r"floating-point target must have input's shape \(4, 3\).*got shape \(4, 2\)",
                              lambda: xce.cross_entropy(x, b.asarray(np.zeros((4, 2)), xp.float64))),
        "float index target": (ValueError, r"got shape \(4,\)\. For class indices use an integer dtype",
                               lambda: xce.cross_entropy(x, f)),
        "bool target": (TypeError, r"target must hold integer class indices.*got dtype .*bool",
                        lambda: xce.nll_loss(x, b.asarray(np.zeros(4, dtype=bool), xp.bool))),
        "integer input": (TypeError, r"input must be a real floating-point array; got dtype .*int64",
                          lambda: xce.cross_entropy(b.asarray(np.zeros((4, 3), dtype=np.int64), xp.int64), t)),
        "0-d input": (ValueError, r"input must have a class axis; got a 0-d array",
                      lambda: xce.nll_loss(b.asarray(np.float64(0.0), xp.float64), t)),
        "zero classes": (ValueError, r"input has zero classes along axis 1",
                         lambda: xce.cross_entropy(b.asarray(np.zeros((4, 0)), xp.float64), t)),
        "weight length": (ValueError, r"weight must be a 1-D array with one entry per class, shape \(3,\); got "
                                      r"shape \(4,\)",
                          lambda: xce.cross_entropy(x, t, weight=f)),
        "weight dtype": (TypeError, r"weight must be a real floating-point array",
                         lambda: xce.cross_entropy(x, t, weight=b.asarray([1, 1, 1], xp.int64))),
        "ignore_index with probabilities": (ValueError, r"ignore_index=1 cannot be used with probability targets",
                                            lambda: xce.cross_entropy(x, x, ignore_index=1)),
        "axis": (ValueError, r"axis=2 is out of range for input with 2 dimensions",
                 lambda: xce.cross_entropy(x, t, axis=2)),
        "label_smoothing": (ValueError, r"label_smoothing must lie in \[0, 1\]; got 1.5",
                            lambda: xce.cross_entropy(x, t, label_smoothing=1.5)),
        "reduction": (ValueError, r"reduction must be one of",
                      lambda: xce.nll_loss(x, t, reduction="avg")),
        "ignore_index type": (TypeError, r"ignore_index must be an integer; got float",
                              lambda: xce.cross_entropy(x, t, ignore_index=0.5)),
        "softmax dtype": (TypeError, r"x must be a real floating-point array",
                          lambda: xce.softmax(b.asarray([1, 2], xp.int64))),
    }


CASES = ["target shape", "probability shape", "float index target", "bool target", "integer input", "0-d input",
         "zero classes", "weight length", "weight dtype", "ignore_index with probabilities", "axis", "label_smoothing",
         "reduction", "ignore_index type", "softmax dtype"]


@pytest.mark.parametrize("case", CASES)
def test_lazy_shape_and_dtype_errors_raise_at_trace_time(backend, case):
    """Under jax.jit the call traces (no values); on Dask any compute() inside would raise."""
    if not backend.lazy:
        pytest.skip("the lazy contract is for JAX and Dask")
    exc, msg, call = _bad_calls(backend)[case]
    with pytest.raises(exc, match=msg):
        call()


@pytest.mark.parametrize("bad", [3, -1])
def test_lazy_out_of_range_target_is_nan(backend, bad):
    if not backend.lazy:
        pytest.skip("the lazy contract is for JAX and Dask")
    xp = backend.xp
    x = backend.asarray(np.zeros((3, 3)), xp.float64)
    t = backend.asarray([0, bad, 2], xp.int64)
    w = backend.asarray([1.0, 2.0, 3.0], xp.float64)
    lg3 = np.log(3)
    for kwargs in ({}, {"label_smoothing": 0.3}, {"weight": w}, {"ignore_index": 0}):
        out = xce.cross_entropy(x, t, reduction="none", **kwargs)
        first = 0.0 if kwargs.get("ignore_index") == 0 else lg3
        last = lg3 * (3.0 if "weight" in kwargs else 1.0)
        assert_close_to(out, [first, np.nan, last], dtype=xp.float64, backend=backend)
        for reduction in ("mean", "sum"):
            assert_close_to(xce.cross_entropy(x, t, reduction=reduction, **kwargs), np.nan, dtype=xp.float64,
                            backend=backend)
    assert_close_to(xce.nll_loss(x, t, reduction="none"), [0.0, np.nan, 0.0], dtype=xp.float64, backend=backend)
    for reduction in ("mean", "sum"):
        assert_close_to(xce.nll_loss(x, t, reduction=reduction, weight=w), np.nan, dtype=xp.float64, backend=backend)


@pytest.mark.parametrize(("dtype", "target", "nan"), [("uint8", [0, 200], True), ("int8", [0, -3], True),
                                                      ("uint8", [4, 1], False),
                                                      ("int32", [5, -100], True), ("int32", [4, -100], False)])
def test_lazy_out_of_range_any_integer_dtype(backend, dtype, target, nan):
    if not backend.lazy:
        pytest.skip("the lazy contract is for JAX and Dask")
    xp = backend.xp
    x = backend.asarray(np.zeros((2, 5)), xp.float64)
    t = backend.asarray(np.asarray(target, dtype=dtype), getattr(xp, dtype))
    expected = np.nan if nan else np.log(5)
    assert_close_to(xce.cross_entropy(x, t), expected, dtype=xp.float64, backend=backend)


def test_dask_stays_lazy_on_bad_values():
    """The result of an out-of-range target is a graph, not a computed (or raised) value."""
    da = pytest.importorskip("dask.array")
    x = da.zeros((4, 3), chunks=2)
    t = da.from_array(np.asarray([0, 5, 1, 2]), chunks=2)
    out = xce.cross_entropy(x, t, reduction="none")
    assert type(out).__module__.startswith("dask")
    np.testing.assert_array_equal(np.isnan(out.compute()), [False, True, False, False])


def test_jit_hyper_parameters_must_be_static():
    """Structural hyper-parameters stay static under jit; numeric ones may be traced (issue 15,
    item 5: the label_smoothing assertion here used to expect a TypeError)."""
    jax = pytest.importorskip("jax")
    x = jax.numpy.zeros((2, 3))
    t = jax.numpy.asarray([0, 1])
    traced = jax.jit(lambda x, t, e: xce.cross_entropy(x, t, label_smoothing=e))(x, t, 0.1)
    np.testing.assert_allclose(float(traced), np.log(3))
    with pytest.raises(TypeError, match=r"ignore_index must be a Python int, not an array.*static_argnames"):
        jax.jit(lambda x, t, i: xce.cross_entropy(x, t, ignore_index=i))(x, t, 1)
    out = jax.jit(xce.cross_entropy, static_argnames=("label_smoothing", "ignore_index"))(
        x, t, label_smoothing=0.1, ignore_index=1)
    np.testing.assert_allclose(float(out), np.log(3))

"""The rules for accelerators (docs/semantics.md), counted: no loss reads a value to the host on
CuPy arrays (a device→host sync on a GPU), forward or ``xce.value_and_grad``, on the first call
of a process as in steady state; ``check_values=True`` reads what its documentation says; and
the results are on the inputs' GPU, whichever is current.

Runs on the CuPy stand-in (``tests/fake_cupy``), which counts every host read and raises on one
while ``state.refuse`` is set; skipped where the real CuPy is importable (it cannot count).
"""

from __future__ import annotations

import numpy as np
import pytest

import xce
import xce.linear

from conftest import install_cupy_standin


@pytest.fixture
def cp():
    return install_cupy_standin()


@pytest.fixture
def refused(cp):
    """Host reads raise (as a sync would be an error) inside the block."""
    cp.state.refuse = True
    try:
        yield
    finally:
        cp.state.refuse = False


def _calls(cp):
    """Every public loss, with the options that take other code paths (ignored targets, class and
    sample weights, smoothing, z-loss, soft cap, statistics, shift)."""
    rng = np.random.default_rng(0)
    n, c, d = 6, 5, 4
    x, h, w_lin = (cp.asarray(rng.normal(size=s)) for s in ((n, c), (n, d), (c, d)))
    t = cp.asarray([0, 1, -100, 4, 2, 3])
    q = cp.asarray(rng.dirichlet(np.ones(c), size=n))
    p = cp.asarray(rng.uniform(size=(n, c)))
    cw, sw = cp.asarray(rng.uniform(0.5, 2, size=c)), cp.asarray(rng.uniform(0.5, 2, size=n))
    teacher = cp.asarray(rng.normal(size=(n, c)))
    h3, t3 = cp.asarray(rng.normal(size=(2, 3, d))), cp.asarray([[0, 1, 2], [3, -100, 4]])
    log_p, ones = xce.log_softmax(x, axis=1), cp.ones(n)
    for r in ("mean", "sum", "none"):
        batch = "batchmean" if r == "mean" else r
        yield f"cross_entropy {r}", lambda r=r: xce.cross_entropy(x, t, cw, reduction=r, label_smoothing=0.1,
                                                                  z_loss=1e-4)
        yield f"cross_entropy probs {r}", lambda r=r: xce.cross_entropy(x, q, reduction=r)
        yield f"cross_entropy extras {r}", lambda r=r: xce.cross_entropy(x, t, reduction=r, softcap=30.0,
                                                                         sample_weight=sw, return_stats=True)[0]
        yield f"nll_loss {r}", lambda r=r: xce.nll_loss(log_p, t, reduction=r)
        yield f"softmax_focal_loss {r}", lambda r=r: xce.softmax_focal_loss(x, t, reduction=r)
        yield f"poly1_cross_entropy {r}", lambda r=r: xce.poly1_cross_entropy(x, t, reduction=r)
        yield f"binary_cross_entropy {r}", lambda r=r: xce.binary_cross_entropy(p, q, reduction=r)
        yield f"binary_cross_entropy_with_logits {r}", lambda r=r: xce.binary_cross_entropy_with_logits(
            x, p, reduction=r)
        yield f"multilabel_soft_margin_loss {r}", lambda r=r: xce.multilabel_soft_margin_loss(x, p, reduction=r)
        yield f"sigmoid_focal_loss {r}", lambda r=r: xce.sigmoid_focal_loss(x, p, reduction=r)
        yield f"kl_div {batch}", lambda b=batch: xce.kl_div(log_p, q, reduction=b)
        yield f"kl_div_with_logits {batch}", lambda b=batch: xce.kl_div_with_logits(x, teacher, reduction=b)
        yield f"generalized_jsd {batch}", lambda b=batch: xce.generalized_jsd(x, teacher, reduction=b)
        yield f"linear_cross_entropy {r}", lambda r=r: xce.linear_cross_entropy(
            h, w_lin, t, reduction=r, weight=cw, sample_weight=sw, label_smoothing=0.1, z_loss=1e-4)
        yield f"linear_cross_entropy softcap stats {r}", lambda r=r: xce.linear_cross_entropy(
            h, w_lin, t, reduction=r, softcap=20.0, return_stats=True)[0]
        yield f"linear_cross_entropy shift {r}", lambda r=r: xce.linear_cross_entropy(
            h3, w_lin, t3, reduction=r, shift=True)
        yield f"linear_distillation_loss {batch}", lambda b=batch: xce.linear_distillation_loss(
            h, w_lin, h, w_lin, t, reduction=b)
    vg = xce.value_and_grad
    yield "value_and_grad cross_entropy", lambda: vg(xce.cross_entropy)(x, t, label_smoothing=0.1, z_loss=1e-4)
    yield "value_and_grad softmax_focal_loss", lambda: vg(xce.softmax_focal_loss)(x, t)
    yield "value_and_grad binary_cross_entropy_with_logits", lambda: vg(xce.binary_cross_entropy_with_logits)(x, p)
    yield "value_and_grad linear_cross_entropy", lambda: vg(xce.linear_cross_entropy)(
        h, w_lin, t, weight=cw, label_smoothing=0.1, block_rows=2)
    yield "value_and_grad linear_cross_entropy none", lambda: vg(xce.linear_cross_entropy)(
        h, w_lin, t, reduction="none", softcap=20.0, cotangent=ones)
    yield "value_and_grad linear_distillation_loss", lambda: vg(xce.linear_distillation_loss)(h, w_lin, h, w_lin, t)
    yield "softmax", lambda: xce.softmax(x, axis=1)
    yield "one_hot", lambda: xce.one_hot(t, c)
    yield "smooth_labels", lambda: xce.smooth_labels(xce.one_hot(t, c, dtype=cp.float64), 0.1)


def _reads(cp, calls):
    failed = []
    for name, call in calls:
        try:
            call()
        except Exception as error:  # (collected: one report names every loss that reads)
            failed.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0]}")
    return failed


def test_no_loss_reads_a_value_in_steady_state(cp):
    calls = list(_calls(cp))
    _reads(cp, calls)  # warm: caches filled
    cp.state.refuse = True
    try:
        failed = _reads(cp, calls)
    finally:
        cp.state.refuse = False
    assert not failed, "\n".join(failed)


def test_no_loss_reads_a_value_on_the_first_call(cp, monkeypatch):
    """The first call of a process too: what xce learns about a library (its slices are views,
    it has a scatter) is not learned by reading a probe on the device."""
    calls = list(_calls(cp))
    failed = []
    for name, call in calls:
        monkeypatch.setattr(xce.linear, "_ALIASING", {})
        monkeypatch.setattr(xce.linear, "_SCATTERS", {})
        cp.state.refuse = True
        try:
            failed += _reads(cp, [(name, call)])
        finally:
            cp.state.refuse = False
    assert not failed, "\n".join(failed)


def _arrays(out):
    if isinstance(out, (tuple, list)):
        return [a for part in out for a in _arrays(part)]
    return [] if out is None else [out]


def test_results_are_on_the_inputs_device(cp):
    """CuPy allocates every result on the *current* device, and array-api-compat ignores
    ``device=`` for CuPy: xce runs each call under its input's device."""
    with cp.cuda.Device(1):
        calls = list(_calls(cp))
    failed = []
    for name, call in calls:
        try:
            devices = {a.device.id for a in _arrays(call())}
        except ValueError as error:  # CuPy's refusal of an array of another device
            failed.append(f"{name}: {error}")
            continue
        if devices != {1}:
            failed.append(f"{name}: results on devices {sorted(devices)}, inputs on 1")
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("rows", [6, 96])
def test_check_values_reads_a_few_values_per_linear_call_whatever_the_size(cp, rows):
    """``check_values=True`` on a GPU: the target's range is checked and the ignored rows are
    dropped, for at most five reads per call (documented), the same for the forward and for
    ``xce.value_and_grad``, however many row blocks and vocabulary chunks the sweep has (the
    target rows of dW by the library's scatter-add, not by sorted runs whose range is read)."""
    rng = np.random.default_rng(1)
    h, w = cp.asarray(rng.normal(size=(rows, 4))), cp.asarray(rng.normal(size=(40, 4)))
    t = cp.asarray(np.where(np.arange(rows) % 3 == 0, -100, rng.integers(0, 40, size=rows)))
    counts = {}
    with xce.config(check_values=True):
        for name, call in {"forward": lambda: xce.linear_cross_entropy(h, w, t, block_rows=2),
                           "value_and_grad": lambda: xce.value_and_grad(xce.linear_cross_entropy)(
                               h, w, t, block_rows=2)}.items():
            call()
            cp.state.reads = 0
            call()
            counts[name] = cp.state.reads
    assert counts["forward"] <= 5
    assert counts["value_and_grad"] == counts["forward"], counts

"""Every implementation of cross entropy, forced, equals the definition: values and gradients,
over the option grid, on every backend where it applies; ``xce.explain`` names the one that
served each call (so a test cannot silently exercise another).

The implementations are named in :mod:`xce._policy`. Each is forced through the policy's own
switches: the thresholds (lowered so a small input takes the large-input path) and
``xce.config`` (``delegate=False`` for the definition, ``enabled=`` for blocks or one fused
formula). The reference is the definition as one fused formula in float64, differentiated by
the library's autodiff; ``tests/reference.py`` holds it to PyTorch elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

import xce
from xce import _policy

N, C = 24, 7
GRID = [(reduction, eps, weighted, z) for reduction in ("mean", "sum", "none") for eps in (0.0, 0.1)
        for weighted in (False, True) for z in (0.0, 1e-2)]
RTOL, ATOL = 1e-10, 1e-12


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C)) * 3
    t = rng.integers(0, C, size=N)
    t[[2, 11]] = -100  # ignored positions
    return x, t, rng.uniform(0.5, 2.0, size=C)


def _kwargs(reduction: str, eps: float, z: float) -> dict[str, object]:
    return {"reduction": reduction, "label_smoothing": eps, "z_loss": z}


@contextlib.contextmanager
def _definition(enabled: bool) -> Iterator[None]:
    with xce.config(delegate=False, enabled=enabled, block_rows=5):
        yield


# --- PyTorch ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _torch_forced(implementation: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from xce.adapters import torch as adapter

    if implementation == _policy.NATIVE:
        yield  # a small input: the kernel in one piece
    elif implementation == _policy.NATIVE_BLOCKS:
        monkeypatch.setattr(adapter, "DELEGATE_MAX_ELEMENTS_CPU", 16)
        with xce.config(enabled=True, block_rows=5):
            yield
    elif implementation == _policy.ANALYTIC_BACKWARD:
        monkeypatch.setattr(adapter, "DELEGATE_MAX_ELEMENTS_CPU_AUTOGRAD", 16)
        with xce.config(enabled=True, block_rows=5):
            yield
    else:
        with _definition(implementation == _policy.DEFINITION_BLOCKS):
            yield


TORCH = [_policy.NATIVE, _policy.NATIVE_BLOCKS, _policy.ANALYTIC_BACKWARD, _policy.DEFINITION_BLOCKS,
         _policy.DEFINITION]


def _torch_applies(implementation: str, z: float) -> bool:
    # PyTorch's kernel in blocks has no z-loss part (its logsumexp would be a second pass).
    return not (implementation == _policy.NATIVE_BLOCKS and z)


@pytest.mark.parametrize("implementation", TORCH)
@pytest.mark.parametrize(("reduction", "eps", "weighted", "z"), GRID)
def test_torch_implementation_equals_definition(implementation, reduction, eps, weighted, z, monkeypatch):
    torch = pytest.importorskip("torch")
    if not _torch_applies(implementation, z):
        pytest.skip(f"{implementation} does not serve z-loss")
    x_np, t_np, w_np = _data()
    t = torch.from_numpy(t_np)
    w = torch.from_numpy(w_np) if weighted else None
    kwargs = _kwargs(reduction, eps, z)
    # Blocks serve forwards without autograd; under autograd the analytic backward takes them.
    grad = implementation not in (_policy.NATIVE_BLOCKS, _policy.DEFINITION_BLOCKS)

    with _definition(enabled=False):
        x_ref = torch.from_numpy(x_np).requires_grad_(True)
        want = xce.cross_entropy(x_ref, t, w, **kwargs)
        want.sum().backward()

    x = torch.from_numpy(x_np).requires_grad_(grad)
    with _torch_forced(implementation, monkeypatch):
        explained = xce.explain(xce.cross_entropy, x, t, w, **kwargs)
    assert explained.implementation == implementation, str(explained)
    got = explained.result
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=RTOL, atol=ATOL)
    if grad:
        got.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), x_ref.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_torch_native_result_with_a_nan_is_recomputed_by_the_definition():
    """Non-finite logits are where PyTorch's kernel (NaN) and xce (the limit) differ: where
    values are read, the definition recomputes the call, and explain says so."""
    torch = pytest.importorskip("torch")
    x = torch.zeros(4, 3, dtype=torch.float64)
    x[0, 1] = float("inf")
    explained = xce.explain(xce.cross_entropy, x, torch.tensor([0, 1, 2, 0]), reduction="none")
    assert [s.implementation for s in explained.steps] == [_policy.NATIVE, _policy.DEFINITION]
    assert not explained.steps[0].used
    assert explained.implementation == _policy.DEFINITION
    assert explained.result[0] == float("inf")


# --- NumPy, array-api-strict, JAX -----------------------------------------------------------------

@pytest.mark.parametrize("library", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("implementation", [_policy.DEFINITION_BLOCKS, _policy.DEFINITION])
@pytest.mark.parametrize(("reduction", "eps", "weighted", "z"), GRID)
def test_eager_array_api_implementation_equals_definition(library, implementation, reduction, eps, weighted, z):
    xp = pytest.importorskip(library)
    x_np, t_np, w_np = _data()
    args = (xp.asarray(x_np), xp.asarray(t_np), xp.asarray(w_np) if weighted else None)
    kwargs = _kwargs(reduction, eps, z)
    with _definition(enabled=False):
        want = np.asarray(xce.cross_entropy(*args, **kwargs))
    with _definition(implementation == _policy.DEFINITION_BLOCKS):
        explained = xce.explain(xce.cross_entropy, *args, **kwargs)
    assert explained.implementation == implementation, str(explained)
    np.testing.assert_allclose(np.asarray(explained.result), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("reduction", "eps", "weighted", "z"), GRID)
def test_jax_analytic_backward_equals_definition(reduction, eps, weighted, z):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x_np, t_np, w_np = _data()
    x, t = jnp.asarray(x_np, dtype=jnp.float32), jnp.asarray(t_np)
    w = jnp.asarray(w_np, dtype=jnp.float32) if weighted else None
    kwargs = _kwargs(reduction, eps, z)

    def total(x):
        return jnp.sum(xce.cross_entropy(x, t, w, **kwargs))

    with xce.config(delegate=False):
        want, want_grad = jax.value_and_grad(total)(x)
    explained = xce.explain(xce.cross_entropy, x, t, w, **kwargs)
    assert explained.implementation == _policy.ANALYTIC_BACKWARD, str(explained)
    got, got_grad = jax.value_and_grad(total)(x)
    # float32 (JAX's default): the same formula's value, the derivative rule's gradient
    np.testing.assert_allclose(np.asarray(explained.result).sum(), np.asarray(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_grad), np.asarray(want_grad), rtol=1e-5, atol=1e-6)


def test_every_implementation_is_in_the_contract():
    """A new implementation joins this file: each named one is forced by a test above or, for
    the linear losses, by their own contract tests (fused sweep: tests/test_linear*.py; custom
    op: tests/test_linear_compiled.py; scan: tests/test_linear_jax.py), all against the
    unfused definition."""
    forced = {*TORCH, _policy.ANALYTIC_BACKWARD, _policy.FUSED_SWEEP, _policy.CUSTOM_OP, _policy.SCAN}
    assert set(_policy.IMPLEMENTATIONS) == forced


def test_explain_outside_a_call_records_nothing():
    torch = pytest.importorskip("torch")
    before = _policy.ACTIVE
    xce.cross_entropy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert _policy.ACTIVE == before == 0

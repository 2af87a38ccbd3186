"""optax's own classification-loss tests, run against :mod:`xce.optax`.

``optax_classification_test.py`` is optax 0.2.8's ``optax/losses/_classification_test.py``
with its losses import redirected to ``xce_optax_shims``: the names in ``shims.MAPPED`` are
:mod:`xce.optax`'s (run xce), the names in ``shims.NOT_MAPPED`` (losses xce does not have) run
optax's own code.

Its test classes are re-declared here (as subclasses, so pytest collects them in this
module) with the methods listed in ``XFAIL`` marked as strict expected failures that must
raise ``NotImplementedError``: the shim raises it for an optax argument that xce cannot
express. A test that starts passing, or fails any other way, fails this suite.

optax 0.2.8 does not import chex; the module needs jax, optax and absl only.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import unittest
import unittest.mock
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("absl.testing.parameterized")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import xce  # noqa: E402
import xce.optax as xce_optax  # noqa: E402

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # the vendored file imports the shim by its plain name
    sys.path.insert(0, str(_HERE))

import optax_classification_test as _vendored  # noqa: E402
import xce_optax_shims as shims  # noqa: E402

# ---------------------------------------------------------------------------------------
# Expected failures: one entry per generated test method ("Class.method"), with every
# optax argument in that test that does not map onto xce.

_AXES = "axis= as a tuple of axes does not map onto xce (one int class axis)"


XFAIL: dict[str, str] = {
    # softmax_cross_entropy
    # softmax_cross_entropy_with_integer_labels
    **{f"SoftmaxCrossEntropyWithIntegerLabelsTest.test_axes{i}": _AXES for i in range(8)},
    # poly_loss_cross_entropy: optax's tests all use probability labels
    # kl_divergence, kl_divergence_with_log_targets
    # sigmoid_focal_loss: every test jits it with gamma= / alpha= traced; xce takes them as 0-d arrays
}


@pytest.fixture(autouse=True)
def _optax_default_precision() -> Any:
    """Run in JAX's default 32-bit mode, as optax's tests do; tests/conftest.py turns x64 on."""
    with jax.enable_x64(False):
        yield


# ---------------------------------------------------------------------------------------
# Re-declare the vendored test classes here, marking the expected failures.


def _vendored_classes() -> dict[str, type[unittest.TestCase]]:
    return {
        name: obj
        for name, obj in vars(_vendored).items()
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and obj.__module__ == _vendored.__name__
    }


def _test_methods(cls: type[unittest.TestCase]) -> list[str]:
    return unittest.TestLoader().getTestCaseNames(cls)


def _expected_failure(method: Any, reason: str) -> Any:
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs)

    return pytest.mark.xfail(reason=reason, raises=NotImplementedError, strict=True)(wrapper)


def _redeclare(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
    namespace: dict[str, Any] = {"__module__": __name__, "__doc__": f"optax's {cls.__name__}, run against xce."}
    for method in _test_methods(cls):
        reason = XFAIL.get(f"{cls.__name__}.{method}")
        if reason is not None:
            namespace[method] = _expected_failure(getattr(cls, method), reason)
    return type(cls.__name__, (cls,), namespace)


for _name, _cls in _vendored_classes().items():
    globals()[_name] = _redeclare(_cls)
del _name, _cls


# ---------------------------------------------------------------------------------------
# optax's focal-loss tests again, with jax.jit told that gamma / alpha are static (optax's
# own file traces them): not part of optax's file; xce's values match with Python floats too.


class _StaticHyperparameterJax:
    """The ``jax`` module, with ``jit`` marking the loss hyper-parameters as static."""

    _STATIC = ("alpha", "gamma", "epsilon")

    def __getattr__(self, name: str) -> Any:
        return getattr(jax, name)

    def jit(self, fun: Any, **kwargs: Any) -> Any:
        params = inspect.signature(fun).parameters
        static = tuple(name for name in self._STATIC if name in params)
        return jax.jit(fun, static_argnames=static, **kwargs)


class SigmoidFocalLossStaticHyperparametersTest(_vendored.SigmoidFocalLossTest):
    """optax's SigmoidFocalLossTest with ``jax.jit(..., static_argnames=("gamma", "alpha"))``."""

    def setUp(self) -> None:
        super().setUp()
        patcher = unittest.mock.patch.object(_vendored, "jax", _StaticHyperparameterJax())
        patcher.start()
        self.addCleanup(patcher.stop)


# ---------------------------------------------------------------------------------------
# The shim really runs xce, and every name the vendored file uses is accounted for.

_LOGITS = np.asarray([[2.0, 1.0, 0.1], [0.5, 2.0, 0.3]], dtype=np.float32)
_PROBABILITIES = np.asarray([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], dtype=np.float32)
_INDICES = np.asarray([0, 2])

# optax name -> (the xce function it must call, arguments in optax's form)
_CALLS: dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]] = {
    "softmax_cross_entropy": ("cross_entropy", (_LOGITS, _PROBABILITIES), {}),
    "safe_softmax_cross_entropy": ("cross_entropy", (_LOGITS, _PROBABILITIES), {}),
    "softmax_cross_entropy_with_integer_labels": ("cross_entropy", (_LOGITS, _INDICES), {}),
    "sigmoid_binary_cross_entropy": ("binary_cross_entropy_with_logits", (_LOGITS, _PROBABILITIES), {}),
    "sigmoid_focal_loss": ("sigmoid_focal_loss", (_LOGITS, _PROBABILITIES), {"alpha": 0.25}),
    "poly_loss_cross_entropy": ("poly1_cross_entropy", (_LOGITS, _INDICES), {"epsilon": 2.0}),
    "kl_divergence": ("kl_div", (np.log(_PROBABILITIES + 0.1), _PROBABILITIES), {}),
    "kl_divergence_with_log_targets": ("kl_div", (np.log(_PROBABILITIES + 0.1), np.log(_PROBABILITIES + 0.2)), {}),
}


def test_softmax_cross_entropy_runs_xce(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = xce.cross_entropy

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(xce_optax, "cross_entropy", counting)
    out = shims.softmax_cross_entropy(_LOGITS, _PROBABILITIES)
    assert len(calls) == 1
    assert calls[0]["reduction"] == "none" and calls[0]["axis"] == -1
    np.testing.assert_allclose(out, optax.losses.softmax_cross_entropy(_LOGITS, _PROBABILITIES), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(_CALLS))
def test_every_mapped_name_runs_xce(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    target, args, kwargs = _CALLS[name]
    calls: list[int] = []
    real = getattr(xce, target)

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    # xce.optax calls the xce function by its module-level name (the focal loss's is private:
    # optax's name is the wrapper's)
    local = "_sigmoid_focal_loss" if target == "sigmoid_focal_loss" else target
    assert getattr(xce_optax, local) is real
    monkeypatch.setattr(xce_optax, local, counting)
    out = getattr(shims, name)(*args, **kwargs)
    assert calls == [1], f"shims.{name} did not call xce.{target} exactly once"
    assert isinstance(out, jax.Array)
    assert target in shims.MAPPED[name]


def test_mapped_and_not_mapped_names() -> None:
    assert not set(shims.MAPPED) & set(shims.NOT_MAPPED)
    assert set(_CALLS) == set(shims.MAPPED)
    for name in shims.MAPPED:
        fn = getattr(shims, name)
        assert fn.__module__ == xce_optax.__name__, f"{name} is not xce.optax's own wrapper"
        assert fn is not getattr(optax.losses, name)
    for name, why in shims.NOT_MAPPED.items():
        assert getattr(shims, name) is getattr(optax.losses, name), name
        assert why


def test_vendored_file_uses_the_shim() -> None:
    assert _vendored._classification is shims
    used = set(re.findall(r"\b_classification\.(\w+)\b(?!`)", Path(_vendored.__file__).read_text()))
    assert used == set(shims.MAPPED) | set(shims.NOT_MAPPED), used ^ (set(shims.MAPPED) | set(shims.NOT_MAPPED))


def test_vendored_file_is_optax_0_2_8_with_one_changed_import() -> None:
    if optax.__version__ != "0.2.8":
        pytest.skip(f"vendored from optax 0.2.8; optax {optax.__version__} is installed")
    original = Path(optax.__file__).parent / "losses" / "_classification_test.py"
    if not original.exists():
        pytest.skip("this optax install does not ship its tests")
    vendored = Path(_vendored.__file__).read_text().splitlines()
    body = vendored[next(i for i, line in enumerate(vendored) if line.startswith("# Copyright")) :]
    changed = [(a, b) for a, b in zip(original.read_text().splitlines(), body, strict=True) if a != b]
    assert changed == [
        (
            "from optax.losses import _classification",
            "import xce_optax_shims as _classification  # xce: was `from optax.losses import _classification`",
        )
    ]


def test_every_expected_failure_names_a_test() -> None:
    methods = {f"{name}.{m}" for name, cls in _vendored_classes().items() for m in _test_methods(cls)}
    assert set(XFAIL) <= methods, sorted(set(XFAIL) - methods)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        pytest.param(
            lambda: shims.softmax_cross_entropy(_LOGITS, _PROBABILITIES, axis=None), "axis", id="sce-axis-None"
        ),
        pytest.param(
            lambda: shims.softmax_cross_entropy_with_integer_labels(_LOGITS[None], _INDICES[None], axis=(1, 2)),
            "axis",
            id="sceil-axis-tuple",
        ),
        pytest.param(
            lambda: shims.poly_loss_cross_entropy(_LOGITS, _INDICES, where=np.ones(_LOGITS.shape, bool)),
            "where",
            id="poly-index-per-logit-where",
        ),
        pytest.param(
            lambda: shims.sigmoid_focal_loss(_LOGITS, _PROBABILITIES, alpha=-0.5), "alpha", id="focal-negative-alpha"
        ),
        pytest.param(
            lambda: shims.sigmoid_binary_cross_entropy(_LOGITS, _PROBABILITIES[0]), "labels", id="bce-broadcast-labels"
        ),
    ],
)
def test_unmapped_arguments_raise(call: Any, argument: str) -> None:
    with pytest.raises(NotImplementedError, match=rf"\b{argument}\b"):
        call()


def test_static_hyperparameters_reach_xce() -> None:
    """Static gamma / alpha / epsilon run xce under jit too (optax's own tests trace them)."""
    focal = jax.jit(shims.sigmoid_focal_loss, static_argnames=("gamma", "alpha"))(
        _LOGITS, _PROBABILITIES, gamma=1.5, alpha=0.3
    )
    np.testing.assert_allclose(
        focal, optax.losses.sigmoid_focal_loss(_LOGITS, _PROBABILITIES, gamma=1.5, alpha=0.3), rtol=2e-5
    )
    poly = jax.jit(shims.poly_loss_cross_entropy, static_argnames=("epsilon",))(_LOGITS, _INDICES, epsilon=2.0)
    one_hot = jnp.asarray(xce.one_hot(_INDICES, 3), dtype=jnp.float32)
    np.testing.assert_allclose(poly, optax.losses.poly_loss_cross_entropy(_LOGITS, one_hot, epsilon=2.0), rtol=1e-5)


def test_traced_hyperparameters_reach_xce() -> None:
    """Traced gamma / alpha (issue 15, item 5): one compilation serves several values, each
    matching optax's value and its gradient."""
    traces: list[int] = []

    def focal(logits: Any, gamma: Any, alpha: Any) -> Any:
        traces.append(1)
        return jnp.sum(shims.sigmoid_focal_loss(logits, _PROBABILITIES, gamma=gamma, alpha=alpha))

    step = jax.jit(jax.value_and_grad(focal))
    for gamma, alpha in ((1.5, 0.3), (0.5, 0.8), (2.0, 0.25)):
        value, grad = step(_LOGITS, gamma, alpha)
        want, want_grad = jax.value_and_grad(
            lambda x, g=gamma, a=alpha: jnp.sum(optax.losses.sigmoid_focal_loss(x, _PROBABILITIES, gamma=g, alpha=a))
        )(_LOGITS)
        np.testing.assert_allclose(value, want, rtol=2e-5)
        np.testing.assert_allclose(grad, want_grad, rtol=2e-4, atol=1e-6)
    assert len(traces) == 1


def test_where_reaches_xce_for_kl_and_poly_indices() -> None:
    """kl_divergence's where= is xce.kl_div's; poly-1 with class indices takes a per-example mask."""
    log_q, p = np.log(_PROBABILITIES + 0.1), _PROBABILITIES
    where = np.asarray([[True, False, True], [False, True, True]])
    np.testing.assert_allclose(shims.kl_divergence(log_q, p, where=where),
                               optax.losses.kl_divergence(log_q, p, where=where), rtol=1e-6)
    kept = np.asarray([True, False])
    poly = shims.poly_loss_cross_entropy(_LOGITS, _INDICES, epsilon=2.0, where=kept)
    one_hot = jnp.asarray(xce.one_hot(_INDICES, 3), dtype=jnp.float32)
    want = optax.losses.poly_loss_cross_entropy(_LOGITS, one_hot, epsilon=2.0)
    np.testing.assert_allclose(poly, jnp.where(kept, want, 0.0), rtol=1e-5)


def test_an_optax_training_step_with_xce_optax_equals_optax() -> None:
    """xce.optax in optax's idiom: a jitted SGD step of a linear classifier, loss and updated
    parameters equal to the same step with optax's own loss."""
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 5)), dtype=jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=16))
    params = {"w": jnp.asarray(rng.standard_normal((5, 3)), dtype=jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    optimizer = optax.sgd(0.1)

    def step(loss_fn: Any) -> Any:
        def loss(p: Any) -> Any:
            return loss_fn(x @ p["w"] + p["b"], y).mean()

        @jax.jit
        def update(p: Any, state: Any) -> Any:
            value, grads = jax.value_and_grad(loss)(p)
            updates, state = optimizer.update(grads, state, p)
            return value, optax.apply_updates(p, updates), state

        return update(params, optimizer.init(params))

    got = step(xce_optax.softmax_cross_entropy_with_integer_labels)
    want = step(optax.losses.softmax_cross_entropy_with_integer_labels)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-5, atol=1e-6)

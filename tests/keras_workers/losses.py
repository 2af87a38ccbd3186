"""Worker of tests/test_keras_losses.py: xce.keras's losses against Keras's own, on one backend.

Run as ``KERAS_BACKEND=<jax|torch> python losses.py`` (Keras picks its backend at import); prints
one JSON object, each check's name mapped to "ok" or the failure's traceback.
"""

from __future__ import annotations

import json
import traceback

import keras
import numpy as np

from xce import keras as xk

RNG = np.random.default_rng(0)
N, C = 12, 5
LOGITS = RNG.normal(size=(N, C)).astype("float32") * 2
PROBS = keras.ops.convert_to_numpy(keras.ops.softmax(LOGITS)).astype("float32")
PROBS[0] = [1.0, 0.0, 0.0, 0.0, 0.0]  # clipped by both
LABELS = RNG.integers(0, C, N)
LABELS[:3] = 4  # ignore_class=4 drops these
ONE_HOT = np.eye(C, dtype="float32")[LABELS]
BITS = (RNG.uniform(size=(N, C)) > 0.5).astype("float32")
SEQ_LOGITS, SEQ_LABELS = RNG.normal(size=(3, 4, C)).astype("float32"), RNG.integers(0, C, (3, 4))
SAMPLE_WEIGHT = RNG.uniform(0.1, 2.0, N).astype("float32")

# (name, xce loss, Keras's loss, y_true, y_pred): labels as Keras hands them over (floats) or integers
CASES = [
    ("sparse logits", xk.SparseCategoricalCrossentropy(from_logits=True),
     keras.losses.SparseCategoricalCrossentropy(from_logits=True), LABELS.astype("float32"), LOGITS),
    ("sparse logits (N, 1) labels", xk.SparseCategoricalCrossentropy(from_logits=True),
     keras.losses.SparseCategoricalCrossentropy(from_logits=True), LABELS[:, None], LOGITS),
    ("sparse probabilities", xk.SparseCategoricalCrossentropy(), keras.losses.SparseCategoricalCrossentropy(),
     LABELS, PROBS),
    ("sparse ignore_class", xk.SparseCategoricalCrossentropy(from_logits=True, ignore_class=4),
     keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=4), LABELS, LOGITS),
    ("sparse probabilities ignore_class", xk.SparseCategoricalCrossentropy(ignore_class=4),
     keras.losses.SparseCategoricalCrossentropy(ignore_class=4), LABELS, PROBS),
    ("sparse sum", xk.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"),
     keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"), LABELS, LOGITS),
    ("sparse none, sequences", xk.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
     keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None), SEQ_LABELS, SEQ_LOGITS),
    ("categorical logits smoothed", xk.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
     keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1), ONE_HOT, LOGITS),
    ("categorical probabilities smoothed", xk.CategoricalCrossentropy(label_smoothing=0.1),
     keras.losses.CategoricalCrossentropy(label_smoothing=0.1), ONE_HOT, PROBS),
    ("binary logits smoothed", xk.BinaryCrossentropy(from_logits=True, label_smoothing=0.2),
     keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2), BITS, LOGITS),
    ("binary probabilities", xk.BinaryCrossentropy(), keras.losses.BinaryCrossentropy(), BITS, PROBS),
    ("binary (N,) labels, (N, 1) logits, none", xk.BinaryCrossentropy(from_logits=True, reduction=None),
     keras.losses.BinaryCrossentropy(from_logits=True, reduction=None), LABELS % 2, LOGITS[:, :1]),
]


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def check_values_equal_keras_losses():
    for name, ours, theirs, y_true, y_pred in CASES:
        for weight in (None, SAMPLE_WEIGHT) if y_pred.shape[0] == N else (None,):  # one weight per sample
            a, b = _np(ours(y_true, y_pred, sample_weight=weight)), _np(theirs(y_true, y_pred, sample_weight=weight))
            assert a.shape == b.shape, (name, a.shape, b.shape)
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6, err_msg=name)


def check_class_axis_1_equals_keras_on_the_last_axis():
    # Keras's jax backend takes only axis=-1 for the sparse loss: compare with the classes moved last.
    ours = xk.SparseCategoricalCrossentropy(from_logits=True, axis=1, reduction=None)
    theirs = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    classes_second = SEQ_LOGITS.transpose(0, 2, 1)
    np.testing.assert_allclose(_np(ours(SEQ_LABELS, classes_second)), _np(theirs(SEQ_LABELS, SEQ_LOGITS)), rtol=2e-6,
                               atol=1e-6)


def check_calls_return_the_backends_arrays():
    out = xk.SparseCategoricalCrossentropy(from_logits=True).call(LABELS, keras.ops.convert_to_tensor(LOGITS))
    assert type(out) is type(keras.ops.convert_to_tensor(LOGITS)), type(out)


def check_z_loss_and_softcap_are_xces():
    import xce

    ours = xk.SparseCategoricalCrossentropy(from_logits=True, z_loss=1e-2, softcap=3.0)
    expected = xce.cross_entropy(LOGITS.astype("float64"), LABELS, z_loss=1e-2, softcap=3.0)
    np.testing.assert_allclose(_np(ours(LABELS, LOGITS)), expected, rtol=2e-6)
    try:
        xk.SparseCategoricalCrossentropy(z_loss=1e-2)
    except ValueError as e:
        assert "from_logits=True" in str(e)
    else:
        raise AssertionError("z_loss on probabilities was accepted")


def check_config_round_trips():
    for _, ours, *_ in CASES:
        config = ours.get_config()
        again = type(ours).from_config(config)
        assert again.get_config() == config, (config, again.get_config())
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
        assert type(restored) is type(ours) and restored.get_config() == config
    extras = xk.CategoricalCrossentropy(from_logits=True, z_loss=1e-3, softcap=30.0, name="ce").get_config()
    assert extras["z_loss"] == 1e-3 and extras["softcap"] == 30.0 and extras["name"] == "ce"


def _fit(loss, y, units):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(units)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss=loss)
    x = np.random.default_rng(1).normal(size=(64, 8)).astype("float32")
    history = model.fit(x, y(x), batch_size=64, epochs=6, shuffle=False, verbose=0)
    return np.asarray(history.history["loss"])


def check_fit_equals_fit_with_keras_losses():
    def classes(x):
        return x[:, :3].argmax(axis=1)

    def one_hot(x):
        return np.eye(3, dtype="float32")[classes(x)]

    def bits(x):
        return (x[:, :2] > 0).astype("float32")

    for ours, theirs, y, units in [
        (xk.SparseCategoricalCrossentropy(from_logits=True),
         keras.losses.SparseCategoricalCrossentropy(from_logits=True), classes, 3),
        (xk.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
         keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1), one_hot, 3),
        (xk.BinaryCrossentropy(from_logits=True), keras.losses.BinaryCrossentropy(from_logits=True), bits, 2),
    ]:
        a, b = _fit(ours, y, units), _fit(theirs, y, units)
        assert a[-1] < 0.8 * a[0], (type(ours).__name__, a)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=type(ours).__name__)


if __name__ == "__main__":
    report = {}
    for name, check in list(globals().items()):
        if name.startswith("check_"):
            try:
                check()
                report[name.removeprefix("check_")] = "ok"
            except Exception:
                report[name.removeprefix("check_")] = traceback.format_exc()
    print(json.dumps(report))

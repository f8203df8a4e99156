"""MultiTaskModel: the train step, labels, errors, metrics and saving."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import keras_mtl as mtl
from keras_mtl.models.toy import toy_mlp


def _data(n=64, tasks=("task_0", "task_1"), seed=0, out=100):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 250)).astype("float32")
    y = {t: rng.normal(size=(n, out)).astype("float32") for t in tasks}
    return x, y


def _weights(layer):
    return [v.numpy().copy() for v in layer.weights]


def test_predict_before_compile_then_fit():
    model = toy_mlp(2)
    x, y = _data()
    out = model.predict(x, verbose=0)
    assert set(out) == {"task_0", "task_1"}
    assert out["task_0"].shape == (64, 100)
    model.compile(optimizer="adam", loss="mse", balancer="gradnorm")
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    for key in ("loss", "task_0_loss", "task_1_loss", "task_0_weight", "task_1_weight"):
        assert key in history.history and len(history.history[key]) == 2
    w = model.balancer.task_weights().numpy()
    assert np.isclose(w.sum(), 2.0, atol=1e-5)
    only = model(x[:4], tasks=["task_1"])
    assert set(only) == {"task_1"}
    np.testing.assert_allclose(only["task_1"], model(x[:4])["task_1"], rtol=1e-6)


def test_training_improves_and_metrics_are_per_task():
    from keras_mtl.data.toy import toy_datasets

    train, test, _ = toy_datasets(sigmas=(1.0, 1.0), train_size=4096,
                                  test_size=512, batch_size=64)
    model = toy_mlp(2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse",
                  metrics={"task_0": ["mae"]})
    before = model.evaluate(test, verbose=0, return_dict=True)
    model.fit(train, epochs=5, verbose=0)
    after = model.evaluate(test, verbose=0, return_dict=True)
    assert "task_0_mae" in after and "task_1_mae" not in after
    assert after["task_0_loss"] < 0.8 * before["task_0_loss"]
    assert after["task_1_loss"] < 0.8 * before["task_1_loss"]


def test_missing_task_leaves_its_head_and_slots_untouched():
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse", balancer="gradnorm")
    x, y = _data()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    head1 = _weights(model.heads["task_1"])
    slots = {v.path: v.numpy().copy() for v in model.optimizer.variables
             if "head_task_1" in v.path}
    assert slots, "the optimizer should have slots for task_1's head"
    trunk = _weights(model.encoder)
    only0 = {"task_0": y["task_0"]}
    model.fit(x, only0, batch_size=32, epochs=1, verbose=0)
    for a, b in zip(head1, _weights(model.heads["task_1"])):
        np.testing.assert_array_equal(a, b)
    for v in model.optimizer.variables:
        if v.path in slots:
            np.testing.assert_array_equal(slots[v.path], v.numpy())
    assert any(not np.array_equal(a, b) for a, b in zip(trunk, _weights(model.encoder)))
    w = model.balancer.task_weights().numpy()
    assert np.all(w > 0) and np.isclose(w.sum(), 2.0, atol=1e-5)


def test_zero_sample_weight_marks_task_absent():
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse", balancer="gradnorm")
    x, y = _data()
    sw = {"task_0": np.ones(64, "float32"), "task_1": np.zeros(64, "float32")}
    model.fit(x, y, sample_weight=sw, batch_size=32, epochs=1, verbose=0)
    bal = model.balancer
    # task_1 was never labelled: no initial loss was recorded for it.
    np.testing.assert_array_equal(bal.has_initial_loss.numpy(), [1.0, 0.0])
    logs = model.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)
    assert logs["task_1_loss"] == 0.0 and logs["task_0_loss"] > 0.0


def test_per_task_sample_weight_scales_loss():
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse")
    x, y = _data()
    half = np.r_[np.ones(32), np.zeros(32)].astype("float32")
    logs = model.evaluate(x, y, sample_weight={"task_0": half, "task_1": np.ones(64, "float32")},
                          batch_size=64, verbose=0, return_dict=True)
    out = model.predict(x, verbose=0)
    per_example = np.mean((out["task_0"] - y["task_0"]) ** 2, axis=1)
    np.testing.assert_allclose(logs["task_0_loss"], np.sum(per_example * half) / 64, rtol=1e-4)


def test_unknown_label_key_is_a_clear_error():
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse")
    x, y = _data()
    y["depth"] = y.pop("task_1")
    with pytest.raises(ValueError, match=r"\['depth'\] match no head"):
        model.fit(x, y, epochs=1, verbose=0)


def test_head_shape_that_does_not_fit_its_loss_is_a_clear_error():
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse")
    x, y = _data()
    y["task_1"] = y["task_1"][:, :3]
    with pytest.raises(ValueError, match=r"Task 'task_1'.*\(32, 100\).*\(32, 3\)"):
        model.fit(x, y, epochs=1, verbose=0)


def test_sparse_labels_shape_check():
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss={
        "task_0": "mse",
        "task_1": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    x, y = _data()
    y["task_1"] = np.zeros((64,), "int32")
    model.fit(x, y, epochs=1, verbose=0)  # (B,) labels for (B, 100) logits fit
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss={
        "task_0": "mse",
        "task_1": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    y["task_1"] = np.zeros((64, 7), "int32")
    with pytest.raises(ValueError, match="Task 'task_1'"):
        model.fit(x, y, epochs=1, verbose=0)


def test_compile_errors():
    model = toy_mlp(2)
    with pytest.raises(ValueError, match="Unknown balancer name: 'gradnrom'"):
        model.compile(loss="mse", balancer="gradnrom")
    with pytest.raises(ValueError, match=r"Unknown keys: \['depth'\]"):
        model.compile(loss={"task_0": "mse", "depth": "mse"})
    with pytest.raises(ValueError, match="alpha"):
        mtl.balancers.GradNorm(alpha=-0.5)
    with pytest.raises(ValueError, match="Could not interpret balancer"):
        model.compile(loss="mse", balancer=3.0)
    with pytest.raises(ValueError, match="nonfinite"):
        model.compile(loss="mse", nonfinite="ignore")


def test_balancer_registry_round_trip():
    b = mtl.balancers.get("gradnorm")
    assert isinstance(b, mtl.balancers.GradNorm)
    g = mtl.balancers.GradNorm(alpha=0.3, min_weight=0.01)
    config = mtl.balancers.serialize(g)
    g2 = mtl.balancers.get(config)
    assert isinstance(g2, mtl.balancers.GradNorm)
    assert g2.alpha == 0.3 and g2.min_weight == 0.01
    assert repr(g2).startswith("GradNorm(alpha=0.3")


class _NaNAfter(keras.losses.Loss):
    """MSE that turns NaN from the `after`-th call on (a poisoned batch)."""

    def __init__(self, after, **kwargs):
        super().__init__(name="nan_after", **kwargs)
        self.after = after
        self.calls = tf.Variable(0)

    def call(self, y_true, y_pred):
        self.calls.assign_add(1)
        mse = tf.reduce_mean(tf.square(y_true - y_pred), axis=-1)
        # NaN added, not multiplied: before `after` the loss and its gradient
        # are finite (0 * NaN in a where's other branch would make the
        # gradient NaN, which the step rightly treats as non-finite too).
        return mse + tf.where(self.calls > self.after, np.nan, 0.0)


def test_nan_loss_raises_naming_the_task_and_does_not_poison_weights():
    model = toy_mlp(2)
    model.compile(optimizer="adam", balancer="gradnorm",
                  loss={"task_0": "mse", "task_1": _NaNAfter(2)})
    x, y = _data()
    with pytest.raises(FloatingPointError, match=r"\['task_1'\]"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    w = model.balancer.task_weights().numpy()
    assert np.all(np.isfinite(w)) and np.isclose(w.sum(), 2.0, atol=1e-5)
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_nan_loss_skip_policy_warns_and_continues():
    model = toy_mlp(2)
    model.compile(optimizer="adam", balancer="gradnorm", nonfinite="skip",
                  loss={"task_0": "mse", "task_1": _NaNAfter(1)})
    x, y = _data()
    with pytest.warns(RuntimeWarning, match="task_1"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert model.nonfinite_counts.numpy()[1] == 3
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_keras_save_load_round_trip_keeps_balancer_state(tmp_path):
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse",
                  balancer=mtl.balancers.GradNorm(alpha=0.5))
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.balancer, mtl.balancers.GradNorm)
    assert loaded.balancer.alpha == 0.5
    for name in ("task_weight_values", "initial_loss_values", "has_initial_loss"):
        np.testing.assert_array_equal(getattr(model.balancer, name).numpy(),
                                      getattr(loaded.balancer, name).numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["task_1"],
                               model.predict(x, verbose=0)["task_1"], rtol=1e-6)
    # Training resumes from the saved state: the next step is identical.
    model.fit(x[:16], y and {k: v[:16] for k, v in y.items()}, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x[:16], {k: v[:16] for k, v in y.items()}, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(model.balancer.task_weights(), loaded.balancer.task_weights(),
                               rtol=1e-6)


def test_accuracy_resolves_from_each_tasks_loss_like_a_keras_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = {"cls": rng.integers(0, 3, size=(64,)).astype("int32"),
         "bin": (x[:, :1] > 0).astype("float32")}
    keras.utils.set_random_seed(0)
    model = mtl.MultiTaskModel(keras.layers.Dense(8, activation="relu"),
                               {"cls": keras.layers.Dense(3), "bin": keras.layers.Dense(1)})
    model.compile(optimizer="adam",
                  loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        "bin": keras.losses.BinaryCrossentropy(from_logits=True)},
                  metrics={"cls": ["accuracy"], "bin": ["acc"]})
    assert isinstance(model.task_metrics["cls"][0], keras.metrics.SparseCategoricalAccuracy)
    assert isinstance(model.task_metrics["bin"][0], keras.metrics.BinaryAccuracy)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    out = model.predict(x, verbose=0)
    expected_cls = np.mean(np.argmax(out["cls"], -1) == y["cls"])
    expected_bin = np.mean((out["bin"] > 0.5).astype("float32") == y["bin"])
    assert logs["cls_accuracy"] == pytest.approx(expected_cls, abs=1e-6)
    assert logs["bin_accuracy"] == pytest.approx(expected_bin, abs=1e-6)


def test_eager_train_on_batch_with_numpy_labels_checks_shapes():
    model = toy_mlp(num_tasks=2, width=8, depth=1, seed=0)
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    x = np.ones((4, 250), "float32")
    y = {"task_0": np.ones((4, 100), "float32"), "task_1": np.zeros((4, 100), "float32")}
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    with pytest.raises(ValueError, match="does not fit the labels of shape"):
        model.train_on_batch(x, {**y, "task_1": np.zeros((4, 3), "float32")})

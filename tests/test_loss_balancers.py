"""Loss-only balancers: equal, static and uncertainty weighting; history callback."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import keras_mtl as mtl
from keras_mtl.callbacks import BalancerHistory
from keras_mtl.models.toy import toy_mlp


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 250)).astype("float32")
    return x, {"task_0": rng.normal(size=(n, 100)).astype("float32"),
               "task_1": 5 * rng.normal(size=(n, 100)).astype("float32")}


def test_static_weights_scale_the_network_gradient():
    x, y = _data()
    grads = {}
    for name, bal in (("static", mtl.balancers.StaticWeights({"task_0": 0.0, "task_1": 2.0})),
                      ("only1", mtl.balancers.StaticWeights([0.0, 1.0]))):
        keras.utils.set_random_seed(0)
        model = toy_mlp(2)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", balancer=bal)
        model(x)
        before = [v.numpy().copy() for v in model.encoder.trainable_variables]
        model.train_on_batch(x, y)
        grads[name] = [(b - v.numpy()) / 0.1 for b, v in zip(before, model.encoder.trainable_variables)]
    for a, b in zip(grads["static"], grads["only1"]):
        np.testing.assert_allclose(a, 2.0 * b, rtol=1e-3, atol=2e-5)


def test_static_weights_validation():
    for bad in ([1.0, -1.0], [float("nan"), 1.0], {"task_0": float("inf"), "task_1": 1.0}):
        with pytest.raises(ValueError, match="finite values >= 0"):
            mtl.balancers.StaticWeights(bad)
    for zero in ([0, 0], [0.0], {"task_0": 0.0, "task_1": 0.0}, []):
        with pytest.raises(ValueError, match="at least one weight > 0") as err:
            mtl.balancers.StaticWeights(zero)
        assert f"Received: weights={zero if isinstance(zero, dict) else [float(v) for v in zero]}" in str(err.value)
    model = toy_mlp(2)
    with pytest.raises(ValueError, match=r"Unknown: \['seg'\]"):
        model.compile(loss="mse", balancer=mtl.balancers.StaticWeights({"seg": 1.0, "task_0": 1.0}))
    with pytest.raises(ValueError, match="got 3 weights for 2 tasks"):
        model.compile(loss="mse", balancer=mtl.balancers.StaticWeights([1.0, 1.0, 1.0]))


def test_uncertainty_log_variance_step_is_the_closed_form():
    """d/ds [exp(-s) L + s] = 1 - exp(-s) L; one SGD step on s."""
    x, y = _data()
    lr = 0.1
    model = toy_mlp(2)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse",
                  balancer=mtl.balancers.UncertaintyWeighting(optimizer=keras.optimizers.SGD(lr)))
    model(x)
    model.balancer.log_variances.assign([0.3, -0.2])
    out = model(x, training=True)
    losses = np.array([np.mean((out[t].numpy() - y[t]) ** 2) for t in ("task_0", "task_1")])
    model.train_on_batch(x, y)
    s = np.array([0.3, -0.2])
    expected = s - lr * (1.0 - np.exp(-s) * losses)
    np.testing.assert_allclose(model.balancer.log_variances.numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(model.balancer.task_weights().numpy(), np.exp(-expected), rtol=1e-4)


def test_uncertainty_weights_converge_to_inverse_losses():
    """At the optimum of s for fixed L, exp(-s) = 1/L (w ~ 1/L, GradNorm section 4)."""
    bal = mtl.balancers.UncertaintyWeighting(optimizer=keras.optimizers.SGD(0.5))
    bal.build(["a", "b"])
    losses = tf.constant([0.5, 4.0])
    for _ in range(300):
        with tf.GradientTape() as tape:
            tape.watch(bal.log_variances.value)
            total = bal.combine(losses, tf.ones(2))
        bal.apply_learned_gradients(tape.gradient(total, [bal.log_variances.value]))
    np.testing.assert_allclose(bal.task_weights().numpy(), [2.0, 0.25], rtol=1e-3)


def test_balancer_history_records_every_step_and_writes_csv(tmp_path):
    x, y = _data(64)
    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse", balancer="uncertainty")
    path = tmp_path / "w.csv"
    history = BalancerHistory(csv_path=str(path))
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[history])
    steps, w = history.as_array()
    np.testing.assert_array_equal(steps, np.arange(9))
    np.testing.assert_allclose(w[-1], model.balancer.task_weights().numpy(), rtol=1e-6)
    lines = path.read_text().splitlines()
    assert lines[0] == "step,task_0,task_1" and len(lines) == 10
    with pytest.raises(ValueError, match="every"):
        BalancerHistory(every=0)

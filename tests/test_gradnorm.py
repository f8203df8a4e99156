"""GradNorm (Chen et al. 2018): Algorithm 1, its invariants and its toy result."""

import numpy as np
import pytest
import tensorflow as tf
import keras

import keras_mtl as mtl
from keras_mtl.callbacks import BalancerHistory
from keras_mtl.callbacks import mean_task_losses
from keras_mtl.models.toy import toy_mlp


def _batch(n=32, seed=0, scales=(1.0, 10.0)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 250)).astype("float32") / 50
    y = {f"task_{i}": (s * rng.normal(size=(n, 100))).astype("float32")
         for i, s in enumerate(scales)}
    return x, y


def _norms(model, x, y):
    """Unweighted ||grad_W L_i|| at the last shared kernel, computed directly."""
    kernel = model.balancer.find_kernel(model.encoder)
    out = []
    for task in model.task_names:
        with tf.GradientTape() as tape:
            pred = model(x, training=True)[task]
            loss = tf.reduce_mean(tf.reduce_mean(tf.square(pred - y[task]), -1))
        out.append(float(tf.norm(tape.gradient(loss, kernel))))
    losses = []
    pred = model(x, training=True)
    for task in model.task_names:
        losses.append(float(tf.reduce_mean(tf.square(pred[task] - y[task]))))
    return np.array(out), np.array(losses)


def test_weight_gradient_matches_finite_differences_and_autodiff():
    model = toy_mlp(2)
    model.compile(optimizer="sgd", loss="mse", balancer=mtl.balancers.GradNorm(alpha=0.7))
    x, y = _batch()
    model(x)
    bal = model.balancer
    bal.task_weight_values.assign([1.3, 0.7])
    bal.initial_loss_values.assign([2.0, 50.0])
    bal.has_initial_loss.assign([1.0, 1.0])
    norms, losses = _norms(model, x, y)
    present = tf.ones(2)
    closed = bal.weight_gradient(tf.constant(losses, "float32"), present,
                                 tf.constant(norms, "float32")).numpy()
    _, target = bal.target_norms(tf.constant(losses, "float32"), present,
                                 tf.constant(norms, "float32"))
    target = target.numpy()

    kernel = model.balancer.find_kernel(model.encoder)

    def l_grad(w):
        # G_i = ||grad_W (w_i L_i)|| recomputed through the network, target fixed.
        total = 0.0
        for i, task in enumerate(model.task_names):
            with tf.GradientTape() as tape:
                pred = model(x, training=True)[task]
                loss = w[i] * tf.reduce_mean(tf.square(pred - y[task]))
            total += abs(float(tf.norm(tape.gradient(loss, kernel))) - target[i])
        return total

    w0 = np.array([1.3, 0.7])
    h = 1e-3
    fd = np.array([(l_grad(w0 + h * e) - l_grad(w0 - h * e)) / (2 * h) for e in np.eye(2)])
    np.testing.assert_allclose(closed, fd, rtol=2e-3)

    # Autodiff through the double-backward G_i(w), target held constant.
    w = tf.Variable(w0, dtype="float32")
    with tf.GradientTape() as outer:
        terms = []
        for i, task in enumerate(model.task_names):
            with tf.GradientTape() as inner:
                pred = model(x, training=True)[task]
                loss = w[i] * tf.reduce_mean(tf.square(pred - y[task]))
            terms.append(tf.abs(tf.norm(inner.gradient(loss, kernel)) - target[i]))
        lg = tf.add_n(terms)
    np.testing.assert_allclose(closed, outer.gradient(lg, w).numpy(), rtol=1e-4)


def test_train_step_is_algorithm_1():
    """One step: the network sees sum w_i(t) L_i, then w moves by L_grad and renormalises."""
    x, y = _batch()
    lr_w = 0.05
    model = toy_mlp(2)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse",
                  balancer=mtl.balancers.GradNorm(alpha=1.0, optimizer=keras.optimizers.SGD(lr_w)))
    reference = toy_mlp(2)
    reference.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse",
                      balancer=mtl.balancers.StaticWeights([1.0, 1.0]))
    model(x)
    reference(x)
    reference.set_weights(model.get_weights()[: len(reference.get_weights())])
    for a, b in zip(model.network_variables(), reference.network_variables()):
        b.assign(a)

    norms, losses = _norms(model, x, y)
    model.train_on_batch(x, y)
    reference.train_on_batch(x, y)
    # Step 0: w(0) = 1, so the network update equals the equal-weights update:
    # L_grad's gradient does not leak into the network.
    for a, b in zip(model.network_variables(), reference.network_variables()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    bal = model.balancer
    np.testing.assert_allclose(bal.initial_loss_values.numpy(), losses, rtol=1e-4)
    # Expected update: r = 1 at t=0 so target = mean(G); sign(G - target) * norm.
    g = norms
    grad = np.sign(g - g.mean()) * norms
    w = np.ones(2) - lr_w * grad
    w = np.maximum(w, bal.min_weight)
    w = w * 2 / w.sum()
    np.testing.assert_allclose(bal.task_weights().numpy(), w, rtol=1e-4)
    np.testing.assert_allclose(bal.grad_norm_values.numpy(), g, rtol=1e-3)

    # Step 1: G_i uses the current w(1) and the initial losses are not re-taken.
    norms1, losses1 = _norms(model, x, y)
    w1 = bal.task_weights().numpy()
    model.train_on_batch(x, y)
    np.testing.assert_allclose(bal.initial_loss_values.numpy(), losses, rtol=1e-4)
    G = w1 * norms1
    ratio = losses1 / losses
    r = ratio / ratio.mean()
    target = G.mean() * r ** 1.0
    w = w1 - lr_w * np.sign(G - target) * norms1
    w = np.maximum(w, bal.min_weight)
    w = w * 2 / w.sum()
    np.testing.assert_allclose(bal.task_weights().numpy(), w, rtol=1e-3)


def test_target_rewards_the_slower_task():
    """r_i^alpha, not its inverse: a task with a higher loss ratio gets a higher target."""
    bal = mtl.balancers.GradNorm(alpha=1.5)
    bal.build(["a", "b"])
    bal.initial_loss_values.assign([1.0, 1.0])
    bal.has_initial_loss.assign([1.0, 1.0])
    losses = tf.constant([0.9, 0.3])  # task a trains slower
    norms = tf.constant([1.0, 1.0])
    _, target = bal.target_norms(losses, tf.ones(2), norms)
    r = np.array([0.9, 0.3]) / 0.6
    np.testing.assert_allclose(target.numpy(), 1.0 * r ** 1.5, rtol=1e-6)
    assert target.numpy()[0] > target.numpy()[1]


def test_initial_losses_and_loss_ratio_transform():
    bal = mtl.balancers.GradNorm(alpha=1.0, initial_losses={"seg": np.log(13.0)},
                                 loss_ratio_transform={"depth": "square"})
    bal.build(["seg", "depth"])
    np.testing.assert_allclose(bal.initial_loss_values.numpy()[0], np.log(13.0), rtol=1e-6)
    np.testing.assert_array_equal(bal.has_initial_loss.numpy(), [1.0, 0.0])
    # depth's first loss becomes its L(0); with 'square' its ratio is (L/L0)^2.
    bal.record_grad_norms(tf.ones(2))
    bal.update(tf.constant([1.0, 4.0]), tf.ones(2))
    np.testing.assert_allclose(bal.initial_loss_values.numpy(), [np.log(13.0), 4.0], rtol=1e-6)
    _, target = bal.target_norms(tf.constant([1.0, 2.0]), tf.ones(2), tf.ones(2))
    ratios = np.array([1.0 / np.log(13.0), (2.0 / 4.0) ** 2])
    w = bal.task_weights().numpy()
    expected = np.mean(w) * ratios / ratios.mean()
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="loss_ratio_transform"):
        mtl.balancers.GradNorm(loss_ratio_transform="cube")
    with pytest.raises(ValueError, match="unknown tasks"):
        mtl.balancers.GradNorm(initial_losses={"normals": 1.0}).build(["seg"])


def _fit_gradnorm(toy, alpha, epochs, seed=0, lr=1e-3):
    train, _, _ = toy
    keras.utils.set_random_seed(seed)
    model = toy_mlp(2, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse",
                  balancer=mtl.balancers.GradNorm(alpha=alpha))
    history = BalancerHistory()
    model.fit(train, epochs=epochs, verbose=0, callbacks=[history])
    return model, history


def test_weights_sum_to_T_and_stay_positive_after_every_update(toy_t2):
    # A large alpha drives weights towards zero: the floor must hold them.
    model, history = _fit_gradnorm(toy_t2, alpha=3.0, epochs=2)
    _, w = history.as_array()
    assert w.shape[0] == 2 * 8 + 1
    np.testing.assert_allclose(w.sum(axis=1), 2.0, atol=1e-5)
    assert np.all(w > 0)


def test_alpha_zero_equalises_gradient_norms_and_favours_the_small_task(toy_t2):
    model, history = _fit_gradnorm(toy_t2, alpha=0.0, epochs=6)
    train = toy_t2[0]
    x, y = next(iter(train))
    norms, _ = _norms(model, x, y)
    w = model.balancer.task_weights().numpy()
    # Unweighted norms differ by ~100x (sigma = 1 vs 100); weighted ones meet.
    assert norms[1] / norms[0] > 20
    weighted = w * norms
    assert abs(np.log(weighted[0] / weighted[1])) < 0.5 * abs(np.log(norms[0] / norms[1]))
    assert w[0] > w[1]
    # The time-averaged weights give the "GradNorm static" balancer.
    static = history.static_balancer()
    assert isinstance(static, mtl.balancers.StaticWeights)
    mean = history.mean_weights()
    assert mean["task_0"] > mean["task_1"] and np.isclose(sum(mean.values()), 2.0, atol=1e-5)


@pytest.fixture
def deterministic_ops():
    from tensorflow.python.framework import config

    tf.config.experimental.enable_op_determinism()
    yield
    config.disable_op_determinism()


def test_same_seed_same_weight_trajectory(deterministic_ops):
    from keras_mtl.data.toy import toy_datasets

    def run(seed):
        # A fresh pipeline per run (a dataset's reshuffle advances per pass),
        # built after seeding (tf.data shuffles combine with the global seed).
        keras.utils.set_random_seed(seed)
        toy = toy_datasets(sigmas=(1.0, 100.0), train_size=512, test_size=64,
                           batch_size=64, seed=seed)
        return _fit_gradnorm(toy, alpha=0.12, epochs=2, seed=seed)

    _, h1 = run(3)
    _, h2 = run(3)
    np.testing.assert_array_equal(h1.as_array()[1], h2.as_array()[1])
    _, h3 = run(4)
    assert not np.array_equal(h1.as_array()[1], h3.as_array()[1])


def test_gradnorm_beats_equal_weights_on_the_t2_toy_problem():
    """Chen et al. 2018, Figure 2 (top), in a short run."""
    from keras_mtl.data.toy import toy_datasets

    keras.utils.set_random_seed(0)
    train, test, _ = toy_datasets(sigmas=(1.0, 100.0), train_size=10_000,
                                  test_size=1000, batch_size=100, seed=0)
    results = {}
    for name, balancer in (("equal", "equal"),
                           ("gradnorm", mtl.balancers.GradNorm(alpha=0.12))):
        keras.utils.set_random_seed(0)
        model = toy_mlp(2, seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", balancer=balancer)
        initial = mean_task_losses(model, test)
        model.fit(train, epochs=10, verbose=0)
        results[name] = mean_task_losses(model, test) / initial
    equal, gradnorm = results["equal"], results["gradnorm"]
    print("task-normalised test loss ratios", results)
    # Both runs learn the dominant task...
    assert equal[1] < 0.95 and gradnorm[1] < 0.95
    # ...GradNorm's whole run learns (task-normalised loss below T = 2)...
    assert gradnorm.sum() < 1.95
    # ...and beats equal weights, under which task 1 suppresses task 0.
    assert gradnorm.sum() < equal.sum() - 0.15
    assert gradnorm[0] < equal[0]


def test_initial_losses_are_taken_once_not_every_epoch(toy_t2):
    """L_i(0) is the first labelled step's loss, kept across epochs and fits."""
    train, _, _ = toy_t2
    first = {}

    class FirstBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if not first:
                first.update({k: float(v) for k, v in logs.items()})

    model = toy_mlp(2)
    model.compile(optimizer="adam", loss="mse", balancer=mtl.balancers.GradNorm(alpha=0.12))
    model.fit(train, epochs=3, verbose=0, callbacks=[FirstBatch()])
    model.fit(train, epochs=1, verbose=0)
    np.testing.assert_allclose(model.balancer.initial_loss_values.numpy(),
                               [first["task_0_loss"], first["task_1_loss"]], rtol=1e-5)

"""Gradient discriminator: double backprop, reversal, normalisation, schedule."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.callbacks import ReversalStrengthScheduler
from keras_mtl.callbacks.adversary import reversal_schedule
from keras_mtl.layers import GradientDiscriminator

N = 5  # examples per task


class Tiny:
    """z = tanh(x W); head_t(z) = z V_t; L_t = mean((head_t - y_t)^2); float64."""

    def __init__(self, strength):
        rng = np.random.default_rng(1)
        self.x = rng.normal(size=(N, 4))
        self.y = [rng.normal(size=(N, 2)) for _ in range(2)]
        self.encoder = keras.layers.Dense(3, activation="tanh", dtype="float64")
        self.heads = [keras.layers.Dense(2, dtype="float64") for _ in range(2)]
        self.disc = GradientDiscriminator(2, hidden_units=6, reversal_strength=strength,
                                          epsilon=1e-9, dtype="float64")
        self.disc_loss()  # builds everything
        self.network = self.encoder.trainable_variables + [
            v for h in self.heads for v in h.trainable_variables]

    def disc_loss(self):
        """L_d on g_t = dL_t/dz (double backprop: g stays differentiable)."""
        with tf.GradientTape(persistent=True) as inner:
            z = self.encoder(self.x)
            inner.watch(z)
            losses = [tf.reduce_mean((h(z) - y) ** 2) for h, y in zip(self.heads, self.y)]
        g = tf.concat([inner.gradient(l, z) for l in losses], axis=0)  # (2N, 3)
        labels = np.repeat([0, 1], N)
        logits = self.disc(g, training=True)
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    def gradients(self, variables):
        with tf.GradientTape() as tape:
            loss = self.disc_loss()
        return [np.zeros(v.shape) if g is None else g.numpy()
                for g, v in zip(tape.gradient(loss, variables), variables)]

    def finite_differences(self, variables, h=1e-6):
        out = []
        for v in variables:
            base = v.numpy().copy()
            fd = np.zeros_like(base)
            for i in np.ndindex(base.shape):
                for sign in (1, -1):
                    shifted = base.copy()
                    shifted[i] += sign * h
                    v.assign(shifted)
                    fd[i] += sign * float(self.disc_loss()) / (2 * h)
            v.assign(base)
            out.append(fd)
        return out


def _flat(arrays):
    return np.concatenate([a.ravel() for a in arrays])


def test_double_backprop_matches_finite_differences_with_reversal():
    tiny = Tiny(strength=1.0)
    fd = _flat(tiny.finite_differences(tiny.network))
    assert np.abs(fd).max() > 1e-4  # the discriminator loss depends on the network
    grad = _flat(tiny.gradients(tiny.network))
    # The network receives the reversed gradient: -lambda dL_d/dw_N.
    np.testing.assert_allclose(grad, -fd, rtol=1e-5, atol=1e-8)
    tiny.disc.set_reversal_strength(0.5)
    np.testing.assert_allclose(_flat(tiny.gradients(tiny.network)), -0.5 * fd,
                               rtol=1e-5, atol=1e-8)
    # The discriminator itself descends its loss: plain gradient, not reversed.
    d_vars = tiny.disc.trainable_variables
    np.testing.assert_allclose(_flat(tiny.gradients(d_vars)),
                               _flat(tiny.finite_differences(d_vars)), rtol=1e-5, atol=1e-8)


def test_zero_strength_gives_the_network_no_gradient():
    tiny = Tiny(strength=0.0)
    grad = _flat(tiny.gradients(tiny.network))
    assert np.all(grad == 0.0)
    assert np.abs(_flat(tiny.gradients(tiny.disc.trainable_variables))).max() > 1e-4


def test_per_location_normalisation_and_shapes():
    disc = GradientDiscriminator(3, hidden_units=8)
    rng = np.random.default_rng(2)
    g = rng.normal(size=(2, 4, 4, 5)).astype("float32") * 1e-7
    logits = disc(g).numpy()
    assert logits.shape == (2, 4, 4, 3)
    # Scale of each location's gradient does not matter, only its direction.
    scale = rng.uniform(0.1, 1e4, size=(2, 4, 4, 1)).astype("float32")
    np.testing.assert_allclose(disc(g * scale).numpy(), logits, rtol=1e-4, atol=1e-5)
    assert disc(g[:, 0, 0, :]).shape == (2, 3)
    np.testing.assert_allclose(disc(g[:, 0, 0, :]).numpy(), logits[:, 0, 0, :],
                               rtol=1e-5, atol=1e-6)
    # An all-zero gradient gives finite logits and finite gradients.
    zeros = tf.zeros((2, 3, 5))
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        out = disc(zeros)
        total = tf.reduce_sum(out)
    assert np.all(np.isfinite(out.numpy()))
    assert np.all(np.isfinite(tape.gradient(total, zeros).numpy()))


def test_discriminator_validation_and_config():
    with pytest.raises(ValueError, match="reversal_strength=1.5"):
        GradientDiscriminator(2, reversal_strength=1.5)
    with pytest.raises(ValueError, match="num_tasks=1"):
        GradientDiscriminator(1)
    disc = GradientDiscriminator(4, hidden_units=7, reversal_strength=0.3, epsilon=1e-6)
    clone = GradientDiscriminator.from_config(disc.get_config())
    assert (clone.num_tasks, clone.hidden_units, clone.epsilon) == (4, 7, 1e-6)
    assert float(clone.strength.numpy()) == pytest.approx(0.3)
    assert not clone.strength.trainable


def test_reversal_schedule_values():
    assert reversal_schedule(0.0) == 0.0
    assert reversal_schedule(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert reversal_schedule(0.5) == pytest.approx(math.tanh(2.5))  # 2/(1+e^-2x)-1 = tanh x
    values = [reversal_schedule(p / 10) for p in range(11)]
    assert all(b > a for a, b in zip(values, values[1:]))


def test_scheduler_sets_strength_during_fit():
    disc = GradientDiscriminator(2, hidden_units=2, reversal_strength=1.0)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(disc.strength.numpy()))

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    model.fit(x, y, batch_size=2, epochs=2, verbose=0,
              callbacks=[ReversalStrengthScheduler(discriminator=disc, max_strength=0.8),
                         Record()])
    expected = [0.8 * reversal_schedule(s / 8) for s in range(8)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="discriminator=None"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[ReversalStrengthScheduler()])


def _small_se_model(adversarial=True):
    """Conv -> task BN -> ReLU -> task SE -> residual adapter conv, 1x1 heads."""
    from keras_mtl.layers import (ResidualAdapter, TaskBatchNormalization,
                                  TaskSequential, TaskSqueezeExcite)
    from keras_mtl.model import MultiTaskModel

    encoder = TaskSequential([
        keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
        TaskBatchNormalization(2),
        keras.layers.ReLU(),
        TaskSqueezeExcite(2, ratio=4),
        ResidualAdapter(2, layer=keras.layers.Conv2D(16, 3, padding="same")),
        keras.layers.ReLU(),
    ])
    heads = {"seg": keras.layers.Conv2D(3, 1), "depth": keras.layers.Conv2D(1, 1)}
    disc = GradientDiscriminator(2, hidden_units=8) if adversarial else None
    return MultiTaskModel(encoder, heads, discriminator=disc, discriminator_weight=0.1)


def _pixels(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 8, 8, 3)).astype("float32")
    seg = np.digitize(x[..., 0], [0.33, 0.66]).astype("int32")
    return x, {"seg": seg, "depth": x[..., 1:2] * 2.0 - x[..., 2:3]}


def test_se_model_with_adversary_trains_and_reports_discriminator():
    keras.utils.set_random_seed(0)
    x, y = _pixels(32)
    model = _small_se_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss={"seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        "depth": "mse"})
    history = model.fit(x, y, batch_size=8, epochs=8, verbose=0).history
    for task in ("seg", "depth"):
        losses = history[f"{task}_loss"]
        assert losses[-1] < 0.6 * losses[0], (task, losses)
    acc = history["discriminator_accuracy"]
    assert len(acc) == 8 and all(0.0 <= a <= 1.0 for a in acc)
    assert all(np.isfinite(history["discriminator_loss"]))
    # Chance level for 2 tasks is 0.5: the discriminator does learn something.
    assert max(acc) > 0.6
    # Training-time only: predict returns the task outputs, nothing else.
    assert set(model.predict(x[:2], verbose=0)) == {"seg", "depth"}

"""Smooth Tchebycheff scalarisation, STCH (Lin et al., ICML 2024)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import Balancer
from keras_mtl.balancers.base import check_positive


@keras.saving.register_keras_serializable(package="keras_mtl")
class STCH(Balancer):
    """STCH: a smooth maximum of the nadir-normalised log losses, after a warm-up.

    As in the authors' multi-task code: for the first `warmup_steps` steps
    the network trains on `sum_t log L_t`; for the next `nadir_steps` steps
    it still does, while the mean loss of every task is recorded as the
    nadir point `z`; from then on it trains on
    `T mu log sum_t exp(log(L_t / z_t) / mu)` (`keras_mtl.ops.stch_loss`),
    which concentrates on the task furthest above its nadir. The reported
    `<task>_weight` is the derivative of the loss w.r.t. `L_t`. A task absent
    from a batch is left out of the sums and of its nadir mean.

    Args:
        mu: smoothing, > 0 (smaller: closer to the hard maximum). Defaults
            to `1.0`.
        warmup_steps: steps of plain log-loss training before the nadir
            window. Defaults to `100`; the authors count whole epochs (set
            `epochs * steps_per_epoch`).
        nadir_steps: steps whose mean losses give the nadir point. Defaults
            to `100`; the authors use one epoch.

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.STCH(warmup_steps=300,
    ...                                                 nadir_steps=100))

    Reference:
        Lin, Zhang, Yang, Zhang, Zhang. "Smooth Tchebycheff Scalarization
        for Multi-Objective Optimization". ICML 2024.
    """

    def __init__(self, mu=1.0, warmup_steps=100, nadir_steps=100, epsilon=1e-20,
                 name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.mu = float(check_positive("mu", mu, allow_zero=False))
        for arg, value, least in (("warmup_steps", warmup_steps, 0),
                                  ("nadir_steps", nadir_steps, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(
                    f"Invalid value received for argument `{arg}`. Expected an "
                    f"integer >= {least}. Received: {arg}={value!r}"
                )
        self.warmup_steps = warmup_steps
        self.nadir_steps = nadir_steps
        self.epsilon = float(check_positive("epsilon", epsilon))

    def build_state(self, num_tasks):
        self.step = self.add_state("step", (), dtype="int64")
        self.loss_sums = self.add_state("loss_sums", (num_tasks,))
        self.loss_counts = self.add_state("loss_counts", (num_tasks,))
        self.nadir = self.add_state("nadir", (num_tasks,), initializer="ones")
        self.last_weights = self.add_state("last_weights", (num_tasks,), initializer="ones")

    def _warm(self):
        return self.step >= self.warmup_steps + self.nadir_steps

    def task_weights(self):
        return tf.convert_to_tensor(self.last_weights)

    def combine(self, losses, present):
        log_sum = tf.reduce_sum(tf.math.log(tf.maximum(losses, 0.0) + self.epsilon) * present)
        stch = ops.stch_loss(losses, self.nadir, self.mu, present, self.epsilon)
        return tf.where(self._warm(), stch, log_sum)

    def loss_weights(self, losses, present):
        """d combine / d L_t (T,), in closed form."""
        z = tf.convert_to_tensor(self.nadir)
        plain = present / (tf.maximum(losses, 0.0) + self.epsilon)
        logs = tf.math.log(tf.math.divide_no_nan(tf.maximum(losses, 0.0), z) + self.epsilon)
        logs = tf.where(present > 0, logs / self.mu, -float("inf"))
        soft = tf.where(present > 0, tf.nn.softmax(logs), 0.0)
        smooth = tf.reduce_sum(present) * soft / (tf.maximum(losses, 0.0) + self.epsilon * z)
        return tf.where(self._warm(), smooth, plain)

    def update(self, losses, present):
        self.last_weights.assign(self.loss_weights(losses, present))
        window = tf.logical_and(
            self.step >= self.warmup_steps, tf.logical_not(self._warm())
        )
        take = tf.cast(window, "float32") * present
        sums = self.loss_sums + take * losses
        counts = self.loss_counts + take
        self.loss_sums.assign(sums)
        self.loss_counts.assign(counts)
        self.step.assign_add(1)
        closing = self.step == self.warmup_steps + self.nadir_steps
        mean = tf.where(counts > 0, tf.math.divide_no_nan(sums, counts), 1.0)
        self.nadir.assign(tf.where(closing, mean, self.nadir))

    def get_config(self):
        return {
            **super().get_config(),
            "mu": self.mu,
            "warmup_steps": self.warmup_steps,
            "nadir_steps": self.nadir_steps,
            "epsilon": self.epsilon,
        }

"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import Balancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class DWA(Balancer):
    """Dynamic Weight Average: weight each task by how slowly its loss falls.

    L = sum_t w_t L_t with `w = keras_mtl.ops.dwa_weights(L(k-1), L(k-2), T)`
    computed from the mean losses of the two previous windows (the paper's
    epochs), `w_t = T softmax(r / temperature)_t`, `r_t = L_t(k-1)/L_t(k-2)`.
    The first two windows use equal weights. A window is `window` train
    steps; the paper's setting is one epoch. Only the steps where a task is
    labelled count towards its mean.

    Args:
        temperature: softmax temperature; the paper uses 2. Defaults to `2.0`.
        window: train steps per averaging window. Defaults to `100`; set it
            to the steps per epoch to reproduce the paper.

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.DWA(window=steps_per_epoch))

    Reference:
        Liu, Johns, Davison. "End-to-End Multi-Task Learning with Attention".
        CVPR 2019, section 3.3.
    """

    def __init__(self, temperature=2.0, window=100, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if not temperature > 0:
            raise ValueError(
                "Invalid value received for argument `temperature`. Expected a "
                f"number > 0. Received: temperature={temperature!r}"
            )
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                "Invalid value received for argument `window`. Expected an "
                f"integer >= 1. Received: window={window!r}"
            )
        self.temperature = float(temperature)
        self.window = window

    def build_state(self, num_tasks):
        self.weight_values = self.add_state("task_weights", (num_tasks,), "ones")
        self.loss_sums = self.add_state("loss_sums", (num_tasks,))
        self.loss_counts = self.add_state("loss_counts", (num_tasks,))
        self.previous_losses = self.add_state("previous_losses", (num_tasks,))
        self.earlier_losses = self.add_state("earlier_losses", (num_tasks,))
        self.window_step = self.add_state("window_step", (), dtype="int64")

    def task_weights(self):
        return tf.convert_to_tensor(self.weight_values)

    def update(self, losses, present):
        sums = self.loss_sums + losses * present
        counts = self.loss_counts + present
        step = self.window_step + 1
        boundary = step >= self.window
        roll = tf.logical_and(boundary, counts > 0)
        mean = tf.math.divide_no_nan(sums, counts)
        previous = tf.convert_to_tensor(self.previous_losses)
        new_previous = tf.where(roll, mean, previous)
        new_earlier = tf.where(roll, previous, self.earlier_losses)
        weights = tf.where(
            boundary,
            ops.dwa_weights(new_previous, new_earlier, self.temperature),
            self.weight_values,
        )
        self.previous_losses.assign(new_previous)
        self.earlier_losses.assign(new_earlier)
        self.weight_values.assign(weights)
        self.loss_sums.assign(tf.where(boundary, tf.zeros_like(sums), sums))
        self.loss_counts.assign(tf.where(boundary, tf.zeros_like(counts), counts))
        self.window_step.assign(tf.where(boundary, tf.zeros_like(step), step))

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "window": self.window,
        }

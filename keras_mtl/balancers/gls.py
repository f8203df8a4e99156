"""Geometric loss strategy, GLS (Chennupati et al., CVPR-W 2019)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import Balancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class GLS(Balancer):
    """GLS: train on the geometric mean of the task losses, (prod_t L_t)^(1/T).

    Its gradient weighs each loss by its reciprocal, `(L / T) / L_t` (Liu et
    al. 2021, appendix C.5); those effective weights of the last step are
    reported as `<task>_weight`. Absent tasks are left out of the mean.
    Not scale-invariant (the factor L / T), and unstable with many tasks per
    Liu et al.

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.GLS())

    Reference:
        Chennupati, Sistu, Yogamani, Rawashdeh. "MultiNet++: Multi-Stream
        Feature Aggregation and Geometric Loss Strategy for Multi-Task
        Learning". CVPR Workshops 2019.
    """

    def build_state(self, num_tasks):
        self.last_weights = self.add_state("last_weights", (num_tasks,), "ones")

    def task_weights(self):
        return tf.convert_to_tensor(self.last_weights)

    def combine(self, losses, present):
        return ops.gls_loss(losses, present)

    def update(self, losses, present):
        self.last_weights.assign(ops.gls_weights(losses, present))

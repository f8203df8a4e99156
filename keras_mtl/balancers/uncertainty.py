"""Uncertainty weighting (Kendall, Gal & Cipolla 2018)."""

import keras
import tensorflow as tf

from keras_mtl.balancers.base import Balancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class UncertaintyWeighting(Balancer):
    """Learned homoscedastic-uncertainty weights: L = sum_t exp(-s_t) L_t + s_t.

    `s_t = log(sigma_t^2)` is learned jointly with the network (init 0, so
    training starts from equal weights). This is twice Kendall et al.'s
    regression objective `L_t / (2 sigma_t^2) + log sigma_t`, i.e. the same
    optimum: at a fixed L_t the objective is minimised at exp(-s_t) = 1 / L_t,
    which is the `w_t ~ 1 / L_t` behaviour that Chen et al. 2018 (section 4)
    compare GradNorm against. The reported task weight is exp(-s_t).

    Args:
        optimizer: optimizer of the log-variances. Defaults to Adam with
            learning rate 0.025, the rate GradNorm's paper used for this
            baseline (section 5.1).

    Reference:
        Kendall, Gal, Cipolla. "Multi-Task Learning Using Uncertainty to Weigh
        Losses for Scene Geometry and Semantics". CVPR 2018.
    """

    def build_state(self, num_tasks):
        self.log_variances = self.add_state("log_variances", (num_tasks,))

    @property
    def learned_variables(self):
        return [self.log_variances]

    def task_weights(self):
        return tf.exp(-tf.convert_to_tensor(self.log_variances))

    def combine(self, losses, present):
        s = tf.convert_to_tensor(self.log_variances)
        return tf.reduce_sum((tf.exp(-s) * losses + s) * present)

"""FAMO (Liu et al., NeurIPS 2023)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import Balancer
from keras_mtl.balancers.base import check_positive


@keras.saving.register_keras_serializable(package="keras_mtl")
class FAMO(Balancer):
    """FAMO: O(1) dynamic weights that make all task losses fall at the same rate.

    The network trains on `sum_t z_t log(L_t + eps) / c` with
    `z = softmax(xi)` and `c = sum_t z_t / (L_t + eps)` held constant, i.e.
    the raw losses weighted by `z_t / (c (L_t + eps))` (reported as
    `<task>_weight`). After each step the logits `xi` take one optimizer
    step on `J_z(xi)^T delta + gamma xi` (`keras_mtl.ops.famo_logit_gradient`),
    `delta_t` the decrease of `log L_t` over the last update: tasks whose
    loss falls fastest lose weight. Only losses are needed: no per-task
    gradients.

    The authors evaluate the losses again on the same batch after the
    update; here `delta` uses the next step's batch losses (this step's
    losses against the previous step's), which costs no extra forward pass.
    A task counts in `delta` only when it was present in both steps, and an
    absent task's logit does not move. The authors also clip the network's
    gradient norm at 1; use the optimizer's `clipnorm` for that.

    Args:
        gamma: logits' L2 regularisation. Defaults to `0.01` (the authors').
        epsilon: added to the losses before the logarithm. Defaults to `1e-8`.
        optimizer: optimizer of the logits. Defaults to Adam with learning
            rate 0.025 (the authors' `w_lr`).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.FAMO())

    Reference:
        Liu, Feng, Stone, Liu. "FAMO: Fast Adaptive Multitask Optimization".
        NeurIPS 2023.
    """

    def __init__(self, gamma=0.01, epsilon=1e-8, optimizer=None, name=None, **kwargs):
        super().__init__(optimizer=optimizer, name=name, **kwargs)
        self.gamma = float(check_positive("gamma", gamma))
        self.epsilon = float(check_positive("epsilon", epsilon, allow_zero=False))

    def build_state(self, num_tasks):
        self.logits = self.add_state("logits", (num_tasks,))
        self.previous_losses = self.add_state("previous_losses", (num_tasks,))
        self.previous_present = self.add_state("previous_present", (num_tasks,))
        self.last_weights = self.add_state(
            "last_weights", (num_tasks,),
            initializer=keras.initializers.Constant(1.0 / num_tasks),
        )

    @property
    def optimized_variables(self):
        return [self.logits]

    def task_weights(self):
        return tf.convert_to_tensor(self.last_weights)

    def _weights(self, losses, present):
        return tf.stop_gradient(
            ops.famo_task_weights(self.logits, losses, present, self.epsilon)
        )

    def combine(self, losses, present):
        # sum_t w_t L_t has the gradient of sum_t z_t log(L_t + eps) / c.
        return tf.reduce_sum(self._weights(losses, present) * losses * present)

    def update(self, losses, present):
        self.last_weights.assign(self._weights(losses, present))  # this step's
        both = present * self.previous_present
        old = tf.convert_to_tensor(self.logits)
        grad = ops.famo_logit_gradient(
            old, self.previous_losses, losses, both, self.gamma, self.epsilon
        )
        self.optimizer_step([grad], [self.logits])
        # An optimizer's momentum must not move the logit of an absent task.
        self.logits.assign(tf.where(both > 0, self.logits, old))
        self.previous_losses.assign(tf.where(present > 0, losses, self.previous_losses))
        self.previous_present.assign(present)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "epsilon": self.epsilon}

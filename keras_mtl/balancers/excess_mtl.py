"""ExcessMTL (He et al., ICML 2024)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import TrackedGradientBalancer
from keras_mtl.balancers.base import check_positive


@keras.saving.register_keras_serializable(package="keras_mtl")
class ExcessMTL(TrackedGradientBalancer):
    """ExcessMTL: task weights that follow each task's excess risk, not its loss.

    A task whose loss is high because its labels are noisy cannot improve,
    so loss-driven weights over-weight it. ExcessMTL weighs by the excess
    risk `L_t(theta) - L_t(theta*)`, estimated each step from the task's
    gradient w.r.t. the shared parameters with an AdaGrad-style diagonal
    Hessian, `r_t = g_t^T diag(sqrt(sum g_t^2 + eps))^-1 g_t`
    (`keras_mtl.ops.excess_risks`), divided by the task's first estimate,
    and updates the weights by exponentiated gradient,
    `w_t <- w_t exp(eta r_t / r_t^0)` renormalised to sum to T
    (`keras_mtl.ops.excess_mtl_weights`). The shared parameters get
    `sum_t w_t g_t` with the updated weights; the weights apply to the raw
    losses, and the heads get the weights of the last update (the engine
    weighs the heads before the shared gradients are aggregated). The
    reported `<task>_weight` is `w_t`. An absent task's accumulators and
    weight do not move; the present tasks share their total weight.

    Only `mode="shared"` (the accumulated squared gradients need the same
    columns at every step).

    Args:
        step_size: the robust step size `eta >= 0`. Defaults to `1e-2` (the
            authors').
        epsilon: added under the square root. Defaults to `1e-7` (the
            authors').
        mode: `"shared"` (the only one).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.ExcessMTL())

    Reference:
        He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi, Zhao. "Robust Multi-Task
        Learning with Excess Risks". ICML 2024.
    """

    def __init__(self, step_size=1e-2, epsilon=1e-7, mode="shared", name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.step_size = float(check_positive("step_size", step_size))
        self.epsilon = float(check_positive("epsilon", epsilon, allow_zero=False))

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        self.loss_weights = self.add_state("loss_weights", (num_tasks,), initializer="ones")
        self.initial_risks = self.add_state("initial_risks", (num_tasks,))

    def build_gradient_variables(self, num_tasks, dim):
        self.grad_sq_sum = self.add_state("grad_sq_sum", (num_tasks, dim))

    def combine(self, losses, present):
        weights = tf.stop_gradient(tf.convert_to_tensor(self.loss_weights))
        return tf.reduce_sum(weights * losses * present)

    def aggregate(self, grads, losses, present):
        grads = tf.convert_to_tensor(grads)
        self.ensure_gradient_state(grads)
        keep = present > 0
        risks, sums = ops.excess_risks(grads, self.grad_sq_sum, mask=present,
                                       epsilon=self.epsilon)
        first = keep & (self.initial_risks <= 0) & (risks > 0)
        initial = tf.where(first, tf.cast(risks, "float32"), self.initial_risks)
        weights = ops.excess_mtl_weights(self.loss_weights, risks, initial, self.step_size,
                                         mask=present)
        self.grad_sq_sum.assign(sums)
        self.initial_risks.assign(initial)
        self.loss_weights.assign(weights)
        self.last_weights.assign(weights * present)
        used = tf.where(keep, weights, tf.zeros_like(weights))
        return tf.linalg.matvec(tf.where(keep[:, None], grads, tf.zeros_like(grads)), used,
                                transpose_a=True)

    def get_config(self):
        return {**super().get_config(), "step_size": self.step_size,
                "epsilon": self.epsilon}

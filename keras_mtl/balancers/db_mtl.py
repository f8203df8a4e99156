"""DB-MTL (Lin et al., 2023)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import TrackedGradientBalancer
from keras_mtl.balancers.base import check_positive


@keras.saving.register_keras_serializable(package="keras_mtl")
class DBMTL(TrackedGradientBalancer):
    """DB-MTL: log-loss balance of the loss scales, max-norm balance of the gradients.

    Loss-scale balance: every task trains on `log(L_t + eps)`, so its
    gradient is `g_t / (L_t + eps)` whatever the loss's scale (heads train
    on it too). Gradient-magnitude balance: each task keeps an exponential
    moving average of its log-loss gradient w.r.t. the shared parameters
    (`keras_mtl.ops.db_mtl_ema`, rate `beta / k^beta_sigma` at the task's
    k-th step), and the shared parameters get the sum of the averages, each
    rescaled to the largest norm among them
    (`keras_mtl.ops.db_mtl_weights`). The reported `<task>_weight` is that
    rescaling factor `alpha_t = max_s ||g_s|| / ||g_t||` (>= 1). An absent
    task's average does not move and is left out of the step.

    Only `mode="shared"`: the average runs over the shared parameters'
    gradients (the authors' code rejects representation gradients too).
    The (T, number of shared parameters) state is created when the model
    prepares its first step (`build_gradient_state`).

    Args:
        beta: EMA rate in [0, 1). Defaults to `0.9` (the authors').
        beta_sigma: decay exponent of the rate (`>= 0`). Defaults to `0.0`
            (the authors').
        epsilon: added to the losses inside the logarithm. Defaults to `1e-8`.
        mode: `"shared"` (the only one).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.DBMTL())

    Reference:
        Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Kwok. "Dual-Balancing for
        Multi-Task Learning". arXiv:2308.12029, 2023.
    """

    def __init__(self, beta=0.9, beta_sigma=0.0, epsilon=1e-8, mode="shared", name=None,
                 **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        if not 0 <= beta < 1:
            raise ValueError(
                "Invalid value received for argument `beta`. Expected a number "
                f"in [0, 1). Received: beta={beta!r}"
            )
        self.beta = float(beta)
        self.beta_sigma = float(check_positive("beta_sigma", beta_sigma))
        self.epsilon = float(check_positive("epsilon", epsilon, allow_zero=False))

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        self.counts = self.add_state("counts", (num_tasks,), dtype="int64")

    def build_gradient_variables(self, num_tasks, dim):
        self.gradient_ema = self.add_state("gradient_ema", (num_tasks, dim))

    def combine(self, losses, present):
        return tf.reduce_sum(tf.math.log(tf.maximum(losses, 0.0) + self.epsilon) * present)

    def aggregate(self, grads, losses, present):
        grads = tf.convert_to_tensor(grads)
        self.ensure_gradient_state(grads)
        counts = self.counts + tf.cast(present > 0, "int64")
        ema = ops.db_mtl_ema(self.gradient_ema, grads, losses, counts, self.beta,
                             self.beta_sigma, mask=present, epsilon=self.epsilon)
        alpha = ops.db_mtl_weights(ema, mask=present)
        self.gradient_ema.assign(ema)
        self.counts.assign(counts)
        self.last_weights.assign(tf.cast(alpha, "float32"))
        keep = present[:, None] > 0
        return tf.linalg.matvec(tf.where(keep, ema, tf.zeros_like(ema)), alpha,
                                transpose_a=True)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "beta_sigma": self.beta_sigma,
                "epsilon": self.epsilon}

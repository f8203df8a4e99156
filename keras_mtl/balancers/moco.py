"""MoCo (Fernando et al., ICLR 2023)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import TrackedGradientBalancer
from keras_mtl.balancers.base import check_positive
from keras_mtl.ops.db_mtl import row_norms


@keras.saving.register_keras_serializable(package="keras_mtl")
class MoCo(TrackedGradientBalancer):
    """MoCo: MGDA on tracked gradient estimates, with its own weight update.

    Stochastic MGDA is biased: the min-norm weights of noisy gradients are
    not those of the true ones. MoCo tracks each task's gradient
    w.r.t. the shared parameters, `y_t <- y_t - beta_k (y_t - g_t)`
    (`keras_mtl.ops.moco_track`, `beta_k = beta / k^beta_sigma`), takes one
    projected gradient step of the weights on the simplex,
    `lambda <- Pi(lambda - gamma_k (Y Y^T + rho I) lambda)`
    (`keras_mtl.ops.moco_weights`, `gamma_k = gamma / k^gamma_sigma`), and
    gives the shared parameters `lambda @ Y`. Heads train on their raw
    losses. The reported `<task>_weight` is `lambda`.

    As in the authors' code, each gradient is first rescaled to the norm of
    its loss, `g_t L_t / ||g_t||` (`normalize=False`: the paper's raw
    gradients). The authors' code replaces the projection by a softmax;
    here it is the paper's Euclidean projection. An absent task's estimate
    and weight do not move: the step runs on the present tasks' share of
    the simplex.

    Only `mode="shared"` (tracking needs the same columns at every step).

    Args:
        beta: tracking rate in (0, 1]. Defaults to `0.5` (the authors').
        beta_sigma: its decay exponent (`>= 0`). Defaults to `0.5`.
        gamma: weight step size (`>= 0`). Defaults to `0.1`.
        gamma_sigma: its decay exponent (`>= 0`). Defaults to `0.5`.
        rho: regularisation of the weight step (`>= 0`). Defaults to `0.0`.
        normalize: rescale each gradient to its loss's norm first. Defaults
            to `True` (the authors' code).
        mode: `"shared"` (the only one).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.MoCo())

    Reference:
        Fernando, Shen, Liu, Chaudhury, Murugesan, Chen. "Mitigating
        Gradient Bias in Multi-objective Learning: A Provably Convergent
        Approach". ICLR 2023.
    """

    def __init__(self, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0,
                 normalize=True, mode="shared", name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        if not 0 < beta <= 1:
            raise ValueError(
                "Invalid value received for argument `beta`. Expected a number "
                f"in (0, 1]. Received: beta={beta!r}"
            )
        self.beta = float(beta)
        self.beta_sigma = float(check_positive("beta_sigma", beta_sigma))
        self.gamma = float(check_positive("gamma", gamma))
        self.gamma_sigma = float(check_positive("gamma_sigma", gamma_sigma))
        self.rho = float(check_positive("rho", rho))
        self.normalize = bool(normalize)

    def build_state(self, num_tasks):
        uniform = keras.initializers.Constant(1.0 / num_tasks)
        self.last_weights = self.add_state("last_weights", (num_tasks,), initializer=uniform)
        self.lambdas = self.add_state("lambdas", (num_tasks,), initializer=uniform)
        self.counts = self.add_state("counts", (num_tasks,), dtype="int64")
        self.step = self.add_state("step", (), dtype="int64")

    def build_gradient_variables(self, num_tasks, dim):
        self.tracked = self.add_state("tracked_gradients", (num_tasks, dim))

    def aggregate(self, grads, losses, present):
        grads = tf.convert_to_tensor(grads)
        self.ensure_gradient_state(grads)
        keep = present > 0
        if self.normalize:
            scale = tf.cast(losses, "float64") / (row_norms(grads) + 1e-8)
            grads = grads * tf.cast(scale, grads.dtype)[:, None]
        counts = self.counts + tf.cast(keep, "int64")
        tracked = ops.moco_track(self.tracked, grads, counts, self.beta, self.beta_sigma,
                                 mask=present)
        step = self.step + tf.cast(tf.reduce_any(keep), "int64")
        gamma = self.gamma / tf.pow(tf.cast(tf.maximum(step, 1), "float64"), self.gamma_sigma)
        lambdas = ops.moco_weights(tracked, self.lambdas, gamma, self.rho, mask=present)
        mass = tf.reduce_sum(tf.where(keep, self.lambdas, 0.0))
        self.lambdas.assign(tf.where(keep, lambdas * mass, self.lambdas))
        self.tracked.assign(tracked)
        self.counts.assign(counts)
        self.step.assign(step)
        self.last_weights.assign(lambdas)
        return tf.linalg.matvec(tf.where(keep[:, None], tracked, tf.zeros_like(tracked)),
                                lambdas, transpose_a=True)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "beta_sigma": self.beta_sigma,
                "gamma": self.gamma, "gamma_sigma": self.gamma_sigma, "rho": self.rho,
                "normalize": self.normalize}

"""FairGrad (Ban & Ji, ICML 2024)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import check_positive
from keras_mtl.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class FairGrad(GradientBalancer):
    """FairGrad: the update that allocates loss decrease alpha-fairly between tasks.

    Each step `w > 0` solves `G G^T w = w^(-1/alpha)`
    (`keras_mtl.ops.fairgrad_weights`, Newton in the graph) and the shared
    parameters get `w @ G`, which maximises
    `sum_t (g_t . d)^(1-alpha) / (1-alpha)` over the tasks' first-order loss
    decreases; `alpha = 1` is Nash-MTL, larger `alpha` favours the worst-off
    task. Heads train on their raw losses. The direction is clipped to norm
    `max_norm`, as in the authors' code.

    Args:
        alpha: fairness level, > 0. Defaults to `2.0` (the authors' runs).
        max_norm: clip the combined direction to this norm; `0` disables.
            Defaults to `1.0`.
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters, as in the paper).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.FairGrad(alpha=2.0))

    Reference:
        Ban, Ji. "Fair Resource Allocation in Multi-Task Learning". ICML 2024.
    """

    def __init__(self, alpha=2.0, max_norm=1.0, mode="features", name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.alpha = float(check_positive("alpha", alpha, allow_zero=False))
        self.max_norm = float(check_positive("max_norm", max_norm))

    def gradient_weights(self, grads, losses, present):
        w = ops.fairgrad_weights(grads, alpha=self.alpha, mask=present)
        if self.max_norm > 0:
            norm = tf.norm(tf.linalg.matvec(grads, w, transpose_a=True))
            w = w * tf.minimum(1.0, tf.math.divide_no_nan(self.max_norm, norm))
        return w

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "max_norm": self.max_norm}

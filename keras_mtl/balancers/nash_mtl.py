"""Nash-MTL (Navon et al., ICML 2022)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import check_positive
from keras_mtl.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class NashMTL(GradientBalancer):
    """Nash-MTL: the Nash bargaining solution between the tasks' gradients.

    Each step `alpha > 0` solves `G G^T alpha = 1 / alpha`
    (`keras_mtl.ops.nash_mtl_weights`, damped Newton in the graph) and the
    shared parameters get `alpha @ G`, on which every task's share
    `alpha_t (g_t . d)` is equal. Heads train on their raw losses. As in the
    authors' code, the Gramian is divided by its Frobenius norm before
    solving and the direction is clipped to norm `max_norm`.

    Args:
        max_norm: clip the combined direction to this norm (the authors'
            `max_norm`); `0` disables. In `"features"` mode it bounds the
            feature-level gradient. Defaults to `1.0`.
        normalize: solve with `G G^T / ||G G^T||_F` as the authors' code;
            `False` solves the paper's equation as written. Defaults to
            `True`.
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters, as in the paper).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.NashMTL())

    Reference:
        Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya.
        "Multi-Task Learning as a Bargaining Game". ICML 2022.
    """

    def __init__(self, max_norm=1.0, normalize=True, mode="features", name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.max_norm = float(check_positive("max_norm", max_norm))
        self.normalize = bool(normalize)

    def gradient_weights(self, grads, losses, present):
        alpha = ops.nash_mtl_weights(grads, mask=present, normalize=self.normalize)
        if self.max_norm > 0:
            norm = tf.norm(tf.linalg.matvec(grads, alpha, transpose_a=True))
            alpha = alpha * tf.minimum(1.0, tf.math.divide_no_nan(self.max_norm, norm))
        return alpha

    def get_config(self):
        return {
            **super().get_config(),
            "max_norm": self.max_norm,
            "normalize": self.normalize,
        }

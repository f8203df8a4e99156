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
        update_weights_every: solve for the weights every this many steps
            and reuse the stored solution (clipped again to `max_norm` on
            each step's gradients) in between: the paper's cheaper variant
            (its practical speed-up; the authors' `update_weights_every`). A solve also
            happens early when a present task has no stored weight (it was
            absent at the last solve). Defaults to `1` (every step; no
            extra state).
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters, as in the paper).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.NashMTL())

    Reference:
        Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya.
        "Multi-Task Learning as a Bargaining Game". ICML 2022.
    """

    def __init__(self, max_norm=1.0, normalize=True, update_weights_every=1, mode="features",
                 name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.max_norm = float(check_positive("max_norm", max_norm))
        self.normalize = bool(normalize)
        every = update_weights_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                "Invalid value received for argument `update_weights_every`. "
                f"Expected an integer >= 1. Received: update_weights_every={every!r}"
            )
        self.update_weights_every = every

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        if self.update_weights_every > 1:
            self.step = self.add_state("step", (), dtype="int64")
            self.solved_weights = self.add_state("solved_weights", (num_tasks,))

    def _solve(self, grads, present):
        return ops.nash_mtl_weights(grads, mask=present, normalize=self.normalize)

    def gradient_weights(self, grads, losses, present):
        if self.update_weights_every == 1:
            alpha = self._solve(grads, present)
        else:
            stored = tf.cast(self.solved_weights, grads.dtype)
            keep = tf.cast(present, grads.dtype) > 0
            missing = tf.reduce_any(keep & (stored <= 0))
            due = (self.step % self.update_weights_every == 0) | missing
            alpha = tf.cond(due, lambda: self._solve(grads, present),
                            lambda: tf.where(keep, stored, tf.zeros_like(stored)))
            self.solved_weights.assign(tf.where(due, tf.cast(alpha, "float32"),
                                                self.solved_weights))
            self.step.assign_add(1)
        if self.max_norm > 0:
            norm = tf.norm(tf.linalg.matvec(grads, alpha, transpose_a=True))
            alpha = alpha * tf.minimum(1.0, tf.math.divide_no_nan(self.max_norm, norm))
        return alpha

    def get_config(self):
        return {
            **super().get_config(),
            "max_norm": self.max_norm,
            "normalize": self.normalize,
            "update_weights_every": self.update_weights_every,
        }

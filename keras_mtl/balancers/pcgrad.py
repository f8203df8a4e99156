"""PCGrad (Yu et al., NeurIPS 2020)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import GradientBalancer
from keras_mtl.balancers.base import SeededMixin
from keras_mtl.balancers.base import resolve_seed


@keras.saving.register_keras_serializable(package="keras_mtl")
class PCGrad(SeededMixin, GradientBalancer):
    """PCGrad: project each task gradient off the conflicting ones, then sum.

    Each step, every task's gradient is projected onto the normal plane of
    each other task's gradient it conflicts with (negative inner product),
    visiting the others in a random order, and the shared parameters get the
    sum of the projected gradients (`keras_mtl.ops.pcgrad`); heads train on
    their raw losses. The order is drawn from a stateless generator seeded
    by `(seed, step)`, so every replica of a distributed step and every
    resumed run draws the same orders. The reported task weights are the
    equivalent loss weights `1 (I + C N)` of Liu et al. 2021 (eq. 33).

    Args:
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters, as in the paper).
        seed: int seed of the random task orders. Defaults to a random one,
            stored in the config.

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.PCGrad(mode="shared"))

    Reference:
        Yu, Kumar, Gupta, Levine, Hausman, Finn. "Gradient Surgery for
        Multi-Task Learning". NeurIPS 2020.
    """

    def __init__(self, mode="features", seed=None, name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.seed = resolve_seed(seed)

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        self.build_step_counter()

    def gradient_weights(self, grads, losses, present):
        weights = ops.pcgrad_weights(grads, seed=self.step_seed())
        return weights * tf.cast(present, weights.dtype)

    def update(self, losses, present):
        self.advance()

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}

"""Gradient Vaccine, GradVac (Wang et al., ICLR 2021)."""

import keras
import tensorflow as tf

from keras_mtl.balancers.base import GradientBalancer
from keras_mtl.balancers.base import SeededMixin
from keras_mtl.balancers.base import check_fraction
from keras_mtl.balancers.base import resolve_seed
from keras_mtl.ops.gradvac import gradvac_weights


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradVac(SeededMixin, GradientBalancer):
    """GradVac: raise each pair's gradient similarity to its running target, then sum.

    Each step, every task gradient is adjusted towards each other task's (in
    a random order) whenever their cosine similarity is below the pair's
    target, so that it reaches the target exactly
    (`keras_mtl.ops.gradvac_weights`), and the shared parameters get the sum
    of the adjusted gradients; heads train on their raw losses. The targets
    (a T x T state, initially 0, i.e. PCGrad) follow the measured
    similarities by an exponential moving average with rate `beta`; a pair
    moves only when both tasks are present (with non-zero gradients). Orders
    come from a stateless generator seeded by `(seed, step)`.

    Args:
        beta: EMA rate of the similarity targets. Defaults to `0.01` (the
            paper's value).
        seed: int seed of the random orders. Defaults to a random one,
            stored in the config.
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.GradVac(seed=0))

    Reference:
        Wang, Tsvetkov, Firat, Cao. "Gradient Vaccine: Investigating and
        Improving Multi-task Optimization in Massively Multilingual Models".
        ICLR 2021.
    """

    def __init__(self, beta=0.01, seed=None, mode="features", name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.beta = check_fraction("beta", beta)
        self.seed = resolve_seed(seed)

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        self.targets = self.add_state("similarity_targets", (num_tasks, num_tasks))
        self.build_step_counter()

    def gradient_weights(self, grads, losses, present):
        seed = self.step_seed()
        weights, measured = gradvac_weights(grads, self.targets, seed=seed, mask=present)
        used = present * tf.cast(tf.reduce_any(grads != 0, axis=1), "float32")
        pairs = used[:, None] * used[None, :] * (1.0 - tf.eye(self.num_tasks))
        measured = tf.cast(measured, "float32")
        ema = (1.0 - self.beta) * self.targets + self.beta * measured
        self.targets.assign(tf.where(pairs > 0, ema, self.targets))
        self.advance()
        return weights

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "seed": self.seed}

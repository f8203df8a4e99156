"""Random loss weighting, RLW (Lin et al., TMLR 2022)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import Balancer
from keras_mtl.balancers.base import SeededMixin
from keras_mtl.balancers.base import resolve_seed
from keras_mtl.ops.rlw import check_distribution


@keras.saving.register_keras_serializable(package="keras_mtl")
class RLW(SeededMixin, Balancer):
    """Random loss weighting: L = sum_t w_t L_t with random weights drawn each step.

    `w = softmax(z)`, `z ~ N(0, I)` by default (the paper's recommended
    variant); the paper's other samplings are `"uniform"` (softmax of
    U(0, 1)), `"dirichlet"` (uniform on the simplex), `"bernoulli"` (each task
    kept with probability 1/2, equal weights on the kept ones) and
    `"constrained_bernoulli"` (one random task per step); see
    `keras_mtl.ops.rlw_weights`. The draw is stateless, seeded by
    `(seed, step)`, so replicas and resumed runs agree. Absent tasks get
    weight 0; the weights of the present tasks sum to 1.

    Args:
        seed: int seed. Defaults to a random one, stored in the config.
        distribution: `"normal"` (default), `"uniform"`, `"dirichlet"`,
            `"bernoulli"` or `"constrained_bernoulli"`.

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.RLW(seed=0))

    Reference:
        Lin, Ye, Xu, Shi, Zhang. "Reasonable Effectiveness of Random
        Weighting: A Litmus Test for Multi-Task Learning". TMLR 2022.
    """

    def __init__(self, seed=None, distribution="normal", name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        check_distribution(distribution)
        self.seed = resolve_seed(seed)
        self.distribution = distribution

    def build_state(self, num_tasks):
        self.last_weights = self.add_state(
            "last_weights", (num_tasks,), initializer="ones"
        )
        self.build_step_counter()

    def current_weights(self, present):
        return ops.rlw_weights(
            self.num_tasks, seed=self.step_seed(), present=present, distribution=self.distribution
        )

    def task_weights(self):
        return tf.convert_to_tensor(self.last_weights)

    def combine(self, losses, present):
        return tf.reduce_sum(self.current_weights(present) * losses * present)

    def update(self, losses, present):
        self.last_weights.assign(self.current_weights(present))
        self.advance()

    def get_config(self):
        return {
            **super().get_config(),
            "seed": self.seed,
            "distribution": self.distribution,
        }

"""GradDrop (Chen et al., NeurIPS 2020)."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import GradientBalancer
from keras_mtl.balancers.base import SeededMixin
from keras_mtl.balancers.base import check_fraction
from keras_mtl.balancers.base import resolve_seed


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradDrop(SeededMixin, GradientBalancer):
    """GradDrop: keep one gradient sign per coordinate of the shared activation.

    Each step, per coordinate of the feature-level gradients, the positive
    task components are kept with probability equal to their sign purity
    and the negative ones otherwise (`keras_mtl.ops.graddrop`); the shared
    parameters get the back-propagated sum. Heads train on their raw
    losses. The draws are stateless, seeded by `(seed, step)`, so replicas
    and resumed runs agree. The reported `<task>_weight` is the share of the
    task's gradient mass that was kept.

    Args:
        leak: leak `l` in [0, 1] of every task (1 keeps everything).
            Defaults to `0.0` (the paper's GradDrop).
        seed: int seed. Defaults to a random one, stored in the config.
        mode: `"features"` (default, as in the paper: the gradients at the
            shared activation) or `"shared"` (every shared parameter).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.GradDrop(seed=0))

    Reference:
        Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov. "Just Pick a
        Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout".
        NeurIPS 2020.
    """

    def __init__(self, leak=0.0, seed=None, mode="features", name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.leak = check_fraction("leak", leak)
        self.seed = resolve_seed(seed)

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        self.build_step_counter()

    def aggregate(self, grads, losses, present):
        grads = tf.convert_to_tensor(grads)
        seed = self.step_seed()
        direction, kept = ops.graddrop(
            grads, seed=seed, leak=self.leak, mask=present, return_kept=True
        )
        self.last_weights.assign(kept * tf.cast(present, "float32"))
        self.advance()
        return direction

    def get_config(self):
        return {**super().get_config(), "leak": self.leak, "seed": self.seed}

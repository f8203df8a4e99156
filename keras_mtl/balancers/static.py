"""Static weights: a fixed, user-given weight per task."""

import math

import keras
import tensorflow as tf

from keras_mtl.balancers.base import Balancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class StaticWeights(Balancer):
    """L = sum_t w_t L_t with fixed weights.

    Use it for hand-tuned or grid-searched weights, and for "GradNorm static"
    (Chen et al. 2018, section 5.2): retrain with the time-averaged weights
    E_t[w_i(t)] of a GradNorm run, given by
    `keras_mtl.callbacks.BalancerHistory.mean_weights()`.

    Args:
        weights: a dict `{task: weight}` naming every task, or a sequence in
            the model's task order. Weights must be finite and >= 0.
    """

    def __init__(self, weights, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(weights, dict):
            weights = {str(k): float(v) for k, v in weights.items()}
            values = weights.values()
        else:
            weights = [float(v) for v in weights]
            values = weights
        for v in values:
            if not math.isfinite(v) or v < 0:
                raise ValueError(
                    "Invalid value received for argument `weights`. Expected "
                    f"finite values >= 0. Received: weights={weights}"
                )
        if not any(v > 0 for v in values):
            raise ValueError(
                "Invalid value received for argument `weights`. Expected at "
                "least one weight > 0: with all weights 0 no task would train. "
                f"Received: weights={weights}"
            )
        self.weights_spec = weights

    def build_state(self, num_tasks):
        spec = self.weights_spec
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(self.task_names))
            missing = [t for t in self.task_names if t not in spec]
            if unknown or missing:
                raise ValueError(
                    f"StaticWeights: the weights must name exactly the tasks "
                    f"{self.task_names}. Unknown: {unknown}, missing: {missing}."
                )
            values = [spec[t] for t in self.task_names]
        else:
            if len(spec) != num_tasks:
                raise ValueError(
                    f"StaticWeights got {len(spec)} weights for {num_tasks} tasks "
                    f"{self.task_names}. Received: weights={spec}"
                )
            values = list(spec)
        self._weights_const = tf.constant(values, dtype="float32")

    def task_weights(self):
        return self._weights_const

    def get_config(self):
        return {**super().get_config(), "weights": self.weights_spec}

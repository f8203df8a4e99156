"""DualProj (Quinton & Rey 2024, TorchJD)."""

import keras

from keras_mtl import ops
from keras_mtl.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class DualProj(GradientBalancer):
    """DualProj: the mean gradient projected onto the dual cone of the task gradients.

    Each step the shared parameters get the closest vector to the mean
    gradient that conflicts with no task (`g_t . x >= 0` for all t),
    `keras_mtl.ops.dualproj_weights`; a mean that conflicts with no task is
    used unchanged. Heads train on their raw losses. Tasks absent from a
    batch are left out of the mean and of the cone.

    Args:
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters, as in the paper).

    Example:

    >>> model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.DualProj())

    Reference:
        Quinton, Rey. "Jacobian Descent for Multi-Objective Optimization".
        arXiv:2406.16232, 2024.
    """

    def gradient_weights(self, grads, losses, present):
        return ops.dualproj_weights(grads, mask=present)

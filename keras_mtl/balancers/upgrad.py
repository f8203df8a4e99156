"""UPGrad (Quinton & Rey 2024, TorchJD)."""

import keras

from keras_mtl import ops
from keras_mtl.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class UPGrad(GradientBalancer):
    """UPGrad: the mean of the task gradients, each projected onto the dual cone.

    Each step every task gradient is projected onto the cone of directions
    that conflict with no task, `{x : g_t . x >= 0 for all t}`, and the
    shared parameters get the mean of the projections
    (`keras_mtl.ops.upgrad_weights`): no task's loss increases to first
    order, and without conflicts it is the plain mean. Heads train on their
    raw losses. Tasks absent from a batch are left out of the mean and of
    the cone.

    Args:
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters, as in the paper).

    Example:

    >>> model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.UPGrad())

    Reference:
        Quinton, Rey. "Jacobian Descent for Multi-Objective Optimization".
        arXiv:2406.16232, 2024.
    """

    def gradient_weights(self, grads, losses, present):
        return ops.upgrad_weights(grads, mask=present)

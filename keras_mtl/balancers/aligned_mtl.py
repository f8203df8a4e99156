"""Aligned-MTL (Senushkin et al., CVPR 2023)."""

import keras

from keras_mtl import ops
from keras_mtl.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class AlignedMTL(GradientBalancer):
    """Aligned-MTL: combine the gradients of an aligned system with condition number 1.

    Each step the task gradients are transformed by the balance matrix
    `B = sqrt(lambda_min) V diag(lambda^-1/2) V^T` of their Gramian
    `V diag(lambda) V^T`, which makes them orthogonal with equal norms (the
    smallest singular value of G), and the shared parameters get the mean of
    the aligned gradients, `(B 1/T) @ G` (`keras_mtl.ops.aligned_mtl_weights`).
    Heads train on their raw losses. With `mode="features"` this is the
    paper's Aligned-MTL-UB (gradients at the shared representation).

    Args:
        mode: `"features"` (default, Aligned-MTL-UB) or `"shared"` (all
            shared parameters).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.AlignedMTL())

    Reference:
        Senushkin, Patakin, Kuznetsov, Konushin. "Independent Component
        Alignment for Multi-Task Learning". CVPR 2023.
    """

    def gradient_weights(self, grads, losses, present):
        return ops.aligned_mtl_weights(grads, mask=present)

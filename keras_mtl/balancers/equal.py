"""Equal weights: the uniform-scaling baseline, w_t = 1."""

import keras

from keras_mtl.balancers.base import Balancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class EqualWeights(Balancer):
    """Sums the task losses with weight 1 each: L = sum_t L_t.

    The baseline every multi-task paper compares against ("equal weights"
    in Chen et al. 2018, "uniform scaling" in Liu et al. 2021).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.EqualWeights())
    """

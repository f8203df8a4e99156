"""CAGrad (Liu et al., NeurIPS 2021)."""

import keras

from keras_mtl import ops
from keras_mtl.balancers.base import check_positive
from keras_mtl.balancers.base import GradientBalancer


@keras.saving.register_keras_serializable(package="keras_mtl")
class CAGrad(GradientBalancer):
    """CAGrad: the direction in a ball around the mean gradient that best helps the worst task.

    Each step the shared parameters get
    `d = argmax_{||d - g0|| <= c ||g0||} min_t g_t . d` with `g0` the mean
    of the present tasks' gradients (`keras_mtl.ops.cagrad_weights`, the
    dual solved in the graph). `c = 0` is the mean gradient; a larger `c`
    moves further towards the min-norm (MGDA) direction. Heads train on
    their raw losses.

    Args:
        c: radius of the ball relative to `||g0||`; the paper uses 0.4 on
            NYUv2 and Cityscapes. Defaults to `0.4`.
        rescale: divide `d` by `1 + c^2` as the authors' code does.
            Defaults to `False`.
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters, as in the paper).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.CAGrad(c=0.4))

    Reference:
        Liu, Liu, Jin, Stone, Liu. "Conflict-Averse Gradient Descent for
        Multi-task Learning". NeurIPS 2021.
    """

    def __init__(self, c=0.4, rescale=False, mode="features", name=None, **kwargs):
        super().__init__(mode=mode, name=name, **kwargs)
        self.c = float(check_positive("c", c))
        self.rescale = bool(rescale)

    def gradient_weights(self, grads, losses, present):
        return ops.cagrad_weights(grads, c=self.c, mask=present, rescale=self.rescale)

    def get_config(self):
        return {**super().get_config(), "c": self.c, "rescale": self.rescale}

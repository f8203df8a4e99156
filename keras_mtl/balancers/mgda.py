"""MGDA / MGDA-UB (Sener & Koltun, NeurIPS 2018)."""

import keras

from keras_mtl import ops
from keras_mtl.balancers.base import GradientBalancer
from keras_mtl.ops.mgda import check_normalization

SOLVERS = ("frank_wolfe", "closed_form")


@keras.saving.register_keras_serializable(package="keras_mtl")
class MGDA(GradientBalancer):
    """MGDA: the shared update is the min-norm point of the task gradients' hull.

    Each step `alpha = keras_mtl.ops.mgda_weights(G)` (Frank-Wolfe from the
    best pair, tight tolerance) and the shared parameters get
    `sum_t alpha_t g_t`, a direction that decreases every task's loss (or 0
    at a Pareto-stationary point); heads train on their raw losses
    (Algorithm 2). With `mode="features"` (default) G holds the gradients at
    the shared representation z: the paper's MGDA-UB, which optimises an
    upper bound and costs one trunk backward pass. `mode="shared"` is the
    exact MGDA on all shared parameters.

    Args:
        mode: `"features"` (MGDA-UB, default) or `"shared"`.
        normalization: gradient normalisation before the min-norm problem,
            `"none"` (default), `"l2"`, `"loss"` or `"loss+"` (Sener &
            Koltun's code); see `keras_mtl.ops.mgda_weights`.
        solver: `"frank_wolfe"` (default, alpha >= 0) or `"closed_form"`: the
            affine-hull minimum of Liu et al. 2021 (appendix C.2), without
            the alpha >= 0 constraint (weights may be negative).
        max_iters: Frank-Wolfe iteration cap. Defaults to `1000`.
        tolerance: relative duality-gap tolerance. Defaults to `1e-10`.

    Example:

    >>> model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.MGDA(normalization="loss+"))

    Reference:
        Sener, Koltun. "Multi-Task Learning as Multi-Objective Optimization".
        NeurIPS 2018.
    """

    def __init__(
        self,
        mode="features",
        normalization="none",
        solver="frank_wolfe",
        max_iters=1000,
        tolerance=1e-10,
        name=None,
        **kwargs,
    ):
        super().__init__(mode=mode, name=name, **kwargs)
        self.normalization = check_normalization(normalization)
        if solver not in SOLVERS:
            raise ValueError(
                "Invalid value received for argument `solver`. Expected one of "
                f"{SOLVERS}. Received: solver={solver!r}"
            )
        if solver == "closed_form" and normalization != "none":
            raise ValueError(
                "The closed-form MGDA takes no gradient normalization. "
                f"Received: solver={solver!r}, normalization={normalization!r}"
            )
        if not (isinstance(max_iters, int) and max_iters >= 1):
            raise ValueError(
                "Invalid value received for argument `max_iters`. Expected an "
                f"integer >= 1. Received: max_iters={max_iters!r}"
            )
        if not tolerance >= 0:
            raise ValueError(
                "Invalid value received for argument `tolerance`. Expected a "
                f"number >= 0. Received: tolerance={tolerance!r}"
            )
        self.solver = solver
        self.max_iters = max_iters
        self.tolerance = float(tolerance)

    def gradient_weights(self, grads, losses, present):
        if self.solver == "closed_form":
            return ops.mgda_closed_form_weights(grads, mask=present)
        return ops.mgda_weights(
            grads,
            losses=losses,
            normalization=self.normalization,
            mask=present,
            max_iters=self.max_iters,
            tolerance=self.tolerance,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "normalization": self.normalization,
            "solver": self.solver,
            "max_iters": self.max_iters,
            "tolerance": self.tolerance,
        }

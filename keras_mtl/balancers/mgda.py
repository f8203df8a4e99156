"""MGDA / MGDA-UB (Sener & Koltun, NeurIPS 2018)."""

import keras
import tensorflow as tf

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

    The Frank-Wolfe solver starts from the previous step's min-norm weights
    (state `alpha`, checkpointed with the balancer) when they are better
    than the best pair: consecutive steps have nearby solutions, so it then
    certifies in a few iterations. Same stopping rule, same exactness.

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

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        if self.solver == "frank_wolfe":
            # The previous step's min-norm weights: the next solve starts
            # from them (a warm start; zeros = none yet). Balancer state, so
            # it checkpoints and a skipped step restores it.
            self.alpha = self.add_state("warm_start", (num_tasks,), initializer="zeros")

    def gradient_weights(self, grads, losses, present):
        if self.solver == "closed_form":
            return ops.mgda_closed_form_weights(grads, mask=present)
        weights, alpha = ops.mgda_weights(
            grads,
            losses=losses,
            normalization=self.normalization,
            mask=present,
            max_iters=self.max_iters,
            tolerance=self.tolerance,
            initial=tf.cast(tf.convert_to_tensor(self.alpha), "float64"),
            return_alpha=True,
        )
        self.alpha.assign(tf.cast(alpha, "float32"))
        return weights

    def get_config(self):
        return {
            **super().get_config(),
            "normalization": self.normalization,
            "solver": self.solver,
            "max_iters": self.max_iters,
            "tolerance": self.tolerance,
        }

"""IMTL balancers (Liu et al., ICLR 2021): IMTL-G, IMTL-L and the hybrid IMTL.

Also home of `GradientBalancer`, the small base shared by the balancers that
combine task gradients (IMTL-G, IMTL, MGDA, PCGrad).
"""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import FEATURE_GRADS
from keras_mtl.balancers.base import SHARED_GRADS
from keras_mtl.balancers.base import Balancer

MODES = {"features": FEATURE_GRADS, "shared": SHARED_GRADS}


class GradientBalancer(Balancer):
    """Base of the balancers that map the task-gradient matrix G to one gradient.

    `mode="features"` asks the train step for feature-level gradients
    `dL_t/dz` at the shared representation z (one backward pass of each head,
    then one pass of the combined gradient through the trunk);
    `mode="shared"` for the gradients w.r.t. every shared parameter (T
    backward passes through the trunk: the "exact" variants). Task-specific
    parameters (heads) train on their own raw loss, `combine = sum_t L_t`,
    as in the papers' algorithms. The weights of the last step are kept in a
    state variable and reported as `<task>_weight`.

    Subclasses implement `gradient_weights(grads, losses, present) -> (T,)`.

    Args:
        mode: `"features"` (default) or `"shared"`.
    """

    def __init__(self, mode="features", optimizer=None, name=None, **kwargs):
        super().__init__(optimizer=optimizer, name=name, **kwargs)
        if mode not in MODES:
            raise ValueError(
                "Invalid value received for argument `mode`. Expected one of "
                f"{sorted(MODES)}. Received: mode={mode!r}"
            )
        self.mode = mode
        self.requires = MODES[mode]

    def build_state(self, num_tasks):
        self.last_weights = self.add_state(
            "last_weights", (num_tasks,), initializer="ones"
        )

    def task_weights(self):
        return tf.convert_to_tensor(self.last_weights)

    def combine(self, losses, present):
        return tf.reduce_sum(losses * present)

    def gradient_weights(self, grads, losses, present):
        raise NotImplementedError

    def aggregate(self, grads, losses, present):
        grads = tf.convert_to_tensor(grads)
        weights = tf.cast(self.gradient_weights(grads, losses, present), grads.dtype)
        self.last_weights.assign(self.reported_weights(weights))
        return tf.linalg.matvec(grads, weights, transpose_a=True)

    def reported_weights(self, weights):
        """The weights on the raw losses reported as metrics (override)."""
        return tf.cast(weights, "float32")

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="keras_mtl")
class IMTLG(GradientBalancer):
    """IMTL-G: shared gradient with equal projections on every task's gradient.

    Each step, `alpha = keras_mtl.ops.imtl_g_weights(G)` (closed form, sums to
    1) and the shared parameters get `sum_t alpha_t g_t`, whose projections
    on the unit task gradients `u_t` are all equal; heads train on their raw
    losses. Scale-invariant: multiplying a task's loss by any `k > 0` leaves
    the shared update's direction unchanged (Theorem 2). Tasks absent from a
    batch get weight 0.

    Args:
        mode: `"features"` (default): G holds `dL_t/dz` at the shared
            representation, the paper's fast path (one trunk backward pass);
            `"shared"`: gradients w.r.t. all shared parameters, the paper's
            "IMTL-G (exact)".

    Example:

    >>> model.compile(optimizer="sgd", loss={"a": "mse", "b": "mae"},
    ...               balancer=keras_mtl.balancers.IMTLG())

    Reference:
        Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang. "Towards Impartial
        Multi-task Learning". ICLR 2021, section 3.1.
    """

    def gradient_weights(self, grads, losses, present):
        return ops.imtl_g_weights(grads, mask=present)


@keras.saving.register_keras_serializable(package="keras_mtl")
class IMTLL(Balancer):
    """IMTL-L: learned loss scales, L = sum_t (e^{s_t} L_t - s_t).

    `s_t` (init 0) is learned with the network; `d/ds_t = e^{s_t} L_t - 1`,
    so at the optimum every scaled loss `e^{s_t} L_t` equals 1, whatever the
    loss's form or scale. The reported task weight is `e^{s_t}`.

    Args:
        optimizer: optimizer of the scales. Defaults to Adam with learning
            rate 0.025.

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mae"},
    ...               balancer=keras_mtl.balancers.IMTLL())

    Reference:
        Liu et al. "Towards Impartial Multi-task Learning". ICLR 2021,
        section 3.2, eq. 6.
    """

    def build_state(self, num_tasks):
        self.log_scales = self.add_state("log_scales", (num_tasks,))

    @property
    def learned_variables(self):
        return [self.log_scales]

    def task_weights(self):
        return tf.exp(tf.convert_to_tensor(self.log_scales))

    def combine(self, losses, present):
        scaled = ops.imtl_l_loss(losses, tf.convert_to_tensor(self.log_scales))
        return tf.reduce_sum(scaled * present)


@keras.saving.register_keras_serializable(package="keras_mtl")
class IMTL(GradientBalancer):
    """IMTL, the hybrid: IMTL-L on task-specific parameters, IMTL-G on shared ones.

    Section 3.3 / Algorithm 1 of the paper: task-specific parameters and the
    learned scales `s_t` train on `sum_t (e^{s_t} L_t - s_t)`; the shared
    parameters get `sum_t alpha_t grad(e^{s_t} L_t)` with `alpha` from IMTL-G
    on the gradients of the scaled losses, `e^{s_t} g_t` (the train step
    differentiates the raw losses; the rows are rescaled here). The reported
    task weight is the effective weight on the raw loss, `alpha_t e^{s_t}`.

    Args:
        mode: `"features"` (default, gradients at the shared representation)
            or `"shared"` (all shared parameters).
        optimizer: optimizer of the scales. Defaults to Adam with learning
            rate 0.025.

    Example:

    >>> model.compile(optimizer="sgd", loss={"seg": seg_loss, "depth": "mae"},
    ...               balancer=keras_mtl.balancers.IMTL())

    Reference:
        Liu et al. "Towards Impartial Multi-task Learning". ICLR 2021,
        section 3.3.
    """

    def build_state(self, num_tasks):
        super().build_state(num_tasks)
        self.log_scales = self.add_state("log_scales", (num_tasks,))

    @property
    def learned_variables(self):
        return [self.log_scales]

    def _scales(self):
        return tf.exp(tf.stop_gradient(tf.convert_to_tensor(self.log_scales)))

    def combine(self, losses, present):
        scaled = ops.imtl_l_loss(losses, tf.convert_to_tensor(self.log_scales))
        return tf.reduce_sum(scaled * present)

    def gradient_weights(self, grads, losses, present):
        # The rows of the scaled losses are grad(e^{s_t} L_t) = e^{s_t} g_t
        # (s is a constant for z and the shared parameters; the -s_t terms
        # vanish), so G is rescaled here rather than differentiating the
        # scaled losses: the same numbers, without making the train step
        # differentiate through the scales. The returned weights apply to the
        # raw rows: alpha_t e^{s_t}, which is also what is reported.
        scales = tf.cast(self._scales(), grads.dtype)
        alpha = ops.imtl_g_weights(grads * scales[:, None], mask=present)
        return alpha * scales

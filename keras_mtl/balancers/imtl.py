"""IMTL balancers (Liu et al., ICLR 2021): IMTL-G, IMTL-L and the hybrid IMTL."""

import keras
import tensorflow as tf

from keras_mtl import ops
from keras_mtl.balancers.base import Balancer
from keras_mtl.balancers.base import GradientBalancer

class LearnedLossScales:
    """The learned loss scales of IMTL-L, shared by IMTL-L and the hybrid IMTL.

    State `s_t` (init 0); `combine = sum_t (e^{s_t} L_t - s_t)` over present
    tasks, differentiated w.r.t. `s` by the train step.
    """

    def build_scales(self, num_tasks):
        self.log_scales = self.add_state("log_scales", (num_tasks,))

    @property
    def learned_variables(self):
        return [self.log_scales]

    def scales(self):
        return tf.exp(tf.convert_to_tensor(self.log_scales))

    def combine(self, losses, present):
        scaled = ops.imtl_l_loss(losses, tf.convert_to_tensor(self.log_scales))
        return tf.reduce_sum(scaled * present)


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
class IMTLL(LearnedLossScales, Balancer):
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
        self.build_scales(num_tasks)

    def task_weights(self):
        return self.scales()


@keras.saving.register_keras_serializable(package="keras_mtl")
class IMTL(LearnedLossScales, GradientBalancer):
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
        self.build_scales(num_tasks)

    def gradient_weights(self, grads, losses, present):
        # The rows of the scaled losses are grad(e^{s_t} L_t) = e^{s_t} g_t
        # (s is a constant for z and the shared parameters; the -s_t terms
        # vanish), so G is rescaled here rather than differentiating the
        # scaled losses: the same numbers, without making the train step
        # differentiate through the scales. The returned weights apply to the
        # raw rows: alpha_t e^{s_t}, which is also what is reported.
        scales = tf.cast(tf.stop_gradient(self.scales()), grads.dtype)
        alpha = ops.imtl_g_weights(grads * scales[:, None], mask=present)
        return alpha * scales

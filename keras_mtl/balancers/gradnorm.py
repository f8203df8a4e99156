"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018)."""

import math

import keras
import tensorflow as tf

from keras_mtl._keras_compat import flatten_layers
from keras_mtl.balancers.base import LAYER_GRAD_NORMS
from keras_mtl.balancers.base import Balancer
from keras_mtl.balancers.base import check_positive
from keras_mtl.layers.task_conditioned import task_variable_layers

_TRANSFORMS = {None: 1.0, "identity": 1.0, "square": 2.0}


def _ratio_power(spec):
    """phi^{-1} as a power: 'square' (L1 losses, preprint 5.2) is 2."""
    if spec in _TRANSFORMS:
        return _TRANSFORMS[spec]
    if isinstance(spec, (int, float)) and spec > 0:
        return float(spec)
    raise ValueError(
        "Invalid value received for argument `loss_ratio_transform`. Expected "
        "None, 'identity', 'square', a positive power, or a dict of those per "
        f"task. Received: {spec!r}"
    )


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradNorm(Balancer):
    """GradNorm: learn task weights so the tasks' gradient norms train at equal rates.

    Algorithm 1 of the paper, per step t:

    - the network trains on L = sum_i w_i(t) L_i(t);
    - G_i = ||grad_W w_i(t) L_i(t)||_2 at the kernel W of the last shared layer
      (biases excluded; `layer=` picks another shared layer);
    - L~_i = L_i(t) / L_i(0), r_i = L~_i / mean_j L~_j;
    - target_i = mean_j G_j * r_i^alpha, held constant;
    - L_grad = sum_i |G_i - target_i| updates only the w_i (never the network),
      with the balancer's own optimizer; then w is renormalised to sum to T.

    Because the target is a constant and G_i = w_i ||grad_W L_i||, the weight
    gradient has the closed form dL_grad/dw_i = sign(G_i - target_i) *
    ||grad_W L_i||: no second-order pass through the network is needed (the
    tests check it against finite differences of L_grad). The per-task norms
    ||grad_W L_i|| cost one backward pass of each head plus the last shared
    layer, never T passes through the trunk.

    Weights that the update would drive to or below `min_weight` are floored
    at `min_weight` before the renormalisation, counted in `num_floored` and
    reported by `fit` as a `keras_mtl.balancers.BalancerWarning` (a negative
    weight would train the network to
    make that task worse; the paper notes instability at large alpha).

    Args:
        alpha: asymmetry, >= 0. 0 pins all gradient norms to be equal; the
            paper uses 0.12 on the toy problem and 1.5 on NYUv2.
        layer: name of the shared layer whose kernel is W. Defaults to the
            last layer of the encoder that has a `kernel`.
        initial_losses: L_i(0) per task, a dict `{task: value}` or a list in
            task order; tasks not given take their loss at their first
            labelled step (the default for all). Use log(C) for a C-class
            cross-entropy (paper footnote 2): see `cross_entropy_initial_loss`.
        loss_ratio_transform: phi^{-1} applied to L_i/L_i(0) (preprint section
            5.2), None/'identity', 'square' (for L1 losses) or a positive
            power; a dict gives one per task.
        min_weight: floor of the weights before renormalisation. Defaults to
            `1e-3`.
        optimizer: optimizer of the weights. Defaults to Adam with learning
            rate 0.025 (paper section 5.1).

    Example:

    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.GradNorm(alpha=0.12))

    Reference:
        Chen, Badrinarayanan, Lee, Rabinovich. "GradNorm: Gradient
        Normalization for Adaptive Loss Balancing in Deep Multitask
        Networks". ICML 2018.
    """

    requires = LAYER_GRAD_NORMS

    def __init__(
        self,
        alpha=1.5,
        layer=None,
        initial_losses=None,
        loss_ratio_transform=None,
        min_weight=1e-3,
        optimizer=None,
        name=None,
        **kwargs,
    ):
        super().__init__(optimizer=optimizer, name=name, **kwargs)
        self.alpha = float(check_positive("alpha", alpha))
        self.layer = layer
        self.initial_losses = initial_losses
        self.loss_ratio_transform = loss_ratio_transform
        self.min_weight = float(check_positive("min_weight", min_weight, False))
        if isinstance(loss_ratio_transform, dict):
            for v in loss_ratio_transform.values():
                _ratio_power(v)
        else:
            _ratio_power(loss_ratio_transform)
        if initial_losses is not None:
            values = (
                initial_losses.values()
                if isinstance(initial_losses, dict)
                else initial_losses
            )
            for v in values:
                check_positive("initial_losses", float(v), allow_zero=False)

    @staticmethod
    def cross_entropy_initial_loss(num_classes):
        """The theoretical initial loss log(C) of a C-class cross-entropy."""
        return math.log(num_classes)

    def _per_task(self, spec, default, what):
        """Expands a dict / list / scalar spec into a list in task order."""
        if spec is None:
            return [default] * self.num_tasks
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(self.task_names))
            if unknown:
                raise ValueError(
                    f"GradNorm: `{what}` names unknown tasks {unknown}. "
                    f"Known tasks: {self.task_names}."
                )
            return [spec.get(t, default) for t in self.task_names]
        if isinstance(spec, (list, tuple)):
            if len(spec) != self.num_tasks:
                raise ValueError(
                    f"GradNorm: `{what}` has {len(spec)} values for "
                    f"{self.num_tasks} tasks. Received: {spec}"
                )
            return list(spec)
        return [spec] * self.num_tasks

    def build_state(self, num_tasks):
        given = self._per_task(self.initial_losses, None, "initial_losses")
        powers = self._per_task(self.loss_ratio_transform, None, "loss_ratio_transform")
        self._powers = tf.constant([_ratio_power(p) for p in powers], "float32")
        self.task_weight_values = self.add_state(
            "task_weights", (num_tasks,), initializer="ones"
        )
        self.initial_loss_values = self.add_state(
            "initial_losses",
            (num_tasks,),
            initializer=keras.initializers.Constant(
                [1.0 if v is None else float(v) for v in given]
            ),
        )
        self.has_initial_loss = self.add_state(
            "has_initial_loss",
            (num_tasks,),
            initializer=keras.initializers.Constant(
                [0.0 if v is None else 1.0 for v in given]
            ),
        )
        self.grad_norm_values = self.add_state("grad_norms", (num_tasks,))
        self.num_floored = self.add_state("num_floored", (), dtype="int64")
        self.layer_norms = self.add_state("layer_norms", (num_tasks,))

    @property
    def optimized_variables(self):
        return [self.task_weight_values]

    def find_kernel(self, encoder):
        """The kernel W: of the layer named `layer`, else the encoder's last one.

        An encoder whose last kernel in layer order is not on every task's
        path declares its shared kernel with a `gradnorm_kernel()` method
        (e.g. a branching encoder: its stem), returning None when it has
        none (e.g. cross-stitch columns): GradNorm then needs `layer=`.
        """
        hook = getattr(encoder, "gradnorm_kernel", None)
        if self.layer is None and callable(hook):
            kernel = hook()
            if kernel is None:
                reason = getattr(encoder, "no_shared_kernel_reason", "")
                raise ValueError(
                    "GradNorm balances gradient norms at a kernel on every "
                    f"task's path, and encoder '{encoder.name}' has none"
                    + (f" ({reason})" if reason else "") + ". Use a loss-based "
                    "balancer or a parameter-level one (mode='shared'), or "
                    "name a layer with GradNorm(layer=...)."
                )
            return kernel
        layers = flatten_layers(encoder)
        task_specific = {
            id(v) for l in task_variable_layers(encoder)
            for t in range(l.num_tasks) for v in l.task_variables(t)
        }
        candidates = [
            l for l in layers
            if isinstance(getattr(l, "kernel", None), keras.Variable) and l.kernel.trainable
            and id(l.kernel) not in task_specific
        ]
        if self.layer is not None:
            candidates = [l for l in candidates if l.name == self.layer]
            if not candidates:
                raise ValueError(
                    f"GradNorm layer='{self.layer}' matches no shared layer with a "
                    "kernel in the encoder."
                )
        if not candidates:
            raise ValueError(
                "GradNorm needs a shared layer with a `kernel` in the encoder; "
                "found none."
            )
        return candidates[-1].kernel

    def record_grad_norms(self, norms):
        """The unweighted per-task norms ||grad_W L_i|| of this step."""
        self.layer_norms.assign(norms)

    def warnings(self):
        return [(self.num_floored,
                 "GradNorm floored task weights at min_weight: alpha may be too "
                 "large (GradNorm.num_floored counts the floored updates).")]

    def task_weights(self):
        return tf.convert_to_tensor(self.task_weight_values)

    def target_norms(self, losses, present, norms):
        """Returns (G, target): the weighted gradient norms and their targets.

        `norms` are the unweighted per-task norms ||grad_W L_i|| (T,).
        """
        w = self.task_weights()
        has = tf.maximum(self.has_initial_loss, present)
        l0 = tf.where(
            self.has_initial_loss > 0, self.initial_loss_values, losses
        )
        l0 = tf.where(has > 0, l0, tf.ones_like(l0))
        ratio = tf.math.divide_no_nan(losses, l0) ** self._powers
        count = tf.maximum(tf.reduce_sum(present), 1.0)
        mean_ratio = tf.reduce_sum(ratio * present) / count
        r = tf.math.divide_no_nan(ratio, mean_ratio)
        g = w * norms
        g_mean = tf.reduce_sum(g * present) / count
        target = tf.stop_gradient(g_mean * r**self.alpha)
        return g, target

    def gradnorm_loss(self, losses, present, norms):
        """L_grad = sum_i |G_i - target_i| over the labelled tasks."""
        g, target = self.target_norms(losses, present, norms)
        return tf.reduce_sum(tf.abs(g - target) * present)

    def weight_gradient(self, losses, present, norms):
        """Closed-form dL_grad/dw_i = sign(G_i - target_i) ||grad_W L_i||."""
        g, target = self.target_norms(losses, present, norms)
        return tf.sign(g - target) * norms * present

    def update(self, losses, present):
        grad_norms = tf.convert_to_tensor(self.layer_norms)
        grad_w = self.weight_gradient(losses, present, grad_norms)
        # G_i = w_i(t) ||grad_W L_i||, kept for diagnostics and plots.
        self.grad_norm_values.assign(self.task_weights() * grad_norms)
        # L_i(0): the loss at each task's first labelled step, taken once.
        first = (1.0 - self.has_initial_loss) * present
        self.initial_loss_values.assign(
            first * losses + (1.0 - first) * self.initial_loss_values
        )
        self.has_initial_loss.assign(tf.maximum(self.has_initial_loss, present))
        self.optimizer_step([grad_w], [self.task_weight_values])
        w = tf.convert_to_tensor(self.task_weight_values)
        self.num_floored.assign_add(tf.cast(tf.reduce_any(w < self.min_weight), "int64"))
        w = tf.maximum(w, self.min_weight)
        self.task_weight_values.assign(w * (self.num_tasks / tf.reduce_sum(w)))

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "layer": self.layer,
            "initial_losses": self.initial_losses,
            "loss_ratio_transform": self.loss_ratio_transform,
            "min_weight": self.min_weight,
        }

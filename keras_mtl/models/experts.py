"""Expert-based multi-task architectures: MMoE, CGC, PLE and DSelect-k.

All four route each task through a task-specific mixture of expert networks:

- MMoE (Ma et al., KDD 2018): E shared experts, one softmax gate per task;
- CGC (Tang et al., RecSys 2020): shared experts plus task-specific experts,
  task t's gate mixing its own and the shared experts;
- PLE (same paper): L levels of CGC; at inner levels a shared gate over all
  experts feeds the next level's shared experts ("progressive extraction");
- DSelect-k (Hazimeh et al., NeurIPS 2021): shared experts, one gate per task
  that selects (at most) k experts with k differentiable binary-encoded
  selectors (smooth-step activations, entropy-regularised towards binary).

An expert is any Keras layer, given as a template (an unbuilt layer instance
or its serialized config) that is copied once per expert: an MLP
(`mlp_expert`, the default) for vectors, a ResNet trunk (`resnet_expert`) for
images, as LibMTL does ("each expert is the encoder network").

What the feature-level balancers see as z
-----------------------------------------
MMoE, CGC and DSelect-k have a representation that every task reads and that
only shared parameters produce: the shared experts' outputs. Their encoder,
`SharedExperts`, returns the nest
`z = {"experts": (B, E, ...) stacked shared-expert outputs, "inputs": x}`,
and everything task-specific lives in the heads (`GatedExpertHead`,
`DSelectKHead`): the gate, CGC's task experts and the tower. So the
task-specific parameters are head variables (they get exactly zero gradient
from other tasks' losses by construction), feature-level balancers (IMTL-G,
MGDA-UB, PCGrad, ...) read dL_t/dz at the experts' outputs, and GradNorm's
"last shared layer" is the last shared expert's last kernel. The heads read
`x` (the gate input, and CGC's task experts' input) through
`tf.stop_gradient`: x has no parameters upstream, so nothing is lost, and
the "inputs" block of dL_t/dz is exactly zero, which leaves every
feature-level balancer's inner products, norms and projections those of
the experts' block alone.

PLE has no such z when L >= 2: the level-2 shared experts read a shared gate
over the level-1 *task* experts, so every "task" expert below the top level
(and every gate feeding a shared gate) gets every task's gradient, and the
last tensor all tasks share is several layers below the towers' inputs.
`ProgressiveLayeredExtraction` therefore follows the `TaskOutputs` protocol:
it returns one representation per task, declares as `task_variables(t)`
only what task t alone uses (its top-level experts and gate, and its gate
at the level below, whose output only task t's top-level experts and gate
read), and feature-level balancers and the gradient discriminator are
rejected for it with a clear error; use loss-based balancers or a
balancer's parameter-level mode (`mode="shared"`).

Gate inputs
-----------
`gate_input="flatten"` (LibMTL, and the papers' tabular setting) gives the
gates the flattened level input; `"pool"` its global average over the
spatial axes (a (B, C) vector), which keeps gates over feature maps small.
"""

import math

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_mtl.layers.task_conditioned import TaskOutputs
from keras_mtl.models.heads import build_model
from keras_mtl.models.heads import conv_head
from keras_mtl.models.heads import dense_head

GATE_INPUTS = ("flatten", "pool")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an "
            f"integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def _check_gate_input(value):
    if value not in GATE_INPUTS:
        raise ValueError(
            "Invalid value received for argument `gate_input`. Expected one of "
            f"{GATE_INPUTS}. Received: gate_input={value!r}"
        )
    return value


def _serialize(template, name):
    """The config dict of a layer template (a Keras layer or its config)."""
    if template is None:
        return None
    if isinstance(template, keras.layers.Layer):
        return keras.saving.serialize_keras_object(template)
    if isinstance(template, dict) and "class_name" in template:
        return template
    raise ValueError(
        f"Invalid value received for argument `{name}`. Expected a Keras "
        f"layer instance or its serialized config dict. Received: {name}={template!r}"
    )


def _instantiate(config, name=None):
    """A fresh, unbuilt layer from a template config (named `name` if given)."""
    config = {**config, "config": dict(config["config"])}
    if name is not None:
        config["config"]["name"] = name
    return keras.saving.deserialize_keras_object(config)


def gate_features(x, gate_input):
    """(B, F) gate input from a level input: flattened, or spatially averaged."""
    if gate_input == "pool" and len(x.shape) > 2:
        return tf.reduce_mean(x, axis=list(range(1, len(x.shape) - 1)))
    if len(x.shape) == 2:
        return x
    return tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])


def gate_feature_shape(shape, gate_input):
    shape = tuple(shape)
    if gate_input == "pool" and len(shape) > 2:
        return (shape[0], shape[-1])
    return (shape[0], int(np.prod(shape[1:])))


def mix(weights, experts):
    """sum_e weights[:, e] * experts[:, e]: weights (B, E), experts (B, E, ...)."""
    weights = tf.cast(weights, experts.dtype)
    extra = len(experts.shape) - 2
    weights = tf.reshape(weights, tf.concat([tf.shape(weights), [1] * extra], 0))
    return tf.reduce_sum(weights * experts, axis=1)


def _build_chain(layer, shape):
    if not layer.built:
        layer.build(shape)
    return tuple(layer.compute_output_shape(shape))


def _stacked_shape(expert_shape, count):
    return (expert_shape[0], count) + tuple(expert_shape[1:])


# --------------------------------------------------------------------------
# Expert factories (gin-configurable: Keras classes are never gin-decorated)
# --------------------------------------------------------------------------
@gin.configurable
def mlp_expert(units=(64,), activation="relu", name="mlp_expert"):
    """An MLP expert template: Dense(u) + activation for each u in `units`.

    MMoE and PLE use one- or two-layer ReLU MLP experts on tabular data.

    Returns:
        an unbuilt `keras.Sequential`.
    """
    units = [_check_int("units", u, 1) for u in (units if isinstance(units, (list, tuple)) else [units])]
    if not units:
        raise ValueError("Invalid value received for argument `units`. Expected at least one layer.")
    return keras.Sequential(
        [keras.layers.Dense(u, activation=activation) for u in units], name=name)


@gin.configurable
def resnet_expert(
    stage_blocks=(2, 2, 2, 2),
    stage_filters=(64, 128, 256, 512),
    bottleneck_filters=None,
    stage_strides=(1, 2, 2, 2),
    stage_dilations=None,
    stem_filters=64,
    pooling=None,
    stem=True,
):
    """A ResNet expert template (LibMTL: "each expert is the encoder network").

    With `stem=True` a `keras_mtl.models.ResNet` trunk (7x7/2 stem, max pool,
    the stages, optional global average pooling); with `stem=False` only the
    residual stages (a `keras.Sequential` of `ResidualBlock`s), the upper
    part of a trunk split across PLE levels.

    Example (the dilated ResNet-50 of LibMTL's NYUv2 / Cityscapes encoder):

    >>> resnet_expert((3, 4, 6, 3), (256, 512, 1024, 2048),
    ...               bottleneck_filters=(64, 128, 256, 512),
    ...               stage_strides=(1, 2, 1, 1), stage_dilations=(1, 1, 2, 4))
    """
    from keras_mtl.models.resnet18 import ResNet
    from keras_mtl.models.resnet18 import ResidualBlock

    if stem:
        return ResNet(
            stage_blocks=stage_blocks, stage_filters=stage_filters,
            bottleneck_filters=bottleneck_filters, stage_strides=stage_strides,
            stage_dilations=stage_dilations, stem_filters=stem_filters,
            pooling=pooling, name="resnet_expert")
    n = len(tuple(stage_blocks))
    dilations = tuple(stage_dilations) if stage_dilations is not None else (1,) * n
    if not (len(tuple(stage_filters)) == len(tuple(stage_strides)) == len(dilations) == n) or (
            bottleneck_filters is not None and len(tuple(bottleneck_filters)) != n):
        raise ValueError(
            "Invalid value received for the stage arguments. Expected "
            "`stage_blocks`, `stage_filters`, `stage_strides`, `stage_dilations` "
            "(and `bottleneck_filters`) of one common length. Received: "
            f"stage_blocks={stage_blocks}, stage_filters={stage_filters}, "
            f"stage_strides={stage_strides}, stage_dilations={stage_dilations}, "
            f"bottleneck_filters={bottleneck_filters}")
    layers = []
    for s, count in enumerate(stage_blocks):
        for b in range(count):
            layers.append(ResidualBlock(
                stage_filters[s],
                bottleneck_filters=None if bottleneck_filters is None else bottleneck_filters[s],
                strides=stage_strides[s] if b == 0 else 1,
                dilation_rate=dilations[s]))
    if pooling == "avg":
        layers.append(keras.layers.GlobalAveragePooling2D())
    return keras.Sequential(layers, name="resnet_stages_expert")


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="keras_mtl")
class SharedExperts(keras.layers.Layer):
    """The shared part of MMoE, CGC and DSelect-k: E experts on the same input.

    Returns the nest `{"experts": (B, E, ...), "inputs": x}`: the stacked
    expert outputs (the shared representation feature-level balancers read)
    and the input itself, which the per-task heads gate on (see the module
    docstring).

    Args:
        expert: expert template (Keras layer or its config); copied
            `num_experts` times. Defaults to `mlp_expert()`.
        num_experts: E >= 1.

    Example:

    >>> shared = SharedExperts(mlp_expert((8,)), num_experts=3)
    >>> z = shared(np.zeros((2, 5), "float32"))   # z["experts"]: (2, 3, 8)
    """

    def __init__(self, expert=None, num_experts=3, **kwargs):
        super().__init__(**kwargs)
        self.num_experts = _check_int("num_experts", num_experts, 1)
        self.expert = _serialize(expert if expert is not None else mlp_expert(), "expert")
        self.experts = [_instantiate(self.expert, f"expert_{e}") for e in range(self.num_experts)]

    def build(self, input_shape):
        for e in self.experts:
            _build_chain(e, input_shape)
        self.built = True

    def call(self, inputs, training=None):
        outs = [e(inputs, training=training) for e in self.experts]
        # A new tensor: dL_t/dz at "inputs" must not include the path
        # through the experts (which read `inputs` itself).
        return {"experts": tf.stack(outs, axis=1), "inputs": tf.identity(inputs)}

    def compute_output_shape(self, input_shape):
        out = tuple(self.experts[0].compute_output_shape(input_shape))
        return {"experts": _stacked_shape(out, self.num_experts), "inputs": tuple(input_shape)}

    def get_config(self):
        return {**super().get_config(), "expert": self.expert, "num_experts": self.num_experts}


@keras.saving.register_keras_serializable(package="keras_mtl")
class DSelectKGate(keras.layers.Layer):
    """DSelect-k's per-example gate: weights over E experts with at most k non-zeros.

    k single-expert selectors each hold m = ceil(log2 E) logits z_i (a dense
    map of the routing input); selector i puts weight
    r_i(e) = prod_j [S(z_ij) if bit j of e is 1 else 1 - S(z_ij)] on expert e,
    S the cubic smooth-step of width gamma (exactly 0 or 1 outside
    [-gamma/2, gamma/2]). The selectors are mixed by a softmax over k
    further logits: q(e) = sum_i softmax(w)_i r_i(e). In training it adds
    (`add_loss`) the entropy regulariser `entropy_reg * sum_i H(r_i)`, and
    for E not a power of 2 the term `sum_i 1 / sum_e r_i(e)` (unreachable
    codes must not take the weight), both averaged over the batch.

    Args:
        num_experts: E >= 2.
        num_nonzeros: k, 1 <= k <= E.
        gamma: width of the smooth-step's cubic region (> 0). Defaults to `1.0`.
        entropy_reg: lambda >= 0 of the entropy regulariser. Defaults to `1e-6`
            (the official implementation's default schedule value).

    Call arguments:
        inputs: (B, F) routing inputs.

    Returns:
        (B, E) expert weights (non-negative, summing to 1 when every
        selector sits on a reachable code).

    Reference:
        Hazimeh et al., "DSelect-k: Differentiable Selection in the Mixture
        of Experts with Applications to Multi-Task Learning", NeurIPS 2021.
    """

    def __init__(self, num_experts, num_nonzeros, gamma=1.0, entropy_reg=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_experts = _check_int("num_experts", num_experts, 2)
        self.num_nonzeros = _check_int("num_nonzeros", num_nonzeros, 1)
        if self.num_nonzeros > self.num_experts:
            raise ValueError(
                "Invalid value received for argument `num_nonzeros`. Expected "
                f"k <= num_experts={self.num_experts}. Received: num_nonzeros={num_nonzeros}"
            )
        if not float(gamma) > 0:
            raise ValueError(f"Invalid value received for argument `gamma`. Expected > 0. Received: gamma={gamma}")
        if not float(entropy_reg) >= 0:
            raise ValueError(
                f"Invalid value received for argument `entropy_reg`. Expected >= 0. Received: entropy_reg={entropy_reg}")
        self.gamma = float(gamma)
        self.entropy_reg = float(entropy_reg)
        self.num_binary = int(math.ceil(math.log2(self.num_experts)))
        self.power_of_2 = self.num_experts == 2 ** self.num_binary
        codes = np.array([[int(b) for b in np.binary_repr(e, width=self.num_binary)]
                          for e in range(self.num_experts)], dtype=bool)
        self.codes = codes  # (E, m)
        g = self.gamma / 100.0
        self.z_logits = keras.layers.Dense(
            self.num_nonzeros * self.num_binary, name="z_logits",
            kernel_initializer=keras.initializers.RandomUniform(-g, g),
            bias_initializer=keras.initializers.RandomUniform(-g, g))
        self.w_logits = keras.layers.Dense(
            self.num_nonzeros, name="w_logits",
            kernel_initializer=keras.initializers.RandomUniform(-0.05, 0.05),
            bias_initializer=keras.initializers.RandomUniform(-0.05, 0.05))

    def build(self, input_shape):
        self.z_logits.build(input_shape)
        self.w_logits.build(input_shape)
        self.built = True

    def smooth_step(self, t):
        g = self.gamma
        cubic = -2.0 / g ** 3 * t ** 3 + 3.0 / (2.0 * g) * t + 0.5
        return tf.where(t <= -g / 2, tf.zeros_like(t), tf.where(t >= g / 2, tf.ones_like(t), cubic))

    def selectors(self, inputs):
        """(B, k, E) selector outputs r_i(e) and (B, k) selector weights."""
        z = tf.reshape(self.z_logits(inputs), [-1, self.num_nonzeros, 1, self.num_binary])
        s = self.smooth_step(z)
        codes = tf.constant(self.codes)[None, None]  # (1, 1, E, m)
        r = tf.reduce_prod(tf.where(codes, s, 1.0 - s), axis=-1)
        return r, tf.nn.softmax(self.w_logits(inputs), axis=-1)

    def call(self, inputs, training=None):
        r, alpha = self.selectors(inputs)
        if training:
            entropy = -tf.reduce_sum(r * tf.math.log(r + 1e-6), axis=[1, 2])
            reg = self.entropy_reg * tf.reduce_mean(entropy)
            if not self.power_of_2:
                reg += tf.reduce_mean(tf.reduce_sum(1.0 / tf.reduce_sum(r, axis=-1), axis=-1))
            self.add_loss(reg)
        return tf.reduce_sum(alpha[:, :, None] * r, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_experts)

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts,
                "num_nonzeros": self.num_nonzeros, "gamma": self.gamma,
                "entropy_reg": self.entropy_reg}


@keras.saving.register_keras_serializable(package="keras_mtl")
class GatedExpertHead(keras.layers.Layer):
    """One task's head of MMoE / CGC: [task experts] + softmax gate + tower.

    Reads `z = {"experts": (B, E, ...), "inputs": x}` (see `SharedExperts`):
    runs its `num_task_experts` own experts on x (CGC; none for MMoE),
    gates over [shared experts, own experts] with softmax(Dense(gate
    features of x)), and applies the tower to the mixture. x is read
    through `tf.stop_gradient` (it has no parameters upstream).

    Args:
        num_experts: E, the number of shared experts in z.
        tower: the task's tower (a Keras layer or its config), mapping the
            mixture to the prediction; `None` returns the mixture.
        task_expert: template of the task-specific experts. Defaults to
            `mlp_expert()` when `num_task_experts > 0`.
        num_task_experts: CGC's task-specific experts (0 for MMoE).
        gate_input: `"flatten"` or `"pool"` (see the module docstring).
    """

    def __init__(self, num_experts, tower=None, task_expert=None, num_task_experts=0,
                 gate_input="flatten", **kwargs):
        super().__init__(**kwargs)
        self.num_experts = _check_int("num_experts", num_experts, 1)
        self.num_task_experts = _check_int("num_task_experts", num_task_experts, 0)
        self.gate_input = _check_gate_input(gate_input)
        self.tower_config = _serialize(tower, "tower")
        self.tower = None if tower is None else _instantiate(self.tower_config, "tower")
        if self.num_task_experts and task_expert is None:
            task_expert = mlp_expert()
        self.task_expert = _serialize(task_expert, "task_expert") if self.num_task_experts else None
        self.task_experts = [_instantiate(self.task_expert, f"task_expert_{e}")
                             for e in range(self.num_task_experts)]
        self.gate = self._make_gate()

    @property
    def total_experts(self):
        return self.num_experts + self.num_task_experts

    def _make_gate(self):
        # softmax applied in `gate_weights` (no Keras warning for E = 1)
        return keras.layers.Dense(self.total_experts, name="gate")

    def build(self, input_shape):
        x_shape = tuple(input_shape["inputs"])
        for e in self.task_experts:
            _build_chain(e, x_shape)
        self.gate.build(gate_feature_shape(x_shape, self.gate_input))
        mixed = tuple(input_shape["experts"])
        mixed = (mixed[0],) + mixed[2:]
        if self.tower is not None:
            _build_chain(self.tower, mixed)
        self.built = True

    def gate_weights(self, x, training=None):
        return tf.nn.softmax(self.gate(gate_features(x, self.gate_input)), axis=-1)

    def call(self, inputs, training=None):
        experts = inputs["experts"]
        x = tf.stop_gradient(inputs["inputs"])
        if self.task_experts:
            own = tf.stack([e(x, training=training) for e in self.task_experts], axis=1)
            experts = tf.concat([experts, tf.cast(own, experts.dtype)], axis=1)
        out = mix(self.gate_weights(x, training=training), experts)
        if self.tower is not None:
            out = self.tower(out, training=training)
        return out

    def compute_output_shape(self, input_shape):
        mixed = tuple(input_shape["experts"])
        mixed = (mixed[0],) + mixed[2:]
        return mixed if self.tower is None else self.tower.compute_output_shape(mixed)

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts,
                "tower": self.tower_config, "task_expert": self.task_expert,
                "num_task_experts": self.num_task_experts, "gate_input": self.gate_input}


@keras.saving.register_keras_serializable(package="keras_mtl")
class DSelectKHead(GatedExpertHead):
    """One task's head of DSelect-k: a `DSelectKGate` over the shared experts + tower.

    Args:
        num_experts: E >= 2 shared experts in z.
        num_nonzeros: k <= E experts selected.
        gamma, entropy_reg: see `DSelectKGate`.
        tower, gate_input: see `GatedExpertHead`.
    """

    def __init__(self, num_experts, num_nonzeros=2, gamma=1.0, entropy_reg=1e-6,
                 tower=None, gate_input="flatten", **kwargs):
        self.num_nonzeros = num_nonzeros
        self.gamma = gamma
        self.entropy_reg = entropy_reg
        kwargs.pop("task_expert", None)
        kwargs.pop("num_task_experts", None)
        super().__init__(num_experts, tower=tower, gate_input=gate_input, **kwargs)

    def _make_gate(self):
        return DSelectKGate(self.num_experts, self.num_nonzeros, gamma=self.gamma,
                            entropy_reg=self.entropy_reg, name="gate")

    def gate_weights(self, x, training=None):
        return self.gate(gate_features(x, self.gate_input), training=training)

    def get_config(self):
        config = super().get_config()
        config.pop("task_expert")
        config.pop("num_task_experts")
        return {**config, "num_nonzeros": self.gate.num_nonzeros,
                "gamma": self.gate.gamma, "entropy_reg": self.gate.entropy_reg}


@keras.saving.register_keras_serializable(package="keras_mtl")
class ProgressiveLayeredExtraction(TaskOutputs, keras.layers.Layer):
    """PLE's extraction network: L levels of CGC with progressive extraction.

    Level l holds `num_shared_experts` shared experts and, per task,
    `num_task_experts` task experts. Task t's experts read task t's
    representation h_t^{l-1}, the shared experts read the shared one
    h_s^{l-1} (all start at x). Task t's gate mixes its own and the shared
    experts: h_t^l = sum softmax(G_t^l(h_t^{l-1})) [task-t experts, shared
    experts]; at inner levels (l < L) a shared gate mixes every expert of
    the level into h_s^l, the next level's shared input. Returns
    `[h_0^L, ..., h_{T-1}^L]` (the `TaskOutputs` protocol: see the module
    docstring for what is task-specific and why feature-level balancers are
    rejected).

    Args:
        num_tasks: T >= 1.
        expert: one expert template for every level, or a list of L
            templates (e.g. the lower and upper stages of a ResNet).
            Defaults to `mlp_expert()`.
        num_levels: L >= 1 (1 is CGC with one output per task).
        num_shared_experts: shared experts per level (>= 1).
        num_task_experts: experts per task and level (>= 1).
        gate_input: `"flatten"` or `"pool"`, one for all levels or one per
            level.

    Reference:
        Tang et al., "Progressive Layered Extraction (PLE): A Novel
        Multi-Task Learning (MTL) Model for Personalized Recommendations",
        RecSys 2020, section 4.
    """

    def __init__(self, num_tasks, expert=None, num_levels=2, num_shared_experts=1,
                 num_task_experts=1, gate_input="flatten", **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = _check_int("num_tasks", num_tasks, 1)
        self.num_levels = _check_int("num_levels", num_levels, 1)
        self.num_shared_experts = _check_int("num_shared_experts", num_shared_experts, 1)
        self.num_task_experts = _check_int("num_task_experts", num_task_experts, 1)
        if expert is None:
            expert = mlp_expert()
        templates = list(expert) if isinstance(expert, (list, tuple)) else [expert] * self.num_levels
        if len(templates) != self.num_levels:
            raise ValueError(
                "Invalid value received for argument `expert`. Expected one template "
                f"or a list of num_levels={self.num_levels}. Received a list of {len(templates)}."
            )
        self.expert = [_serialize(t, "expert") for t in templates]
        gates = list(gate_input) if isinstance(gate_input, (list, tuple)) else [gate_input] * self.num_levels
        if len(gates) != self.num_levels:
            raise ValueError(
                "Invalid value received for argument `gate_input`. Expected one value "
                f"or a list of num_levels={self.num_levels}. Received: gate_input={gate_input!r}"
            )
        self.gate_input = [_check_gate_input(g) for g in gates]
        T, Es, Et = self.num_tasks, self.num_shared_experts, self.num_task_experts
        self.shared_experts, self.task_experts, self.task_gates, self.shared_gates = [], [], [], []
        for l, config in enumerate(self.expert):
            self.shared_experts.append(
                [_instantiate(config, f"level{l}_shared_expert_{e}") for e in range(Es)])
            self.task_experts.append([
                [_instantiate(config, f"level{l}_task{t}_expert_{e}") for e in range(Et)]
                for t in range(T)])
            self.task_gates.append([
                keras.layers.Dense(Et + Es, activation="softmax", name=f"level{l}_task{t}_gate")
                for t in range(T)])
            self.shared_gates.append(
                keras.layers.Dense(T * Et + Es, activation="softmax", name=f"level{l}_shared_gate")
                if l < self.num_levels - 1 else None)

    def build(self, input_shape):
        task_shapes = [tuple(input_shape)] * self.num_tasks
        shared_shape = tuple(input_shape)
        for l in range(self.num_levels):
            mode = self.gate_input[l]
            out = None
            for e in self.shared_experts[l]:
                out = _build_chain(e, shared_shape)
            for t in range(self.num_tasks):
                for e in self.task_experts[l][t]:
                    _build_chain(e, task_shapes[t])
                self.task_gates[l][t].build(gate_feature_shape(task_shapes[t], mode))
            if self.shared_gates[l] is not None:
                self.shared_gates[l].build(gate_feature_shape(shared_shape, mode))
            task_shapes = [out] * self.num_tasks
            shared_shape = out
        self.built = True

    def call(self, inputs, training=None):
        task_in = [inputs] * self.num_tasks
        shared_in = inputs
        for l in range(self.num_levels):
            mode = self.gate_input[l]
            shared = [e(shared_in, training=training) for e in self.shared_experts[l]]
            own = [[e(task_in[t], training=training) for e in self.task_experts[l][t]]
                   for t in range(self.num_tasks)]
            outs = []
            for t in range(self.num_tasks):
                weights = self.task_gates[l][t](gate_features(task_in[t], mode))
                outs.append(mix(weights, tf.stack(own[t] + shared, axis=1)))
            if self.shared_gates[l] is not None:
                weights = self.shared_gates[l](gate_features(shared_in, mode))
                every = [o for per_task in own for o in per_task] + shared
                shared_in = mix(weights, tf.stack(every, axis=1))
            task_in = outs
        return task_in

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for l in range(self.num_levels):
            shape = tuple(self.shared_experts[l][0].compute_output_shape(shape))
        return [shape] * self.num_tasks

    def task_variables(self, task_index):
        """Task t's top-level experts and gate, and its gate one level below.

        The level-(L-1) gate of task t produces h_t^{L-1}, which only task
        t's top-level experts and gate read. Everything else (lower task
        experts feed the shared gates) is shared.
        """
        layers = list(self.task_experts[-1][task_index]) + [self.task_gates[-1][task_index]]
        if self.num_levels >= 2:
            layers.append(self.task_gates[-2][task_index])
        return [v for layer in layers for v in layer.trainable_variables]

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "expert": self.expert,
                "num_levels": self.num_levels, "num_shared_experts": self.num_shared_experts,
                "num_task_experts": self.num_task_experts, "gate_input": self.gate_input}


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------
def _check_tasks(tasks):
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a non-empty "
            f"dict {{task name: output units / channels}}. Received: tasks={tasks!r}"
        )


def _safe(name):
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in str(name))


def task_towers(tasks, head="dense", head_hidden=None, head_upsample=1,
                unit_normalize=("normal", "normals")):
    """One tower per task: `dense_head` (vectors) or `conv_head` (dense prediction)."""
    _check_tasks(tasks)
    if head not in ("dense", "conv"):
        raise ValueError(
            f"Invalid value received for argument `head`. Expected 'dense' or 'conv'. Received: head={head!r}")
    towers = {}
    for name, units in tasks.items():
        if head == "dense":
            towers[name] = dense_head(int(units), hidden_units=head_hidden, name=f"{_safe(name)}_tower")
        else:
            towers[name] = conv_head(int(units), hidden_filters=head_hidden, upsample=head_upsample,
                                     unit_normalize=name in set(unit_normalize or ()),
                                     name=f"{_safe(name)}_tower")
    return towers


def _model(encoder, heads, name, input_shape, model_kwargs):
    from keras_mtl.model import MultiTaskModel

    model = MultiTaskModel(encoder=encoder, heads=heads, name=name, **model_kwargs)
    return build_model(model, input_shape)


@gin.configurable
def mmoe_multitask(tasks, expert=None, num_experts=3, gate_input="flatten", head="dense",
                   head_hidden=None, head_upsample=1, unit_normalize=("normal", "normals"),
                   input_shape=None, **model_kwargs):
    """A `MultiTaskModel` with MMoE: shared experts, one softmax gate + tower per task.

    Encoder: `SharedExperts` (z = the stacked experts' outputs and the input);
    heads: `GatedExpertHead` (gate + tower, all task-specific).

    Args:
        tasks: dict `{task: output units (dense) / channels (conv)}`.
        expert: expert template (`mlp_expert()` by default; `resnet_expert()`
            for images).
        num_experts: E >= 1 (E = 1 is hard parameter sharing).
        gate_input: `"flatten"` or `"pool"`.
        head: tower kind, `"dense"` (`dense_head`) or `"conv"` (`conv_head`).
        head_hidden: hidden width of the towers (None: one output layer).
        head_upsample: `conv_head` upsampling factor.
        unit_normalize: conv tasks whose output is L2-normalised.
        input_shape: optional (…) input shape without batch; builds the model.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Example:

    >>> model = mmoe_multitask({"a": 1, "b": 1}, expert=mlp_expert((16,)),
    ...                        num_experts=4, head_hidden=8, input_shape=(10,))

    Reference:
        Ma et al., "Modeling Task Relationships in Multi-task Learning with
        Multi-gate Mixture-of-Experts", KDD 2018.
    """
    towers = task_towers(tasks, head, head_hidden, head_upsample, unit_normalize)
    encoder = SharedExperts(expert, num_experts=num_experts, name="mmoe_experts")
    heads = {t: GatedExpertHead(num_experts, tower=towers[t], gate_input=gate_input,
                                name=f"{_safe(t)}_head") for t in tasks}
    return _model(encoder, heads, "mmoe", input_shape, model_kwargs)


@gin.configurable
def cgc_multitask(tasks, expert=None, num_shared_experts=1, num_task_experts=1,
                  gate_input="flatten", head="dense", head_hidden=None, head_upsample=1,
                  unit_normalize=("normal", "normals"), input_shape=None, **model_kwargs):
    """A `MultiTaskModel` with CGC: shared + task experts, per-task gate + tower.

    Encoder: `SharedExperts` (z = the shared experts' outputs and the input);
    heads: `GatedExpertHead` with `num_task_experts` own experts each.
    Other arguments: see `mmoe_multitask`.

    Reference:
        Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020,
        section 4.2 (Customized Gate Control).
    """
    _check_int("num_task_experts", num_task_experts, 1)
    towers = task_towers(tasks, head, head_hidden, head_upsample, unit_normalize)
    expert = expert if expert is not None else mlp_expert()
    encoder = SharedExperts(expert, num_experts=num_shared_experts, name="cgc_shared_experts")
    heads = {t: GatedExpertHead(num_shared_experts, tower=towers[t], task_expert=expert,
                                num_task_experts=num_task_experts, gate_input=gate_input,
                                name=f"{_safe(t)}_head") for t in tasks}
    return _model(encoder, heads, "cgc", input_shape, model_kwargs)


@gin.configurable
def ple_multitask(tasks, expert=None, num_levels=2, num_shared_experts=1, num_task_experts=1,
                  gate_input="flatten", head="dense", head_hidden=None, head_upsample=1,
                  unit_normalize=("normal", "normals"), input_shape=None, **model_kwargs):
    """A `MultiTaskModel` with PLE: a `ProgressiveLayeredExtraction` encoder + towers.

    Args:
        expert: one template for every level or a list of `num_levels`.
        num_levels: L extraction levels.
        gate_input: one mode or one per level.
        Other arguments: see `mmoe_multitask`.

    The encoder follows `TaskOutputs`: use loss-based balancers or a
    balancer's `mode="shared"` (feature-level ones are rejected).

    Reference:
        Tang et al., "Progressive Layered Extraction (PLE)", RecSys 2020.
    """
    towers = task_towers(tasks, head, head_hidden, head_upsample, unit_normalize)
    encoder = ProgressiveLayeredExtraction(
        len(tasks), expert=expert, num_levels=num_levels, num_shared_experts=num_shared_experts,
        num_task_experts=num_task_experts, gate_input=gate_input, name="ple")
    return _model(encoder, dict(towers), "ple", input_shape, model_kwargs)


@gin.configurable
def dselect_k_multitask(tasks, expert=None, num_experts=4, num_nonzeros=2, gamma=1.0,
                        entropy_reg=1e-6, gate_input="flatten", head="dense", head_hidden=None,
                        head_upsample=1, unit_normalize=("normal", "normals"), input_shape=None,
                        **model_kwargs):
    """A `MultiTaskModel` with DSelect-k: shared experts, one DSelect-k gate + tower per task.

    Args:
        num_experts: E >= 2; num_nonzeros: k <= E; gamma, entropy_reg: see
            `DSelectKGate`. Other arguments: see `mmoe_multitask`.

    Reference:
        Hazimeh et al., "DSelect-k", NeurIPS 2021.
    """
    towers = task_towers(tasks, head, head_hidden, head_upsample, unit_normalize)
    _check_int("num_experts", num_experts, 2)
    encoder = SharedExperts(expert, num_experts=num_experts, name="dselect_k_experts")
    heads = {t: DSelectKHead(num_experts, num_nonzeros=num_nonzeros, gamma=gamma,
                             entropy_reg=entropy_reg, tower=towers[t], gate_input=gate_input,
                             name=f"{_safe(t)}_head") for t in tasks}
    return _model(encoder, heads, "dselect_k", input_shape, model_kwargs)

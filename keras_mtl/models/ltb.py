"""Learning to branch: a layered graph of candidate blocks, branched by Gumbel-softmax.

Guo, Lee and Ulbricht, "Learning to Branch for Multi-Task Learning" (ICML
2020). The network is a layered graph: layer l holds B_l candidate copies
of one backbone stage, and every node of layer l picks its parent among the
B_{l-1} nodes of layer l-1 by a Gumbel-softmax sample over its own branch
logits; each task (the paper's last layer of T nodes, here the task's head)
picks its parent among the last layer's nodes the same way. The sampling
temperature is annealed during the search, and the argmax choices give the
final tree (LibMTL `_transform_resnet_ltb`: B_l = T at every stage, hard
samples).

Here: a shared ResNet stem, then one layer per ResNet stage; hard
(straight-through) samples in training by default, the argmax tree at
inference. The temperature is a non-trainable variable of the layer (saved
and checkpointed with it), annealed as
`max(min_temperature, temperature * decay_rate ** (step / decay_steps))`
(`schedule="exponential"`) or `temperature / sqrt(1 + step / decay_steps)`
(`"inverse_sqrt"`, LibMTL's tau = epochs / 20 / sqrt(epoch + 1) with
`decay_steps` = steps per epoch and `temperature` = epochs / 20), floored at
`min_temperature`, from the optimizer's step count by the `keras_mtl.callbacks.BranchTemperature`
callback, so that a resumed run continues the schedule. Gumbel noise comes
from a seeded `keras.random.SeedGenerator` whose state is a variable too.

What balancers see as z. Which nodes a task shares with which changes with
every sample, so no tensor after the stem is shared by all tasks; the stem
alone is too shallow to make a sound z (heads would have to hold the
candidate blocks, which several tasks use). `LearnToBranch` therefore
follows the `TaskOutputs` protocol: it returns one output per task (the
sampled mixture of the last layer's nodes), feature-level balancers and the
gradient discriminator are rejected, and parameter-level balancers
(`mode="shared"`) differentiate all encoder parameters per task. The task
variables are each task's branch logits over the last layer (they and the
head get exactly zero gradient from other tasks); the intermediate nodes'
logits are shared. GradNorm's "last shared layer" is the stem's convolution,
the one kernel on every task's path.

With one branch per layer, every choice is certain and the network is hard
parameter sharing of the backbone.
"""

import gin
import keras
import numpy as np
import tensorflow as tf

from keras_mtl.layers.task_conditioned import TaskOutputs
from keras_mtl.models.cross_stitch import _check_int
from keras_mtl.models.cross_stitch import check_backbone
from keras_mtl.models.heads import ConvBNAct
from keras_mtl.models.heads import build_model
from keras_mtl.models.mtan import _check_tasks
from keras_mtl.models.resnet18 import ResNet
from keras_mtl.models.resnet18 import ResidualBlock
from keras_mtl.models.segnet import _conv_heads


@keras.saving.register_keras_serializable(package="keras_mtl")
class LearnToBranch(TaskOutputs, keras.layers.Layer):
    """A shared ResNet stem, then B_l candidate copies of each stage, branched per node.

    Args:
        num_tasks: T (the model's heads, in task order).
        backbone: dict of `ResNet` arguments (`stage_blocks`,
            `stage_filters`, `bottleneck_filters`, `stage_strides`,
            `stage_dilations`, `stem_filters`). Defaults to ResNet-18's.
        branches: candidate nodes per stage (B_1, ..., B_S). Defaults to T
            per stage (LibMTL).
        temperature: initial Gumbel-softmax temperature. Defaults to `1.0`.
        min_temperature: floor of the annealed temperature. Defaults to `0.1`.
        decay_rate, decay_steps: temperature multiplier per `decay_steps`
            optimizer steps. Default to `0.5` and `1000`.
        schedule: `"exponential"` (the above) or `"inverse_sqrt"`
            (`temperature / sqrt(1 + step / decay_steps)`, `decay_rate`
            unused). Defaults to `"exponential"`.
        hard: straight-through one-hot samples (the forward pass uses one
            parent per node) instead of soft mixtures. Defaults to `True`.
        seed: seed of the Gumbel noise. Defaults to None (drawn from Keras'
            global seed, so `keras.utils.set_random_seed` fixes it).

    Call arguments:
        inputs: (B, H, W, C) images.
        training: Python bool: samples in training, the argmax tree (or,
            with `hard=False`, the noise-free softmax) otherwise.

    Returns:
        a list of T (B, h, w, C_S) tensors.

    Example:

    >>> ltb = LearnToBranch(2, backbone=dict(stage_blocks=[1, 1],
    ...     stage_filters=[8, 16], stage_strides=[1, 2], stem_filters=8))
    >>> z = ltb(np.zeros((1, 32, 32, 3)))          # 2 tensors

    Reference:
        Guo, Lee and Ulbricht, "Learning to Branch for Multi-Task
        Learning", ICML 2020.
    """

    task_outputs = True

    def __init__(self, num_tasks, backbone=None, branches=None, temperature=1.0,
                 min_temperature=0.1, decay_rate=0.5, decay_steps=1000, schedule="exponential",
                 hard=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_int("num_tasks", num_tasks, 1)
        self.num_tasks = num_tasks
        self.backbone = check_backbone(backbone)
        ref = ResNet(pooling=None, **self.backbone)  # normalised arguments
        num_stages = len(ref.stage_blocks)
        if branches is None:
            branches = [num_tasks] * num_stages
        branches = list(branches)
        if len(branches) != num_stages or any(
                isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in branches):
            raise ValueError(
                "Invalid value received for argument `branches`. Expected one "
                f"integer >= 1 per backbone stage ({num_stages}). Received: "
                f"branches={branches}"
            )
        for name, value, low in (("temperature", temperature, 0.0),
                                 ("min_temperature", min_temperature, 0.0),
                                 ("decay_rate", decay_rate, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected a "
                    f"number > {low}. Received: {name}={value!r}"
                )
        if min_temperature > temperature or decay_rate > 1:
            raise ValueError(
                "The temperature must anneal down: expected min_temperature <= "
                f"temperature and decay_rate <= 1. Received: temperature={temperature}, "
                f"min_temperature={min_temperature}, decay_rate={decay_rate}"
            )
        _check_int("decay_steps", decay_steps, 1)
        if schedule not in ("exponential", "inverse_sqrt"):
            raise ValueError(
                "Invalid value received for argument `schedule`. Expected "
                f"'exponential' or 'inverse_sqrt'. Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.branches = branches
        self.initial_temperature = float(temperature)
        self.min_temperature = float(min_temperature)
        self.decay_rate = float(decay_rate)
        self.decay_steps = decay_steps
        self.hard = bool(hard)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # === Layers === (the same construction as `ResNet`, one copy per node)
        self.stem = ConvBNAct(ref.stem_filters, 7, strides=2, name="stem")
        self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, padding="same")
        self.nodes = []
        for s, count in enumerate(ref.stage_blocks):
            stage = []
            for c in range(branches[s]):
                stage.append([
                    ResidualBlock(
                        ref.stage_filters[s],
                        bottleneck_filters=None if ref.bottleneck_filters is None
                        else ref.bottleneck_filters[s],
                        strides=ref.stage_strides[s] if b == 0 else 1,
                        dilation_rate=ref.stage_dilations[s],
                        name=f"stage{s}_node{c}_block{b}")
                    for b in range(count)])
            self.nodes.append(stage)

    def build(self, input_shape):
        self.stem.build(input_shape)
        shape = self.stem_pool.compute_output_shape(self.stem.compute_output_shape(input_shape))
        for stage in self.nodes:
            for node in stage:
                s = shape
                for block in node:
                    block.build(s)
                    s = block.compute_output_shape(s)
            shape = s
        self.temperature = self.add_weight(
            name="temperature", shape=(), trainable=False,
            initializer=keras.initializers.Constant(self.initial_temperature))
        self.branch_logits = [None] + [
            self.add_weight(name=f"branch_logits_{s}", shape=(self.branches[s], self.branches[s - 1]),
                            initializer="zeros")
            for s in range(1, len(self.nodes))]
        self.task_logits = [
            self.add_weight(name=f"task_logits_{t}", shape=(self.branches[-1],), initializer="zeros")
            for t in range(self.num_tasks)]
        self.built = True

    def branch_weights(self, logits, training=None):
        """The (sampled) parent weights of each row of `logits`."""
        logits = tf.convert_to_tensor(logits)
        if training:
            u = keras.random.uniform(tf.shape(logits), minval=1e-7, maxval=1.0,
                                     seed=self.seed_generator)
            logits = logits - tf.math.log(-tf.math.log(u))
        y = tf.nn.softmax(logits / tf.convert_to_tensor(self.temperature), axis=-1)
        if self.hard:
            hard = tf.one_hot(tf.argmax(y, axis=-1), tf.shape(y)[-1], dtype=y.dtype)
            y = hard + (y - tf.stop_gradient(y))
        return y

    def call(self, inputs, training=None):
        x = self.stem_pool(self.stem(inputs, training=training))
        outs = [x]
        for s, stage in enumerate(self.nodes):
            if s == 0:
                parents = [x] * len(stage)
            else:
                w = self.branch_weights(self.branch_logits[s], training)
                parents = [_mix(w[c], outs) for c in range(len(stage))]
            outs = []
            for node, h in zip(stage, parents):
                for block in node:
                    h = block(h, training=training)
                outs.append(h)
        return [_mix(self.branch_weights(self.task_logits[t], training), outs)
                for t in range(self.num_tasks)]

    def compute_output_shape(self, input_shape):
        shape = self.stem_pool.compute_output_shape(self.stem.compute_output_shape(input_shape))
        for stage in self.nodes:
            for block in stage[0]:
                shape = block.compute_output_shape(shape)
        return [shape] * self.num_tasks

    def task_variables(self, task_index):
        return [self.task_logits[task_index]] if self.built else []

    def gradnorm_kernel(self):
        """The stem's convolution kernel: the one kernel on every task's path."""
        return self.stem.conv.kernel

    def temperature_at(self, step):
        """The annealed temperature after `step` optimizer steps."""
        progress = float(step) / self.decay_steps
        if self.schedule == "inverse_sqrt":
            value = self.initial_temperature / np.sqrt(1.0 + progress)
        else:
            value = self.initial_temperature * self.decay_rate ** progress
        return max(self.min_temperature, value)

    def anneal_temperature(self, step):
        """Sets the temperature variable to `temperature_at(step)`."""
        self.temperature.assign(self.temperature_at(step))

    def chosen_tree(self):
        """The argmax choices: `{"stages": [[parent of each node]], "tasks": [node]}`."""
        return {
            "stages": [None] + [np.argmax(v.numpy(), axis=-1).tolist() for v in self.branch_logits[1:]],
            "tasks": [int(np.argmax(v.numpy())) for v in self.task_logits],
        }

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "backbone": self.backbone,
            "branches": list(self.branches),
            "temperature": self.initial_temperature,
            "min_temperature": self.min_temperature,
            "decay_rate": self.decay_rate,
            "decay_steps": self.decay_steps,
            "schedule": self.schedule,
            "hard": self.hard,
            "seed": self.seed,
        }


def _mix(weights, tensors):
    if len(tensors) == 1:
        return weights[0] * tensors[0]
    return tf.add_n([weights[j] * tensors[j] for j in range(len(tensors))])


@gin.configurable
def ltb_multitask(
    tasks,
    stage_blocks=(3, 4, 6, 3),
    stage_filters=(256, 512, 1024, 2048),
    bottleneck_filters=(64, 128, 256, 512),
    stage_strides=(1, 2, 1, 1),
    stage_dilations=(1, 1, 2, 4),
    stem_filters=64,
    branches=None,
    temperature=1.0,
    min_temperature=0.1,
    decay_rate=0.5,
    decay_steps=1000,
    schedule="exponential",
    hard=True,
    seed=None,
    head_filters=512,
    head_upsample=8,
    unit_normalize=("normal", "normals"),
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel`: learning-to-branch over ResNet stages + a conv head per task.

    The defaults are LibMTL's on NYUv2 / Cityscapes (dilated ResNet-50, T
    candidate nodes per stage) with a 3x3 + 1x1 head upsampled x8 (LibMTL:
    DeepLab ASPP heads). Train with the `keras_mtl.callbacks.BranchTemperature`
    callback to anneal the temperature.

    Args:
        tasks: dict `{task: output channels}` in task order.
        stage_blocks, ..., stem_filters: the backbone (see `ResNet`).
        branches, temperature, min_temperature, decay_rate, decay_steps,
            schedule, hard, seed: see `LearnToBranch`.
        head_filters, head_upsample, unit_normalize: see `conv_head`.
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel` with a `LearnToBranch` encoder.

    Reference:
        Guo, Lee and Ulbricht, ICML 2020; Lin et al., LibMTL (JMLR 2023).
    """
    from keras_mtl.model import MultiTaskModel

    _check_tasks(tasks)
    backbone = dict(stage_blocks=stage_blocks, stage_filters=stage_filters,
                    bottleneck_filters=bottleneck_filters, stage_strides=stage_strides,
                    stage_dilations=stage_dilations, stem_filters=stem_filters)
    encoder = LearnToBranch(
        len(tasks), backbone=backbone, branches=branches, temperature=temperature,
        min_temperature=min_temperature, decay_rate=decay_rate, decay_steps=decay_steps,
        schedule=schedule, hard=hard, seed=seed, name="learn_to_branch")
    heads = _conv_heads(tasks, head_filters, unit_normalize, upsample=head_upsample)
    return build_model(MultiTaskModel(encoder=encoder, heads=heads, **model_kwargs), input_shape)

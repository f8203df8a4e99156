"""Cross-stitch networks: one column per task, mixed by learned linear units.

Misra, Shrivastava, Gupta and Hebert, "Cross-stitch Networks for Multi-task
Learning" (CVPR 2016). Every task has its own copy of the backbone (a
column); after chosen stages a cross-stitch unit replaces each column's
activation x_t by the linear combination sum_j alpha[t, j] x_j of all
columns' activations. The units are initialised to (alpha_same on the
diagonal, alpha_diff elsewhere): the paper's (0.9, 0.1), or the identity
(1, 0), which makes the network T independent networks. LibMTL uses
ResNet columns with a unit after each of the four stages.

What balancers see as z. There is none: through the mixing every column's
parameters before the last unit get every task's gradient, so no tensor is
shared by all tasks' paths while being downstream of all shared
parameters. `CrossStitch` follows the `TaskOutputs` protocol: it returns
the T columns' outputs and head t reads column t. Feature-level balancers
(IMTL-G, MGDA-UB, PCGrad, ... in their default feature mode) and the
gradient discriminator are rejected; use loss-based balancers or
`mode="shared"`, which differentiate all encoder parameters per task.

Task-specific parameters: only what follows the last unit, i.e. row t of
the last unit (alpha[t, :] there produces column t's input to what follows,
which only task t reads; every unit's rows are separate variables for that
reason), column t's stages after the last unit (none with a unit after the
last stage, the default), and the head. All else is shared.

GradNorm: there is no kernel that every task's path goes through (with
identity units, task t never reaches another column), so GradNorm without
an explicit `layer=` is rejected for this encoder.
"""

import gin
import keras
import numpy as np

from keras_mtl.layers.task_conditioned import TaskOutputs
from keras_mtl.models.heads import build_model
from keras_mtl.models.mtan import _check_tasks
from keras_mtl.models.mtan import stage_slices
from keras_mtl.models.resnet18 import ResNet
from keras_mtl.models.segnet import _conv_heads

_BACKBONE_KEYS = ("stage_blocks", "stage_filters", "bottleneck_filters", "stage_strides",
                  "stage_dilations", "stem_filters")


def check_backbone(backbone):
    """The `ResNet` keyword arguments of a column / branch (validated copy)."""
    backbone = dict(backbone or {})
    unknown = sorted(set(backbone) - set(_BACKBONE_KEYS))
    if unknown:
        raise ValueError(
            f"Invalid value received for argument `backbone`. Unknown keys "
            f"{unknown}; expected a dict of `ResNet` arguments among {list(_BACKBONE_KEYS)}."
        )
    return {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.items()}


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an "
            f"integer >= {low}. Received: {name}={value!r}"
        )


@keras.saving.register_keras_serializable(package="keras_mtl")
class CrossStitch(TaskOutputs, keras.layers.Layer):
    """T ResNet columns with cross-stitch units after chosen stages.

    Args:
        num_tasks: T, one column per task (in the model's task order).
        backbone: dict of `ResNet` arguments (`stage_blocks`,
            `stage_filters`, `bottleneck_filters`, `stage_strides`,
            `stage_dilations`, `stem_filters`) of every column; no pooling.
            Defaults to ResNet-18's.
        stitch_after: indices of the stages followed by a unit. Defaults
            to every stage (LibMTL).
        alpha_same: initial alpha[t, t]. Defaults to `0.9` (paper).
        alpha_diff: initial alpha[t, j], j != t. Defaults to
            `(1 - alpha_same) / (T - 1)` (rows sum to one; the paper's 0.1
            for two tasks). `alpha_same=1, alpha_diff=0` is the identity.

    Call arguments:
        inputs: (B, H, W, C) images.
        training: Python bool.

    Returns:
        a list of the T columns' (B, h, w, C_S) outputs.

    Example:

    >>> cs = CrossStitch(2, backbone=dict(stage_blocks=[1, 1],
    ...     stage_filters=[8, 16], stage_strides=[1, 2], stem_filters=8))
    >>> z = cs(np.zeros((1, 32, 32, 3)))          # 2 tensors

    Reference:
        Misra et al., "Cross-stitch Networks for Multi-task Learning",
        CVPR 2016.
    """

    task_outputs = True

    def __init__(self, num_tasks, backbone=None, stitch_after=None, alpha_same=0.9,
                 alpha_diff=None, **kwargs):
        super().__init__(**kwargs)
        _check_int("num_tasks", num_tasks, 1)
        self.num_tasks = num_tasks
        self.backbone = check_backbone(backbone)
        self.columns = [ResNet(pooling=None, name=f"column_{t}", **self.backbone)
                        for t in range(num_tasks)]
        num_stages = len(self.columns[0].stage_blocks)
        if stitch_after is None:
            stitch_after = list(range(num_stages))
        stitch_after = sorted(int(s) for s in stitch_after)
        if len(set(stitch_after)) != len(stitch_after) or any(
                not 0 <= s < num_stages for s in stitch_after):
            raise ValueError(
                "Invalid value received for argument `stitch_after`. Expected "
                f"distinct stage indices in [0, {num_stages}). Received: "
                f"stitch_after={stitch_after}"
            )
        if alpha_diff is None:
            alpha_diff = (1.0 - alpha_same) / (num_tasks - 1) if num_tasks > 1 else 0.0
        for name, value in (("alpha_same", alpha_same), ("alpha_diff", alpha_diff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(
                    f"Invalid value received for argument `{name}`. Expected a "
                    f"finite number. Received: {name}={value!r}"
                )
        self.stitch_after = stitch_after
        self.alpha_same = float(alpha_same)
        self.alpha_diff = float(alpha_diff)
        self.units = []

    def build(self, input_shape):
        for column in self.columns:
            column.build(input_shape)
        for k, stage in enumerate(self.stitch_after):
            rows = []
            for t in range(self.num_tasks):
                init = np.full((self.num_tasks,), self.alpha_diff, "float32")
                init[t] = self.alpha_same
                rows.append(self.add_weight(
                    name=f"unit_{stage}_row_{t}", shape=(self.num_tasks,),
                    initializer=keras.initializers.Constant(init)))
            self.units.append(rows)
        self.built = True

    def call(self, inputs, training=None):
        xs = [c.stem_pool(c.stem(inputs, training=training)) for c in self.columns]
        units = dict(zip(self.stitch_after, self.units))
        for s, (start, stop) in enumerate(stage_slices(self.columns[0].stage_blocks)):
            for t, column in enumerate(self.columns):
                for block in column.blocks[start:stop]:
                    xs[t] = block(xs[t], training=training)
            if s in units:
                xs = [sum(row[j] * xs[j] for j in range(self.num_tasks)) for row in units[s]]
        return xs

    def compute_output_shape(self, input_shape):
        return [c.compute_output_shape(input_shape) for c in self.columns]

    def task_variables(self, task_index):
        column = self.columns[task_index]
        if not self.stitch_after:
            return list(column.weights)
        last = self.stitch_after[-1]
        slices = stage_slices(column.stage_blocks)
        out = [self.units[-1][task_index]] if self.units else []
        for start, stop in slices[last + 1:]:
            for block in column.blocks[start:stop]:
                out += block.weights
        return out

    def gradnorm_kernel(self):
        """None: no kernel is on every task's path (see the module docstring)."""
        return None

    no_shared_kernel_reason = (
        "cross-stitch columns are per task and mixed only by the units (with "
        "identity units no kernel is on every task's path)")

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "backbone": self.backbone,
            "stitch_after": list(self.stitch_after),
            "alpha_same": self.alpha_same,
            "alpha_diff": self.alpha_diff,
        }


@gin.configurable
def cross_stitch_multitask(
    tasks,
    stage_blocks=(3, 4, 6, 3),
    stage_filters=(256, 512, 1024, 2048),
    bottleneck_filters=(64, 128, 256, 512),
    stage_strides=(1, 2, 1, 1),
    stage_dilations=(1, 1, 2, 4),
    stem_filters=64,
    stitch_after=None,
    alpha_same=0.9,
    alpha_diff=None,
    head_filters=512,
    head_upsample=8,
    unit_normalize=("normal", "normals"),
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel`: cross-stitched ResNet columns + a conv head per task.

    The defaults are LibMTL's on NYUv2 / Cityscapes: dilated ResNet-50
    columns (output stride 8), a unit after each of the 4 stages, and here a
    3x3 + 1x1 head upsampled x8 (LibMTL: DeepLab ASPP heads).

    Args:
        tasks: dict `{task: output channels}` in task order.
        stage_blocks, ..., stem_filters: each column's `ResNet`.
        stitch_after, alpha_same, alpha_diff: see `CrossStitch`.
        head_filters, head_upsample, unit_normalize: see `conv_head`.
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel` with a `CrossStitch` encoder.

    Reference:
        Misra et al., CVPR 2016; Lin et al., LibMTL (JMLR 2023).
    """
    from keras_mtl.model import MultiTaskModel

    _check_tasks(tasks)
    backbone = dict(stage_blocks=stage_blocks, stage_filters=stage_filters,
                    bottleneck_filters=bottleneck_filters, stage_strides=stage_strides,
                    stage_dilations=stage_dilations, stem_filters=stem_filters)
    encoder = CrossStitch(len(tasks), backbone=backbone, stitch_after=stitch_after,
                          alpha_same=alpha_same, alpha_diff=alpha_diff, name="cross_stitch")
    heads = _conv_heads(tasks, head_filters, unit_normalize, upsample=head_upsample)
    return build_model(MultiTaskModel(encoder=encoder, heads=heads, **model_kwargs), input_shape)

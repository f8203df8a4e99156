"""GradNorm's thin ResNet-50 FCN, and the ResNet-50 FCN family it belongs to.

Chen et al. (2018, section 5.1): "an FCN network with a modified ResNet-50
encoder and shallow ResNet decoder ... the ResNet FCN learns all upsampling
filters ... stride-2 layers are moved earlier and all 2048-filter layers are
replaced by 1024-filter layers" (15M parameters against SegNet's 29M).

Here: a bottleneck ResNet-50 trunk whose stages end in (256, 512, 1024, 1024)
channels (the last stage's bottleneck narrowed to 256 so that no layer has
2048 filters), with its stride-2 stages moved one stage earlier (strides
(2, 2, 2, 1) after the stem: the same /32 output reached sooner, so the
activations are thinner), then a decoder of learned stride-2 transposed
convolutions back to stride 4 (320x320 in, 80x80 out). The default widths
give 14.6M trainable parameters (the paper: ~14M in the preprint, 15M in
the ICML version).

`ResNetFCN` with ResNet-50's widths, strides (1, 2, 1, 1) and dilations
(1, 1, 2, 4) is the dilated ResNet-50 (output stride 8) of IMTL and of the
attentive single-tasking experiments (with a task-SE `task_layer`).
"""

import gin
import keras

from keras_mtl.models.heads import call_layer
from keras_mtl.models.heads import clone_task_layer
from keras_mtl.models.heads import build_model
from keras_mtl.models.heads import serialize_task_layer
from keras_mtl.models.resnet18 import ResNet
from keras_mtl.models.segnet import _conv_heads


@keras.saving.register_keras_serializable(package="keras_mtl")
class ResNetFCN(keras.layers.Layer):
    """Bottleneck ResNet trunk + learned-upsampling decoder (a fully convolutional net).

    Args:
        stage_blocks: bottleneck blocks per stage. Defaults to ResNet-50's
            `(3, 4, 6, 3)`.
        stage_filters: output channels per stage. Defaults to the thin
            `(256, 512, 1024, 1024)`.
        bottleneck_filters: inner widths per stage. Defaults to
            `(64, 128, 256, 256)`.
        stage_strides: stride of each stage. Defaults to the thin
            `(2, 2, 2, 1)` (ResNet-50: `(1, 2, 2, 2)`).
        stage_dilations: dilation per stage. Defaults to all 1.
        stem_filters: stem width. Defaults to `64`.
        upsample_filters: one stride-2 3x3 transposed conv + BN + ReLU per
            entry. Defaults to `(256, 128, 64)` (stride 32 -> 4).
        task_layer: task-layer template inserted after every batch norm of
            the trunk and of the decoder.

    Call arguments:
        inputs: (B, H, W, C) images.
        task: int32 (B,) task indices (needed with a task layer).
        training: Python bool.

    Example:

    >>> fcn = ResNetFCN(stage_blocks=(1, 1), stage_filters=(16, 32),
    ...                 bottleneck_filters=(4, 8), stage_strides=(1, 2),
    ...                 stem_filters=8, upsample_filters=(16,))
    >>> z = fcn(np.zeros((1, 64, 64, 3)))      # (1, 16, 16, 16): stride 4

    Reference:
        Chen et al., "GradNorm", ICML 2018, section 5.1; He et al., "Deep
        Residual Learning for Image Recognition", CVPR 2016.
    """

    def __init__(
        self,
        stage_blocks=(3, 4, 6, 3),
        stage_filters=(256, 512, 1024, 1024),
        bottleneck_filters=(64, 128, 256, 256),
        stage_strides=(2, 2, 2, 1),
        stage_dilations=None,
        stem_filters=64,
        upsample_filters=(256, 128, 64),
        task_layer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.stage_blocks = tuple(stage_blocks)
        self.stage_filters = tuple(stage_filters)
        self.bottleneck_filters = tuple(bottleneck_filters)
        self.stage_strides = tuple(stage_strides)
        self.stage_dilations = None if stage_dilations is None else tuple(stage_dilations)
        self.stem_filters = stem_filters
        self.upsample_filters = tuple(upsample_filters or ())
        self.task_layer = serialize_task_layer(task_layer)
        # === Layers ===
        self.trunk = ResNet(
            stage_blocks=self.stage_blocks,
            stage_filters=self.stage_filters,
            bottleneck_filters=self.bottleneck_filters,
            stage_strides=self.stage_strides,
            stage_dilations=self.stage_dilations,
            stem_filters=stem_filters,
            pooling=None,
            task_layer=task_layer,
        )
        first = 1000  # decoder insertion points get their own seed range
        self.up_convs, self.up_norms, self.up_tasks = [], [], []
        for i, width in enumerate(self.upsample_filters):
            self.up_convs.append(
                keras.layers.Conv2DTranspose(
                    width, 3, strides=2, padding="same", use_bias=False,
                    kernel_initializer="he_normal",
                )
            )
            self.up_norms.append(keras.layers.BatchNormalization())
            self.up_tasks.append(clone_task_layer(task_layer, first + i))
        self.relu = keras.layers.ReLU()

    def build(self, input_shape):
        self.trunk.build(input_shape)
        shape = self.trunk.compute_output_shape(input_shape)
        for conv, norm, task_block in zip(self.up_convs, self.up_norms, self.up_tasks):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
            if task_block is not None:
                task_block.build(shape)
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = self.trunk(inputs, task=task, training=training)
        for conv, norm, task_block in zip(self.up_convs, self.up_norms, self.up_tasks):
            x = norm(conv(x), training=training)
            if task_block is not None:
                x = call_layer(task_block, x, task=task, training=training)
            x = self.relu(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = self.trunk.compute_output_shape(input_shape)
        for conv in self.up_convs:
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self):
        return {
            **super().get_config(),
            "stage_blocks": list(self.stage_blocks),
            "stage_filters": list(self.stage_filters),
            "bottleneck_filters": list(self.bottleneck_filters),
            "stage_strides": list(self.stage_strides),
            "stage_dilations": None if self.stage_dilations is None else list(self.stage_dilations),
            "stem_filters": self.stem_filters,
            "upsample_filters": list(self.upsample_filters),
            "task_layer": self.task_layer,
        }


@gin.configurable
def thin_resnet_multitask(
    tasks,
    stage_blocks=(3, 4, 6, 3),
    stage_filters=(256, 512, 1024, 1024),
    bottleneck_filters=(64, 128, 256, 256),
    stage_strides=(2, 2, 2, 1),
    stage_dilations=None,
    stem_filters=64,
    upsample_filters=(256, 128, 64),
    head_filters=None,
    head_upsample=1,
    unit_normalize=("normal", "normals"),
    task_layer=None,
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel`: ResNet FCN trunk + one convolutional head per task.

    Defaults build GradNorm's thin ResNet-50 FCN, shared until the final
    (1x1) layer, 320x320 in / 80x80 out. For the dilated ResNet-50 of IMTL
    pass `stage_filters=(256, 512, 1024, 2048)`,
    `bottleneck_filters=(64, 128, 256, 512)`, `stage_strides=(1, 2, 1, 1)`,
    `stage_dilations=(1, 1, 2, 4)`, `upsample_filters=()`, `head_filters=512`
    and `head_upsample=8`.

    Args:
        tasks: dict `{task: output channels}` in task order.
        stage_blocks ... task_layer: see `ResNetFCN`.
        head_filters: width of each head's 3x3 conv; `None` for 1x1 heads.
        head_upsample: bilinear upsampling factor at the end of each head
            (predictions at input resolution from a stride-8 trunk).
            Defaults to `1`.
        unit_normalize: tasks whose output is L2-normalised. Defaults to
            `("normals",)`.
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel`.

    Example:

    >>> model = thin_resnet_multitask({"seg": 13, "depth": 1},
    ...     stage_blocks=(1, 1), stage_filters=(16, 32), bottleneck_filters=(4, 8),
    ...     stage_strides=(1, 2), stem_filters=8, upsample_filters=(16,))

    Reference:
        Chen et al., "GradNorm", ICML 2018, section 5.1.
    """
    from keras_mtl.model import MultiTaskModel

    trunk = ResNetFCN(
        stage_blocks=stage_blocks,
        stage_filters=stage_filters,
        bottleneck_filters=bottleneck_filters,
        stage_strides=stage_strides,
        stage_dilations=stage_dilations,
        stem_filters=stem_filters,
        upsample_filters=upsample_filters,
        task_layer=task_layer,
        name="resnet_fcn",
    )
    heads = _conv_heads(tasks, head_filters, unit_normalize, upsample=head_upsample)
    model = MultiTaskModel(encoder=trunk, heads=heads, **model_kwargs)
    return build_model(model, input_shape)

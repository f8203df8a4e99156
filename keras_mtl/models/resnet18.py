"""ResNet trunks (basic and bottleneck blocks) with task-layer insertion.

ResNet-18 "truncated after the last average pooling" is the shared network
of Maximum Roaming on CelebA (8 attribute-group heads) and of IMTL on CelebA
(40 linear heads). The same `ResNet` class with bottleneck blocks builds the
ResNet-50 variants (GradNorm's thin ResNet FCN, the IMTL / ASTMT backbones).

keras-cv's `ResNetBackbone` is a functional graph with no `task=` path, so a
TaskMask / task-SE insertion point per convolution needs these blocks; with
the default arguments the ResNet-18 trunk has the 11,176,512 trainable
parameters of He et al.'s ResNet-18 without its classifier.
"""

import gin
import keras

from keras_mtl.models.heads import ConvBNAct
from keras_mtl.models.heads import dense_head
from keras_mtl.models.heads import build_model
from keras_mtl.models.heads import serialize_task_layer


@keras.saving.register_keras_serializable(package="keras_mtl")
class ResidualBlock(keras.layers.Layer):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual block.

    Args:
        filters: output channels of the block.
        bottleneck_filters: width of the bottleneck's inner convolutions;
            `None` makes a basic block.
        strides: stride of the first 3x3 convolution (and the shortcut).
        dilation_rate: dilation of the 3x3 convolutions.
        task_layer: task-layer template inserted after every batch norm
            (shortcut projection included).
        task_layer_index: index of the first insertion point.

    Example:

    >>> block = ResidualBlock(32, strides=2)
    >>> y = block(np.zeros((1, 8, 8, 16)))       # (1, 4, 4, 32)

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    takes_task = True

    def __init__(
        self,
        filters,
        bottleneck_filters=None,
        strides=1,
        dilation_rate=1,
        task_layer=None,
        task_layer_index=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = filters
        self.bottleneck_filters = bottleneck_filters
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.task_layer = serialize_task_layer(task_layer)
        self.task_layer_index = task_layer_index
        # === Layers ===
        i = task_layer_index
        common = dict(task_layer=task_layer, dilation_rate=dilation_rate)
        if bottleneck_filters is None:
            self.convs = [
                ConvBNAct(filters, 3, strides=strides, task_layer_index=i, **common),
                ConvBNAct(filters, 3, activation=None, task_layer_index=i + 1, **common),
            ]
        else:
            self.convs = [
                ConvBNAct(bottleneck_filters, 1, task_layer=task_layer, task_layer_index=i),
                ConvBNAct(bottleneck_filters, 3, strides=strides, task_layer_index=i + 1, **common),
                ConvBNAct(filters, 1, activation=None, task_layer=task_layer, task_layer_index=i + 2),
            ]
        self.shortcut = None
        self.num_insertions = len(self.convs)
        self.relu = keras.layers.ReLU()

    def build(self, input_shape):
        if input_shape[-1] != self.filters or self.strides != 1:
            self.shortcut = ConvBNAct(
                self.filters,
                1,
                strides=self.strides,
                activation=None,
                task_layer=self.task_layer,
                task_layer_index=self.task_layer_index + len(self.convs),
            )
            self.shortcut.build(input_shape)
        shape = input_shape
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = inputs
        for conv in self.convs:
            x = conv(x, task=task, training=training)
        skip = inputs
        if self.shortcut is not None:
            skip = self.shortcut(inputs, task=task, training=training)
        return self.relu(x + skip)

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for conv in self.convs:
            shape = conv.compute_output_shape(shape)
        return shape

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "bottleneck_filters": self.bottleneck_filters,
            "strides": self.strides,
            "dilation_rate": self.dilation_rate,
            "task_layer": self.task_layer,
            "task_layer_index": self.task_layer_index,
        }


@keras.saving.register_keras_serializable(package="keras_mtl")
class ResNet(keras.layers.Layer):
    """A ResNet trunk: 7x7/2 stem, 3x3/2 max pool, residual stages, optional pooling.

    Args:
        stage_blocks: blocks per stage. Defaults to ResNet-18's `(2, 2, 2, 2)`.
        stage_filters: output channels per stage. Defaults to
            `(64, 128, 256, 512)`.
        bottleneck_filters: inner widths per stage for bottleneck blocks
            (ResNet-50: `(64, 128, 256, 512)` with stage_filters
            `(256, 512, 1024, 2048)`); `None` uses basic blocks.
        stage_strides: stride of each stage's first block. Defaults to
            `(1, 2, 2, 2)`.
        stage_dilations: dilation of each stage's 3x3 convolutions (atrous
            backbones). Defaults to all 1.
        stem_filters: channels of the stem convolution. Defaults to `64`.
        pooling: `"avg"` ends with global average pooling (B, C); `None`
            returns the feature map. Defaults to `"avg"`.
        task_layer: task-layer template inserted after every batch norm of
            every shared convolution (Maximum Roaming, Task Routing, SE-MTL).

    Example:

    >>> trunk = ResNet(stage_blocks=(1, 1), stage_filters=(8, 16))
    >>> z = trunk(np.zeros((2, 32, 32, 3)))     # (2, 16)

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    def __init__(
        self,
        stage_blocks=(2, 2, 2, 2),
        stage_filters=(64, 128, 256, 512),
        bottleneck_filters=None,
        stage_strides=(1, 2, 2, 2),
        stage_dilations=None,
        stem_filters=64,
        pooling="avg",
        task_layer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        stage_blocks, stage_filters = tuple(stage_blocks), tuple(stage_filters)
        stage_strides = tuple(stage_strides)[: len(stage_blocks)]
        if stage_dilations is None:
            stage_dilations = (1,) * len(stage_blocks)
        stage_dilations = tuple(stage_dilations)
        lengths = {len(stage_blocks), len(stage_filters), len(stage_strides), len(stage_dilations)}
        if bottleneck_filters is not None:
            bottleneck_filters = tuple(bottleneck_filters)
            lengths.add(len(bottleneck_filters))
        if len(lengths) != 1 or not stage_blocks:
            raise ValueError(
                "Invalid value received for the stage arguments. Expected "
                "`stage_blocks`, `stage_filters`, `stage_strides`, "
                "`stage_dilations` (and `bottleneck_filters`) of one common, "
                f"non-zero length. Received: stage_blocks={stage_blocks}, "
                f"stage_filters={stage_filters}, stage_strides={stage_strides}, "
                f"stage_dilations={stage_dilations}, "
                f"bottleneck_filters={bottleneck_filters}"
            )
        if pooling not in (None, "avg"):
            raise ValueError(
                "Invalid value received for argument `pooling`. Expected None "
                f"or 'avg'. Received: pooling={pooling!r}"
            )
        self.stage_blocks = stage_blocks
        self.stage_filters = stage_filters
        self.bottleneck_filters = bottleneck_filters
        self.stage_strides = stage_strides
        self.stage_dilations = stage_dilations
        self.stem_filters = stem_filters
        self.pooling = pooling
        self.task_layer = serialize_task_layer(task_layer)
        # === Layers ===
        self.stem = ConvBNAct(stem_filters, 7, strides=2, task_layer=task_layer)
        self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, padding="same")
        self.blocks = []
        index = 1
        for s, count in enumerate(stage_blocks):
            for b in range(count):
                block = ResidualBlock(
                    stage_filters[s],
                    bottleneck_filters=None if bottleneck_filters is None else bottleneck_filters[s],
                    strides=stage_strides[s] if b == 0 else 1,
                    dilation_rate=stage_dilations[s],
                    task_layer=task_layer,
                    task_layer_index=index,
                )
                index += block.num_insertions + 1
                self.blocks.append(block)
        self.global_pool = keras.layers.GlobalAveragePooling2D() if pooling else None

    def build(self, input_shape):
        self.stem.build(input_shape)
        shape = self.stem_pool.compute_output_shape(self.stem.compute_output_shape(input_shape))
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = self.stem(inputs, task=task, training=training)
        x = self.stem_pool(x)
        for block in self.blocks:
            x = block(x, task=task, training=training)
        if self.global_pool is not None:
            x = self.global_pool(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = self.stem_pool.compute_output_shape(self.stem.compute_output_shape(input_shape))
        for block in self.blocks:
            shape = block.compute_output_shape(shape)
        if self.global_pool is not None:
            return (shape[0], shape[-1])
        return shape

    def get_config(self):
        return {
            **super().get_config(),
            "stage_blocks": list(self.stage_blocks),
            "stage_filters": list(self.stage_filters),
            "bottleneck_filters": None if self.bottleneck_filters is None else list(self.bottleneck_filters),
            "stage_strides": list(self.stage_strides),
            "stage_dilations": list(self.stage_dilations),
            "stem_filters": self.stem_filters,
            "pooling": self.pooling,
            "task_layer": self.task_layer,
        }


@gin.configurable
def resnet18_multitask(
    tasks,
    stage_blocks=(2, 2, 2, 2),
    stage_filters=(64, 128, 256, 512),
    stem_filters=64,
    head_hidden_units=None,
    task_layer=None,
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel`: ResNet-18 trunk (global average pooled) + dense heads.

    Args:
        tasks: dict `{task: outputs}` in task order: the 8 CelebA attribute
            groups of Maximum Roaming (`{"global": 9, "eyes": 5, ...}`) or the
            40 attributes of IMTL (`{"5_o_Clock_Shadow": 1, ...}`).
        stage_blocks, stage_filters, stem_filters, task_layer: see `ResNet`;
            reduce the widths for tests.
        head_hidden_units: optional hidden layer of each head. Defaults to
            `None` (one linear layer of input size 512 per task).
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel`.

    Example:

    >>> model = resnet18_multitask({"eyes": 5, "nose": 2},
    ...                            stage_filters=(8, 8, 16, 16), stem_filters=8)

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021,
        appendix (Celeb-A); Liu et al., "Towards Impartial Multi-task
        Learning", ICLR 2021, appendix D.
    """
    from keras_mtl.model import MultiTaskModel

    trunk = ResNet(
        stage_blocks=stage_blocks,
        stage_filters=stage_filters,
        stem_filters=stem_filters,
        pooling="avg",
        task_layer=task_layer,
        name="resnet18",
    )
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a non-empty "
            f"dict {{task name: number of outputs}}. Received: tasks={tasks!r}"
        )
    heads = {
        name: dense_head(int(units), hidden_units=head_hidden_units, name=f"{_safe(name)}_head")
        for name, units in tasks.items()
    }
    model = MultiTaskModel(encoder=trunk, heads=heads, **model_kwargs)
    return build_model(model, input_shape)


def _safe(name):
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in str(name))

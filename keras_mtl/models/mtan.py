"""MTAN: task-specific attention modules over a shared ResNet backbone.

Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention"
(CVPR 2019). A shared network, and per task one soft-attention module per
backbone stage: the module of stage i reads the stage's intermediate shared
features b_i (concatenated, from the second stage on, with the task's
attended features of the previous stage, passed through a transfer block
f_{i-1} and pooled to b_i's resolution) and outputs a sigmoid mask
a_i = sigmoid(BN(conv1x1(ReLU(BN(conv1x1(.)))))) that multiplies the
stage's output t_i. The task's attended features of the last stage go to its
decoder. This is LibMTL's ResNet version of MTAN (`_transform_resnet_MTAN`:
b_i is the output of all but the last block of stage i, t_i that of the
last block, attention widths in -> C/4 -> C, f_i a residual block); the
paper's own backbone is SegNet.

What balancers see as z. `MTANBackbone` is the encoder: the shared ResNet,
returning the list `[b_1, t_1, ..., b_S, t_S]` of the shared tensors the
attention modules read. Each head (`MTANHead`) is that task's attention
modules, transfer blocks and decoder. So z is truly shared (every task reads
all of it), task attention parameters get exactly zero gradient from other
tasks' losses, and every balancer applies: feature-level ones (IMTL-G,
MGDA-UB, PCGrad, ...) combine the per-task gradients dL_t/dz over all 2S
tensors; GradNorm's "last shared layer" is the backbone's last convolution,
which every task reaches through t_S. The z tensors are identity copies of
the backbone's activations: the backbone goes on from b_i and t_i, not from
the copies, so dL_t/dz_k is the partial derivative through task t's head
only, and the backward pass z -> parameters sums each path once.

Deviation from the official code and LibMTL: there, each transfer block f_i
is one module shared by all tasks' attention branches. Shared parameters
behind the task split would leave no tensor shared by all tasks downstream
of them (z would then not be where task paths split) and heads sharing
variables; here every task has its own f_i (more parameters:
(T - 1) x sum_i |f_i|).
"""

import gin
import keras
import tensorflow as tf

from keras_mtl.models.heads import build_model
from keras_mtl.models.heads import conv_head
from keras_mtl.models.resnet18 import ResNet
from keras_mtl.models.resnet18 import ResidualBlock


def stage_slices(stage_blocks):
    """[(start, stop)] of each stage's blocks in the flat block list of a `ResNet`."""
    out, start = [], 0
    for count in stage_blocks:
        out.append((start, start + count))
        start += count
    return out


@keras.saving.register_keras_serializable(package="keras_mtl")
class MTANBackbone(ResNet):
    """The shared ResNet of MTAN: returns `[b_1, t_1, ..., b_S, t_S]`.

    b_i is the output of all blocks of stage i but the last (the stage's
    input when the stage has one block), t_i the stage's output. Takes the
    arguments of `ResNet` (always without pooling or task layer). Outputs
    are identity copies (see the module docstring: z is a set of leaves).

    Example:

    >>> backbone = MTANBackbone(stage_blocks=(1, 1), stage_filters=(8, 16),
    ...                         stage_strides=(1, 2), stem_filters=8)
    >>> z = backbone(np.zeros((2, 32, 32, 3)))   # 4 tensors

    Reference:
        Liu, Johns and Davison, CVPR 2019; LibMTL `_transform_resnet_MTAN`.
    """

    def __init__(self, pooling=None, task_layer=None, **kwargs):
        if pooling is not None or task_layer is not None:
            raise ValueError(
                "MTANBackbone returns the stage features of a plain ResNet: "
                "`pooling` and `task_layer` must be None. Received: "
                f"pooling={pooling!r}, task_layer={task_layer!r}"
            )
        super().__init__(pooling=None, task_layer=None, **kwargs)

    def _features(self, x, training=None, shapes=False):
        step = (lambda b, v: b.compute_output_shape(v)) if shapes else (
            lambda b, v: b(v, training=training))
        if shapes:
            x = self.stem_pool.compute_output_shape(self.stem.compute_output_shape(x))
        else:
            x = self.stem_pool(self.stem(x, training=training))
        out = []
        for start, stop in stage_slices(self.stage_blocks):
            for block in self.blocks[start:stop - 1]:
                x = step(block, x)
            b = x
            x = step(self.blocks[stop - 1], x)
            out += [b, x]
        return out

    def call(self, inputs, training=None):
        return [tf.identity(t) for t in self._features(inputs, training=training)]

    def compute_output_shape(self, input_shape):
        return self._features(tuple(input_shape), shapes=True)


def _attention(mid, out, name):
    return keras.Sequential([
        keras.layers.Conv2D(mid, 1),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(out, 1),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("sigmoid"),
    ], name=name)


@keras.saving.register_keras_serializable(package="keras_mtl")
class MTANHead(keras.layers.Layer):
    """One task of MTAN: its attention modules, transfer blocks and decoder.

    Called on the list `[b_1, t_1, ..., b_S, t_S]` of `MTANBackbone`:

        a = mask_1(b_1) * t_1
        a = mask_i(concat(b_i, pool(f_{i-1}(a)))) * t_i   for i = 2..S
        output = decoder(a)

    mask_i: 1x1 conv (C_i / reduction) - BN - ReLU - 1x1 conv (C_i) - BN -
    sigmoid, C_i the width of t_i; f_{i-1}: a residual block to C_i
    channels (a bottleneck of width C_i / 4 when `bottleneck`), then max
    pooling to t_i's resolution. When stage i has one block (b_i is then
    the stage's input, at the previous resolution), b_i is max-pooled to
    t_i's resolution first.

    Args:
        decoder: the Keras layer applied to the attended last-stage
            features (e.g. `conv_head(13, upsample=8)`).
        reduction: inner width divisor of the attention modules. Defaults
            to `4` (LibMTL).
        bottleneck: whether transfer blocks are bottleneck blocks (as for a
            ResNet-50 backbone). Defaults to `True`.

    Example:

    >>> head = MTANHead(conv_head(3, hidden_filters=8), bottleneck=False)

    Reference:
        Liu, Johns and Davison, CVPR 2019, section 3.
    """

    def __init__(self, decoder, reduction=4, bottleneck=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(
                "Invalid value received for argument `reduction`. Expected an "
                f"integer >= 1. Received: reduction={reduction!r}"
            )
        if isinstance(decoder, dict):
            decoder = keras.saving.deserialize_keras_object(decoder)
        if not isinstance(decoder, keras.layers.Layer):
            raise ValueError(
                "Invalid value received for argument `decoder`. Expected a "
                f"Keras layer. Received: decoder={decoder!r}"
            )
        self.decoder = decoder
        self.reduction = reduction
        self.bottleneck = bool(bottleneck)
        self.masks = []
        self.transfers = []
        self.pools = []
        self.input_pools = []

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) < 2 or len(shapes) % 2:
            raise ValueError(
                f"MTANHead '{self.name}' reads the list [b_1, t_1, ..., b_S, t_S] "
                f"of an MTANBackbone. Received {len(shapes)} tensors."
            )
        stages = len(shapes) // 2
        for i in range(stages):
            b, t = shapes[2 * i], shapes[2 * i + 1]
            width = t[-1]
            if width // self.reduction < 1:
                raise ValueError(
                    f"MTANHead reduction={self.reduction} leaves no channel for "
                    f"stage {i + 1} of width {width}."
                )
            mask = _attention(width // self.reduction, width, name=f"attention_{i + 1}")
            in_channels = b[-1] if i == 0 else b[-1] + width
            mask.build((None, None, None, in_channels))
            self.masks.append(mask)
            # b_i is at the stage's input resolution when the stage has one block
            self.input_pools.append(self._pool(b, t, f"stage {i + 1} features"))
            if i + 1 < stages:
                nt = shapes[2 * i + 3]
                block = ResidualBlock(
                    nt[-1], bottleneck_filters=max(nt[-1] // 4, 1) if self.bottleneck else None,
                    name=f"transfer_{i + 1}")
                block.build(t[:3] + (width,))
                self.transfers.append(block)
                self.pools.append(self._pool(t, nt, f"stage {i + 1} output"))
        self.decoder.build(shapes[-1])
        self.built = True

    @staticmethod
    def _pool(big, small, what):
        """Max pooling from `big`'s resolution to `small`'s (None if equal)."""
        if None in (big[1], big[2], small[1], small[2]):
            raise ValueError(
                "MTANHead needs the stage resolutions to size its poolings; "
                f"build it with known spatial sizes. Received: {big}, {small}"
            )
        if big[1] % small[1] or big[2] % small[2] or big[1] // small[1] != big[2] // small[2]:
            raise ValueError(
                f"MTANHead: the {what} {big[1:3]} is not an integer multiple of "
                f"the next resolution {small[1:3]}."
            )
        ratio = big[1] // small[1]
        return keras.layers.MaxPooling2D(ratio) if ratio > 1 else None

    def call(self, inputs, training=None):
        z = list(inputs)
        a = None
        for i, mask in enumerate(self.masks):
            b, t = z[2 * i], z[2 * i + 1]
            if self.input_pools[i] is not None:
                b = self.input_pools[i](b)
            m = mask(b if a is None else tf.concat([b, a], axis=-1), training=training)
            a = m * t
            if i < len(self.transfers):
                a = self.transfers[i](a, training=training)
                if self.pools[i] is not None:
                    a = self.pools[i](a)
        return self.decoder(a, training=training)

    def compute_output_shape(self, input_shape):
        return self.decoder.compute_output_shape(tuple(input_shape[-1]))

    def get_config(self):
        return {
            **super().get_config(),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "reduction": self.reduction,
            "bottleneck": self.bottleneck,
        }


@gin.configurable
def mtan_multitask(
    tasks,
    stage_blocks=(3, 4, 6, 3),
    stage_filters=(256, 512, 1024, 2048),
    bottleneck_filters=(64, 128, 256, 512),
    stage_strides=(1, 2, 1, 1),
    stage_dilations=(1, 1, 2, 4),
    stem_filters=64,
    reduction=4,
    head_filters=512,
    head_upsample=8,
    unit_normalize=("normal", "normals"),
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel`: MTAN over a ResNet backbone (LibMTL's MTAN).

    The defaults are the dilated ResNet-50 (output stride 8) LibMTL uses on
    NYUv2 and Cityscapes, with a 3x3 + 1x1 convolutional decoder upsampled
    x8 per task (LibMTL: a DeepLab ASPP head).

    Args:
        tasks: dict `{task: output channels}` in task order.
        stage_blocks, stage_filters, bottleneck_filters, stage_strides,
            stage_dilations, stem_filters: the backbone (see `ResNet`);
            `bottleneck_filters=None` gives basic blocks (and basic transfer
            blocks).
        reduction: attention inner width divisor. Defaults to `4`.
        head_filters: width of each decoder's 3x3 convolution.
        head_upsample: bilinear upsampling of each decoder's output.
        unit_normalize: tasks whose output is L2-normalised over channels.
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel` with an `MTANBackbone` encoder and
        `MTANHead` heads.

    Example:

    >>> model = mtan_multitask({"seg": 13, "depth": 1}, stage_blocks=(1, 1),
    ...     stage_filters=(8, 16), bottleneck_filters=None, stage_strides=(1, 2),
    ...     stage_dilations=(1, 1), stem_filters=8, head_filters=8,
    ...     head_upsample=8, input_shape=(32, 32, 3))

    Reference:
        Liu, Johns and Davison, "End-to-End Multi-Task Learning with
        Attention", CVPR 2019; Lin et al., LibMTL (JMLR 2023).
    """
    from keras_mtl.model import MultiTaskModel

    _check_tasks(tasks)
    backbone = MTANBackbone(
        stage_blocks=stage_blocks, stage_filters=stage_filters,
        bottleneck_filters=bottleneck_filters, stage_strides=stage_strides,
        stage_dilations=stage_dilations, stem_filters=stem_filters, name="mtan_backbone")
    unit = set(unit_normalize or ())
    heads = {
        name: MTANHead(
            conv_head(int(size), hidden_filters=head_filters, unit_normalize=name in unit,
                      upsample=head_upsample, name=f"{name}_decoder"),
            reduction=reduction, bottleneck=bottleneck_filters is not None,
            name=f"{name}_mtan")
        for name, size in tasks.items()
    }
    return build_model(MultiTaskModel(encoder=backbone, heads=heads, **model_kwargs), input_shape)


def _check_tasks(tasks):
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a non-empty "
            f"dict {{task name: output channels}}. Received: tasks={tasks!r}"
        )

"""SegNet: a VGG16 encoder and a mirrored decoder that unpools with max-pool indices.

GradNorm (Chen et al. 2018, section 5.1) trains a SegNet "with a symmetric
VGG16 encoder/decoder" that "reuses maxpool indices to perform upsampling"
at 320x320 in / 80x80 out, shared until the final layer (29M parameters);
Maximum Roaming (Pascal et al. 2021, appendix) uses a SegNet "outputting 64
feature maps of same height and width as the inputs" with one 3x3 + 1x1
convolutional head per task and task masks on every shared convolution.
"""

import gin
import keras
import tensorflow as tf

from keras_mtl.models.heads import ConvBNAct
from keras_mtl.models.heads import build_model
from keras_mtl.models.heads import conv_head
from keras_mtl.models.heads import serialize_task_layer


def max_pool_with_argmax(x):
    """2x2 / stride-2 max pooling that also returns the argmax in each window.

    Args:
        x: (B, H, W, C) tensor with even H and W.

    Returns:
        (pooled, indices): pooled (B, H/2, W/2, C) and int32 indices in
        {0, 1, 2, 3}, the position dy * 2 + dx of the maximum in its 2x2
        window. Dense reshapes only, so it runs under XLA; the gradient
        reaches the selected element of each window only, as in max pooling.
    """
    shape = tf.shape(x)
    channels = x.shape[-1]
    h, w = shape[1] // 2, shape[2] // 2
    windows = tf.reshape(x, [shape[0], h, 2, w, 2, channels])
    windows = tf.transpose(windows, [0, 1, 3, 5, 2, 4])
    windows = tf.reshape(windows, [shape[0], h, w, channels, 4])
    indices = tf.argmax(windows, axis=-1, output_type="int32")
    pooled = tf.reduce_sum(windows * tf.one_hot(indices, 4, dtype=x.dtype), axis=-1)
    return pooled, indices


def max_unpool(x, indices):
    """Places each value of `x` at its recorded window position, zeros elsewhere.

    Args:
        x: (B, h, w, C) values.
        indices: int (B, h, w, C) window positions from `max_pool_with_argmax`.

    Returns:
        (B, 2h, 2w, C) tensor.
    """
    shape = tf.shape(x)
    channels = x.shape[-1]
    spread = tf.one_hot(indices, 4, dtype=x.dtype) * x[..., None]
    spread = tf.reshape(spread, [shape[0], shape[1], shape[2], channels, 2, 2])
    spread = tf.transpose(spread, [0, 1, 4, 2, 5, 3])
    return tf.reshape(spread, [shape[0], shape[1] * 2, shape[2] * 2, channels])


@keras.saving.register_keras_serializable(package="keras_mtl")
class MaxPoolingWithArgmax2D(keras.layers.Layer):
    """2x2 max pooling returning `(pooled, indices)` for `MaxUnpooling2D`.

    Example:

    >>> pooled, indices = MaxPoolingWithArgmax2D()(np.zeros((1, 4, 4, 3)))

    Reference:
        Badrinarayanan et al., "SegNet", TPAMI 2017.
    """

    def call(self, inputs):
        return max_pool_with_argmax(inputs)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        half = (b, None if h is None else h // 2, None if w is None else w // 2, c)
        return half, half


@keras.saving.register_keras_serializable(package="keras_mtl")
class MaxUnpooling2D(keras.layers.Layer):
    """Inverse of `MaxPoolingWithArgmax2D`: called on `[values, indices]`.

    Example:

    >>> pool, unpool = MaxPoolingWithArgmax2D(), MaxUnpooling2D()
    >>> x = np.random.rand(1, 4, 4, 3).astype("float32")
    >>> y = unpool(list(pool(x)))     # max of each window in place, 0 elsewhere

    Reference:
        Badrinarayanan et al., "SegNet", TPAMI 2017.
    """

    def call(self, inputs):
        values, indices = inputs
        return max_unpool(values, indices)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape[0]
        return (b, None if h is None else 2 * h, None if w is None else 2 * w, c)


@keras.saving.register_keras_serializable(package="keras_mtl")
class SegNet(keras.layers.Layer):
    """VGG16 SegNet trunk: encoder, then a mirrored decoder using pool indices.

    Stage s of the encoder is `convs_per_stage[s]` 3x3 conv-BN-ReLU layers of
    `filters[s]` channels followed by a 2x2 max pooling that records its
    argmax. The decoder walks back through the last `decoder_stages` stages:
    unpool with that stage's indices, then the same number of convolutions,
    the last one narrowing to the previous stage's width (VGG16 widths give
    the 29M-parameter SegNet of GradNorm). The output has stride
    2 ** (num_stages - decoder_stages) and `output_filters` channels.

    Args:
        filters: channels per stage. Defaults to VGG16's
            `(64, 128, 256, 512, 512)`.
        convs_per_stage: convolutions per stage. Defaults to `(2, 2, 3, 3, 3)`.
        decoder_stages: number of unpooling stages; `None` decodes back to the
            input resolution. `3` gives GradNorm's 320x320 -> 80x80.
        output_filters: channels of the last decoder convolution. Defaults to
            the mirrored width (`filters[0]` for a full decoder).
        task_layer: None or a task-layer template (`TaskMask`, `TaskRouting`,
            task SE; see `keras_mtl.models.heads.clone_task_layer`) inserted
            after the batch norm of every convolution. The model then runs
            one folded pass per task.

    Call arguments:
        inputs: (B, H, W, 3) images, H and W divisible by 2 ** num_stages.
        task: int32 (B,) task indices (needed with a task layer).
        training: Python bool.

    Example:

    >>> trunk = SegNet(filters=(8, 16), convs_per_stage=(1, 1))
    >>> z = trunk(np.zeros((2, 32, 32, 3)))      # (2, 32, 32, 8)

    Reference:
        Badrinarayanan, Kendall and Cipolla, "SegNet", TPAMI 2017; Chen et
        al., "GradNorm", ICML 2018, section 5.1; Pascal et al., "Maximum
        Roaming Multi-Task Learning", AAAI 2021, appendix.
    """

    def __init__(
        self,
        filters=(64, 128, 256, 512, 512),
        convs_per_stage=(2, 2, 3, 3, 3),
        decoder_stages=None,
        output_filters=None,
        task_layer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        filters, convs_per_stage = tuple(filters), tuple(convs_per_stage)
        if not filters or len(filters) != len(convs_per_stage):
            raise ValueError(
                "Invalid value received for arguments `filters` and "
                "`convs_per_stage`. Expected two non-empty sequences of the "
                f"same length. Received: filters={filters}, "
                f"convs_per_stage={convs_per_stage}"
            )
        if any(c < 1 for c in convs_per_stage):
            raise ValueError(
                "Invalid value received for argument `convs_per_stage`. "
                f"Expected integers >= 1. Received: convs_per_stage={convs_per_stage}"
            )
        num_stages = len(filters)
        if decoder_stages is None:
            decoder_stages = num_stages
        if not 0 <= decoder_stages <= num_stages:
            raise ValueError(
                "Invalid value received for argument `decoder_stages`. Expected "
                f"an integer in [0, {num_stages}]. Received: "
                f"decoder_stages={decoder_stages}"
            )
        self.filters = filters
        self.convs_per_stage = convs_per_stage
        self.decoder_stages = decoder_stages
        self.output_filters = output_filters
        self.task_layer = serialize_task_layer(task_layer)
        self.num_stages = num_stages

        # === Layers ===
        index = 0
        self.encoder_convs = []
        for stage, (width, count) in enumerate(zip(filters, convs_per_stage)):
            for _ in range(count):
                self.encoder_convs.append(ConvBNAct(width, 3, task_layer=task_layer, task_layer_index=index))
                index += 1
        self.pool = MaxPoolingWithArgmax2D()
        self.unpool = MaxUnpooling2D()
        self.decoder_convs = []
        first = num_stages - decoder_stages
        for stage in reversed(range(first, num_stages)):
            count = convs_per_stage[stage]
            for k in range(count):
                width = filters[stage]
                if k == count - 1:
                    width = filters[max(stage - 1, 0)]
                    if stage == first and output_filters:
                        width = output_filters
                self.decoder_convs.append(ConvBNAct(width, 3, task_layer=task_layer, task_layer_index=index))
                index += 1

    def build(self, input_shape):
        factor = 2 ** self.num_stages
        for size in input_shape[1:3]:
            if size is not None and size % factor:
                raise ValueError(
                    f"SegNet with {self.num_stages} pooling stages needs input "
                    f"height and width divisible by {factor}. Received: "
                    f"input_shape={input_shape}"
                )
        shape = tuple(input_shape)
        convs = iter(self.encoder_convs)
        for count in self.convs_per_stage:
            for _ in range(count):
                conv = next(convs)
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
            shape = self.pool.compute_output_shape(shape)[0]
        convs = iter(self.decoder_convs)
        first = self.num_stages - self.decoder_stages
        for stage in reversed(range(first, self.num_stages)):
            shape = self.unpool.compute_output_shape([shape, shape])
            for _ in range(self.convs_per_stage[stage]):
                conv = next(convs)
                conv.build(shape)
                shape = conv.compute_output_shape(shape)
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = inputs
        indices = []
        convs = iter(self.encoder_convs)
        for count in self.convs_per_stage:
            for _ in range(count):
                x = next(convs)(x, task=task, training=training)
            x, idx = self.pool(x)
            indices.append(idx)
        convs = iter(self.decoder_convs)
        first = self.num_stages - self.decoder_stages
        for stage in reversed(range(first, self.num_stages)):
            x = self.unpool([x, indices[stage]])
            for _ in range(self.convs_per_stage[stage]):
                x = next(convs)(x, task=task, training=training)
        return x

    def compute_output_shape(self, input_shape):
        stride = 2 ** (self.num_stages - self.decoder_stages)
        b, h, w, _ = input_shape
        if self.decoder_convs:
            channels = self.decoder_convs[-1].filters
        else:
            channels = self.filters[-1]
        return (
            b,
            None if h is None else h // stride,
            None if w is None else w // stride,
            channels,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "filters": list(self.filters),
            "convs_per_stage": list(self.convs_per_stage),
            "decoder_stages": self.decoder_stages,
            "output_filters": self.output_filters,
            "task_layer": self.task_layer,
        }


@gin.configurable
def segnet_multitask(
    tasks,
    filters=(64, 128, 256, 512, 512),
    convs_per_stage=(2, 2, 3, 3, 3),
    decoder_stages=None,
    output_filters=None,
    head_filters=64,
    unit_normalize=("normal", "normals"),
    task_layer=None,
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel`: SegNet trunk + one convolutional head per task.

    Args:
        tasks: dict `{task: output channels}` in task order, e.g.
            `{"seg": 13, "depth": 1, "normals": 3}`.
        filters, convs_per_stage, decoder_stages, output_filters, task_layer:
            see `SegNet`. For GradNorm NYUv2+seg use `decoder_stages=3`
            (320x320 in, 80x80 out); for Maximum Roaming `output_filters=64`
            and a `TaskMask` / `TaskRouting` / task-SE `task_layer`.
        head_filters: width of each head's 3x3 convolution; `None` gives
            a 1x1 head (GradNorm: shared until the final layer). Defaults to
            `64` (Maximum Roaming).
        unit_normalize: tasks whose output is L2-normalised over channels.
            Defaults to `("normal", "normals")`.
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel`.

    Example:

    >>> model = segnet_multitask({"seg": 13, "depth": 1}, filters=(8, 16),
    ...                          convs_per_stage=(1, 1), input_shape=(32, 32, 3))

    Reference:
        Chen et al., "GradNorm", ICML 2018, section 5.1; Pascal et al.,
        "Maximum Roaming Multi-Task Learning", AAAI 2021, appendix.
    """
    from keras_mtl.model import MultiTaskModel

    trunk = SegNet(
        filters=filters,
        convs_per_stage=convs_per_stage,
        decoder_stages=decoder_stages,
        output_filters=output_filters,
        task_layer=task_layer,
        name="segnet",
    )
    heads = _conv_heads(tasks, head_filters, unit_normalize)
    return build_model(MultiTaskModel(encoder=trunk, heads=heads, **model_kwargs), input_shape)


def _conv_heads(tasks, head_filters, unit_normalize, upsample=1):
    if not isinstance(tasks, dict) or not tasks:
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected a non-empty "
            f"dict {{task name: output channels}}. Received: tasks={tasks!r}"
        )
    unit_normalize = set(unit_normalize or ())
    return {
        name: conv_head(
            int(size),
            hidden_filters=head_filters,
            unit_normalize=name in unit_normalize,
            upsample=upsample,
            name=f"{name}_head",
        )
        for name, size in tasks.items()
    }

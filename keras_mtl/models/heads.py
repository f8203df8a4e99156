"""Task heads and the conv building block shared by the paper architectures.

A head maps the shared representation z to one task's prediction. The dense
prediction papers use small convolutional heads: Maximum Roaming (appendix)
one 3x3x64x64 and one 1x1x64xC convolution per task; GradNorm shares
everything "until the final layer", a 1x1 convolution. Classification
trunks (ResNet-18 on CelebA, the MTFL CNNs) get one dense layer per task.

`ConvBNAct` is the conv -> batch norm -> [task layer] -> activation unit the
architectures are built from. Its optional task layer (a `TaskMask`, a task
SE block, ...) is where Maximum Roaming / Task Routing / attentive
single-tasking plug into a shared network.
"""

import gin
import keras

from keras_mtl.layers.task_conditioned import is_task_conditioned


def clone_task_layer(template, index=0):
    """A fresh copy of `template` for one insertion point, or None.

    Args:
        template: None, a Keras layer instance (for example
            `TaskMask(num_tasks=8, sharing_ratio=0.8, seed=0)`) or its
            serialized config dict. The copy is built from the config, so
            every insertion point gets its own, unbuilt layer.
        index: the insertion point's number. A template with an integer
            `seed` gives copy i the seed `seed + index`, so masks drawn at
            different layers are independent draws (and reproducible).

    Returns:
        a new Keras layer, or None when `template` is None.
    """
    if template is None:
        return None
    if isinstance(template, keras.layers.Layer):
        config = keras.saving.serialize_keras_object(template)
    elif isinstance(template, dict):
        config = template
    else:
        raise ValueError(
            "Invalid value received for argument `task_layer`. Expected None, "
            "a Keras layer instance or its serialized config dict. Received: "
            f"task_layer={template!r}"
        )
    config = {**config, "config": dict(config["config"])}
    inner = config["config"]
    inner.pop("name", None)
    seed = inner.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        inner["seed"] = seed + index
    return keras.saving.deserialize_keras_object(config)


def serialize_task_layer(template):
    """The config-dict form of a task-layer template (for `get_config`)."""
    if template is None or isinstance(template, dict):
        return template
    return keras.saving.serialize_keras_object(template)


def call_layer(layer, x, task=None, training=None):
    """Calls `layer`, passing `task=` only to layers that take it."""
    if is_task_conditioned(layer) or getattr(layer, "takes_task", False):
        return layer(x, task=task, training=training)
    return layer(x, training=training)


@keras.saving.register_keras_serializable(package="keras_mtl")
class ConvBNAct(keras.layers.Layer):
    """Conv2D -> BatchNorm -> optional task layer -> activation.

    Args:
        filters: number of output channels.
        kernel_size: int or pair. Defaults to `3`.
        strides: int or pair. Defaults to `1`.
        padding: `"same"` or `"valid"`. Defaults to `"same"`.
        dilation_rate: int. Defaults to `1`.
        batch_norm: whether to normalise (the conv then has no bias).
            Defaults to `True`.
        activation: activation name or None. Defaults to `"relu"`.
        task_layer: None or a task-layer template (see `clone_task_layer`),
            inserted after the normalisation, on the conv's output channels.
        task_layer_index: insertion index passed to `clone_task_layer`.

    Call arguments:
        inputs: (batch, H, W, C) tensor.
        task: int32 (batch,) task indices; required when there is a task layer.
        training: Python bool.

    Example:

    >>> block = ConvBNAct(16, 3)
    >>> y = block(np.zeros((2, 8, 8, 3)))   # (2, 8, 8, 16)
    """

    takes_task = True

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        padding="same",
        dilation_rate=1,
        batch_norm=True,
        activation="relu",
        task_layer=None,
        task_layer_index=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(
                "Invalid value received for argument `filters`. Expected an "
                f"integer >= 1. Received: filters={filters}"
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.padding = padding
        self.dilation_rate = dilation_rate
        self.batch_norm = batch_norm
        self.activation = activation
        self.task_layer = serialize_task_layer(task_layer)
        self.task_layer_index = task_layer_index
        # === Layers ===
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
        )
        self.norm = keras.layers.BatchNormalization() if batch_norm else None
        self.task_block = clone_task_layer(task_layer, task_layer_index)
        self.act = keras.layers.Activation(activation) if activation else None

    def build(self, input_shape):
        self.conv.build(input_shape)
        shape = self.conv.compute_output_shape(input_shape)
        if self.norm is not None:
            self.norm.build(shape)
        if self.task_block is not None:
            self.task_block.build(shape)
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = self.conv(inputs)
        if self.norm is not None:
            x = self.norm(x, training=training)
        if self.task_block is not None:
            if task is None:
                raise ValueError(
                    f"Layer '{self.name}' holds the task-conditioned layer "
                    f"'{self.task_block.name}': call it with `task=` (an int32 vector "
                    "of task indices, one per example)."
                )
            x = call_layer(self.task_block, x, task=task, training=training)
        if self.act is not None:
            x = self.act(x)
        return x

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "batch_norm": self.batch_norm,
            "activation": self.activation,
            "task_layer": self.task_layer,
            "task_layer_index": self.task_layer_index,
        }


def conv_head(
    out_channels,
    hidden_filters=64,
    kernel_size=3,
    activation=None,
    unit_normalize=False,
    upsample=1,
    name=None,
):
    """A dense-prediction head: [3x3 conv + ReLU] + 1x1 conv [+ upsampling].

    Args:
        out_channels: channels of the prediction (classes for segmentation,
            1 for depth or a binary mask, 3 for normals).
        hidden_filters: width of the 3x3 convolution; `None` or 0 leaves it
            out (GradNorm's "shared until the final layer" 1x1 head).
            Defaults to `64` (Maximum Roaming appendix: 3x3x64x64 then
            1x1x64xC).
        kernel_size: size of the hidden convolution. Defaults to `3`.
        activation: activation of the output (None gives logits / raw
            regression). Defaults to `None`.
        unit_normalize: L2-normalise the output over channels (surface
            normals). Defaults to `False`.
        upsample: bilinear upsampling factor applied last (a stride-8 trunk
            predicting at input resolution). Defaults to `1`.
        name: model name.

    Returns:
        a `keras.Sequential` mapping (B, H, W, C) to
        (B, upsample * H, upsample * W, out_channels).

    Example:

    >>> head = conv_head(13)                       # segmentation logits
    >>> normals = conv_head(3, unit_normalize=True)

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021,
        appendix "Experimental Setup".
    """
    _check_units("out_channels", out_channels)
    layers = []
    if hidden_filters:
        layers.append(
            keras.layers.Conv2D(
                hidden_filters, kernel_size, padding="same", activation="relu"
            )
        )
    layers.append(keras.layers.Conv2D(out_channels, 1, activation=activation))
    if upsample and upsample != 1:
        layers.append(keras.layers.UpSampling2D(int(upsample), interpolation="bilinear"))
    if unit_normalize:
        layers.append(keras.layers.UnitNormalization(axis=-1))
    return keras.Sequential(layers, name=name)


def dense_head(units, hidden_units=None, activation=None, name=None):
    """A classification / regression head: [Dense + ReLU] + Dense.

    Args:
        units: outputs (attributes of a CelebA group, 2 per MTFL classifier,
            10 landmark coordinates).
        hidden_units: width of an optional hidden layer. Defaults to `None`.
        activation: output activation; None gives logits. Defaults to `None`.
        name: model name.

    Returns:
        a `keras.Sequential` mapping (B, D) to (B, units).

    Example:

    >>> head = dense_head(9)     # the "Global" attribute group of CelebA

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021,
        appendix: "8 fully connected layers of input size 512, one per task".
    """
    _check_units("units", units)
    layers = []
    if hidden_units:
        layers.append(keras.layers.Dense(hidden_units, activation="relu"))
    layers.append(keras.layers.Dense(units, activation=activation))
    return keras.Sequential(layers, name=name)


def _check_units(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected an "
            f"integer >= 1. Received: {name}={value}"
        )


def build_model(model, input_shape=None):
    """Creates a model's weights by calling it on one zero example of `input_shape`."""
    if input_shape is not None:
        model(keras.ops.zeros((1, *tuple(input_shape))), training=False)
    return model


# --- gin-configurable task-layer templates -------------------------------------
# Keras layer classes are never decorated with gin; these factories give
# configs `task_layer = @roaming_mask_layer()` and friends.


@gin.configurable
def roaming_mask_layer(num_tasks, sharing_ratio=0.5, seed=0):
    """A `TaskMask` template: Maximum Roaming's roaming channel partition.

    Pair it with the `keras_mtl.callbacks.MaximumRoaming` callback, which
    applies the roaming updates every Delta steps.

    Args:
        num_tasks: number of tasks T (the model's heads).
        sharing_ratio: p in [0, 1]. Defaults to `0.5`.
        seed: base seed; insertion point i uses `seed + i`. Defaults to `0`.

    Returns:
        an unbuilt `keras_mtl.layers.TaskMask`.

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021.
    """
    from keras_mtl.layers import TaskMask

    return TaskMask(num_tasks=num_tasks, sharing_ratio=sharing_ratio, seed=seed)


@gin.configurable
def routing_mask_layer(num_tasks, sharing_ratio=0.5, seed=0):
    """A `TaskRouting` template: fixed binary channel masks (Task Routing).

    Reference:
        Strezoski, van Noord and Worring, "Many Task Learning With Task
        Routing", ICCV 2019.
    """
    from keras_mtl.layers import TaskRouting

    return TaskRouting(num_tasks=num_tasks, sharing_ratio=sharing_ratio, seed=seed)


@gin.configurable
def task_se_layer(num_tasks, ratio=16):
    """A `TaskSqueezeExcite` template: one SE block per task (SE-MTL / ASTMT).

    Reference:
        Maninis, Radosavovic and Kokkinos, "Attentive Single-Tasking of
        Multiple Tasks", CVPR 2019.
    """
    from keras_mtl.layers import TaskSqueezeExcite

    return TaskSqueezeExcite(num_tasks=num_tasks, ratio=ratio)


@gin.configurable
def gradient_discriminator_layer(num_tasks, hidden_units=64, reversal_strength=1.0):
    """A `GradientDiscriminator` for `MultiTaskModel(discriminator=...)` (ASTMT).

    Reference:
        Maninis, Radosavovic and Kokkinos, "Attentive Single-Tasking of
        Multiple Tasks", CVPR 2019, section 4.
    """
    from keras_mtl.layers import GradientDiscriminator

    return GradientDiscriminator(
        num_tasks=num_tasks, hidden_units=hidden_units, reversal_strength=reversal_strength
    )

"""The MTFL facial-landmark CNNs of GradNorm's supplementary section 7.2.

At 160x160 GradNorm uses "a deeper version of the architecture in (Zhang et
al., 2014)": [CONV-5-16][POOL-2][CONV-3-32]^2[POOL-2][CONV-3-64]^2[POOL-2]
[CONV-3-128]^2[POOL-2]^2[CONV-3-128]^2[FC-100][FC-18]. At 40x40 it uses the
network of Zhang et al. (TCDCN): valid convolutions 5x5x20, 3x3x48, 3x3x64,
2x2x80 with 2x2 max pooling after the first three, then a shared fully
connected layer. Both are written here as layer strings in the paper's
notation ("C5-16" = 5x5 conv with 16 filters, "P" = 2x2/2 max pool); the
shared trunk ends at the FC layer before the output and each task's slice of
the final FC-18 (10 landmark coordinates, 2 scores per classifier) is a
dense head.
"""

import re

import gin
import keras

from keras_mtl.models.heads import ConvBNAct
from keras_mtl.models.heads import call_layer
from keras_mtl.models.heads import clone_task_layer
from keras_mtl.models.heads import dense_head
from keras_mtl.models.heads import build_model
from keras_mtl.models.heads import serialize_task_layer

MTFL_160_LAYERS = (
    "C5-16", "P",
    "C3-32", "C3-32", "P",
    "C3-64", "C3-64", "P",
    "C3-128", "C3-128", "P", "P",
    "C3-128", "C3-128",
)
"""GradNorm supplementary 7.2, the 160x160 stack (before [FC-100][FC-18])."""

MTFL_40_LAYERS = ("C5-20", "P", "C3-48", "P", "C3-64", "P", "C2-80")
"""The 40x40 stack after Zhang et al. 2014 (TCDCN), valid padding."""

MTFL_TASKS = {"landmarks": 10, "gender": 2, "smile": 2, "glasses": 2, "pose": 5}
"""Outputs per task: 10 coordinates, 2 scores per binary classifier and 5 for
the head pose (the release's 5 pose classes; GradNorm counts 2 per classifier,
18 outputs in all)."""

_CONV = re.compile(r"^C(\d+)-(\d+)$")


def parse_layers(layers):
    """Parses the paper's notation into [("conv", kernel, filters) | ("pool",)].

    Raises:
        ValueError: for an entry that is neither "C<k>-<f>" nor "P".
    """
    parsed = []
    for entry in layers:
        token = str(entry).strip().upper()
        match = _CONV.match(token)
        if match:
            parsed.append(("conv", int(match.group(1)), int(match.group(2))))
        elif token == "P":
            parsed.append(("pool",))
        else:
            raise ValueError(
                "Invalid value received for argument `layers`. Expected entries "
                "'C<kernel>-<filters>' (e.g. 'C3-32') or 'P'. Received: "
                f"{entry!r} in layers={list(layers)}"
            )
    return parsed


@keras.saving.register_keras_serializable(package="keras_mtl")
class ConvStackCNN(keras.layers.Layer):
    """Conv/pool stack in the paper's notation, flattened into FC layers.

    Args:
        layers: sequence of "C<k>-<f>" / "P" strings. Defaults to the
            160x160 stack of GradNorm's supplementary 7.2.
        fc_units: widths of the shared fully connected layers after the
            stack. Defaults to `(100,)` (the [FC-100]).
        padding: convolution padding. Defaults to `"same"`.
        batch_norm: batch norm after each convolution. Defaults to `False`.
        activation: activation of every layer. Defaults to `"relu"`.
        task_layer: task-layer template inserted after every convolution
            and shared FC layer.

    Call arguments:
        inputs: (B, H, W, C) images.
        task: int32 (B,) task indices (needed with a task layer).
        training: Python bool.

    Example:

    >>> cnn = ConvStackCNN(["C3-4", "P", "C3-8"], fc_units=(16,))
    >>> z = cnn(np.zeros((2, 16, 16, 1)))     # (2, 16)

    Reference:
        Chen et al., "GradNorm", ICML 2018, supplementary 7.2; Zhang et al.,
        "Facial Landmark Detection by Deep Multi-task Learning", ECCV 2014.
    """

    def __init__(
        self,
        layers=MTFL_160_LAYERS,
        fc_units=(100,),
        padding="same",
        batch_norm=False,
        activation="relu",
        task_layer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.layers_spec = tuple(str(l) for l in layers)
        self.fc_units = tuple(fc_units)
        self.padding = padding
        self.batch_norm = batch_norm
        self.activation = activation
        self.task_layer = serialize_task_layer(task_layer)
        # === Layers ===
        self.stack = []
        index = 0
        for item in parse_layers(self.layers_spec):
            if item[0] == "conv":
                self.stack.append(
                    ConvBNAct(
                        item[2], item[1], padding=padding, batch_norm=batch_norm,
                        activation=activation, task_layer=task_layer,
                        task_layer_index=index,
                    )
                )
                index += 1
            else:
                self.stack.append(keras.layers.MaxPooling2D(2, strides=2))
        self.flatten = keras.layers.Flatten()
        self.fcs, self.fc_tasks = [], []
        for units in self.fc_units:
            self.fcs.append(keras.layers.Dense(units, activation=None))
            self.fc_tasks.append(clone_task_layer(task_layer, index))
            index += 1
        self.act = keras.layers.Activation(activation)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.stack:
            layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
        if any(s is not None and s < 1 for s in shape[1:]):
            raise ValueError(
                f"Input shape {tuple(input_shape)} is too small for layers "
                f"{list(self.layers_spec)}: the stack output would be {shape}."
            )
        shape = self.flatten.compute_output_shape(shape)
        for fc, task_block in zip(self.fcs, self.fc_tasks):
            fc.build(shape)
            shape = fc.compute_output_shape(shape)
            if task_block is not None:
                task_block.build(shape)
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = inputs
        for layer in self.stack:
            x = call_layer(layer, x, task=task, training=training)
        x = self.flatten(x)
        for fc, task_block in zip(self.fcs, self.fc_tasks):
            x = fc(x)
            if task_block is not None:
                x = call_layer(task_block, x, task=task, training=training)
            x = self.act(x)
        return x

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.stack:
            shape = tuple(layer.compute_output_shape(shape))
        shape = self.flatten.compute_output_shape(shape)
        for fc in self.fcs:
            shape = fc.compute_output_shape(shape)
        return shape

    def get_config(self):
        return {
            **super().get_config(),
            "layers": list(self.layers_spec),
            "fc_units": list(self.fc_units),
            "padding": self.padding,
            "batch_norm": self.batch_norm,
            "activation": self.activation,
            "task_layer": self.task_layer,
        }


@gin.configurable
def mtfl_cnn_multitask(
    tasks=None,
    resolution=160,
    layers=None,
    fc_units=None,
    padding=None,
    batch_norm=False,
    activation="relu",
    task_layer=None,
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel` for MTFL: the 40x40 or 160x160 CNN + one dense head per task.

    Args:
        tasks: dict `{task: outputs}`. Defaults to `MTFL_TASKS` (10 landmark
            coordinates, 2 scores per binary classifier, 5 pose classes).
        resolution: `40` (Zhang et al.'s network, valid padding, FC-100)
            or `160` (GradNorm's deeper stack). Picks the defaults of
            `layers`, `fc_units` and `padding`.
        layers, fc_units, padding, batch_norm, activation, task_layer: see
            `ConvStackCNN`; given values override the resolution's defaults
            (narrow them for tests).
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel`.

    Example:

    >>> model = mtfl_cnn_multitask(resolution=40, input_shape=(40, 40, 1))

    Reference:
        Chen et al., "GradNorm", ICML 2018, supplementary 7.2.
    """
    from keras_mtl.model import MultiTaskModel

    if resolution not in (40, 160):
        raise ValueError(
            "Invalid value received for argument `resolution`. Expected 40 or "
            f"160. Received: resolution={resolution}"
        )
    defaults = {
        40: (MTFL_40_LAYERS, (100,), "valid"),
        160: (MTFL_160_LAYERS, (100,), "same"),
    }[resolution]
    trunk = ConvStackCNN(
        layers=defaults[0] if layers is None else layers,
        fc_units=defaults[1] if fc_units is None else fc_units,
        padding=defaults[2] if padding is None else padding,
        batch_norm=batch_norm,
        activation=activation,
        task_layer=task_layer,
        name=f"mtfl_cnn_{resolution}",
    )
    tasks = dict(MTFL_TASKS if tasks is None else tasks)
    heads = {name: dense_head(int(units), name=f"{name}_head") for name, units in tasks.items()}
    model = MultiTaskModel(encoder=trunk, heads=heads, **model_kwargs)
    return build_model(model, input_shape)

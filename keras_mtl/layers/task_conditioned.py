"""Task-conditioned execution: layers that take the task of each example.

Maximum Roaming, Task Routing and attentive single-tasking give each task its
own forward pass through the shared network. keras-mtl folds the T passes into
the batch: the input is tiled to (T*B, ...) with a task-index vector
`task = [0]*B + [1]*B + ... + [T-1]*B`, every task-conditioned layer picks its
per-task parameters (mask column, SE block, adapter, BN statistics) by that
index, and head t reads rows t*B:(t+1)*B. One traced graph serves all tasks,
and a per-task call is the same graph with a constant task index.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskConditionedLayer(keras.layers.Layer):
    """Base class of layers whose computation depends on the task.

    Subclasses implement `call(inputs, task, training=None)` where `task` is
    an int32 tensor of shape (batch,) holding each example's task index in
    [0, num_tasks). `MultiTaskModel` detects these layers inside its encoder
    and switches to folded per-task execution.

    Args:
        num_tasks: number of tasks T (>= 1).
    """

    task_conditioned = True

    def __init__(self, num_tasks, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(
                "Invalid value received for argument `num_tasks`. Expected an "
                f"integer >= 1. Received: num_tasks={num_tasks}"
            )
        self.num_tasks = num_tasks

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks}


def is_task_conditioned(layer):
    """True if `layer` or any layer nested inside it is task-conditioned."""
    if getattr(layer, "task_conditioned", False):
        return True
    if hasattr(layer, "_flatten_layers"):
        for sub in layer._flatten_layers(include_self=False, recursive=True):
            if getattr(sub, "task_conditioned", False):
                return True
    return False


def task_conditioned_layers(layer):
    """The task-conditioned layers nested in `layer` (itself included)."""
    layers = layer._flatten_layers(include_self=True, recursive=True)
    return [l for l in layers if getattr(l, "task_conditioned", False)]


def fold_tasks(inputs, num_tasks):
    """Tiles a batch T times: returns (folded_inputs, task_ids).

    `inputs` may be a tensor or a nest of tensors with a common batch size B.
    The folded batch is (T*B, ...), ordered task-major; `task_ids` is the
    int32 vector (T*B,) = [0]*B + ... + [T-1]*B.
    """
    flat = tf.nest.flatten(inputs)
    batch = tf.shape(flat[0])[0]
    folded = tf.nest.map_structure(
        lambda t: tf.concat([t] * num_tasks, axis=0), inputs
    )
    task_ids = tf.repeat(tf.range(num_tasks, dtype="int32"), batch)
    return folded, task_ids


def unfold_tasks(folded, num_tasks):
    """Splits a task-major folded batch (T*B, ...) into T tensors (B, ...)."""
    return tf.split(folded, num_tasks, axis=0)


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskSequential(keras.layers.Layer):
    """A stack of layers that passes the task index to the layers that take it.

    Like `keras.Sequential`, but `call(x, task=None)` forwards `task` to every
    task-conditioned layer (see `TaskConditionedLayer`) and calls the others
    plainly. Use it to build encoders with `TaskMask`, task SE or task BN.

    Args:
        layers: list of Keras layers.

    Example:

    >>> encoder = TaskSequential([
    ...     keras.layers.Conv2D(16, 3, padding="same"),
    ...     keras.layers.BatchNormalization(),
    ...     keras_mtl.layers.TaskMask(num_tasks=2, sharing_ratio=0.6),
    ...     keras.layers.ReLU(),
    ... ])
    """

    def __init__(self, layers, **kwargs):
        super().__init__(**kwargs)
        self.layers = list(layers)

    def build(self, input_shape):
        shape = input_shape
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, inputs, task=None, training=None):
        x = inputs
        for layer in self.layers:
            if getattr(layer, "task_conditioned", False):
                if task is None:
                    raise ValueError(
                        f"Layer '{layer.name}' is task-conditioned: call "
                        f"'{self.name}' with `task=` (an int32 vector of task "
                        "indices, one per example)."
                    )
                x = layer(x, task=task, training=training)
            else:
                x = layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
        return shape

    def get_config(self):
        return {
            **super().get_config(),
            "layers": [keras.saving.serialize_keras_object(l) for l in self.layers],
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layers"] = [
            keras.saving.deserialize_keras_object(l) for l in config["layers"]
        ]
        return cls(**config)

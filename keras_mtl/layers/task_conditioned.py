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

from keras_mtl._keras_compat import flatten_layers


class TaskConditioned:
    """The task-conditioned protocol, a mixin of Keras layers.

    A task-conditioned layer's `call(inputs, task=None, training=None)` takes
    `task`, an int32 vector (batch,) with each example's task index.
    `MultiTaskModel` reads the protocol only through these members:

    - `task_conditioned`: whether the layer (or anything inside it) needs
      `task` (a class attribute, or an instance attribute for layers that
      are task-conditioned only in some configurations);
    - `task_variables(task_index)`: the variables that only that task uses
      (its SE block, adapter, BN parameters): trained only by that task's
      loss, and excluded from a step in which the task is absent;
    - `has_shared_prefix`, `shared_prefix(x)`, `task_suffix(features, task)`:
      an encoder whose first part is task-independent runs it once and folds
      only the rest, `task_suffix(fold(shared_prefix(x)))` = `call(fold(x))`.
    """

    task_conditioned = True
    has_shared_prefix = False

    def task_variables(self, task_index):
        """Variables that only task `task_index` uses. Defaults to none."""
        return []

    def shared_prefix(self, inputs, training=None):
        raise NotImplementedError(f"'{self.name}' has no shared prefix.")

    def task_suffix(self, features, task=None, training=None):
        raise NotImplementedError(f"'{self.name}' has no shared prefix.")


class TaskOutputs:
    """The protocol of encoders whose task paths split inside them (a mixin).

    Architectures such as Cross-stitch, PLE or learned branching have no
    single representation shared by every task: task t's path leaves the
    shared part somewhere inside the encoder. Such an encoder returns a list
    of T per-task representations `[z_0, ..., z_{T-1}]` (in the model's task
    order; each a tensor or a nest), and head t reads `z_t`. The encoder
    runs once per step (not folded like `TaskConditioned` layers).

    `MultiTaskModel` reads the protocol only through these members:

    - `task_outputs`: whether the output is per task (class or instance
      attribute);
    - `num_tasks`: T, checked against the model's heads;
    - `task_variables(task_index)`: the encoder's variables that only that
      task uses (its gate, tower, column): trained only by that task's loss,
      excluded from a step in which the task is absent, and never GradNorm's
      "last shared layer".

    Balancers that need one shared representation z (feature-level IMTL-G,
    MGDA-UB, PCGrad, ..., and the gradient discriminator) are rejected with
    such an encoder: use loss-based balancers or their parameter-level mode
    (`mode="shared"`), which differentiate the shared parameters directly.
    """

    task_outputs = True

    def task_variables(self, task_index):
        """Variables that only task `task_index` uses. Defaults to none."""
        return []


def has_task_outputs(layer):
    """True if `layer` follows the `TaskOutputs` protocol (one output per task)."""
    return isinstance(layer, TaskOutputs) and bool(layer.task_outputs)


def task_variable_layers(container):
    """Layers nested in `container` (itself included) that own task variables."""
    return [l for l in flatten_layers(container)
            if (isinstance(l, TaskConditionedLayer) and l.task_conditioned)
            or has_task_outputs(l)]


def per_example_task(task, inputs):
    """Returns `task` as an int32 vector (batch,); a scalar is broadcast."""
    task = tf.cast(task, "int32")
    if task.shape.rank == 0:
        task = tf.fill(tf.shape(inputs)[:1], task)
    return task


def task_vector(task_indices, batch_size):
    """[t_0]*B + [t_1]*B + ...: the task of every row of a task-major folded batch."""
    return tf.repeat(tf.constant(list(task_indices), dtype="int32"), batch_size)


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskConditionedLayer(TaskConditioned, keras.layers.Layer):
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


def _conditioned(layer):
    return isinstance(layer, TaskConditioned) and bool(layer.task_conditioned)


def is_task_conditioned(layer):
    """True if `layer` or any layer nested inside it is task-conditioned."""
    return any(_conditioned(l) for l in flatten_layers(layer))


def task_conditioned_layers(layer):
    """The task-conditioned layers (with per-task parameters) nested in `layer`."""
    return [l for l in flatten_layers(layer)
            if isinstance(l, TaskConditionedLayer) and l.task_conditioned]


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
    return folded, task_vector(range(num_tasks), batch)


def unfold_tasks(folded, num_tasks):
    """Splits a task-major folded batch (T*B, ...) into T tensors (B, ...)."""
    return tf.split(folded, num_tasks, axis=0)


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskSequential(TaskConditioned, keras.layers.Layer):
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

    @property
    def task_conditioned(self):
        return any(is_task_conditioned(l) for l in self.layers)

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
            if is_task_conditioned(layer):
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

"""Task-specific squeeze-and-excitation (attentive single-tasking)."""

import keras
import tensorflow as tf

from keras_mtl.layers.task_conditioned import TaskConditionedLayer
from keras_mtl.layers.task_conditioned import per_example_task


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskSqueezeExcite(TaskConditionedLayer):
    """Squeeze-and-excitation with one SE block per task.

    Each task t owns a keras-cv `SqueezeAndExcite2D` block (global average
    pool -> 1x1 conv C/r -> ReLU -> 1x1 conv C -> sigmoid). An example of task
    t is gated channel-wise by block t only: the T gates are computed on the
    pooled (batch, 1, 1, C) features, which is cheap, and each example picks
    its own with a gather, so the gradient of task t's loss reaches only
    block t's variables. In the SE-ResNet bottleneck it sits after the last
    batch normalisation, before the residual addition.

    Args:
        num_tasks: number of tasks T.
        ratio: reduction ratio r; the bottleneck has max(1, C // r) channels.
            Defaults to `16`.

    Call arguments:
        inputs: a tensor (batch, H, W, C).
        task: int tensor (batch,) of task indices in [0, T), or one scalar.

    Example:

    >>> se = TaskSqueezeExcite(num_tasks=2, ratio=4)
    >>> y = se(np.ones((4, 8, 8, 16)), task=np.array([0, 0, 1, 1]))

    Reference:
        Maninis, Radosavovic, Kokkinos, "Attentive Single-Tasking of Multiple
        Tasks", CVPR 2019, section 3.1.
    """

    def __init__(self, num_tasks, ratio=16, **kwargs):
        super().__init__(num_tasks=num_tasks, **kwargs)
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise ValueError(
                "Invalid value received for argument `ratio`. Expected an "
                f"integer >= 1. Received: ratio={ratio}"
            )
        self.ratio = ratio

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"TaskSqueezeExcite '{self.name}' expects inputs (batch, H, W, C) "
                f"with a known C. Received: input_shape={input_shape}"
            )
        channels = int(input_shape[-1])
        if channels < 2:
            raise ValueError(
                f"TaskSqueezeExcite '{self.name}' needs at least 2 channels. "
                f"Received: input_shape={input_shape}"
            )
        import keras_cv  # lazily: keeps `import keras_mtl` light

        self.filters = channels
        bottleneck = min(max(1, channels // self.ratio), channels - 1)
        self.blocks = []
        for t in range(self.num_tasks):
            block = keras_cv.layers.SqueezeAndExcite2D(
                channels,
                bottleneck_filters=bottleneck,
                name=f"se_task_{t}",
            )
            pooled = (input_shape[0], 1, 1, channels)
            with keras.name_scope(block.name):
                block.squeeze_conv.build(pooled)
                block.excite_conv.build(pooled[:3] + (bottleneck,))
            block.built = True
            self.blocks.append(block)
        self.built = True

    def gates(self, pooled, task):
        """Per-example gates (batch, 1, 1, C) from pooled features."""
        stacked = tf.stack(
            [b.excite_conv(b.squeeze_conv(pooled)) for b in self.blocks], axis=1
        )  # (batch, T, 1, 1, C)
        return tf.gather(stacked, task, axis=1, batch_dims=1)

    def call(self, inputs, task=None, training=None):
        if task is None:
            raise ValueError(
                f"TaskSqueezeExcite '{self.name}' needs `task=`: an int32 vector "
                "with the task index of every example (or one scalar)."
            )
        inputs = tf.convert_to_tensor(inputs)
        task = per_example_task(task, inputs)
        pooled = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
        return inputs * tf.cast(self.gates(pooled, task), inputs.dtype)

    def task_variables(self, task_index):
        """The variables of task `task_index`'s SE block."""
        return list(self.blocks[task_index].weights)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio}

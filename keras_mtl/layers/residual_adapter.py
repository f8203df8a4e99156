"""Task-specific parallel residual adapters (attentive single-tasking)."""

import keras
import tensorflow as tf

from keras_mtl.layers.task_conditioned import TaskConditionedLayer
from keras_mtl.layers.task_conditioned import is_task_conditioned
from keras_mtl.layers.task_conditioned import per_example_task


@keras.saving.register_keras_serializable(package="keras_mtl")
class ResidualAdapter(TaskConditionedLayer):
    """A shared layer plus one parallel 1x1 convolution per task.

    Computes `L(x) + RA_t(x)` for an example of task t, where L is the
    wrapped shared layer (a `Conv2D`, a `Dense`, a `TaskMask`-ed stack, ...)
    and RA_t a bias-free 1x1 convolution with L's output channels and L's
    stride. Inside a residual block this gives the paper's
    L_A(x) = x + L(x) + RA_A(x). The adapters start at zero, so training
    starts from the shared network. Each task's kernel is its own variable;
    the kernels are stacked and gathered by task index, so task t's loss
    gives gradient only to `kernel_t`. If L is task-conditioned it receives
    `task=` as well.

    Args:
        num_tasks: number of tasks T.
        layer: the shared layer L. `None` means the identity (a series
            adapter x + RA_t(x)). Defaults to `None`.
        filters: output channels; inferred from `layer` when `None`.
        strides: spatial stride of the adapter; `None` takes `layer.strides`
            (1 when it has none). Defaults to `None`.
        kernel_initializer: initialiser of the adapters. Defaults to `"zeros"`.

    Call arguments:
        inputs: a tensor (batch, H, W, C) or (batch, C).
        task: int tensor (batch,) of task indices in [0, T), or one scalar.

    Example:

    >>> conv = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)
    >>> layer = ResidualAdapter(num_tasks=3, layer=conv)
    >>> y = layer(np.ones((6, 8, 8, 4)), task=np.repeat([0, 1, 2], 2))

    Reference:
        Maninis, Radosavovic, Kokkinos, "Attentive Single-Tasking of Multiple
        Tasks", CVPR 2019, section 3.2 (adapters of Rebuffi et al., CVPR 2018).
    """

    def __init__(
        self,
        num_tasks,
        layer=None,
        filters=None,
        strides=None,
        kernel_initializer="zeros",
        **kwargs,
    ):
        super().__init__(num_tasks=num_tasks, **kwargs)
        if filters is not None and (not isinstance(filters, int) or filters < 1):
            raise ValueError(
                "Invalid value received for argument `filters`. Expected a "
                f"positive integer or None. Received: filters={filters}"
            )
        if strides is None:
            strides = getattr(layer, "strides", 1) if layer is not None else 1
        if isinstance(strides, (tuple, list)):
            if len(set(strides)) != 1:
                raise ValueError(
                    "Invalid value received for argument `strides`. Expected "
                    f"equal strides on both axes. Received: strides={strides}"
                )
            strides = strides[0]
        if not isinstance(strides, int) or strides < 1:
            raise ValueError(
                "Invalid value received for argument `strides`. Expected a "
                f"positive integer. Received: strides={strides}"
            )
        self.layer = layer
        self.filters = filters
        self.strides = strides
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if self.layer is not None:
            if not self.layer.built:
                self.layer.build(input_shape)
            out_shape = self.layer.compute_output_shape(input_shape)
        else:
            out_shape = input_shape
        out_channels = int(out_shape[-1])
        if self.filters is not None and self.filters != out_channels:
            raise ValueError(
                f"ResidualAdapter '{self.name}': `filters` must equal the output "
                f"channels of the wrapped layer. Expected: {out_channels}. "
                f"Received: filters={self.filters}"
            )
        self.out_channels = out_channels
        in_channels = int(input_shape[-1])
        self.kernels = [
            self.add_weight(
                name=f"kernel_{t}",
                shape=(in_channels, out_channels),
                initializer=self.kernel_initializer,
            )
            for t in range(self.num_tasks)
        ]
        self.built = True

    def adapter(self, inputs, task):
        """The adapter branch RA_t(x) alone."""
        x = inputs
        if self.strides > 1 and x.shape.rank == 4:
            x = x[:, :: self.strides, :: self.strides, :]
        kernels = tf.gather(tf.stack([k.value for k in self.kernels]), task)  # (batch, Cin, Cout)
        kernels = tf.cast(kernels, x.dtype)
        if x.shape.rank == 4:
            return tf.einsum("nhwc,ncd->nhwd", x, kernels)
        return tf.einsum("nc,ncd->nd", x, kernels)

    def call(self, inputs, task=None, training=None):
        if task is None:
            raise ValueError(
                f"ResidualAdapter '{self.name}' needs `task=`: an int32 vector "
                "with the task index of every example (or one scalar)."
            )
        inputs = tf.convert_to_tensor(inputs)
        task = per_example_task(task, inputs)
        if self.layer is None:
            shared = inputs
        elif is_task_conditioned(self.layer):
            shared = self.layer(inputs, task=task, training=training)
        else:
            shared = self.layer(inputs, training=training)
        return shared + self.adapter(inputs, task)

    def task_variables(self, task_index):
        """The adapter kernel of task `task_index`."""
        return [self.kernels[task_index]]

    def compute_output_shape(self, input_shape):
        if self.layer is not None:
            return self.layer.compute_output_shape(input_shape)
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "layer": None if self.layer is None
            else keras.saving.serialize_keras_object(self.layer),
            "filters": self.filters,
            "strides": self.strides,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("layer") is not None:
            config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)

"""Task-specific batch normalisation (attentive single-tasking)."""

import keras
import tensorflow as tf

from keras_mtl.layers.task_conditioned import TaskConditionedLayer
from keras_mtl.layers.task_conditioned import per_example_task


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskBatchNormalization(TaskConditionedLayer):
    """Batch normalisation with separate statistics and affine terms per task.

    In training, the examples of task t are normalised with the mean and
    (biased) variance of the task-t examples of the batch only, and task t's
    moving statistics are updated from them, like
    `keras.layers.BatchNormalization` run on that sub-batch; a task with no
    example in the batch keeps its moving statistics bit for bit. At
    inference each example uses its task's moving statistics. Every task
    owns its own `gamma_t`, `beta_t`, `moving_mean_t`, `moving_variance_t`
    variables. Channels last.

    Args:
        num_tasks: number of tasks T.
        momentum: momentum of the moving statistics. Defaults to `0.99`.
        epsilon: added to the variance. Defaults to `1e-3`.
        center: learn the offset beta. Defaults to `True`.
        scale: learn the scale gamma. Defaults to `True`.

    Call arguments:
        inputs: a tensor (batch, ..., C).
        task: int tensor (batch,) of task indices in [0, T), or one scalar.
        training: use batch statistics (and update the moving ones).

    Example:

    >>> bn = TaskBatchNormalization(num_tasks=2)
    >>> y = bn(np.random.rand(4, 8, 8, 3), task=np.array([0, 0, 1, 1]), training=True)

    Reference:
        Maninis, Radosavovic, Kokkinos, "Attentive Single-Tasking of Multiple
        Tasks", CVPR 2019, end of section 3.2.
    """

    def __init__(self, num_tasks, momentum=0.99, epsilon=1e-3, center=True,
                 scale=True, **kwargs):
        super().__init__(num_tasks=num_tasks, **kwargs)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(
                "Invalid value received for argument `momentum`. Expected a "
                f"float in [0, 1]. Received: momentum={momentum}"
            )
        if not float(epsilon) > 0.0:
            raise ValueError(
                "Invalid value received for argument `epsilon`. Expected a "
                f"positive float. Received: epsilon={epsilon}"
            )
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or len(input_shape) < 2:
            raise ValueError(
                f"TaskBatchNormalization '{self.name}' needs a known channel "
                f"dimension (last axis). Received: input_shape={input_shape}"
            )
        shape = (int(channels),)
        self.gammas, self.betas, self.moving_means, self.moving_variances = [], [], [], []
        for t in range(self.num_tasks):
            # float32 and never autocast, like Keras's BatchNormalization:
            # the statistics and the normalisation are computed in float32
            # under a mixed precision policy too.
            if self.scale:
                self.gammas.append(self.add_weight(name=f"gamma_{t}", shape=shape,
                                                   initializer="ones", autocast=False))
            if self.center:
                self.betas.append(self.add_weight(name=f"beta_{t}", shape=shape,
                                                  initializer="zeros", autocast=False))
            self.moving_means.append(self.add_weight(
                name=f"moving_mean_{t}", shape=shape, initializer="zeros",
                trainable=False, autocast=False))
            self.moving_variances.append(self.add_weight(
                name=f"moving_variance_{t}", shape=shape, initializer="ones",
                trainable=False, autocast=False))
        self.built = True

    def _broadcast(self, per_example, rank):
        """(batch, C) -> (batch, 1, ..., 1, C) for an input of `rank`."""
        shape = tf.concat([tf.shape(per_example)[:1], [1] * (rank - 2),
                           tf.shape(per_example)[1:]], axis=0)
        return tf.reshape(per_example, shape)

    def call(self, inputs, task=None, training=None):
        if task is None:
            raise ValueError(
                f"TaskBatchNormalization '{self.name}' needs `task=`: an int32 "
                "vector with the task index of every example (or one scalar)."
            )
        x = tf.convert_to_tensor(inputs)
        dtype = x.dtype
        x = tf.cast(x, "float32")
        task = per_example_task(task, x)
        rank = x.shape.rank
        spatial = list(range(1, rank - 1))
        if training:
            onehot = tf.one_hot(task, self.num_tasks, dtype="float32")  # (N, T)
            count = tf.reduce_sum(onehot, axis=0)  # (T,)
            denom = tf.maximum(count, 1.0)[:, None]

            def per_task(per_example):  # (N, C) -> (T, C): mean over task rows
                return tf.matmul(onehot, per_example, transpose_a=True) / denom

            ex_mean = tf.reduce_mean(x, axis=spatial) if spatial else x
            mean_t = per_task(ex_mean)
            centred = x - self._broadcast(tf.gather(mean_t, task), rank)
            sq = tf.square(centred)
            var_t = per_task(tf.reduce_mean(sq, axis=spatial) if spatial else sq)
            present = count > 0.0
            for t in range(self.num_tasks):
                for var, value in ((self.moving_means[t], mean_t[t]),
                                   (self.moving_variances[t], var_t[t])):
                    old = var.value
                    new = old * self.momentum + value * (1.0 - self.momentum)
                    var.assign(tf.where(present[t], new, old))
            mean = tf.gather(mean_t, task)
            variance = tf.gather(var_t, task)
        else:
            mean = tf.gather(tf.stack([v.value for v in self.moving_means]), task)
            variance = tf.gather(tf.stack([v.value for v in self.moving_variances]), task)
            centred = x - self._broadcast(mean, rank)
        inv = tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            inv = inv * tf.gather(tf.stack([v.value for v in self.gammas]), task)
        out = centred * self._broadcast(inv, rank)
        if self.center:
            out = out + self._broadcast(tf.gather(tf.stack([v.value for v in self.betas]), task), rank)
        return tf.cast(out, dtype)

    def task_variables(self, task_index):
        """gamma, beta and the moving statistics of task `task_index`."""
        out = []
        if self.scale:
            out.append(self.gammas[task_index])
        if self.center:
            out.append(self.betas[task_index])
        return out + [self.moving_means[task_index], self.moving_variances[task_index]]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }

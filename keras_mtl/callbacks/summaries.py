"""Task weights w_i(t) in TensorBoard, every few steps."""

import os

import keras
import numpy as np
import tensorflow as tf

from keras_mtl.callbacks._records import optimizer_step


class TaskWeightSummaries(keras.callbacks.Callback):
    """Writes the balancer's task weights to TensorBoard every `every` steps.

    `keras.callbacks.TensorBoard` writes the epoch means of `<task>_weight`;
    this writes the weights themselves, as scalars `task_weight/<task>` at
    the optimizer's step (so a resumed run writes at the right steps), into
    `<log_dir>/train` beside Keras' own training scalars.

    Args:
        log_dir: the TensorBoard directory (the one given to
            `keras.callbacks.TensorBoard`).
        every: steps between summaries. Defaults to `10`.
    """

    def __init__(self, log_dir, every=10):
        super().__init__()
        if isinstance(every, bool) or int(every) != every or every < 1:
            raise ValueError(
                "Invalid value received for argument `every`. Expected an "
                f"integer >= 1. Received: every={every}")
        self.log_dir = log_dir
        self.every = int(every)
        self._writer = None
        self._last = None

    def on_train_begin(self, logs=None):
        self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._last is None:  # after every restore, whatever the order
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(
                    os.path.join(self.log_dir, "train"))
            self._last = optimizer_step(self.model)
            if self._last == 0:
                self._write(0)

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if step // self.every > self._last // self.every:
            self._write(step)
        self._last = step

    def _write(self, step):
        weights = np.asarray(self.model.balancer.task_weights(), "float64")
        with self._writer.as_default(step=step):
            for task, w in zip(self.model.task_names, weights):
                tf.summary.scalar(f"task_weight/{task}", w)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

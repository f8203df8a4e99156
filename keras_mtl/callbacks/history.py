"""Per-step records of a multi-task run: task weights w_i(t) and normalised losses."""

import csv

import keras
import numpy as np
import tensorflow as tf

from keras_mtl.balancers.static import StaticWeights


def mean_task_losses(model, data):
    """Example-weighted mean loss of each task of `model` over `data` (T,).

    Leaves the model's metrics untouched (unlike `model.evaluate`).
    """
    fn = getattr(model, "_keras_mtl_eval_fn", None)
    if fn is None:

        @tf.function
        def fn(x, y):
            outputs = model(x, training=False)
            losses, _, _ = model.compute_task_losses(y, outputs)
            return tf.stack(losses), tf.shape(tf.nest.flatten(x)[0])[0]

        model._keras_mtl_eval_fn = fn
    total, count = np.zeros(model.num_tasks), 0
    for batch in data:
        x, y = batch[0], batch[1]
        losses, n = fn(x, y)
        total += losses.numpy() * int(n)
        count += int(n)
    if count == 0:
        raise ValueError("The evaluation dataset is empty.")
    return total / count


class BalancerHistory(keras.callbacks.Callback):
    """Records the balancer's task weights w_i(t) after every `every` steps.

    Besides the traces (for plots like Figure 2 of the GradNorm paper), it
    gives the time-averaged weights E_t[w_i(t)] that "GradNorm static"
    retrains with (Chen et al. 2018, sections 5.2-5.3):

    >>> history = keras_mtl.callbacks.BalancerHistory()
    >>> model.fit(train, epochs=10, callbacks=[history])
    >>> static = history.static_balancer()   # StaticWeights(E_t[w_i(t)])

    Args:
        every: record every `every` training steps. Defaults to `1`.
        csv_path: optional path of a CSV file (step, one column per task)
            written at the end of training.
    """

    def __init__(self, every=1, csv_path=None):
        super().__init__()
        if int(every) < 1:
            raise ValueError(
                "Invalid value received for argument `every`. Expected an "
                f"integer >= 1. Received: every={every}"
            )
        self.every = int(every)
        self.csv_path = csv_path
        self.steps = []
        self.weights = []
        self._step = 0

    def on_train_begin(self, logs=None):
        if not self.steps:
            self._record()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self._record()

    def _record(self):
        self.steps.append(self._step)
        self.weights.append(np.asarray(self.model.balancer.task_weights(), "float64"))

    def on_train_end(self, logs=None):
        if self.csv_path:
            with open(self.csv_path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step"] + list(self.model.task_names))
                for step, w in zip(self.steps, self.weights):
                    writer.writerow([step] + [f"{v:.6g}" for v in w])

    def as_array(self):
        """(steps (n,), weights (n, T)) of the recorded trace."""
        return np.asarray(self.steps), np.stack(self.weights)

    def mean_weights(self):
        """E_t[w_i(t)] over the recorded steps, as `{task: weight}`."""
        if not self.weights:
            raise ValueError("BalancerHistory has recorded no step yet.")
        mean = np.mean(np.stack(self.weights), axis=0)
        return {t: float(v) for t, v in zip(self.model.task_names, mean)}

    def static_balancer(self):
        """A `StaticWeights` balancer with the time-averaged weights."""
        return StaticWeights(self.mean_weights())


class TaskNormalizedLoss(keras.callbacks.Callback):
    """Tracks the task-normalised test loss sum_i L_i(t) / L_i(0) on held-out data.

    L_i(0) is the held-out loss of the model before training (the quantity
    plotted in Figure 2 of Chen et al. 2018); an untrained model scores T.

    Args:
        data: held-out dataset of `(x, {task: y})`.
        every: evaluate every `every` training steps (and at the end).
    """

    def __init__(self, data, every=100):
        super().__init__()
        self.data = data
        self.every = int(every)
        self.initial = None
        self.steps = []
        self.values = []
        self.per_task = []
        self._step = 0

    def _losses(self):
        # Not `model.evaluate`: that would reset the running training metrics
        # in the middle of an epoch.
        return mean_task_losses(self.model, self.data)

    def _record(self):
        losses = self._losses()
        ratio = losses / self.initial
        self.steps.append(self._step)
        self.per_task.append(ratio)
        self.values.append(float(ratio.sum()))

    def on_train_begin(self, logs=None):
        if self.initial is None:
            self.initial = self._losses()
            self.steps.append(0)
            self.per_task.append(np.ones_like(self.initial))
            self.values.append(float(len(self.initial)))

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every == 0:
            self._record()

    def on_train_end(self, logs=None):
        if self.steps[-1] != self._step:
            self._record()

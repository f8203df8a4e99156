"""Per-step records of a multi-task run: task weights w_i(t) and normalised losses."""

import warnings

import numpy as np
import tensorflow as tf

from keras_mtl.balancers.static import StaticWeights
from keras_mtl.callbacks._records import RecordFile
from keras_mtl.callbacks._records import StartsAfterRestore
from keras_mtl.callbacks._records import fmt
from keras_mtl.callbacks._records import optimizer_step


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


class BalancerHistory(StartsAfterRestore):
    """Records the balancer's task weights w_i(t) after every `every` steps.

    Besides the traces (for plots like Figure 2 of the GradNorm paper), it
    gives the time-averaged weights E_t[w_i(t)] that "GradNorm static"
    retrains with (Chen et al. 2018, sections 5.2-5.3):

    >>> history = keras_mtl.callbacks.BalancerHistory()
    >>> model.fit(train, epochs=10, callbacks=[history])
    >>> static = history.static_balancer()   # StaticWeights(E_t[w_i(t)])

    Steps are the optimizer's step counter: the first row (step 0) holds the
    initial weights, and further `fit` calls continue the trace. The CSV file
    is written row by row; a run restarted by `BackupAndRestore` keeps the
    rows up to the restored step (read from the file) and continues them, so
    its trace equals an uninterrupted run's.

    Args:
        every: record every `every` training steps. Defaults to `1`.
        csv_path: optional path of a CSV file (step, one column per task).
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
        self._file = None
        self._last = 0

    def start(self, epoch):
        start = optimizer_step(self.model)
        self._last = start
        tasks = list(self.model.task_names)
        if self.csv_path:
            self._file = RecordFile(self.csv_path, ["step"] + tasks)
            rows = self._file.resume(start if start > 0 else -1)
            self.steps = [int(r["step"]) for r in rows]
            self.weights = [np.array([float(r[t]) for t in tasks]) for r in rows]
        else:
            keep = [i for i, s in enumerate(self.steps) if 0 < start and s <= start]
            self.steps = [self.steps[i] for i in keep]
            self.weights = [self.weights[i] for i in keep]
        if start == 0:
            self._record(0)

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if step // self.every > self._last // self.every:
            self._record(step)
        self._last = step

    def _record(self, step):
        w = np.asarray(self.model.balancer.task_weights(), "float64")
        self.steps.append(step)
        self.weights.append(w)
        if self._file is not None:
            self._file.append([step] + [fmt(v) for v in w])

    def on_train_end(self, logs=None):
        self.ensure_started()
        if self._file is not None:
            self._file.close()
            self._file = None

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


class TaskNormalizedLoss(StartsAfterRestore):
    """Tracks the task-normalised test loss sum_i L_i(t) / L_i(0) on held-out data.

    L_i(0) is the held-out loss of the model before training (the quantity
    plotted in Figure 2 of Chen et al. 2018); an untrained model scores T.
    Steps are the optimizer's step counter. With `csv_path`, every record is
    written when made, with the raw losses beside the ratios; a run restarted
    by `BackupAndRestore` reads L_i(0) and the records up to the restored
    step back from it and continues the same curve.

    Args:
        data: held-out dataset of `(x, {task: y})`.
        every: evaluate every `every` training steps (and at the end).
        csv_path: optional CSV file: `step`, `task_normalized_loss`, one ratio
            L_i/L_i(0) per task (named by the task) and the losses
            (`<task>_loss`).
    """

    def __init__(self, data, every=100, csv_path=None):
        super().__init__()
        if int(every) < 1:
            raise ValueError(
                "Invalid value received for argument `every`. Expected an "
                f"integer >= 1. Received: every={every}"
            )
        self.data = data
        self.every = int(every)
        self.csv_path = csv_path
        self.initial = None
        self.steps = []
        self.values = []
        self.per_task = []
        self.losses = []
        self._file = None
        self._last = 0

    def _header(self):
        tasks = list(self.model.task_names)
        return ["step", "task_normalized_loss"] + tasks + [f"{t}_loss" for t in tasks]

    def _evaluate(self):
        # Not `model.evaluate`: that would reset the running training metrics
        # in the middle of an epoch.
        return mean_task_losses(self.model, self.data)

    def start(self, epoch):
        start = optimizer_step(self.model)
        self._last = start
        tasks = list(self.model.task_names)
        if self.csv_path:
            self._file = RecordFile(self.csv_path, self._header())
            rows = self._file.resume(start if start > 0 else -1)
            records = [(int(r["step"]), np.array([float(r[f"{t}_loss"]) for t in tasks]))
                       for r in rows]
        else:
            records = [(s, l) for s, l in zip(self.steps, self.losses) if 0 < start and s <= start]
        self.steps, self.values, self.per_task, self.losses = [], [], [], []
        if start == 0 or not records or records[0][0] != 0:
            if start > 0:
                warnings.warn(
                    "TaskNormalizedLoss found no record of the losses before "
                    f"training (resuming at step {start}): L_i(0) is the "
                    "held-out loss now.", RuntimeWarning, stacklevel=2)
            self.initial = None
            records = []
            self._record(start)
            return
        self.initial = records[0][1]
        for step, losses in records:
            self._add(step, losses)

    def _add(self, step, losses):
        ratio = losses / self.initial
        self.steps.append(step)
        self.losses.append(losses)
        self.per_task.append(ratio)
        self.values.append(float(ratio.sum()))
        return ratio

    def _record(self, step):
        losses = self._evaluate()
        if self.initial is None:
            self.initial = losses
        ratio = self._add(step, losses)
        if self._file is not None:
            self._file.append([step, fmt(self.values[-1])] + [fmt(v) for v in ratio]
                              + [fmt(v) for v in losses])

    def on_train_batch_end(self, batch, logs=None):
        step = optimizer_step(self.model)
        if step // self.every > self._last // self.every:
            self._record(step)
        self._last = step

    def on_train_end(self, logs=None):
        self.ensure_started()
        if self.steps[-1] != self._last:
            self._record(self._last)
        if self._file is not None:
            self._file.close()
            self._file = None

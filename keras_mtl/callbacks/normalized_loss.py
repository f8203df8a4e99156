"""A weight-independent training loss to monitor: the mean task-normalised loss."""

import json
import math
import os
import warnings

import keras
import numpy as np

from keras_mtl.callbacks._records import StartsAfterRestore
from keras_mtl.callbacks._records import optimizer_step


class NormalizedLoss(StartsAfterRestore):
    """Adds the mean task-normalised loss to the epoch logs, to monitor.

    A multi-task model's `loss` is the balancer's combination of the task
    losses, sum_t w_t L_t: it moves when the weights move, even when no task
    improves (GradNorm renormalises w, uncertainty weighting adds log-variance
    terms), so `EarlyStopping` or a best checkpoint monitoring it compares
    numbers that mean different things at different times. This callback adds

        normalized_loss = (1/T) sum_t L_t / L_t(0)

    computed from the per-task `<task>_loss` logs, and `val_normalized_loss`
    from `val_<task>_loss` when the epoch was validated. Both use the same
    L_t(0): by default the loss of task t on the first training batch (the
    untrained network; GradNorm's L_i(0)), so they start near 1 and do not
    depend on the task weights. List this callback before the callbacks that
    monitor its keys.

    Args:
        reference: optional `{task: L_t(0)}` to normalise by instead.
        state_path: optional JSON file that keeps the reference, so that a
            run restarted by `BackupAndRestore` normalises by the same L_t(0).
        name: the log key. Defaults to `"normalized_loss"`.

    Example:

    >>> model.fit(train, validation_data=val, epochs=50, callbacks=[
    ...     keras_mtl.callbacks.NormalizedLoss(),
    ...     keras.callbacks.EarlyStopping(monitor="val_normalized_loss")])
    """

    def __init__(self, reference=None, state_path=None, name="normalized_loss"):
        super().__init__()
        self.given = dict(reference) if reference is not None else None
        self.state_path = state_path
        self.name = name
        self.reference = None

    def start(self, epoch):
        tasks = list(self.model.task_names)
        if self.given is not None:
            missing = [t for t in tasks if t not in self.given]
            if missing:
                raise ValueError(
                    f"`reference` must give L_t(0) for every task {tasks}. "
                    f"Missing: {missing}. Received: reference={self.given}")
            self.reference = {t: float(self.given[t]) for t in tasks}
        elif optimizer_step(self.model) == 0:
            self.reference = {}
        elif not self.reference and self.state_path and os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.reference = json.load(f)["reference"]
        elif not self.reference:
            warnings.warn(
                "NormalizedLoss has no L_t(0) of this partly trained model "
                "(no `reference`, no `state_path` record): it normalises by the "
                "losses of the next training batch.", RuntimeWarning, stacklevel=2)
            self.reference = {}

    def _complete(self):
        return len(self.reference or {}) == len(self.model.task_names)

    def on_train_batch_end(self, batch, logs=None):
        if self._complete() or not logs:
            return
        for task in self.model.task_names:
            value = logs.get(f"{task}_loss")
            if task in self.reference or value is None:
                continue
            value = float(keras.ops.convert_to_numpy(value))
            # A task absent from this batch logs 0: wait for its first loss.
            if math.isfinite(value) and value > 0:
                self.reference[task] = value
        if self._complete() and self.state_path:
            tmp = f"{self.state_path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"reference": self.reference}, f, indent=2)
            os.replace(tmp, self.state_path)

    def value(self, logs, prefix=""):
        """The mean task-normalised loss of `logs` (keys `prefix<task>_loss`), or None."""
        keys = [f"{prefix}{t}_loss" for t in self.model.task_names]
        if not self._complete() or not all(k in logs for k in keys):
            return None
        losses = np.array([float(keras.ops.convert_to_numpy(logs[k])) for k in keys])
        reference = np.array([self.reference[t] for t in self.model.task_names])
        return float(np.mean(losses / reference))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for prefix in ("", "val_"):
            value = self.value(logs, prefix)
            if value is not None:
                logs[prefix + self.name] = value

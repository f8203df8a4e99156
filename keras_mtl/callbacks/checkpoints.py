"""`.keras` checkpoints every epoch, the last few kept, and optionally the best."""

import json
import math
import os
import re
import warnings

import keras


class RotatingCheckpoint(keras.callbacks.Callback):
    """Saves `epoch_<NNNN>.keras` every epoch, keeps the last `keep`, and the best.

    `keras.callbacks.ModelCheckpoint` with a formatted path keeps every file
    (a Cityscapes model is 340 MB an epoch). This callback deletes all but
    the `keep` most recent epoch files in `directory` and, with `monitor`,
    also keeps `best.keras`, the model of the epoch with the best value of
    `monitor` so far, with `best.json` (epoch and value). `best.json` is read
    back when training starts again (a run restarted by `BackupAndRestore`,
    or another `fit`), so a restart never replaces a better model.

    A weight-independent quantity to monitor is `val_normalized_loss` (or
    `normalized_loss`) from `keras_mtl.callbacks.NormalizedLoss`, listed
    before this callback: the balancer-weighted `loss` moves with the weights.

    Args:
        directory: where the files go (created).
        keep: epoch files kept (the most recent); `0` keeps none (only the
            best), `None` keeps all. Defaults to `3`.
        monitor: optional log key; `None` (default) keeps no best model.
        mode: `"min"` or `"max"`: whether a lower or higher value of
            `monitor` is better. Defaults to `"min"`.

    Example:

    >>> model.fit(train, validation_data=val, epochs=200, callbacks=[
    ...     keras_mtl.callbacks.NormalizedLoss(),
    ...     keras_mtl.callbacks.RotatingCheckpoint(
    ...         "run/checkpoints", keep=3, monitor="val_normalized_loss")])
    """

    PATTERN = re.compile(r"^epoch_(\d+)\.keras$")

    def __init__(self, directory, keep=3, monitor=None, mode="min"):
        super().__init__()
        if keep is not None and (isinstance(keep, bool) or int(keep) != keep or keep < 0):
            raise ValueError(
                "Invalid value received for argument `keep`. Expected an integer "
                f">= 0 or None. Received: keep={keep}")
        if mode not in ("min", "max"):
            raise ValueError(
                "Invalid value received for argument `mode`. Expected 'min' or "
                f"'max'. Received: mode={mode!r}")
        self.directory = directory
        self.keep = None if keep is None else int(keep)
        self.monitor = monitor
        self.mode = mode
        self.best = None
        self.best_epoch = None
        self._seen = False
        self._keys = []

    @property
    def best_path(self):
        return os.path.join(self.directory, "best.keras")

    def on_train_begin(self, logs=None):
        self._seen = False
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, "best.json")
        if self.monitor and self.best is None and os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            if record.get("monitor") == self.monitor and os.path.exists(self.best_path):
                self.best, self.best_epoch = float(record["value"]), int(record["epoch"])

    def on_train_end(self, logs=None):
        if self.monitor and not self._seen:
            warnings.warn(
                f"RotatingCheckpoint monitors `{self.monitor}`, which no epoch "
                f"logged (keys: {self._keys}): no best model was saved.",
                RuntimeWarning, stacklevel=2)

    def epoch_files(self):
        """(epoch, path) of the epoch files in `directory`, oldest first."""
        found = []
        for name in os.listdir(self.directory):
            match = self.PATTERN.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def _better(self, value):
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keep != 0:
            self.model.save(os.path.join(self.directory, f"epoch_{epoch + 1:04d}.keras"))
        if self.keep is not None:
            files = self.epoch_files()
            for _, path in files[:max(0, len(files) - self.keep)]:
                os.remove(path)
        if not self.monitor:
            return
        if self.monitor not in logs:
            self._keys = sorted(logs)
            return
        self._seen = True
        value = float(keras.ops.convert_to_numpy(logs[self.monitor]))
        if not math.isfinite(value) or not self._better(value):
            return
        self.best, self.best_epoch = value, epoch + 1
        tmp = os.path.join(self.directory, "best.tmp.keras")
        self.model.save(tmp)
        os.replace(tmp, self.best_path)
        with open(os.path.join(self.directory, "best.json"), "w") as f:
            json.dump({"monitor": self.monitor, "mode": self.mode,
                       "epoch": self.best_epoch, "value": value}, f, indent=2)

"""The epoch logs as a CSV file that a restarted run continues."""

import numbers

import keras
import numpy as np

from keras_mtl.callbacks._records import StartsAfterRestore
from keras_mtl.callbacks._records import fmt
from keras_mtl.callbacks._records import read_rows
from keras_mtl.callbacks._records import write_rows


class CSVHistory(StartsAfterRestore):
    """Writes the logs of every epoch to a CSV file, resumable.

    Like `keras.callbacks.CSVLogger`, one row per epoch (`epoch` counts from
    1), written when the epoch ends. Unlike it, a run restarted by
    `BackupAndRestore` at epoch e keeps the rows of epochs 1..e, drops those
    the killed run wrote after its last backup, and continues, so the file
    equals an uninterrupted run's. Columns are the union of all epochs' keys
    (`val_*` only where an epoch was validated); the file is rewritten
    atomically at every epoch end. List this callback after those that add
    keys to the logs (`NormalizedLoss`).

    Args:
        path: the CSV file.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.rows = []

    def start(self, epoch):
        # `epoch` is where this fit starts: after a restore, the epochs
        # before it are done and their rows are kept.
        _, rows = read_rows(self.path)
        self.rows = [r for r in rows if r.get("epoch", "").isdigit()
                     and int(r["epoch"]) <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": str(epoch + 1)}
        for key, value in (logs or {}).items():
            value = keras.ops.convert_to_numpy(value) if not isinstance(
                value, numbers.Number) else value
            if np.ndim(value) == 0:
                row[key] = fmt(value)
        self.rows.append(row)
        keys = sorted({k for r in self.rows for k in r} - {"epoch"})
        write_rows(self.path, ["epoch"] + keys, self.rows)

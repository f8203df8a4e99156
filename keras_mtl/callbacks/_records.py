"""CSV records that a resumed run continues instead of restarting.

A record file holds one row per step (or epoch) keyed by its first column. A
run killed and restarted resumes from its last backup, so the rows written
after that backup are written again: `RecordFile.resume(position)` keeps the
rows up to `position` and drops the rest (including a row cut in half by
the kill), and later rows are appended one at a time, flushed, so that a
kill loses at most the row being written.
"""

import csv
import os

import keras


def fmt(value):
    """A float as CSV text: 9 significant digits (float32 round-trips exactly)."""
    return f"{float(value):.9g}"


def read_rows(path):
    """(header, rows) of a record file, each row a dict; ([], []) if none.

    Rows with another number of fields than the header (a line cut by a
    kill) are dropped.
    """
    if not path or not os.path.exists(path):
        return [], []
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    if not lines:
        return [], []
    header = lines[0]
    rows = [dict(zip(header, r)) for r in lines[1:] if len(r) == len(header)]
    return header, rows


def write_rows(path, header, rows):
    """Writes a whole record file atomically (a kill leaves the old or the new one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(k, "") for k in header])
    os.replace(tmp, path)


class StartsAfterRestore(keras.callbacks.Callback):
    """A callback whose set-up runs once per fit, when the first epoch begins.

    That is after every `on_train_begin`, a `BackupAndRestore` restore
    included, whatever the callback order: the set-up sees the restored
    model (optimizer step, epoch) and can keep the records written before a
    kill. Subclasses implement `start(epoch)`; `ensure_started()` runs it
    early for a fit that ends before any epoch began.
    """

    _started = False

    def on_train_begin(self, logs=None):
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        self.ensure_started(epoch)

    def ensure_started(self, epoch=0):
        if not self._started:
            self._started = True
            self.start(epoch)

    def start(self, epoch):
        """The set-up (override)."""


class RecordFile:
    """An append-only CSV file of rows keyed by an integer first column.

    Args:
        path: the CSV file.
        header: column names; the first is the integer key (`step`, `epoch`).
    """

    def __init__(self, path, header):
        self.path = path
        self.header = list(header)
        self._file = None

    def resume(self, position):
        """Keeps the rows with key <= `position`, returns them, opens for appending.

        A file written with other columns is started afresh. A fresh run
        passes `position=-1` (nothing to keep).
        """
        header, rows = read_rows(self.path)
        key = self.header[0]
        if header != self.header:
            rows = []
        rows = [r for r in rows if int(r[key]) <= position]
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        write_rows(self.path, self.header, rows)
        self.close()
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        return rows

    def append(self, values):
        """Appends one row (a list in header order) and flushes it."""
        if self._file is None:
            raise RuntimeError(f"Record file {self.path} is not open: call resume() first.")
        self._writer.writerow(values)
        self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def optimizer_step(model):
    """The model's optimizer step counter (restored by checkpoints and backups)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))

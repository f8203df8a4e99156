"""One line of progress per epoch: losses, task weights, validation."""

import time

import keras
import numpy as np

from keras_mtl.callbacks._records import optimizer_step


class ProgressLogger(keras.callbacks.Callback):
    """Prints one line per epoch with every logged value.

    `epoch 3/30 (step 300, 12.4 s): loss=1.23 task_0_loss=0.412
    task_0_weight=1.08 ... normalized_loss=0.81 val_loss=...`: the
    per-task losses and weights, the task metrics, the validation values
    and what earlier callbacks added (`NormalizedLoss`), in log order.
    Quieter than Keras' progress bar in a log file (one line per epoch,
    nothing within), and the same under `keras_mtl.distribute.fit`. List it
    after the callbacks whose keys it should show.

    Args:
        print_fn: called with each line. Defaults to `print` (flushed).
    """

    def __init__(self, print_fn=None):
        super().__init__()
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        parts = []
        for key, value in (logs or {}).items():
            value = np.asarray(keras.ops.convert_to_numpy(value))
            if value.ndim == 0:
                parts.append(f"{key}={float(value):.4g}")
        epochs = self.params.get("epochs") if self.params else None
        total = f"/{epochs}" if epochs else ""
        seconds = time.monotonic() - (self._start or time.monotonic())
        self.print_fn(
            f"epoch {epoch + 1}{total} (step {optimizer_step(self.model)}, "
            f"{seconds:.1f} s): " + " ".join(parts))

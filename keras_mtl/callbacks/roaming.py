"""The Maximum Roaming update plan as a Keras callback."""

import keras
import numpy as np

from keras_mtl._keras_compat import flatten_layers
from keras_mtl.layers.task_mask import TaskMask


class MaximumRoaming(keras.callbacks.Callback):
    """Runs the Maximum Roaming update plan on the model's `TaskMask` layers.

    Every Delta training steps, each roaming `TaskMask` of the model applies
    one update of Definition 1 (`TaskMask.roam`): per task, one active unit
    leaves the partition and one never-visited unit joins it. The plan ends
    on its own when every task has visited every unit of every layer, after
    Delta * max(S - |A_t|) steps, about Delta (1 - p) S_max (Lemma 1), or
    earlier with a completion rate r < 1 (each task then makes
    ceil(r (S - |A_t|)) ~ r (1 - p) S updates per layer). `TaskRouting`
    layers (fixed masks) are left alone.

    The schedule reads the optimizer's step counter and the plan state lives
    in the layers' variables, so a run resumed from a checkpoint, a `.keras`
    file or `BackupAndRestore` continues the same plan with the same draws.

    Attributes:
        updates: plan updates applied by this callback.
        finished_step: the optimizer step at which the plan finished, or
            `None` while it runs.

    Args:
        update_every: Delta. An int is a number of training steps; a float is
            a number of epochs (`0.1` = a tenth of an epoch, rounded to whole
            steps), which needs a dataset of known length.
        completion: the completion rate r in [0, 1]. Defaults to `1.0`.

    Example:

    >>> model.fit(ds, epochs=20, callbacks=[
    ...     keras_mtl.callbacks.MaximumRoaming(update_every=0.1)])

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021.
    """

    def __init__(self, update_every, completion=1.0):
        super().__init__()
        if (
            isinstance(update_every, bool)
            or not isinstance(update_every, (int, float, np.integer, np.floating))
            or not update_every > 0
        ):
            raise ValueError(
                "Invalid value received for argument `update_every`. Expected a "
                "positive int (steps) or float (epochs). "
                f"Received: update_every={update_every}"
            )
        if (
            isinstance(completion, bool)
            or not isinstance(completion, (int, float, np.integer, np.floating))
            or not 0.0 <= float(completion) <= 1.0
        ):
            raise ValueError(
                "Invalid value received for argument `completion`. Expected a "
                f"float in [0, 1]. Received: completion={completion}"
            )
        self.update_every = update_every
        self.completion = float(completion)
        self.updates = 0
        self.finished_step = None
        self._layers = None
        self._delta = None
        self._last_step = None

    def update_interval(self):
        """Delta in training steps."""
        if isinstance(self.update_every, (int, np.integer)):
            return int(self.update_every)
        steps = (self.params or {}).get("steps")
        if not steps:
            raise ValueError(
                "MaximumRoaming(update_every=<float>) counts in epochs and needs "
                "the number of steps per epoch, which this fit does not know. "
                "Pass `steps_per_epoch` to `fit`, or an int `update_every` "
                f"(steps). Received: update_every={self.update_every}"
            )
        return max(1, int(round(self.update_every * steps)))

    def roaming_layers(self):
        """The model's roaming `TaskMask` layers (not `TaskRouting`)."""
        layers = flatten_layers(self.model, include_self=False)
        return [l for l in layers if isinstance(l, TaskMask) and l.roaming]

    def on_train_begin(self, logs=None):
        self._delta = self.update_interval()
        self._last_step = None
        self._layers = None

    def on_train_batch_begin(self, batch, logs=None):
        # Read at the first batch, after every `on_train_begin` (including a
        # `BackupAndRestore` restore) has run, whatever the callback order.
        if self._last_step is None:
            self._last_step = self._step()

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        due = step // self._delta - self._last_step // self._delta
        self._last_step = step
        if due <= 0:
            return
        if self._layers is None:
            self._layers = self.roaming_layers()
            if not self._layers:
                raise ValueError(
                    "MaximumRoaming found no roaming `TaskMask` layer in model "
                    f"'{self.model.name}'. Add TaskMask layers to the encoder "
                    "(TaskRouting layers have fixed masks)."
                )
        for _ in range(due):
            if self._finished():
                break
            for layer in self._layers:
                layer.roam(self.completion)
            self.updates += 1
            if self._finished():
                self.finished_step = step

    def _finished(self):
        return all(l.plan_finished(self.completion) for l in self._layers)

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

"""What every fit loop does around the train step: preparation and the step guard.

`MultiTaskModel.fit` and `keras_mtl.distribute.fit` both call `prepare` and
add `StepGuard` to their callbacks, so building, optimizer set-up and the
`nonfinite` policy are the same in both loops.
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_mtl.balancers.base import BalancerWarning


def first_batch_inputs(x):
    """The inputs of the first batch of `x` (dataset, array, dict of arrays)."""
    if isinstance(x, tf.data.Dataset):
        try:
            batch = next(iter(x.take(1)))
        except StopIteration:
            raise ValueError(
                "The training dataset is empty: it yielded no batch, so the "
                "model cannot be built or trained. Check the data pipeline "
                "(file patterns, filters, `take`/`skip`)."
            ) from None
        return batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(x, dict):
        return {k: v[:1] for k, v in x.items()}
    if x is not None and hasattr(x, "__getitem__"):
        if len(x) == 0:
            raise ValueError("The training inputs are empty (0 examples).")
        return x[:1]
    return None


def prepare(model, x=None, strategy=None):
    """Builds what the first train step must not create: model, auxiliaries, optimizers.

    Under the model's strategy: the model is built from one example of `x`
    (so it has a build config), auxiliary objectives (the discriminator)
    from the shared representation, and the network optimizers on every
    network variable, so that a task absent from every batch of this fit
    can still be trained by a later one.
    """
    strategy = strategy or model.distribute_strategy
    if not model.compiled:
        raise ValueError("`fit` needs a compiled model: call `model.compile` first.")
    with strategy.scope():
        unbuilt = not model.built or any(not a.layer.built for a in model.auxiliaries)
        if unbuilt:
            batch = first_batch_inputs(x)
            if batch is not None:
                model.build_from_batch(batch)
        if model.built:
            model.build_optimizers()
    return model


class StepGuard(keras.callbacks.Callback):
    """Reports what the transactional train step counted, after every batch.

    - a task excluded from a step for a non-finite loss or gradient
      (`model.nonfinite_counts`), and
    - a step skipped whole for a non-finite shared value (representation,
      gradient, batch statistics, balancer state; `model.skipped_steps`):
      with `compile(nonfinite="raise")` (default) training stops with a
      `FloatingPointError` that names the task or the shared value; with
      `"skip"` a `RuntimeWarning` is issued and training goes on.
    - balancer events (`Balancer.warnings()`, e.g. GradNorm flooring its
      weights) as `keras_mtl.balancers.BalancerWarning`.
    - under loss scaling (`mixed_float16`), overflow steps are the
      `LossScaleOptimizer`'s and are not reported; but a scale that falls
      below 1 means the gradients are not finite even unscaled (a
      non-finite gradient of a finite loss, which no scale fixes): that is
      reported once per fit like a skipped step (raise or warn).

    Nothing was applied from the offending values in any case: the step
    already excluded the task or skipped the update.
    """

    def on_train_begin(self, logs=None):
        self._scale_reported = False
        self._tasks = self.model.nonfinite_counts.numpy().copy()
        self._skipped = int(self.model.skipped_steps.numpy())
        self._events = [int(c.numpy()) for c, _ in self.model.balancer.warnings()]

    def _check_loss_scale(self, batch):
        optimizer = getattr(self.model, "optimizer", None)
        if self._scale_reported or not isinstance(
                optimizer, keras.optimizers.LossScaleOptimizer):
            return
        scale = float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))
        if scale >= 1.0:
            return
        self._scale_reported = True
        message = (
            f"The loss scale fell to {scale:g} at batch {batch}: the gradients "
            "overflowed float16 at every scale down to 1, so they are not finite "
            "even unscaled (a non-finite gradient of a finite loss, e.g. of a "
            "sqrt or log at 0, or values beyond float16's range); the overflow "
            "steps applied nothing.")
        if self.model.nonfinite == "raise":
            raise FloatingPointError(
                message + " Stopping (compile(nonfinite='skip') continues instead).")
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def on_train_batch_end(self, batch, logs=None):
        self._check_loss_scale(batch)
        for i, (counter, message) in enumerate(self.model.balancer.warnings()):
            value = int(counter.numpy())
            if value > self._events[i]:
                self._events[i] = value
                warnings.warn(message, BalancerWarning, stacklevel=2)
        counts = self.model.nonfinite_counts.numpy()
        skipped = int(self.model.skipped_steps.numpy())
        new_tasks = counts - self._tasks
        if not new_tasks.any() and skipped == self._skipped:
            return
        messages = []
        if new_tasks.any():
            tasks = [t for t, n in zip(self.model.task_names, new_tasks) if n > 0]
            messages.append(
                f"Non-finite loss or gradient for task(s) {tasks} at batch "
                f"{batch}: the task was excluded from that step (the other "
                "tasks updated as if it were absent).")
        if skipped > self._skipped:
            messages.append(
                f"Non-finite shared value (representation, gradient, batch "
                f"statistics or balancer state) at batch {batch}: the whole step "
                "was skipped (network, optimizer, balancer state and moving "
                "statistics unchanged).")
        self._tasks = np.array(counts, copy=True)
        self._skipped = skipped
        message = " ".join(messages)
        if self.model.nonfinite == "raise":
            raise FloatingPointError(
                message + " Stopping (compile(nonfinite='skip') continues instead)."
            )
        warnings.warn(message, RuntimeWarning, stacklevel=2)

"""The gradient-reversal strength schedule of adversarial task disentanglement."""

import math

import gin
import keras


def reversal_schedule(progress, gamma=10.0):
    """lambda(p) = 2 / (1 + exp(-gamma p)) - 1, for training progress p in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


@gin.configurable
class ReversalStrengthScheduler(keras.callbacks.Callback):
    """Ramps the discriminator's reversal strength lambda from 0 towards 1.

    Before every training batch sets lambda = max_strength * (2 / (1 +
    exp(-gamma p)) - 1), p = step / total_steps the training progress
    (clipped to [0, 1]; step = the optimizer's iteration counter, so a
    resumed run continues the schedule). lambda lives in a non-trainable variable of
    `GradientDiscriminator`, so the compiled train step sees the new value
    without retracing.

    Args:
        total_steps: number of training steps over which p goes from 0 to 1.
            `None` takes epochs * steps per epoch from `fit`. Defaults to `None`.
        gamma: steepness. Defaults to `10.0` (Ganin & Lempitsky).
        max_strength: the final lambda in [0, 1]. Defaults to `1.0`.
        discriminator: the `GradientDiscriminator`; `None` takes
            `model.discriminator`. Defaults to `None`.

    Example:

    >>> model.fit(ds, epochs=10, callbacks=[ReversalStrengthScheduler()])

    Reference:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by
        Backpropagation", ICML 2015 (the schedule); Maninis et al.,
        "Attentive Single-Tasking of Multiple Tasks", CVPR 2019 (its use).
    """

    def __init__(self, total_steps=None, gamma=10.0, max_strength=1.0,
                 discriminator=None):
        super().__init__()
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(
                "Invalid value received for argument `total_steps`. Expected a "
                f"positive integer or None. Received: total_steps={total_steps}"
            )
        if not 0.0 <= float(max_strength) <= 1.0:
            raise ValueError(
                "Invalid value received for argument `max_strength`. Expected a "
                f"float in [0, 1]. Received: max_strength={max_strength}"
            )
        self.total_steps = total_steps
        self.gamma = float(gamma)
        self.max_strength = float(max_strength)
        self.discriminator = discriminator

    def _target(self):
        disc = self.discriminator or getattr(self.model, "discriminator", None)
        if disc is None:
            raise ValueError(
                "ReversalStrengthScheduler needs a GradientDiscriminator: pass "
                "`discriminator=` or train a MultiTaskModel built with one. "
                "Received: discriminator=None"
            )
        return disc

    def on_train_begin(self, logs=None):
        self._total = self.total_steps
        if self._total is None:
            epochs = self.params.get("epochs") or 1
            steps = self.params.get("steps")
            if not steps:
                raise ValueError(
                    "ReversalStrengthScheduler cannot infer the number of "
                    "training steps (fit got no `steps_per_epoch` and the data "
                    "has no known length). Pass `total_steps=`."
                )
            self._total = int(epochs) * int(steps)

    def strength_at(self, step):
        """lambda at training step `step`."""
        p = min(max(step / float(self._total), 0.0), 1.0)
        return self.max_strength * reversal_schedule(p, self.gamma)

    def on_train_batch_begin(self, batch, logs=None):
        # The optimizer's step counter survives checkpoints and resumption.
        step = int(self.model.optimizer.iterations.numpy())
        self._target().set_reversal_strength(self.strength_at(step))

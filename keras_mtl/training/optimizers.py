"""Learning-rate groups: copies of the network optimizer for groups of variables.

Attentive single-tasking (Maninis et al. 2019, appendix D) trains the
task-specific part T times faster than the shared part and the
discriminator 10 times faster: `compile(learning_rate_multipliers=...)`
gives each such group a copy of the optimizer whose learning rate (or
schedule) is multiplied by the factor; the shared variables keep the
optimizer itself.

Under `mixed_float16` Keras wraps the network optimizer in a
`keras.optimizers.LossScaleOptimizer`; each group's copy is then a
`LossScaleOptimizer` around a scaled copy of the inner optimizer, so that
every group skips an overflow step by the same mechanism.
"""

import keras
import tensorflow as tf

from keras_mtl import _keras_compat

GROUPS = ("task_specific", "discriminator")
"""Groups that can take a multiplier (the shared variables use the optimizer's own rate)."""


@keras.saving.register_keras_serializable(package="keras_mtl")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule multiplied by a constant factor."""

    def __init__(self, schedule, factor):
        self.schedule = keras.optimizers.schedules.deserialize(schedule) if isinstance(
            schedule, dict) else schedule
        self.factor = float(factor)

    def __call__(self, step):
        return self.schedule(step) * self.factor

    def get_config(self):
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "factor": self.factor,
        }


def scaled_copy(optimizer, factor):
    """A fresh optimizer like `optimizer` with its learning rate times `factor`."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(
            scaled_copy(optimizer.inner_optimizer, factor),
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
            name=f"{optimizer.name}_x{factor:g}",
        )
    config = optimizer.get_config()
    lr = _keras_compat.optimizer_learning_rate(optimizer)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        config["learning_rate"] = ScaledSchedule(lr, factor)
    else:
        config["learning_rate"] = float(config["learning_rate"]) * factor
    config["name"] = f"{config.get('name', 'optimizer')}_x{factor:g}"
    return optimizer.__class__.from_config(config)


def check_multipliers(multipliers):
    """Validated `{group: factor}` without the factors equal to 1."""
    if not multipliers:
        return {}
    if not isinstance(multipliers, dict):
        raise ValueError(
            "`learning_rate_multipliers` must be a dict. Received: "
            f"{multipliers!r}"
        )
    unknown = sorted(set(multipliers) - set(GROUPS))
    if unknown:
        raise ValueError(
            f"Unknown learning-rate group(s) {unknown}. Expected keys among "
            f"{list(GROUPS)} (the shared variables use the optimizer's "
            "own learning rate)."
        )
    out = {}
    for group, factor in multipliers.items():
        factor = float(factor)
        if not factor > 0:
            raise ValueError(
                "Invalid value received for argument "
                f"`learning_rate_multipliers['{group}']`. Expected a float "
                f"> 0. Received: {factor}"
            )
        if factor != 1.0:
            out[group] = factor
    return out


def split_by_optimizer(model, variables):
    """`{optimizer: [variables]}`: each variable to its group's optimizer."""
    groups = model.variable_groups()
    out = {}
    for v in variables:
        opt = model.group_optimizers.get(groups.get(id(v)), model.optimizer)
        out.setdefault(id(opt), (opt, []))[1].append(v)
    return list(out.values())


def loss_scale(optimizer):
    """The current scale (float32 scalar) of a `LossScaleOptimizer`, else None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.scale_loss(tf.constant(1.0))
    return None


def loss_scaled(optimizer, grads, finite):
    """What `optimizer.apply` takes for the unscaled gradients `grads`.

    A `LossScaleOptimizer` divides the gradients by its scale and skips
    (halving the scale) when one is not finite: it gets `grads` times its
    own scale, or times NaN when `finite` (a bool scalar: the step is
    applied) is False, so that an overflow step takes its own overflow
    branch. Other optimizers get `grads` unchanged.
    """
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return grads
    factor = tf.where(finite, loss_scale(optimizer), tf.constant(float("nan")))
    return [g * tf.cast(factor, g.dtype) for g in grads]

"""Per-task losses of a `MultiTaskModel`: label checks, sample weights, finiteness."""

import tensorflow as tf

from keras_mtl import _keras_compat
from keras_mtl.training import compile as compile_utils


def check_labels(model, y):
    """`{task: y}` (a single-task model may take a bare y); unknown keys are errors."""
    if not isinstance(y, dict):
        if model.num_tasks == 1:
            return {model.task_names[0]: y}
        raise ValueError(
            "Labels must be a dict {task: y} for the tasks "
            f"{model.task_names}. Received labels of type {type(y).__name__}."
        )
    unknown = [k for k in y if k not in model.heads]
    if unknown:
        raise ValueError(
            f"Label key(s) {unknown} match no head. The model's tasks are "
            f"{model.task_names}."
        )
    return y


def task_sample_weight(model, sample_weight, task):
    """The sample weight of `task`: its entry of a dict, or the one given for all."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, dict):
        unknown = [k for k in sample_weight if k not in model.heads]
        if unknown:
            raise ValueError(
                f"sample_weight key(s) {unknown} match no head. The model's "
                f"tasks are {model.task_names}."
            )
        return sample_weight.get(task)
    return sample_weight


def task_losses(model, y, outputs, sample_weight=None):
    """Per-task losses, labelling and finiteness on this replica.

    Returns `(loss_list, labelled, finite)`: T scalar tensors (this
    replica's mean loss of each task, 0 where absent or not finite), a
    float32 (T,) vector of 1.0 / 0.0 marking the tasks labelled in the
    batch, and a bool (T,) vector, False where a labelled task's loss is
    not finite.
    """
    loss_list, labelled, finite = [], [], []
    for task in model.task_names:
        if task not in y or task not in outputs:
            loss_list.append(tf.constant(0.0))
            labelled.append(tf.constant(0.0))
            finite.append(tf.constant(True))
            continue
        y_true, y_pred = y[task], outputs[task]
        compile_utils.check_shapes(task, model.task_losses[task], y_true, y_pred)
        sw = task_sample_weight(model, sample_weight, task)
        value = model.task_losses[task](y_true, y_pred, sample_weight=sw)
        value = _keras_compat.unscale_loss_for_distribution(tf.cast(value, "float32"))
        is_finite = tf.math.is_finite(value)
        has = tf.constant(1.0)
        if sw is not None:
            has = tf.cast(tf.reduce_sum(tf.abs(tf.cast(sw, "float32"))) > 0, "float32")
        loss_list.append(tf.where(is_finite, value, tf.zeros_like(value)))
        labelled.append(has)
        finite.append(tf.logical_or(is_finite, has == 0.0))
    return loss_list, tf.stack(labelled), tf.stack(finite)

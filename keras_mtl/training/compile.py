"""What `MultiTaskModel.compile` resolves: per-task losses and metrics, label checks."""

import keras
import tensorflow as tf

from keras_mtl import _keras_compat
from keras_mtl import balancers as balancers_module
from keras_mtl.balancers import base as balancer_base


def loss_name(loss, task):
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    return name or f"{task}_loss_fn"


def resolve_losses(loss, task_names):
    """`{task: keras.losses.Loss}` from a dict naming every task, or one loss for all."""
    if loss is None:
        raise ValueError(
            "MultiTaskModel.compile needs `loss`: a dict {task: loss} for "
            f"the tasks {task_names}, or one loss for all."
        )
    if not isinstance(loss, dict):
        loss = {t: loss for t in task_names}
    unknown = [t for t in loss if t not in task_names]
    missing = [t for t in task_names if t not in loss]
    if unknown or missing:
        raise ValueError(
            f"The loss dict must name exactly the tasks {task_names}. "
            f"Unknown keys: {unknown}; tasks without a loss: {missing}."
        )
    resolved = {}
    for task in task_names:
        fn = keras.losses.get(loss[task])
        if not isinstance(fn, keras.losses.Loss):
            fn = _keras_compat.LossFunctionWrapper(fn, name=loss_name(fn, task))
        resolved[task] = fn
    return resolved


def _is_sparse(loss):
    return "sparse" in type(loss).__name__.lower() or "sparse" in (
        getattr(loss, "name", "") or "")


_ACCURACY_BY_LOSS = (
    ("sparse", keras.metrics.SparseCategoricalAccuracy),
    ("binary", keras.metrics.BinaryAccuracy),
    ("categorical", keras.metrics.CategoricalAccuracy),
)


def _accuracy_for(loss):
    """The accuracy `"accuracy"` means for this loss, as a Keras model resolves it."""
    text = (type(loss).__name__ + " " + (getattr(loss, "name", "") or "")).lower()
    for key, cls in _ACCURACY_BY_LOSS:
        if key in text:
            return cls(name="accuracy")
    return keras.metrics.Accuracy(name="accuracy")


def resolve_metrics(metrics, task_names, losses):
    """`({task: [Metric]}, {task: [display names]})` from `{task: [metrics]}`.

    `"accuracy"` / `"acc"` resolve from the task's loss like Keras does for
    its own models: sparse categorical for a sparse cross-entropy, binary
    for a binary one, categorical for a categorical one.
    """
    if metrics is None:
        return {}, {}
    if not isinstance(metrics, dict):
        raise ValueError(
            "`metrics` must be a dict {task: [metrics]}. "
            f"Received: metrics={metrics!r}"
        )
    unknown = [t for t in metrics if t not in task_names]
    if unknown:
        raise ValueError(
            f"`metrics` names unknown task(s) {unknown}. The model's tasks "
            f"are {task_names}."
        )
    resolved, names = {}, {}
    for task, ms in metrics.items():
        ms = ms if isinstance(ms, (list, tuple)) else [ms]
        out, out_names = [], []
        for m in ms:
            if isinstance(m, keras.metrics.Metric):
                m = m.__class__.from_config(m.get_config())
                display = m.name
            elif m in ("accuracy", "acc"):
                m = _accuracy_for(losses[task])
                display = "accuracy"
            else:
                display = m if isinstance(m, str) else loss_name(m, task)
                fn = keras.metrics.get(m)
                m = fn if isinstance(fn, keras.metrics.Metric) else (
                    keras.metrics.MeanMetricWrapper(fn, name=display))
            out.append(m)
            out_names.append(display)
        resolved[task] = out
        names[task] = out_names
    return resolved, names


def check_shapes(task, loss, y_true, y_pred):
    """A clear error when a head's output cannot fit its labels under its loss."""
    # NumPy labels (eager `train_on_batch`) have tuple shapes.
    true_shape, pred_shape = tf.TensorShape(y_true.shape), tf.TensorShape(y_pred.shape)
    if true_shape.rank is None or pred_shape.rank is None:
        return
    yt, yp = tuple(true_shape), tuple(pred_shape)
    if len(yt) == 0 or len(yp) == 0:
        return
    sparse = _is_sparse(loss)
    if sparse:
        ok = len(yt) == len(yp) - 1 or (len(yt) == len(yp) and yt[-1] == 1)
        ok = ok and all(
            a is None or b is None or a == b for a, b in zip(yt[1:], yp[1:-1])
        )
    else:
        ok = len(yt) == len(yp) and all(
            a is None or b is None or a == b for a, b in zip(yt[1:], yp[1:])
        )
    if not ok:
        raise ValueError(
            f"Task '{task}': the head's output shape {yp} does not fit the "
            f"labels of shape {yt} for loss '{loss_name(loss, task)}'"
            + (" (sparse labels must have the output's shape without its "
               "last axis)" if sparse else " (they must match, batch aside)")
            + "."
        )


def resolve_balancer(model, balancer):
    """The built balancer for `model`; clear errors for combinations without meaning."""
    bal = balancers_module.get(balancer)
    if not bal.built:
        bal.build(model.task_names)
    elif bal.task_names != model.task_names:
        raise ValueError(
            f"The balancer was built for tasks {bal.task_names}, but the "
            f"model's tasks are {model.task_names}."
        )
    if model.auxiliaries and bal.requires in (
        balancer_base.FEATURE_GRADS,
        balancer_base.SHARED_GRADS,
    ):
        raise ValueError(
            "The gradient discriminator combines with loss-weighting "
            f"balancers only. Received: balancer={bal!r} "
            f"(requires={bal.requires!r})."
        )
    if model.task_outputs and bal.requires == balancer_base.FEATURE_GRADS:
        raise ValueError(
            f"{type(bal).__name__} uses feature-level gradients at a shared "
            f"representation, but encoder '{model.encoder.name}' returns one "
            "output per task (its task paths split inside it, so there is no "
            "single z shared by every task). Use the balancer's "
            "parameter-level mode (mode='shared') or a loss-based balancer."
        )
    if model.task_conditioned and bal.requires == balancer_base.FEATURE_GRADS:
        raise ValueError(
            f"{type(bal).__name__} uses feature-level gradients at a shared "
            "representation, but this encoder is task-conditioned (each "
            "task has its own pass, so there is no shared z). Use the "
            "balancer's parameter-level mode (mode='shared')."
        )
    return bal

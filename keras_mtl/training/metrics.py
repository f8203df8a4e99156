"""The metrics a `MultiTaskModel` step reports: loss, per-task losses and weights, task metrics."""

import tensorflow as tf

from keras_mtl.training import losses as losses_module
from keras_mtl.training import replicas


def update_trackers(model, total, losses, present, ok):
    """`loss`, `<task>_loss` (present tasks) and `<task>_weight` trackers."""
    ok = tf.cast(ok, "float32")
    model.loss_tracker.update_state(
        tf.where(ok > 0, replicas.mean(tf.convert_to_tensor(total)), 0.0), sample_weight=ok)
    weights = tf.convert_to_tensor(model.balancer.task_weights())
    for t in range(model.num_tasks):
        model.task_loss_trackers[t].update_state(losses[t], sample_weight=present[t] * ok)
        model.task_weight_trackers[t].update_state(weights[t])


def update_task_metrics(model, y, outputs, sample_weight, present):
    """Each present task's compiled metrics."""
    for t, task in enumerate(model.task_names):
        metrics = model.task_metrics.get(task)
        if not metrics or task not in y or task not in outputs:
            continue
        sw = losses_module.task_sample_weight(model, sample_weight, task)

        def update(task=task, sw=sw, metrics=metrics):
            for m in metrics:
                m.update_state(y[task], outputs[task], sample_weight=sw)
            return tf.constant(True)

        # A task left out for non-finite values must not poison its metrics.
        tf.cond(present[t] > 0, update, lambda: tf.constant(False))


def update_after_step(model, step, y, sample_weight, ok):
    """Trackers and task metrics after a train step (`ok`: it was applied)."""
    update_trackers(model, step.total(), step.losses, step.present, ok)
    update_task_metrics(model, y, step.outputs, sample_weight,
                        step.present * tf.cast(ok, "float32"))
    for aux, values in zip(model.auxiliaries, step.aux_values):
        aux.update_metrics(values, tf.cast(ok, "float32"))


def logs(model, training=True):
    """The step's logs; auxiliary objectives' metrics only while training."""
    out = {"loss": model.loss_tracker.result()}
    for t, task in enumerate(model.task_names):
        out[f"{task}_loss"] = model.task_loss_trackers[t].result()
        out[f"{task}_weight"] = model.task_weight_trackers[t].result()
        names = model.metric_names.get(task, [])
        for m, name in zip(model.task_metrics.get(task, []), names):
            result = m.result()
            if isinstance(result, dict):
                for k, v in result.items():
                    out[f"{task}_{k}"] = v
            else:
                out[f"{task}_{name}"] = result
    if training:
        for aux in model.auxiliaries:
            for m in aux.metrics:
                out[m.name] = m.result()
    return out

"""One gradient function per balancer requirement, with one signature.

Each function takes the model and the step's `StepState` after the forward
pass and the per-task head passes (`step.task_gradients`), finalises which
tasks take part (`step.finalize`), and returns the gradients of the shared
(encoder) variables, aligned with `model.shared_variables()`. The heads'
gradients, regulariser and auxiliary gradients are added by the step
(`keras_mtl.training.step`), the same for every requirement.

- `LOSSES`: the shared direction at z is `sum_t c_t dL_t/dz` with
  `c_t = d combine / d L_t`; one backward pass through the trunk.
- `LAYER_GRAD_NORMS` (GradNorm): the same, plus ||dL_t/dW|| at the
  balancer's kernel W from the pass z -> W of each task's dL_t/dz.
- `FEATURE_GRADS`: G holds dL_t/dz (every replica's columns side by side),
  the balancer aggregates it, one trunk pass of the result.
- `SHARED_GRADS`: G holds each task's gradient w.r.t. every shared
  parameter (one trunk pass per task), the balancer aggregates it.
"""

import numpy as np
import tensorflow as tf

from keras_mtl.balancers import base as balancer_base
from keras_mtl.training import replicas


def _flat(grad, var):
    if grad is None:
        return tf.zeros([int(np.prod(var.shape))], dtype="float32")
    if isinstance(grad, tf.IndexedSlices):
        grad = tf.convert_to_tensor(grad)
    return tf.reshape(tf.cast(grad, "float32"), [-1])


def _trunk(model, step, output_gradients):
    """Gradients of the shared variables for the given gradients at z."""
    shared = model.shared_variables()
    if output_gradients is None:
        return [None] * len(shared)
    return step.tape.gradient(step.zs, shared, output_gradients=output_gradients)


def _weighted_sum(model, step):
    """sum_t c_t dL_t/dz over the present tasks (None if no task is present)."""
    direction = None
    for t in step.indices:
        term = [step.coefficients[t] * g for g in step.task_gradients[t]]
        direction = term if direction is None else [a + b for a, b in zip(direction, term)]
    return direction


def loss_gradients(model, step):
    step.finalize(model)
    direction = _weighted_sum(model, step)
    if direction is not None:
        direction = [d / replicas.num_replicas() for d in direction]
    return _trunk(model, step, direction)


def layer_grad_norm_gradients(model, step):
    kernel = model.balancer.find_kernel(model.encoder)
    norms = []
    for t in range(model.num_tasks):
        if step.task_gradients[t] is None:
            norms.append(tf.constant(0.0))
            continue
        g_w = step.tape.gradient(step.zs, kernel, output_gradients=step.task_gradients[t])
        g_w = replicas.mean(tf.convert_to_tensor(g_w))
        norms.append(tf.norm(tf.reshape(tf.cast(g_w, "float32"), [-1])))
    norms = tf.stack(norms)
    step.finalize(model, task_ok=tf.math.is_finite(norms))
    norms = tf.where(step.present > 0, norms, tf.zeros_like(norms))
    step.check_finite(norms)
    model.balancer.record_grad_norms(norms)
    return loss_gradients(model, step)


def feature_gradients(model, step):
    step.finalize(model)
    size = sum(int(np.prod(z.shape[1:])) for z in step.zs)
    rows = []
    for t in range(model.num_tasks):
        g = step.task_gradients[t]
        if g is None:
            rows.append(tf.zeros([step.batch_size * size]))
        else:
            rows.append(tf.concat([tf.reshape(tf.cast(p, "float32"), [-1]) for p in g], 0))
    # Each replica holds dL_t/dz for its own examples only: the global
    # matrix is every replica's columns side by side (scaled by 1/R, as L_t
    # is the mean of the replicas' means), so the balancer sees the same G
    # on every replica and on one device.
    matrix = tf.stack(rows) / replicas.num_replicas()
    matrix, offset = replicas.gather_columns(matrix)
    direction = model.balancer.aggregate(matrix, step.losses, step.present)
    step.check_finite(direction)
    local = tf.slice(direction, [offset], [tf.size(rows[0])])
    parts, start = [], 0
    for z in step.zs:
        n = tf.size(z)
        parts.append(tf.reshape(tf.slice(local, [start], [n]), tf.shape(z)))
        start += n
    return _trunk(model, step, parts)


def shared_gradients(model, step):
    shared = model.shared_variables()
    sizes = [int(np.prod(v.shape)) for v in shared]  # static: tf.size is symbolic on replicas
    rows = []
    for t in range(model.num_tasks):
        g = step.task_gradients[t]
        if g is None:
            rows.append(tf.zeros([sum(sizes)]))
            continue
        grads = _trunk(model, step, g)
        rows.append(tf.concat([_flat(gv, v) for gv, v in zip(grads, shared)], 0))
    matrix = replicas.mean(tf.stack(rows))
    step.finalize(model, task_ok=tf.reduce_all(tf.math.is_finite(matrix), axis=1))
    matrix = tf.where(step.present[:, None] > 0, matrix, tf.zeros_like(matrix))
    direction = model.balancer.aggregate(matrix, step.losses, step.present)
    direction = direction / replicas.num_replicas()
    step.check_finite(direction)
    out, start = [], 0
    for v, n in zip(shared, sizes):
        out.append(tf.reshape(direction[start:start + n], v.shape))
        start += n
    return out


REQUIREMENTS = {
    balancer_base.LOSSES: loss_gradients,
    balancer_base.LAYER_GRAD_NORMS: layer_grad_norm_gradients,
    balancer_base.FEATURE_GRADS: feature_gradients,
    balancer_base.SHARED_GRADS: shared_gradients,
}


def for_requirement(requires):
    try:
        return REQUIREMENTS[requires]
    except KeyError:
        raise ValueError(
            f"Unknown balancer requirement {requires!r}. Expected one of "
            f"{sorted(REQUIREMENTS)}."
        ) from None

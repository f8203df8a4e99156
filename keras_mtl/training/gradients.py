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
  balancer's kernel W from the passes z -> W of the tasks' dL_t/dz (one
  pass per task, or one vectorised pass on an accelerator, see
  `jacobian_plan`).
- `FEATURE_GRADS`: G holds dL_t/dz (every replica's columns side by side),
  the balancer aggregates it, one trunk pass of the result.
- `SHARED_GRADS`: G holds each task's gradient w.r.t. every shared
  parameter (the (T, P) Jacobian: one trunk pass per task, or on an
  accelerator one vectorised pass for all tasks within a memory budget,
  see `jacobian_plan`), the balancer aggregates it.
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
    return step.trunk_gradients(shared, output_gradients)


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


def _kernel_norms_loop(step, kernel, tasks):
    norms = []
    for t in tasks:
        g_w = step.trunk_gradients(kernel, step.task_gradients[t])
        g_w = replicas.mean(tf.convert_to_tensor(g_w))
        norms.append(tf.norm(tf.reshape(tf.cast(g_w, "float32"), [-1])))
    return tf.stack(norms)


def _kernel_norms_vectorized(step, kernel, tasks):
    stacked = _stacked_task_gradients(step, tasks)

    def kernel_gradient(gs):
        g_w = step.trunk_gradients(kernel, list(gs), check=False,
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.cast(tf.convert_to_tensor(g_w), "float32")

    g_w = tf.vectorized_map(kernel_gradient, stacked)
    if getattr(step, "loss_scale", None) is not None:
        step.check_overflow(g_w, _all_finite_list(stacked))
    g_w = replicas.mean(g_w)
    return tf.norm(tf.reshape(g_w, [len(tasks), -1]), axis=1)


def layer_grad_norm_gradients(model, step):
    """GradNorm: ||dL_t/dW|| at the balancer's kernel W, then one trunk pass.

    The T passes z -> W run one per task, or as one vectorised pass on an
    accelerator (`jacobian_plan` with P = |W|).
    """
    kernel = model.balancer.find_kernel(model.encoder)
    tasks = [t for t in range(model.num_tasks) if step.task_gradients[t] is not None]
    norms = tf.zeros([model.num_tasks])
    if tasks:
        plan = _plan(step, len(tasks), int(np.prod(kernel.shape)), 1)
        compute = _kernel_norms_vectorized if plan == "vectorized" else _kernel_norms_loop
        present = compute(step, kernel, tasks)
        norms = tf.scatter_nd([[t] for t in tasks], present, [model.num_tasks])
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


# Memory budget of the vectorised (one-pass) per-task gradients, in bytes;
# see `jacobian_plan`. A module attribute: set it to 0 to always loop.
VECTORIZE_MEMORY_BYTES = 256 * 2**20

# Whether the vectorised pass is used when no GPU/TPU is visible. Off: on
# CPU it measured no faster than the loop for the shared Jacobian (IMTL-G
# shared, T=10: 3.10x vs 3.08x of equal weights) and slower for GradNorm's
# kernel norms (toy T=10 / T=40: 1.34x / 1.31x vs 1.21x / 1.24x), while
# holding every task's backward intermediates at once. A module attribute.
VECTORIZE_ON_CPU = False


def has_accelerator():
    """Whether TensorFlow sees a GPU or TPU (where ops are placed by default)."""
    return bool(tf.config.list_logical_devices("GPU")
                or tf.config.list_logical_devices("TPU"))


def jacobian_plan(num_tasks, num_params, batch_size, activation_size,
                  memory_bytes=None, accelerator=None):
    """How per-task trunk gradients are computed: `"vectorized"` or `"loop"`.

    `shared_gradients` needs the (T, P) Jacobian of the shared parameters,
    GradNorm the T gradients at one kernel (P = |W|). The vectorised path
    back-propagates the T stacked output gradients at z through the trunk
    in one pass (`tf.vectorized_map` over `tape.gradient(zs, sources,
    output_gradients=g_t)`: pfor runs each gradient op once with a leading
    task axis, e.g. one (in, B) x (B, T*out) matmul per Dense kernel instead
    of T). The loop runs T passes. Both hold the (T, P) result; the
    vectorised pass also materialises every backward intermediate for all
    T tasks at once: about `4 bytes x T x (P + B x A)`, with A the per-example
    size of the trunk's activations (estimated as |z| x the number of trunk
    kernels), where the loop holds one task's intermediates at a time.

    Rule: `"vectorized"` on an accelerator (`accelerator`, default: whether
    TensorFlow sees a GPU or TPU; or anywhere when `VECTORIZE_ON_CPU`) when
    `4 x T x (P + B x A) <= VECTORIZE_MEMORY_BYTES` (256 MiB by default),
    else `"loop"`. On CPU the loop is as fast or faster (the work is the
    same arithmetic; see `VECTORIZE_ON_CPU`); on an accelerator one batched
    pass replaces T kernel launches per op (not measured here: no GPU was
    available). An unknown batch size counts as 256. Both paths give the
    same numbers (the same gradient ops, batched;
    tests/test_vectorized_gradients.py: equal to 1e-6).
    """
    if accelerator is None:
        accelerator = has_accelerator()
    if not (accelerator or VECTORIZE_ON_CPU):
        return "loop"
    budget = VECTORIZE_MEMORY_BYTES if memory_bytes is None else memory_bytes
    need = 4 * num_tasks * (num_params + batch_size * activation_size)
    return "vectorized" if need <= budget else "loop"


def _plan(step, num_tasks, num_params, depth):
    batch = step.zs[0].shape[0]
    batch = int(batch) if batch is not None else 256
    feature = sum(int(np.prod(z.shape[1:])) for z in step.zs)
    return jacobian_plan(num_tasks, num_params, batch, feature * max(1, depth))


def _all_finite_list(tensors):
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(t)) for t in tensors]))


def _stacked_task_gradients(step, tasks):
    """[(n, *z.shape)] for each tensor of z: the given tasks' dL_t/dz stacked."""
    return [tf.stack([step.task_gradients[t][i] for t in tasks])
            for i in range(len(step.zs))]


def _jacobian_rows(model, step, shared, sizes, tasks):
    """(len(tasks), P) per-task gradients of the shared variables in one pass."""
    stacked = _stacked_task_gradients(step, tasks)

    def row(gs):
        grads = step.trunk_gradients(shared, list(gs), check=False,
                                     unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.concat([_flat(gv, v) for gv, v in zip(grads, shared)], 0)

    rows = tf.vectorized_map(row, stacked)
    if getattr(step, "loss_scale", None) is not None:
        step.check_overflow(rows, _all_finite_list(stacked))
    return rows


def _jacobian_loop(model, step, shared, sizes, tasks):
    """(len(tasks), P) per-task gradients of the shared variables, one pass per task."""
    rows = []
    for t in tasks:
        grads = _trunk(model, step, step.task_gradients[t])
        rows.append(tf.concat([_flat(gv, v) for gv, v in zip(grads, shared)], 0))
    return tf.stack(rows)


def shared_jacobian(model, step, plan=None):
    """(T, P) float32: dL_t/d(shared variables) on this replica (zero rows for tasks not run).

    `plan`: `"vectorized"`, `"loop"` or None (automatic, `jacobian_plan`).
    """
    shared = model.shared_variables()
    sizes = [int(np.prod(v.shape)) for v in shared]  # static: tf.size is symbolic on replicas
    tasks = [t for t in range(model.num_tasks) if step.task_gradients[t] is not None]
    if not tasks:
        return tf.zeros([model.num_tasks, sum(sizes)])
    if plan is None:
        depth = sum(1 for v in shared if len(v.shape) >= 2)
        plan = _plan(step, len(tasks), sum(sizes), depth)
    compute = _jacobian_rows if plan == "vectorized" else _jacobian_loop
    rows = compute(model, step, shared, sizes, tasks)
    if len(tasks) == model.num_tasks:
        return rows
    return tf.scatter_nd([[t] for t in tasks], rows, [model.num_tasks, sum(sizes)])


def shared_gradients(model, step):
    shared = model.shared_variables()
    sizes = [int(np.prod(v.shape)) for v in shared]  # static: tf.size is symbolic on replicas
    matrix = replicas.mean(shared_jacobian(model, step))
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

"""The multi-task train step: forward, gradients by requirement, transactional commit.

`train_step(model, data)` is what `MultiTaskModel.train_step` runs:

1. `forward`: one gradient tape over the encoder, the heads (inside an inner
   tape when an auxiliary objective reads dL_t/dz), the per-task losses,
   the auxiliary losses and the regularisers.
2. `StepState.task_gradients`: one backward pass of each labelled head gives
   its head's gradient and g_t = dL_t/dz. A task whose loss or gradient is
   not finite is excluded here; the others update exactly as if it were
   absent.
3. The balancer's requirement (`keras_mtl.training.gradients`) turns them
   into the shared variables' gradients.
4. `commit`: the balancer's update, then the network's, then the checks:
   if any shared value (representation, gradient, batch statistics, new
   balancer state) is not finite, nothing changes: network, optimizer
   slots, balancer state and moving statistics stay as they were, and the
   step is counted in `model.skipped_steps`.
"""

import contextlib

import keras
import tensorflow as tf

from keras_mtl import _keras_compat
from keras_mtl.training import gradients as gradients_module
from keras_mtl.training import metrics as metrics_module
from keras_mtl.training import replicas


def _all_finite(tensors):
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
              if t is not None and t.dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _snapshot(variables):
    return [(v, tf.identity(v)) for v in variables]


def _restore_unless(ok, snapshot):
    for v, old in snapshot:
        v.assign(tf.where(ok, tf.convert_to_tensor(v), old))


class StepState:
    """What one train step computed so far.

    Attributes set by `forward`: `tape`, `z` (the encoder's output), `zs` (its
    flat list of tensors), `task_ids` (folded task index per row, or None),
    `indices` (the tasks run this step), `outputs`, `loss_list` (T scalar
    tensors, this replica's mean losses, 0 where absent or not finite),
    `labelled` (T,) and `loss_finite` (T,) of this replica, `aux_values`
    (one dict per auxiliary objective) and `extra_loss` (regularisers and
    weighted auxiliary losses, or None).

    Set by `compute_task_gradients`: `task_gradients[t]` (dL_t/dz as a list
    like `zs`, or None for a task not run) and `head_gradients[t]`.

    Set by `finalize`: `present` (T,) float, the tasks that take part
    (labelled on some replica, every value finite on all replicas),
    `losses` (T,) replica means, `coefficients` (T,) = d combine / d L_t
    (times the auxiliary scale), `learned_gradients` and `total`.
    """

    def __init__(self, model, tape, z, task_ids, indices, outputs, loss_list,
                 labelled, loss_finite):
        self.tape = tape
        self.z = z
        self.zs = tf.nest.flatten(z)
        self.task_ids = task_ids
        self.indices = indices
        self.outputs = outputs
        self.loss_list = loss_list
        self.labelled = labelled
        self.loss_finite = loss_finite
        self.batch_size = tf.shape(self.zs[0])[0]
        self.num_tasks = model.num_tasks
        self.aux_values = []
        self.extra_loss = None
        self.task_gradients = [None] * model.num_tasks
        self.head_gradients = [None] * model.num_tasks
        self.task_ok = tf.ones([model.num_tasks], dtype="bool")
        self.finite_checks = [_all_finite(self.zs)]
        self.present = None

    # --- per-task gradients -------------------------------------------------
    def compute_task_gradients(self, model):
        """One backward pass of each run task's head: its head's grads and dL_t/dz."""
        ok = []
        for t, task in enumerate(model.task_names):
            if t not in self.indices:
                ok.append(tf.constant(True))
                continue
            head_vars = model.heads[task].trainable_variables
            grads = self.tape.gradient(self.loss_list[t], self.zs + head_vars)
            g = [tf.zeros_like(z) if gz is None else gz
                 for gz, z in zip(grads[:len(self.zs)], self.zs)]
            self.task_gradients[t] = g
            self.head_gradients[t] = list(zip(head_vars, grads[len(self.zs):]))
            ok.append(_all_finite(g + [gh for _, gh in self.head_gradients[t]]))
        self.task_ok = tf.stack(ok)

    # --- which tasks take part ----------------------------------------------
    def finalize(self, model, task_ok=None):
        """Fixes `present`, `losses` and the combine coefficients (idempotent).

        `task_ok` (T,) bool adds a requirement's own per-task checks (e.g.
        finite gradient norms); it must be given before the first call
        that reads the coefficients.
        """
        if task_ok is not None:
            self.task_ok = tf.logical_and(self.task_ok, task_ok)
        elif self.present is not None:
            return
        labelled = replicas.any_true(self.labelled > 0)
        bad = replicas.any_true(tf.logical_not(tf.logical_and(self.loss_finite, self.task_ok)))
        self.excluded = tf.logical_and(labelled, bad)
        keep = tf.logical_and(labelled, tf.logical_not(bad))
        self.present = tf.cast(keep, "float32")
        losses = replicas.mean(tf.stack(self.loss_list))
        self.losses = tf.where(keep, losses, tf.zeros_like(losses))
        for t in range(self.num_tasks):
            if self.task_gradients[t] is not None:
                self.task_gradients[t] = [tf.where(keep[t], g, tf.zeros_like(g))
                                          for g in self.task_gradients[t]]
        self._combine(model)

    def _combine(self, model):
        """d combine / d L_t and d combine / d (learned variables), at the global losses."""
        bal = model.balancer
        learned = [v.value for v in bal.learned_variables]
        with tf.GradientTape() as tape:
            tape.watch(self.losses)
            tape.watch(learned)
            combined = model.task_objective_scale() * bal.combine(self.losses, self.present)
        grads = tape.gradient(combined, [self.losses] + learned)
        coefficients = grads[0]
        if coefficients is None:
            coefficients = tf.zeros([self.num_tasks])
        self.coefficients = coefficients
        self.learned_gradients = [tf.zeros_like(w) if g is None else g
                                  for g, w in zip(grads[1:], learned)]
        self.combined = combined
        self.check_finite(self.coefficients, *self.learned_gradients)

    def check_finite(self, *tensors):
        """Adds shared values whose non-finiteness skips the whole step."""
        self.finite_checks.append(_all_finite(list(tensors)))

    # --- the network's gradients ----------------------------------------------
    def network_gradients(self, model, shared_grads):
        """Merges shared, head and extra gradients by variable: (grads, variables)."""
        variables = model.network_variables(absent_tasks=[
            task for t, task in enumerate(model.task_names) if t not in self.indices])
        by_id = {}

        def add(var, grad):
            if grad is None:
                return
            if isinstance(grad, tf.IndexedSlices):
                grad = tf.convert_to_tensor(grad)
            by_id[id(var)] = grad if id(var) not in by_id else by_id[id(var)] + grad

        for var, grad in zip(model.shared_variables(), shared_grads):
            add(var, grad)
        scale = 1.0 / replicas.num_replicas()
        for t in self.indices:
            keep = self.present[t] > 0
            c = self.coefficients[t] * scale
            for var, grad in self.head_gradients[t]:
                if grad is not None:
                    grad = tf.convert_to_tensor(grad)
                    add(var, tf.where(keep, grad * tf.cast(c, grad.dtype), tf.zeros_like(grad)))
        if self.extra_loss is not None:
            extra = _keras_compat.scale_loss_for_distribution(self.extra_loss)
            for var, grad in zip(variables, self.tape.gradient(extra, variables)):
                add(var, grad)
        pairs = [(by_id[id(v)], v) for v in variables if id(v) in by_id]
        grads = [g for g, _ in pairs]
        self.check_finite(*grads)
        return grads, [v for _, v in pairs]

    def total(self):
        """The step's loss as reported: balanced tasks + auxiliaries + regularisers."""
        total = self.combined
        if self.extra_loss is not None:
            total = total + replicas.mean(self.extra_loss)
        return total


def forward(model, x, y, sample_weight):
    """The forward pass under the step's tape; returns the `StepState`."""
    active = [t for t in model.task_names if t in y]
    needs_inner = any(a.needs_feature_gradients for a in model.auxiliaries)
    with tf.GradientTape(persistent=True) as tape:
        z, task_ids, indices = model.encode(x, training=True, tasks=active or None)
        inner_tape = (tf.GradientTape(persistent=True) if needs_inner
                      else contextlib.nullcontext())
        with inner_tape as inner:
            if inner is not None:
                inner.watch(z)
            outputs = model.decode(z, indices, training=True)
            loss_list, labelled, loss_finite = model.compute_task_losses(
                y, outputs, sample_weight)
        step = StepState(model, tape, z, task_ids, indices, outputs, loss_list,
                         labelled, loss_finite)
        extras = [tf.cast(l, "float32") for l in model.losses]
        for aux in model.auxiliaries:
            values = aux.loss(step, inner)
            step.aux_values.append(values)
            extras.append(aux.weight * values["loss"])
        if extras:
            step.extra_loss = tf.add_n(extras)
    return step


def commit(model, step, grads, variables, forward_state, balancer_state):
    """Applies the step if every shared value is finite; otherwise changes nothing."""
    bal = model.balancer
    ok = tf.logical_not(replicas.any_true(
        tf.logical_not(tf.reduce_all(tf.stack(step.finite_checks)))))
    if bal.learned_variables:
        bal.apply_learned_gradients(step.learned_gradients)
    bal.update(step.losses, step.present)
    state_ok = _all_finite([tf.convert_to_tensor(v) for v in bal.state_variables()])
    ok = tf.logical_and(ok, tf.logical_not(replicas.any_true(tf.logical_not(state_ok))))
    _restore_unless(ok, balancer_state)
    replicas.run_if(ok, model.apply_network_gradients_to(variables), (grads,))
    _restore_unless(ok, forward_state)
    # A skipped step is reported as such, not as exclusions of its tasks.
    model.nonfinite_counts.assign_add(tf.cast(tf.logical_and(step.excluded, ok), "int64"))
    model.skipped_steps.assign_add(tf.cast(tf.logical_not(ok), "int64"))
    return ok


def train_step(model, data):
    """One transactional multi-task step (see the module docstring)."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y = model.check_labels(y)
    forward_state = _snapshot(model.forward_state_variables())
    balancer_state = _snapshot(model.balancer.state_variables())
    step = forward(model, x, y, sample_weight)
    step.check_finite(*[tf.convert_to_tensor(v) for v, _ in forward_state])
    step.compute_task_gradients(model)
    shared = gradients_module.for_requirement(model.balancer.requires)(model, step)
    grads, variables = step.network_gradients(model, shared)
    # Built here at the latest (at trace time, once the forward pass has
    # built every layer), not inside the conditional update.
    model.build_optimizers()
    ok = commit(model, step, grads, variables, forward_state, balancer_state)
    metrics_module.update_after_step(model, step, y, sample_weight, ok)
    return metrics_module.logs(model)


def test_step(model, data):
    """Evaluation: per-task losses, the balancer's combination, task metrics."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y = model.check_labels(y)
    active = [t for t in model.task_names if t in y] or None
    outputs = model(x, training=False, tasks=active)
    loss_list, labelled, finite = model.compute_task_losses(y, outputs, sample_weight)
    losses = replicas.mean(tf.stack(loss_list))
    keep = tf.logical_and(replicas.any_true(labelled > 0),
                          tf.logical_not(replicas.any_true(tf.logical_not(finite))))
    present = tf.cast(keep, "float32")
    total = model.balancer.combine(losses, present)
    metrics_module.update_trackers(model, total, losses, present, tf.constant(True))
    metrics_module.update_task_metrics(model, y, outputs, sample_weight, present)
    return metrics_module.logs(model, training=False)

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

Mixed precision. Under `mixed_float16` / `mixed_bfloat16` the encoder and
heads compute in float16 / bfloat16 (z and the backward passes through the
network too); everything the engine and the balancer read is float32: the
per-task losses, `task_gradients` (dL_t/dz, cast up), head gradients, the
gradient matrices, Gramians and norms (the ops widen further to float64),
the coefficients and the balancer's state. Under `mixed_float16` Keras's
`Model.compile` wraps the network optimizer in a
`keras.optimizers.LossScaleOptimizer` (the learning-rate groups' copies are
wrapped too); the balancer's own optimizer never is. Every backward pass
through the network then runs on the losses times the loss scale s (its
output gradients are multiplied by s and cast to the network's dtype) and
its results are divided by s right away (`StepState.scaled_gradient`), so
the engine and the balancer only ever see unscaled float32 gradients; the
network's gradients are handed back to the `LossScaleOptimizer` times its
scale, which it divides out again (exact: s is a power of two).

Overflow and the transactional step, under loss scaling: a non-finite
gradient of a task whose loss is finite (a raw backward pass of the step,
in `overflow_checks`) is a loss-scale overflow, not bad data. Such a step
is an overflow step when the forward values (representation, batch
statistics) are finite: nothing is applied and everything is restored as
for a skipped step, but the `LossScaleOptimizer` is called with non-finite
gradients so that its own mechanism halves the scale, and the step is
counted neither in `skipped_steps` nor in `nonfinite_counts` (so
`nonfinite="raise"` does not stop training; the next batch runs at half
the scale). A non-finite loss still excludes its task, a non-finite
representation or batch statistic still skips the step as bad data (the
scale is left alone), and a non-finite value that appears downstream of
finite gradients (a balancer's direction, its state) still skips the step
and is counted. Without a `LossScaleOptimizer` (float32, `mixed_bfloat16`)
nothing of this applies: a non-finite gradient excludes its task as in
float32.
"""

import contextlib

import keras
import tensorflow as tf

from keras_mtl import _keras_compat
from keras_mtl.training import gradients as gradients_module
from keras_mtl.training import metrics as metrics_module
from keras_mtl.training import optimizers as optimizers_module
from keras_mtl.training import replicas


def _all_finite(tensors):
    tensors = [t.values if isinstance(t, tf.IndexedSlices) else t for t in tensors]
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors
              if t is not None and t.dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _snapshot(variables):
    return [(v, tf.identity(v)) for v in variables]


def _restore_unless(ok, snapshot):
    """Assigns the snapshot's values back when `ok` is False (on every replica).

    A conditional assignment: a committed step costs no pass over the state
    (per-parameter balancer state is T x P floats).
    """
    if not snapshot:
        return

    def restore(old_values):
        for (v, _), old in zip(snapshot, old_values):
            v.assign(old)

    replicas.run_if(tf.logical_not(ok), restore, ([old for _, old in snapshot],))


_LOW_PRECISION = ("float16", "bfloat16")


def _engine_dtype(dtype):
    """The dtype the engine keeps a gradient in: float32 for float16/bfloat16."""
    return tf.float32 if tf.as_dtype(dtype).name in _LOW_PRECISION else tf.as_dtype(dtype)


def _widen(grad):
    if grad is None or not grad.dtype.is_floating or grad.dtype.name not in _LOW_PRECISION:
        return grad
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(tf.cast(grad.values, "float32"), grad.indices, grad.dense_shape)
    return tf.cast(grad, "float32")


def _times(grad, factor):
    if grad is None or factor is None:
        return grad
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * tf.cast(factor, grad.values.dtype),
                                grad.indices, grad.dense_shape)
    return grad * tf.cast(factor, grad.dtype)


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

    `loss_scale` is the `LossScaleOptimizer`'s current scale (a float32
    scalar) or None; `use_loss_scale` sets it. Every gradient the state
    holds or returns is unscaled and float32 (float16 and bfloat16 are
    cast up). `finite_checks` holds the shared values whose non-finiteness
    skips the step (the first `forward_checks` of them were computed
    before any backward pass), `overflow_checks` (loss scaling only) the
    raw backward passes whose non-finiteness is an overflow (see the
    module docstring).
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
        self.forward_checks = None
        self.overflow_checks = []
        self.loss_scale = None
        self.present = None

    # --- loss scaling ---------------------------------------------------------
    def use_loss_scale(self, scale):
        """Runs the step's backward passes under `scale` (a float32 scalar, or None)."""
        self.loss_scale = None if scale is None else tf.cast(scale, "float32")

    def scaled_gradient(self, target, sources, output_gradients=None, **kwargs):
        """`tape.gradient(target, sources, output_gradients)`, unscaled and float32.

        `output_gradients` (unscaled, any float dtype; None for a scalar
        loss) are multiplied by the loss scale and cast to the target's
        dtype for the pass; float16 / bfloat16 results are cast to float32
        and divided by the scale. Without loss scaling or low precision this
        is `tape.gradient` itself.
        """
        scale = self.loss_scale
        targets = tf.nest.flatten(target)
        if output_gradients is None:
            if scale is not None:
                output_gradients = [tf.cast(scale, t.dtype) for t in targets]
        else:
            output_gradients = [
                None if g is None else tf.cast(_times(g, scale), t.dtype)
                for g, t in zip(tf.nest.flatten(output_gradients), targets)]
        if output_gradients is not None and not isinstance(target, (list, tuple)):
            output_gradients = output_gradients[0]
        grads = self.tape.gradient(target, sources, output_gradients=output_gradients,
                                   **kwargs)
        inverse = None if scale is None else 1.0 / scale
        return tf.nest.map_structure(lambda g: _times(_widen(g), inverse), grads,
                                     expand_composites=False)

    def trunk_gradients(self, sources, output_gradients, check=True, **kwargs):
        """Gradients of `sources` for the given (unscaled) gradients at z.

        Under loss scaling a non-finite result of finite `output_gradients`
        is recorded as an overflow (`check=False` inside `vectorized_map`,
        where the caller checks the stacked result).
        """
        grads = self.scaled_gradient(self.zs, sources, output_gradients, **kwargs)
        if check and self.loss_scale is not None:
            self.check_overflow(grads, _all_finite(tf.nest.flatten(output_gradients)))
        return grads

    def check_overflow(self, grads, inputs_finite=None):
        """Loss scaling: records non-finite `grads` (of finite inputs) as an overflow.

        `inputs_finite` (bool scalar): whether what the pass started from
        was finite; if not, the non-finiteness is not the scale's (the
        caller's own checks handle it). Does nothing without loss scaling
        (then a non-finite gradient is bad data, as in float32).
        """
        if self.loss_scale is None:
            return
        finite = _all_finite(tf.nest.flatten(grads))
        if inputs_finite is not None:
            finite = tf.logical_or(finite, tf.logical_not(inputs_finite))
        self.overflow_checks.append(finite)

    # --- per-task gradients -------------------------------------------------
    def compute_task_gradients(self, model):
        """One backward pass of each run task's head: its head's grads and dL_t/dz."""
        if self.forward_checks is None:
            self.forward_checks = len(self.finite_checks)
        ok = []
        for t, task in enumerate(model.task_names):
            if t not in self.indices:
                ok.append(tf.constant(True))
                continue
            head_vars = model.heads[task].trainable_variables
            grads = self.scaled_gradient(self.loss_list[t], self.zs + head_vars)
            g = [tf.zeros_like(z, dtype=_engine_dtype(z.dtype)) if gz is None else gz
                 for gz, z in zip(grads[:len(self.zs)], self.zs)]
            heads = grads[len(self.zs):]
            finite = _all_finite(g + heads)
            if self.loss_scale is not None:
                # A non-finite loss is bad data (its task is excluded, its
                # gradients zeroed here so that no later pass reads them);
                # a finite loss with non-finite gradients is an overflow.
                loss_ok = self.loss_finite[t]
                self.overflow_checks.append(tf.logical_or(finite, tf.logical_not(loss_ok)))
                g = [tf.where(loss_ok, x, tf.zeros_like(x)) for x in g]
                heads = [None if h is None else tf.where(
                    loss_ok, tf.convert_to_tensor(h), tf.zeros_like(tf.convert_to_tensor(h)))
                    for h in heads]
                finite = tf.constant(True)
            self.task_gradients[t] = g
            self.head_gradients[t] = list(zip(head_vars, heads))
            ok.append(finite)
        self.task_ok = tf.stack(ok)

    # --- which tasks take part ----------------------------------------------
    def finalize(self, model, task_ok=None):
        """Fixes `present`, `losses` and the combine coefficients (idempotent).

        `task_ok` (T,) bool adds a requirement's own per-task checks (e.g.
        finite gradient norms); it must be given before the first call
        that reads the coefficients.
        """
        if task_ok is not None and self.loss_scale is not None:
            # Under loss scaling a requirement's non-finite gradients are an
            # overflow of the whole step, not one task's bad data.
            self.overflow_checks.append(tf.reduce_all(task_ok))
        elif task_ok is not None:
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
            # d (extra / R) / d variables: the optimizer sums over replicas
            # (as an output gradient: the tape no longer records here).
            per_replica = None if replicas.num_replicas() == 1 else tf.constant(scale)
            extra_grads = self.scaled_gradient(self.extra_loss, variables, per_replica)
            self.check_overflow(extra_grads, tf.math.is_finite(self.extra_loss))
            for var, grad in zip(variables, extra_grads):
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
    # `add_loss` values of this step only (an absent task's head is not called).
    _keras_compat.clear_losses(model)
    with tf.GradientTape(persistent=True) as tape:
        z, task_ids, indices = model.encode(x, training=True, tasks=active or None)
        # Each part of z its own tensor: when parts depend on each other (a
        # backbone's stages), dL_t/dz_j would otherwise include the paths
        # through the later parts, and the pass back through the trunk from
        # every part would count those paths twice.
        z = tf.nest.map_structure(tf.identity, z)
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
            extras.append(aux.weight * tf.cast(values["loss"], "float32"))
        if extras:
            step.extra_loss = tf.add_n(extras)
    return step


def _all_true(flags):
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


def commit(model, step, grads, variables, forward_state, balancer_state):
    """Applies the step if every shared value is finite; otherwise changes nothing.

    Under loss scaling an overflow step (finite forward values, an
    overflowing backward pass) changes nothing either, except the
    `LossScaleOptimizer`'s scale, which it halves itself; it is not counted
    as a skipped step (see the module docstring).
    """
    bal = model.balancer
    n = len(step.finite_checks) if step.forward_checks is None else step.forward_checks
    if bal.learned_variables:
        bal.apply_learned_gradients(step.learned_gradients)
    bal.update(step.losses, step.present)
    state_ok = _all_finite([tf.convert_to_tensor(v) for v in bal.state_variables()])
    # One cross-replica reduction of (forward values, later values, no overflow).
    flags = tf.stack([_all_true(step.finite_checks[:n]),
                      tf.logical_and(_all_true(step.finite_checks[n:]), state_ok),
                      _all_true(step.overflow_checks)])
    forward_ok, rest_ok, no_overflow = tf.unstack(
        tf.logical_not(replicas.any_true(tf.logical_not(flags))))
    ok = tf.logical_and(tf.logical_and(forward_ok, rest_ok), no_overflow)
    overflow = tf.logical_and(forward_ok, tf.logical_not(no_overflow))
    _restore_unless(ok, balancer_state)
    apply = model.apply_network_gradients_to(variables)
    if step.loss_scale is None:
        replicas.run_if(ok, apply, (grads,))
    else:
        # The LossScaleOptimizer sees an overflow step's gradients as non-finite.
        replicas.run_if(tf.logical_or(ok, overflow), apply, (grads, ok))
    _restore_unless(ok, forward_state)
    # A skipped step is reported as such, not as exclusions of its tasks;
    # an overflow step as neither.
    model.nonfinite_counts.assign_add(tf.cast(tf.logical_and(step.excluded, ok), "int64"))
    model.skipped_steps.assign_add(
        tf.cast(tf.logical_not(tf.logical_or(ok, overflow)), "int64"))
    return ok


def train_step(model, data):
    """One transactional multi-task step (see the module docstring)."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y = model.check_labels(y)
    forward_state = _snapshot(model.forward_state_variables())
    balancer_state = _snapshot(model.balancer.state_variables())
    step = forward(model, x, y, sample_weight)
    step.check_finite(*[tf.convert_to_tensor(v) for v, _ in forward_state])
    # Built here at the latest (at trace time, once the forward pass has
    # built every layer), not inside the conditional update, and before
    # the backward passes read the loss scale.
    model.build_optimizers()
    step.use_loss_scale(optimizers_module.loss_scale(model.optimizer))
    step.compute_task_gradients(model)
    shared = gradients_module.for_requirement(model.balancer.requires)(model, step)
    grads, variables = step.network_gradients(model, shared)
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

"""MultiTaskModel: one encoder, T heads, and the train step that balances them."""

import json
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras.src.losses import loss as keras_loss_module
from keras.src.losses.losses import LossFunctionWrapper

from keras_mtl import balancers as balancers_module
from keras_mtl import distribute
from keras_mtl.balancers import base as balancer_base
from keras_mtl.layers import task_conditioned as tc

_NONFINITE_POLICIES = ("raise", "skip")


_GROUPS = ("shared", "task_specific", "discriminator")


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


def _scaled_copy(optimizer, factor):
    """A fresh optimizer like `optimizer` with its learning rate times `factor`."""
    config = optimizer.get_config()
    lr = optimizer._learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        config["learning_rate"] = ScaledSchedule(lr, factor)
    else:
        config["learning_rate"] = float(config["learning_rate"]) * factor
    config["name"] = f"{config.get('name', 'optimizer')}_x{factor:g}"
    return optimizer.__class__.from_config(config)


def _replica_mean(x):
    """Mean over replicas inside a replica context; identity on one device."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.MEAN, x)


def _global_value(x):
    """Replica mean of x in the forward pass, x's own gradient in the backward pass."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return x + tf.stop_gradient(_replica_mean(x) - x)


def _gather_columns(matrix):
    """Concatenates every replica's (T, n_r) matrix along axis 1.

    Returns `(matrix, offset)`: the gathered (T, sum_r n_r) matrix, identical
    on every replica, and where this replica's columns start. Identity on
    one device.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return matrix, 0
    sizes = ctx.all_gather(tf.shape(matrix)[1:2], axis=0)
    offset = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    return ctx.all_gather(matrix, axis=1), offset


def _num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _flat(grad, var):
    if grad is None:
        return tf.zeros([tf.size(var)], dtype="float32")
    if isinstance(grad, tf.IndexedSlices):
        grad = tf.convert_to_tensor(grad)
    return tf.reshape(tf.cast(grad, "float32"), [-1])


def _sanitize(grads):
    """Zeroes non-finite gradient entries (a skipped task's 0 * inf)."""
    return [
        None if g is None else tf.where(tf.math.is_finite(g), g, tf.zeros_like(g))
        for g in grads
    ]


def _loss_name(loss, task):
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None)
    return name or f"{task}_loss_fn"


_SIGNATURE_KEY = "keras_mtl_signature"


class _CheckpointSignature(tf.__internal__.tracking.Trackable):
    """Saves the model's tasks and balancer in `tf.train.Checkpoint`s.

    On restore it compares them with the model being restored into and
    raises instead of letting a checkpoint of another task set or balancer
    restore partially (unmatched checkpoint values are otherwise ignored).
    """

    def __init__(self, model):
        self._model_ref = model

    def _serialize_to_tensors(self):
        return {_SIGNATURE_KEY: tf.constant(json.dumps(self._model_ref.checkpoint_signature()))}

    def _restore_from_tensors(self, restored_tensors):
        saved = restored_tensors[_SIGNATURE_KEY]
        self._model_ref._check_signature(json.loads(saved.numpy().decode()))
        return tf.no_op()


@keras.saving.register_keras_serializable(package="keras_mtl")
class MultiTaskModel(keras.Model):
    """A shared encoder with one head per task, trained with a balancer.

    The model maps `x -> z = encoder(x) -> {task: heads[task](z)}`. Its
    `train_step` computes every task's loss, asks the compiled balancer
    (`keras_mtl.balancers`) what it needs (losses only, gradient norms at one
    shared layer, feature-level gradients dL_t/dz, or gradients w.r.t. all
    shared parameters), computes exactly that with one gradient tape, and
    applies the balanced update. Per-task losses and task weights are
    reported as the metrics `<task>_loss` and `<task>_weight`.

    If the encoder contains task-conditioned layers (`TaskMask`, task SE,
    task batch norm, residual adapters), every task gets its own forward pass:
    the passes are folded into the batch (input tiled to (T*B, ...) with a
    task-index vector) so one traced graph serves all tasks, and head t reads
    its own slice. Otherwise the encoder runs once.

    Labels are a dict `{task: y}`. A task missing from the dict, or whose
    per-task `sample_weight` sums to zero in a batch, is skipped for that
    batch: its loss is excluded from the update and from the balancer's
    state update; when its key is absent, its head and its task-specific
    variables (`layer.task_variables(t)`) are not touched, optimizer slots
    included.

    Args:
        encoder: a Keras layer or model mapping inputs to the shared
            representation z. Task-conditioned encoders take `task=`.
        heads: dict `{task_name: layer}` mapping z to each task's output.
            The dict order is the task order.
        discriminator: optional `keras_mtl.layers.GradientDiscriminator`
            (attentive single-tasking): trained on the per-task gradients
            dL_t/dz through a gradient reversal; training only.
        discriminator_weight: w_d in L = (1 - w_d) sum_t w_t L_t + w_d L_d.
            Defaults to `0.1` (Maninis et al. 2019).

    Example:

    >>> model = MultiTaskModel(encoder=trunk, heads={"a": head_a, "b": head_b})
    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"},
    ...               balancer=keras_mtl.balancers.GradNorm(alpha=0.12))
    >>> model.fit(dataset_of_x_and_label_dicts, epochs=3)
    >>> model.predict(x)  # {"a": ..., "b": ...}
    """

    def __init__(
        self,
        encoder,
        heads,
        discriminator=None,
        discriminator_weight=0.1,
        name=None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if not isinstance(heads, dict) or not heads:
            raise ValueError(
                "`heads` must be a non-empty dict {task_name: layer}. "
                f"Received: heads={heads!r}"
            )
        for task, head in heads.items():
            if not isinstance(task, str) or not task:
                raise ValueError(f"Task names must be non-empty strings. Received: {task!r}")
            if not callable(head):
                raise ValueError(f"The head of task '{task}' is not a layer. Received: {head!r}")
        if not 0.0 <= float(discriminator_weight) <= 1.0:
            raise ValueError(
                "Invalid value received for argument `discriminator_weight`. "
                f"Expected a float in [0, 1]. Received: {discriminator_weight}"
            )
        self.encoder = encoder
        self.heads = dict(heads)
        self.task_names = list(heads)
        self.num_tasks = len(self.task_names)
        self.discriminator = discriminator
        self.discriminator_weight = float(discriminator_weight)
        self.task_conditioned = tc.is_task_conditioned(encoder)
        if self.task_conditioned:
            for layer in tc.task_conditioned_layers(encoder):
                if layer.num_tasks != self.num_tasks:
                    raise ValueError(
                        f"Task-conditioned layer '{layer.name}' was built for "
                        f"num_tasks={layer.num_tasks}, but the model has "
                        f"{self.num_tasks} heads {self.task_names}."
                    )
        # Trackers exist from construction so that a model built, called or
        # loaded before `compile` has all of its state where Keras expects it.
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_loss_trackers = [
            keras.metrics.Mean(name=f"{t}_loss") for t in self.task_names
        ]
        self.task_weight_trackers = [
            keras.metrics.Mean(name=f"{t}_weight") for t in self.task_names
        ]
        self.discriminator_loss_tracker = None
        self.discriminator_accuracy_tracker = None
        if discriminator is not None:
            self.discriminator_loss_tracker = keras.metrics.Mean(
                name="discriminator_loss"
            )
            self.discriminator_accuracy_tracker = keras.metrics.Mean(
                name="discriminator_accuracy"
            )
        self.nonfinite_counts = self.add_weight(
            name="nonfinite_counts",
            shape=(self.num_tasks,),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.balancer = None
        self.task_losses = None
        self._signature_trackable = _CheckpointSignature(self)
        self.task_metrics = {}
        self.group_optimizers = {}
        self.learning_rate_multipliers = {}
        self._metric_names = {}
        self.nonfinite = "raise"

    # ------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------
    def _task_indices(self, tasks):
        if tasks is None:
            return list(range(self.num_tasks))
        if isinstance(tasks, str):
            tasks = [tasks]
        unknown = [t for t in tasks if t not in self.heads]
        if unknown:
            raise ValueError(
                f"Unknown task(s) {unknown}. The model's tasks are {self.task_names}."
            )
        return [self.task_names.index(t) for t in tasks]

    def encode(self, x, training=None, tasks=None):
        """Runs the encoder; returns (z, task_ids, task_indices).

        For task-conditioned encoders z is the folded (n*B, ...) output of
        the n requested tasks' passes and `task_ids` the (n*B,) task index of
        each row; otherwise z is the shared (B, ...) representation and
        `task_ids` is None.
        """
        idx = self._task_indices(tasks)
        if not self.task_conditioned:
            return self.encoder(x, training=training), None, idx
        if getattr(self.encoder, "has_shared_prefix", False):
            # Task conditioning starts late (e.g. task SE in the decoder
            # only): run the shared prefix once and fold only its output.
            x = self.encoder.shared_prefix(x, training=training)
            folded, slot = tc.fold_tasks(x, len(idx))
            task_ids = tf.gather(tf.constant(idx, dtype="int32"), slot)
            z = self.encoder.task_suffix(folded, task=task_ids, training=training)
            return z, task_ids, idx
        folded, slot = tc.fold_tasks(x, len(idx))
        task_ids = tf.gather(tf.constant(idx, dtype="int32"), slot)
        z = self.encoder(folded, task=task_ids, training=training)
        return z, task_ids, idx

    def decode(self, z, idx, training=None):
        """Applies the heads of tasks `idx` to z (sliced per task if folded)."""
        if self.task_conditioned:
            flat = [tf.split(t, len(idx)) for t in tf.nest.flatten(z)]
            per_task = [
                tf.nest.pack_sequence_as(z, [parts[i] for parts in flat])
                for i in range(len(idx))
            ]
        else:
            per_task = [z] * len(idx)
        return {
            self.task_names[i]: self.heads[self.task_names[i]](zt, training=training)
            for i, zt in zip(idx, per_task)
        }

    def call(self, inputs, training=None, tasks=None):
        """Returns `{task: output}` for all tasks, or only for `tasks`."""
        z, _, idx = self.encode(inputs, training=training, tasks=tasks)
        return self.decode(z, idx, training=training)

    # ------------------------------------------------------------------
    # Compile
    # ------------------------------------------------------------------
    def compile(
        self,
        optimizer="adam",
        loss=None,
        metrics=None,
        balancer=None,
        nonfinite="raise",
        learning_rate_multipliers=None,
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile=False,
        **kwargs,
    ):
        """Configures training.

        Args:
            optimizer: the network's optimizer (string, config or instance).
            loss: dict `{task: loss}` naming every task (a Keras loss name,
                function or `keras.losses.Loss`), or one loss for all tasks.
            metrics: dict `{task: [metrics]}`; reported as `<task>_<name>`.
            balancer: a `keras_mtl.balancers.Balancer`, a registered name
                (`"gradnorm"`) or a config dict. Defaults to equal weights.
            nonfinite: what a NaN/inf task loss does. Either way the task is
                excluded from that step's update so nothing (network
                weights, balancer weights) is poisoned, and its count is kept
                in `nonfinite_counts`; `"raise"` (default) then stops
                training with a `FloatingPointError` naming the task,
                `"skip"` warns and continues.
            learning_rate_multipliers: optional dict with keys
                `"task_specific"` (heads and the task-specific variables of
                task-conditioned layers) and/or `"discriminator"`: those
                groups are updated by copies of `optimizer` whose learning
                rate (or schedule) is multiplied by the given factor, while
                the shared variables keep `optimizer`. Attentive
                single-tasking (Maninis et al. 2019, appendix D) trains the
                task-specific part T times faster than the shared part (every
                batch makes T task updates of the shared layers in the paper),
                and the authors' code the discriminator 10 times faster:
                `{"task_specific": T, "discriminator": 10.0}`.
            jit_compile: compile the train step with XLA. Defaults to
                `False` (XLA was slower than graph mode for conv nets on CPU).
                Under a strategy with more than one replica, `True` falls
                back to graph mode with one warning (XLA compilation of the
                distributed step fails on this stack; see
                `keras_mtl.distribute.resolve_jit_compile`).
        """
        if kwargs.get("loss_weights") is not None:
            raise ValueError(
                "MultiTaskModel does not take `loss_weights`: use "
                "`balancer=keras_mtl.balancers.StaticWeights(weights)`."
            )
        kwargs.pop("loss_weights", None)
        if nonfinite not in _NONFINITE_POLICIES:
            raise ValueError(
                "Invalid value received for argument `nonfinite`. Expected one "
                f"of {_NONFINITE_POLICIES}. Received: nonfinite={nonfinite!r}"
            )
        self.task_losses = self._resolve_losses(loss)
        task_metrics = self._resolve_metrics(metrics)
        bal = balancers_module.get(balancer)
        if not bal.built:
            bal.build(self.task_names)
        elif bal.task_names != self.task_names:
            raise ValueError(
                f"The balancer was built for tasks {bal.task_names}, but the "
                f"model's tasks are {self.task_names}."
            )
        if self.discriminator is not None and bal.requires in (
            balancer_base.FEATURE_GRADS,
            balancer_base.SHARED_GRADS,
        ):
            raise ValueError(
                "The gradient discriminator combines with loss-weighting "
                f"balancers only. Received: balancer={bal!r} "
                f"(requires={bal.requires!r})."
            )
        if self.task_conditioned and bal.requires == balancer_base.FEATURE_GRADS:
            raise ValueError(
                f"{type(bal).__name__} uses feature-level gradients at a shared "
                "representation, but this encoder is task-conditioned (each "
                "task has its own pass, so there is no shared z). Use the "
                "balancer's parameter-level mode (mode='shared')."
            )
        multipliers = self._check_multipliers(learning_rate_multipliers)
        self._set_tracked("balancer", bal)
        self._set_tracked("task_metrics", task_metrics)
        self.nonfinite = nonfinite
        # XLA fails under multi-replica strategies here: graph mode instead.
        jit_compile = distribute.resolve_jit_compile(jit_compile)
        super().compile(
            optimizer=optimizer,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            **kwargs,
        )
        bal._xla = bool(self.jit_compile)
        self._set_tracked("group_optimizers", {
            group: _scaled_copy(self.optimizer, factor)
            for group, factor in multipliers.items()
        })
        self.learning_rate_multipliers = multipliers
        self._compile_config = keras.src.saving.serialization_lib.SerializableDict(
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            balancer=bal,
            nonfinite=nonfinite,
            learning_rate_multipliers=multipliers or None,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            **kwargs,
        )

    def _set_tracked(self, name, value):
        """Sets a state attribute after build, replacing any previous one."""
        old = getattr(self, name, None)
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            if old is not None:
                for item in old.values() if isinstance(old, dict) else [old]:
                    for o in item if isinstance(item, list) else [item]:
                        self._tracker.untrack(o)
            setattr(self, name, value)
        finally:
            if locked:
                self._tracker.lock()

    def compile_from_config(self, config):
        config = keras.src.saving.serialization_lib.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self._build_optimizers()

    def _check_multipliers(self, multipliers):
        if not multipliers:
            return {}
        if not isinstance(multipliers, dict):
            raise ValueError(
                "`learning_rate_multipliers` must be a dict. Received: "
                f"{multipliers!r}"
            )
        unknown = sorted(set(multipliers) - set(_GROUPS[1:]))
        if unknown:
            raise ValueError(
                f"Unknown learning-rate group(s) {unknown}. Expected keys among "
                f"{list(_GROUPS[1:])} (the shared variables use the optimizer's "
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

    def _variable_groups(self, variables):
        """Splits variables into the shared / task-specific / discriminator groups."""
        task_ids = set()
        for task in self.task_names:
            task_ids.update(id(v) for v in self.task_specific_variables(task))
        disc_ids = set()
        if self.discriminator is not None:
            disc_ids = {id(v) for v in self.discriminator.trainable_variables}
        groups = []
        for v in variables:
            if id(v) in disc_ids:
                groups.append("discriminator")
            elif id(v) in task_ids:
                groups.append("task_specific")
            else:
                groups.append("shared")
        return groups

    def _build_optimizers(self):
        variables = self.network_variables()
        groups = self._variable_groups(variables)
        opts = getattr(self, "group_optimizers", None) or {}
        main = [v for v, g in zip(variables, groups) if g not in opts]
        self.optimizer.build(main)
        for group, opt in opts.items():
            opt.build([v for v, g in zip(variables, groups) if g == group])

    def _apply_network_gradients(self, grads, variables):
        """One optimizer step; groups with a learning-rate multiplier use their copy."""
        opts = getattr(self, "group_optimizers", None) or {}
        if not opts:
            self.optimizer.apply(grads, variables)
            return
        buckets = {}
        for g, v, group in zip(grads, variables, self._variable_groups(variables)):
            key = group if group in opts else "main"
            buckets.setdefault(key, ([], []))
            buckets[key][0].append(g)
            buckets[key][1].append(v)
        main_grads, main_vars = buckets.pop("main", ([], []))
        self.optimizer.apply(main_grads, main_vars)
        for group, (gs, vs) in buckets.items():
            opts[group].apply(gs, vs)

    def _resolve_losses(self, loss):
        if loss is None:
            raise ValueError(
                "MultiTaskModel.compile needs `loss`: a dict {task: loss} for "
                f"the tasks {self.task_names}, or one loss for all."
            )
        if not isinstance(loss, dict):
            loss = {t: loss for t in self.task_names}
        unknown = [t for t in loss if t not in self.heads]
        missing = [t for t in self.task_names if t not in loss]
        if unknown or missing:
            raise ValueError(
                f"The loss dict must name exactly the tasks {self.task_names}. "
                f"Unknown keys: {unknown}; tasks without a loss: {missing}."
            )
        resolved = {}
        for task in self.task_names:
            fn = keras.losses.get(loss[task])
            if not isinstance(fn, keras.losses.Loss):
                fn = LossFunctionWrapper(fn, name=_loss_name(fn, task))
            resolved[task] = fn
        return resolved

    def _resolve_metrics(self, metrics):
        if metrics is None:
            return {}
        if not isinstance(metrics, dict):
            raise ValueError(
                "`metrics` must be a dict {task: [metrics]}. "
                f"Received: metrics={metrics!r}"
            )
        unknown = [t for t in metrics if t not in self.heads]
        if unknown:
            raise ValueError(
                f"`metrics` names unknown task(s) {unknown}. The model's tasks "
                f"are {self.task_names}."
            )
        resolved, names = {}, {}
        for task, ms in metrics.items():
            ms = ms if isinstance(ms, (list, tuple)) else [ms]
            out, out_names = [], []
            for m in ms:
                if isinstance(m, keras.metrics.Metric):
                    m = m.__class__.from_config(m.get_config())
                    display = m.name
                else:
                    display = m if isinstance(m, str) else _loss_name(m, task)
                    fn = keras.metrics.get(m)
                    m = fn if isinstance(fn, keras.metrics.Metric) else (
                        keras.metrics.MeanMetricWrapper(fn, name=display))
                out.append(m)
                out_names.append(display)
            resolved[task] = out
            names[task] = out_names
        self._metric_names = names
        return resolved

    # ------------------------------------------------------------------
    # Variables
    # ------------------------------------------------------------------
    def shared_variables(self):
        """Trainable encoder variables (task-specific ones in it included)."""
        return list(self.encoder.trainable_variables)

    def task_specific_variables(self, task):
        """Variables that only `task` uses: its head and its task variables."""
        i = self.task_names.index(task)
        variables = list(self.heads[task].trainable_variables)
        containers = [self.encoder] + list(self.heads.values())
        for container in containers:
            if not tc.is_task_conditioned(container):
                continue
            for layer in tc.task_conditioned_layers(container):
                if hasattr(layer, "task_variables"):
                    variables += [v for v in layer.task_variables(i) if v.trainable]
        return variables

    def network_variables(self, absent_tasks=()):
        """All trainable network variables, minus those of `absent_tasks`."""
        excluded = set()
        for task in absent_tasks:
            excluded.update(id(v) for v in self.task_specific_variables(task))
        variables = self.shared_variables()
        for task in self.task_names:
            variables += self.heads[task].trainable_variables
        if self.discriminator is not None:
            variables += self.discriminator.trainable_variables
        seen, out = set(), []
        for v in variables:
            if id(v) not in seen and id(v) not in excluded:
                seen.add(id(v))
                out.append(v)
        return out

    def gradnorm_kernel(self):
        """The kernel W of GradNorm's shared layer (the balancer's `layer`)."""
        name = getattr(self.balancer, "layer", None)
        layers = self.encoder._flatten_layers(include_self=True, recursive=True)
        candidates = [
            l for l in layers
            if getattr(l, "kernel", None) is not None and l.kernel.trainable
        ]
        if name is not None:
            candidates = [l for l in candidates if l.name == name]
            if not candidates:
                raise ValueError(
                    f"GradNorm layer='{name}' matches no shared layer with a "
                    "kernel in the encoder."
                )
        if not candidates:
            raise ValueError(
                "GradNorm needs a shared layer with a `kernel` in the encoder; "
                "found none."
            )
        return candidates[-1].kernel

    # ------------------------------------------------------------------
    # Losses
    # ------------------------------------------------------------------
    def _check_labels(self, y):
        if not isinstance(y, dict):
            if self.num_tasks == 1:
                return {self.task_names[0]: y}
            raise ValueError(
                "Labels must be a dict {task: y} for the tasks "
                f"{self.task_names}. Received labels of type {type(y).__name__}."
            )
        unknown = [k for k in y if k not in self.heads]
        if unknown:
            raise ValueError(
                f"Label key(s) {unknown} match no head. The model's tasks are "
                f"{self.task_names}."
            )
        return y

    def _check_shapes(self, task, y_true, y_pred):
        loss = self.task_losses[task]
        if y_true.shape.rank is None or y_pred.shape.rank is None:
            return
        yt, yp = tuple(y_true.shape), tuple(y_pred.shape)
        if len(yt) == 0 or len(yp) == 0:
            return
        sparse = "sparse" in type(loss).__name__.lower() or "sparse" in (
            getattr(loss, "name", "") or ""
        )
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
                f"labels of shape {yt} for loss '{_loss_name(loss, task)}'"
                + (" (sparse labels must have the output's shape without its "
                   "last axis)" if sparse else " (they must match, batch aside)")
                + "."
            )

    def _sample_weight(self, sample_weight, task):
        if sample_weight is None:
            return None
        if isinstance(sample_weight, dict):
            unknown = [k for k in sample_weight if k not in self.heads]
            if unknown:
                raise ValueError(
                    f"sample_weight key(s) {unknown} match no head. The model's "
                    f"tasks are {self.task_names}."
                )
            return sample_weight.get(task)
        return sample_weight

    def compute_task_losses(self, y, outputs, sample_weight=None):
        """Per-task losses and presence.

        Returns `(loss_list, present)`: a list of T scalar tensors (this
        replica's mean loss of each task, 0 for absent tasks) and a float32
        (T,) vector of 1.0 / 0.0 marking the tasks labelled in the batch with
        a finite loss.
        """
        loss_list, present, finite = [], [], []
        for task in self.task_names:
            if task not in y or task not in outputs:
                loss_list.append(tf.constant(0.0))
                present.append(tf.constant(0.0))
                finite.append(tf.constant(True))
                continue
            y_true, y_pred = y[task], outputs[task]
            self._check_shapes(task, y_true, y_pred)
            sw = self._sample_weight(sample_weight, task)
            value = self.task_losses[task](y_true, y_pred, sample_weight=sw)
            value = keras_loss_module.unscale_loss_for_distribution(
                tf.cast(value, "float32")
            )
            is_finite = tf.math.is_finite(value)
            labelled = tf.constant(1.0)
            if sw is not None:
                labelled = tf.cast(tf.reduce_sum(tf.abs(tf.cast(sw, "float32"))) > 0, "float32")
            loss_list.append(tf.where(is_finite, value, tf.zeros_like(value)))
            present.append(labelled * tf.cast(is_finite, "float32"))
            finite.append(tf.logical_or(is_finite, labelled == 0.0))
        return loss_list, tf.stack(present), tf.stack(finite)

    # ------------------------------------------------------------------
    # Train / test / predict
    # ------------------------------------------------------------------
    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = self._check_labels(y)
        active = [t for t in self.task_names if t in y]
        absent = [t for t in self.task_names if t not in y]
        bal = self.balancer
        needs = bal.requires
        learned = bal.learned_variables
        forward_tasks = active or None
        # Loss-only balancers take one gradient: a non-persistent tape frees
        # the forward activations as soon as it is used.
        persistent = needs != balancer_base.LOSSES or self.discriminator is not None

        with tf.GradientTape(persistent=persistent) as tape:
            z, task_ids, idx = self.encode(x, training=True, tasks=forward_tasks)
            inner = None
            if self.discriminator is not None:
                inner = tf.GradientTape(persistent=True)
                inner.__enter__()
                inner.watch(z)
            outputs = self.decode(z, idx, training=True)
            loss_list, present_local, finite = self.compute_task_losses(
                y, outputs, sample_weight
            )
            losses_local = tf.stack(loss_list)
            if inner is not None:
                inner.__exit__(None, None, None)
            # combine() sees the replica-mean losses (its value and its
            # derivatives dL/dL_t are those of the global batch, also for
            # non-linear combinations such as GLS) while the gradient flows
            # through this replica's own losses.
            combined = bal.combine(_global_value(losses_local), present_local)
            if self.discriminator is not None:
                d_loss, d_acc = self._discriminator_loss(
                    inner, z, loss_list, idx, task_ids
                )
                w_d = self.discriminator_weight
                combined = (1.0 - w_d) * combined + w_d * d_loss
            total = combined
            if self.losses:
                total = total + tf.add_n([tf.cast(l, "float32") for l in self.losses])
            scaled_total = keras_loss_module.scale_loss_for_distribution(total)
            if needs in (balancer_base.FEATURE_GRADS, balancer_base.SHARED_GRADS):
                glosses = bal.gradient_losses(losses_local)
                glist = [glosses[i] for i in range(self.num_tasks)]

        # Listed after the forward pass: a first call builds the layers.
        net_vars = self.network_variables(absent_tasks=absent)
        losses = _replica_mean(losses_local)
        present = _replica_mean(present_local)
        present = tf.cast(present > 0, "float32")

        grad_norms = None
        if needs == balancer_base.LAYER_GRAD_NORMS and self.discriminator is None:
            grads, grad_norms = self._split_head_gradients(
                tape, z, loss_list, losses_local, total, net_vars, present_local
            )
        elif needs in (balancer_base.LOSSES, balancer_base.LAYER_GRAD_NORMS):
            grads = tape.gradient(scaled_total, net_vars)
            if needs == balancer_base.LAYER_GRAD_NORMS:
                grad_norms = self._layer_grad_norms(tape, loss_list, present_local)
        else:
            grads = self._balanced_gradients(
                tape, glist, z, net_vars, scaled_total, losses, present
            )
        if learned:
            learned_grads = self._learned_gradients(losses_local, present_local)
        del tape
        if inner is not None:
            del inner

        self._apply_network_gradients(_sanitize(grads), net_vars)
        if learned:
            bal.apply_learned_gradients(learned_grads)
        bal.update(losses, present, grad_norms=grad_norms)

        nonfinite = tf.cast(tf.logical_not(finite), "int64")
        self.nonfinite_counts.assign_add(nonfinite)
        self._update_trackers(total, losses, present)
        if self.discriminator is not None:
            self.discriminator_loss_tracker.update_state(_replica_mean(d_loss))
            self.discriminator_accuracy_tracker.update_state(_replica_mean(d_acc))
        self._update_task_metrics(y, outputs, sample_weight)
        return self._logs()

    def _learned_gradients(self, losses, present):
        """d total / d (balancer's learned variables), losses held constant.

        The balancer's variables enter the loss only through `combine`, so
        this small tape over `combine` alone gives the exact partial
        derivatives without another pass through the network.
        """
        bal = self.balancer
        watched = [v.value for v in bal.learned_variables]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            combined = bal.combine(tf.stop_gradient(losses), present)
            if self.discriminator is not None:
                combined = (1.0 - self.discriminator_weight) * combined
        grads = tape.gradient(combined, watched)
        grads = [tf.zeros_like(w) if g is None else g for g, w in zip(grads, watched)]
        return _sanitize([_replica_mean(g) for g in grads])

    def _split_head_gradients(self, tape, z, loss_list, losses_local, total,
                              net_vars, present):
        """Network gradients and GradNorm's per-task kernel norms, heads once each.

        Each task's backward pass through its head gives both its head's
        gradient and g_t = dL_t/dz; the encoder then gets one backward pass
        of sum_t c_t g_t (c_t = d total / d L_t), and ||dL_t/dW|| needs only
        the pass from z back to W (the last shared layer). Equal to
        `tape.gradient(total, net_vars)` plus T head-and-kernel passes, at
        about the cost of the first alone.
        """
        replicas = _num_replicas()
        coeffs = tape.gradient(total, losses_local)
        coeffs = tf.zeros([self.num_tasks]) if coeffs is None else coeffs
        kernel = self.gradnorm_kernel()
        shared = self.shared_variables()
        shared_ids = {id(v) for v in shared}
        by_id, norms = {}, []
        direction = None
        for t, task in enumerate(self.task_names):
            head_vars = [v for v in net_vars
                         if id(v) not in shared_ids
                         and any(v is h for h in self.heads[task].trainable_variables)]
            grads = tape.gradient(loss_list[t], [z] + head_vars)
            g_z = grads[0]
            if g_z is None:
                norms.append(tf.constant(0.0))
                continue
            g_z = tf.where(tf.math.is_finite(g_z), g_z, tf.zeros_like(g_z))
            for v, g in zip(head_vars, grads[1:]):
                if g is not None:
                    by_id[id(v)] = g * (coeffs[t] / replicas)
            term = g_z * coeffs[t]
            direction = term if direction is None else direction + term
            g_w = tape.gradient(z, kernel, output_gradients=g_z)
            g_w = _replica_mean(tf.convert_to_tensor(g_w))
            norms.append(tf.norm(tf.reshape(g_w, [-1])))
        if direction is not None:
            shared_grads = tape.gradient(
                z, shared, output_gradients=direction / replicas
            )
        else:
            shared_grads = [None] * len(shared)
        if self.losses:
            reg = keras_loss_module.scale_loss_for_distribution(
                tf.add_n([tf.cast(l, "float32") for l in self.losses])
            )
            reg_grads = tape.gradient(reg, net_vars)
            for v, g in zip(net_vars, reg_grads):
                if g is not None:
                    by_id[id(v)] = g if by_id.get(id(v)) is None else by_id[id(v)] + g
        for v, g in zip(shared, shared_grads):
            if g is not None:
                by_id[id(v)] = g if by_id.get(id(v)) is None else by_id[id(v)] + g
        return [by_id.get(id(v)) for v in net_vars], tf.stack(norms) * present

    def _layer_grad_norms(self, tape, loss_list, present):
        """||d L_t / d W|| for each task at GradNorm's kernel W (replica mean)."""
        kernel = self.gradnorm_kernel()
        norms = []
        for t in range(self.num_tasks):
            g = tape.gradient(loss_list[t], kernel)
            if g is None:
                norms.append(tf.constant(0.0))
                continue
            g = _replica_mean(tf.convert_to_tensor(g))
            g = tf.where(tf.math.is_finite(g), g, tf.zeros_like(g))
            norms.append(tf.norm(tf.reshape(g, [-1])))
        return tf.stack(norms) * present

    def _balanced_gradients(self, tape, glist, z, net_vars, scaled_total, losses, present):
        """Network gradients for balancers that combine task gradients."""
        bal = self.balancer
        shared = self.shared_variables()
        shared_ids = {id(v) for v in shared}
        other = [v for v in net_vars if id(v) not in shared_ids]
        other_grads = tape.gradient(scaled_total, other) if other else []
        replicas = _num_replicas()
        if bal.requires == balancer_base.FEATURE_GRADS:
            rows = []
            for t in range(self.num_tasks):
                g = tape.gradient(glist[t], z)
                rows.append(tf.zeros([tf.size(z)]) if g is None else tf.reshape(g, [-1]))
            # Each replica holds dL_t/dz for its own examples only: the
            # global matrix is every replica's columns side by side (scaled by
            # 1/R, as L_t is the mean of the replicas' means), so the balancer
            # sees the same G on every replica and on one device.
            matrix = tf.stack(rows) / replicas * present[:, None]
            matrix, offset = _gather_columns(matrix)
            direction = bal.aggregate(matrix, losses, present)
            direction = tf.slice(direction, [offset], [tf.size(z)])
            direction = tf.reshape(direction, tf.shape(z))
            shared_grads = tape.gradient(z, shared, output_gradients=direction)
        else:
            rows = []
            for t in range(self.num_tasks):
                gs = tape.gradient(glist[t], shared)
                rows.append(tf.concat([_flat(g, v) for g, v in zip(gs, shared)], 0))
            matrix = _replica_mean(tf.stack(rows)) * present[:, None]
            direction = bal.aggregate(matrix, losses, present) / replicas
            shared_grads, offset = [], 0
            for v in shared:
                n = int(np.prod(v.shape))  # static: tf.size is symbolic on replicas
                shared_grads.append(tf.reshape(direction[offset:offset + n], v.shape))
                offset += n
        if self.losses:
            reg = keras_loss_module.scale_loss_for_distribution(
                tf.add_n([tf.cast(l, "float32") for l in self.losses])
            )
            reg_grads = tape.gradient(reg, shared)
            shared_grads = [
                s if r is None else (r if s is None else s + r)
                for s, r in zip(shared_grads, reg_grads)
            ]
        by_id = {id(v): g for v, g in zip(shared, shared_grads)}
        by_id.update({id(v): g for v, g in zip(other, other_grads)})
        return [by_id.get(id(v)) for v in net_vars]

    def _discriminator_loss(self, inner, z, loss_list, idx, task_ids):
        """L_d on the per-task gradients dL_t/dz (double back-propagation)."""
        if self.task_conditioned:
            # Each row block of the folded z only reaches its own task's loss.
            g = inner.gradient([loss_list[i] for i in idx], z)
            labels = task_ids
        else:
            g = tf.concat([inner.gradient(loss_list[i], z) for i in idx], axis=0)
            batch = tf.shape(z)[0]
            labels = tf.repeat(tf.constant(idx, dtype="int32"), batch)
        logits = self.discriminator(g, training=True)
        extra = len(logits.shape) - 2
        labels_full = tf.reshape(labels, [-1] + [1] * extra)
        labels_full = tf.broadcast_to(labels_full, tf.shape(logits)[:-1])
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels_full, logits)
        acc = tf.reduce_mean(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type="int32"), labels_full), "float32")
        )
        return tf.reduce_mean(ce), acc

    def _update_trackers(self, total, losses, present):
        self.loss_tracker.update_state(_replica_mean(tf.convert_to_tensor(total)))
        weights = tf.convert_to_tensor(self.balancer.task_weights())
        for t in range(self.num_tasks):
            self.task_loss_trackers[t].update_state(losses[t], sample_weight=present[t])
            self.task_weight_trackers[t].update_state(weights[t])

    def _update_task_metrics(self, y, outputs, sample_weight):
        for task, metrics in self.task_metrics.items():
            if task not in y or task not in outputs:
                continue
            sw = self._sample_weight(sample_weight, task)
            for m in metrics:
                m.update_state(y[task], outputs[task], sample_weight=sw)

    def _logs(self):
        logs = {"loss": self.loss_tracker.result()}
        for t, task in enumerate(self.task_names):
            logs[f"{task}_loss"] = self.task_loss_trackers[t].result()
            logs[f"{task}_weight"] = self.task_weight_trackers[t].result()
            names = self._metric_names.get(task, [])
            for m, name in zip(self.task_metrics.get(task, []), names):
                result = m.result()
                if isinstance(result, dict):
                    for k, v in result.items():
                        logs[f"{task}_{k}"] = v
                else:
                    logs[f"{task}_{name}"] = result
        if self.discriminator is not None:
            logs["discriminator_loss"] = self.discriminator_loss_tracker.result()
            logs["discriminator_accuracy"] = self.discriminator_accuracy_tracker.result()
        return logs

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = self._check_labels(y)
        active = [t for t in self.task_names if t in y] or None
        outputs = self(x, training=False, tasks=active)
        loss_list, present_local, _ = self.compute_task_losses(y, outputs, sample_weight)
        losses = _replica_mean(tf.stack(loss_list))
        present = tf.cast(_replica_mean(present_local) > 0, "float32")
        total = self.balancer.combine(losses, present)
        self._update_trackers(total, losses, present)
        self._update_task_metrics(y, outputs, sample_weight)
        logs = self._logs()
        if self.discriminator is not None:
            logs.pop("discriminator_loss")
            logs.pop("discriminator_accuracy")
        return logs

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    @property
    def metrics(self):
        metrics = [self.loss_tracker] + self.task_loss_trackers + self.task_weight_trackers
        for task in self.task_names:
            metrics += self.task_metrics.get(task, [])
        if self.discriminator is not None:
            metrics += [self.discriminator_loss_tracker, self.discriminator_accuracy_tracker]
        return metrics

    # ------------------------------------------------------------------
    # fit: the non-finite guard
    # ------------------------------------------------------------------
    def fit(self, x=None, *args, callbacks=None, **kwargs):
        if not self.built:
            # Under the strategy the model was made in: its weights are
            # created here.
            with self.distribute_strategy.scope():
                self._build_from(x)
        if self.built and self.group_optimizers and not all(
                o.built for o in self.group_optimizers.values()):
            # Built here, not in the traced step, so that a strategy's scope
            # holds their variables too.
            with self.distribute_strategy.scope():
                self._build_optimizers()
        callbacks = list(callbacks or [])
        callbacks.append(NonFiniteGuard())
        return super().fit(x, *args, callbacks=callbacks, **kwargs)

    def _build_from(self, x):
        """Builds the model (so it saves a build config) from one input batch.

        The train step runs the encoder and heads without `Model.__call__`,
        which is what marks a subclassed model built; one eager call on a
        single example does it.
        """
        if isinstance(x, tf.data.Dataset):
            batch = next(iter(x.take(1)))
            batch = batch[0] if isinstance(batch, (tuple, list)) else batch
        elif x is not None and hasattr(x, "__getitem__") and not isinstance(x, dict):
            batch = x[:1]
        elif isinstance(x, dict):
            batch = {k: v[:1] for k, v in x.items()}
        else:
            return
        self(batch, training=False)

    # ------------------------------------------------------------------
    # Checkpoint compatibility
    # ------------------------------------------------------------------
    def checkpoint_signature(self):
        """What a checkpoint of this model must match: tasks and balancer."""
        balancer = self.balancer
        return {
            "tasks": list(self.task_names),
            "balancer": None if balancer is None else type(balancer).__name__,
        }

    def _check_signature(self, saved):
        mine = self.checkpoint_signature()
        problems = []
        if saved.get("tasks") != mine["tasks"]:
            problems.append(
                f"it has {len(saved.get('tasks') or [])} tasks {saved.get('tasks')}, "
                f"this model {len(mine['tasks'])} tasks {mine['tasks']}"
            )
        if None not in (saved.get("balancer"), mine["balancer"]) and (
            saved["balancer"] != mine["balancer"]
        ):
            problems.append(
                f"it was made with balancer {saved['balancer']}, this model is "
                f"compiled with {mine['balancer']}"
            )
        if problems:
            raise ValueError(
                f"Cannot restore a checkpoint of another multi-task setup into "
                f"model '{self.name}': " + "; ".join(problems) + ". Build and "
                "compile the model as it was when the checkpoint was saved."
            )

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "checkpoint":
            # Keras 3 does not give TensorFlow dependencies on layers held in
            # lists or dicts (the heads, TaskSequential's layers), so a
            # tf.train.Checkpoint would miss their non-trainable state (masks,
            # roaming plans, BN statistics) and restore their weights only
            # through the optimizer. Every variable is listed here by its
            # position, dtype and shape, the same for the same architecture
            # (another architecture is reported by the signature check).
            for i, v in enumerate(self.variables):
                shape = "x".join(str(d) for d in v.shape)
                children[f"variables_by_position/{i}_{v.dtype}_{shape}"] = v
        return children

    def save_own_variables(self, store):
        super().save_own_variables(store)
        text = json.dumps(self.checkpoint_signature()).encode("utf-8")
        store[_SIGNATURE_KEY] = np.frombuffer(text, dtype="uint8")

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SIGNATURE_KEY in keys:
            raw = np.asarray(store[_SIGNATURE_KEY], dtype="uint8").tobytes()
            self._check_signature(json.loads(raw.decode("utf-8")))
            store = {k: store[k] for k in keys if k != _SIGNATURE_KEY}
        super().load_own_variables(store)

    # ------------------------------------------------------------------
    # Config
    # ------------------------------------------------------------------
    def get_config(self):
        config = {
            "name": self.name,
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "heads": {
                t: keras.saving.serialize_keras_object(h) for t, h in self.heads.items()
            },
            "discriminator_weight": self.discriminator_weight,
        }
        if self.discriminator is not None:
            config["discriminator"] = keras.saving.serialize_keras_object(
                self.discriminator
            )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["heads"] = {
            t: keras.saving.deserialize_keras_object(h)
            for t, h in config["heads"].items()
        }
        if config.get("discriminator") is not None:
            config["discriminator"] = keras.saving.deserialize_keras_object(
                config["discriminator"]
            )
        return cls(**config)


class NonFiniteGuard(keras.callbacks.Callback):
    """Acts on NaN/inf task losses counted by the train step.

    The train step already excluded the offending task from the update; this
    callback raises `FloatingPointError` naming it (`nonfinite="raise"`) or
    warns (`nonfinite="skip"`).
    """

    def on_train_begin(self, logs=None):
        self._seen = self.model.nonfinite_counts.numpy().copy()

    def on_train_batch_end(self, batch, logs=None):
        counts = self.model.nonfinite_counts.numpy()
        new = counts - self._seen
        if not new.any():
            return
        self._seen = counts.copy()
        tasks = [t for t, n in zip(self.model.task_names, new) if n > 0]
        message = (
            f"Non-finite loss for task(s) {tasks} at batch {batch}: the task "
            "was excluded from that step's update (network and balancer "
            "unchanged by it)."
        )
        if self.model.nonfinite == "raise":
            raise FloatingPointError(
                message + " Stopping (compile(nonfinite='skip') continues instead)."
            )
        warnings.warn(message, RuntimeWarning, stacklevel=2)

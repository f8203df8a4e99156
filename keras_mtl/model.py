"""MultiTaskModel: one encoder, T heads, and the train step that balances them.

The model keeps its structure (encoder, heads, auxiliary objectives, which
variables are shared or task-specific), compile and saving. The train step
itself is the engine in `keras_mtl.training`.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_mtl import _keras_compat
from keras_mtl import checkpointing
from keras_mtl import distribute
from keras_mtl import training
from keras_mtl.layers import task_conditioned as tc
from keras_mtl.training import compile as compile_utils
from keras_mtl.training import losses as losses_module
from keras_mtl.training import optimizers as group_optimizers

_NONFINITE_POLICIES = ("raise", "skip")

NonFiniteGuard = training.StepGuard
"""The callback `fit` adds (its former name)."""


def unique_variables(variables, excluded=()):
    """`variables` in order, each once (by identity), minus those in `excluded`."""
    skip = {id(v) for v in excluded}
    out = []
    for v in variables:
        if id(v) not in skip:
            skip.add(id(v))
            out.append(v)
    return out


@keras.saving.register_keras_serializable(package="keras_mtl")
class MultiTaskModel(keras.Model):
    """A shared encoder with one head per task, trained with a balancer.

    The model maps `x -> z = encoder(x) -> {task: heads[task](z)}`. Its
    `train_step` computes every task's loss, asks the compiled balancer
    (`keras_mtl.balancers`) what it needs (losses only, gradient norms at one
    shared layer, feature-level gradients dL_t/dz, or gradients w.r.t. all
    shared parameters), computes exactly that with one gradient tape, and
    applies the balanced update (the engine in `keras_mtl.training`; the step
    is transactional: see `compile(nonfinite=...)`). Per-task losses and task
    weights are reported as the metrics `<task>_loss` and `<task>_weight`.

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
        seen = {}
        for task, head in heads.items():
            if id(head) in seen:
                raise ValueError(
                    f"Tasks '{seen[id(head)]}' and '{task}' were given the same head "
                    "object. Each task needs its own head (a task's head trains only "
                    "on its own loss); give the second task a copy, e.g. "
                    "`head.__class__.from_config(head.get_config())`."
                )
            seen[id(head)] = task
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
        self.auxiliaries = [] if discriminator is None else [
            training.AdversarialDiscriminator(discriminator, discriminator_weight)]
        self.task_conditioned = tc.is_task_conditioned(encoder)
        self.task_outputs = tc.has_task_outputs(encoder)
        if self.task_outputs and self.task_conditioned:
            raise ValueError(
                f"Encoder '{encoder.name}' returns one output per task "
                "(`TaskOutputs`) and contains task-conditioned layers (folded "
                "per-task passes); a model takes one or the other."
            )
        if self.task_outputs and discriminator is not None:
            raise ValueError(
                f"Encoder '{encoder.name}' returns one output per task, so there "
                "is no shared representation z for the gradient discriminator "
                "to read dL_t/dz at."
            )
        for layer in tc.task_variable_layers(encoder):
            if layer.num_tasks != self.num_tasks:
                kind = "Task-conditioned layer" if self.task_conditioned else "Per-task encoder"
                raise ValueError(
                    f"{kind} '{layer.name}' was built for "
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
        self.nonfinite_counts = self._counter("nonfinite_counts", (self.num_tasks,))
        self.skipped_steps = self._counter("skipped_steps", ())
        self.balancer = None
        self.task_losses = None
        self._signature_trackable = checkpointing.CheckpointSignature(self)
        self.task_metrics = {}
        self.group_optimizers = {}
        self.learning_rate_multipliers = {}
        self.metric_names = {}
        self.nonfinite = "raise"

    def _counter(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer="zeros",
                               dtype="int64", trainable=False,
                               aggregation="only_first_replica")

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
        each row; for `TaskOutputs` encoders z is the list of the T per-task
        representations; otherwise z is the shared (B, ...) representation.
        `task_ids` is None unless folded.
        """
        idx = self._task_indices(tasks)
        if self.task_outputs:
            z = self.encoder(x, training=training)
            if not isinstance(z, (list, tuple)) or len(z) != self.num_tasks:
                raise ValueError(
                    f"Encoder '{self.encoder.name}' follows the TaskOutputs "
                    f"protocol, so it must return a list of {self.num_tasks} "
                    f"per-task outputs (one per task of {self.task_names}). "
                    f"Received: {type(z).__name__}"
                    + (f" of length {len(z)}" if isinstance(z, (list, tuple)) else "")
                )
            return list(z), None, idx
        if not self.task_conditioned:
            return self.encoder(x, training=training), None, idx
        prefix = isinstance(self.encoder, tc.TaskConditioned) and self.encoder.has_shared_prefix
        if prefix:
            # Task conditioning starts late (e.g. task SE in the decoder
            # only): run the shared prefix once and fold only its output.
            x = self.encoder.shared_prefix(x, training=training)
        folded, _ = tc.fold_tasks(x, len(idx))
        batch = tf.shape(tf.nest.flatten(x)[0])[0]
        task_ids = tc.task_vector(idx, batch)
        if prefix:
            return self.encoder.task_suffix(folded, task=task_ids, training=training), task_ids, idx
        return self.encoder(folded, task=task_ids, training=training), task_ids, idx

    def decode(self, z, idx, training=None):
        """Applies the heads of tasks `idx` to z (sliced per task if folded)."""
        if self.task_outputs:
            per_task = [z[i] for i in idx]
        elif self.task_conditioned:
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

    def build_from_batch(self, inputs):
        """Builds encoder, auxiliary objectives and heads from one input batch.

        The train step runs the encoder and heads without `Model.__call__`,
        which is what marks a subclassed model built (and records the build
        config that `.keras` files and export use); one eager call does it.
        Auxiliary objectives are built first, from the shared representation,
        so that Keras never meets an unbuilt sub-layer.
        """
        if self.auxiliaries:
            z, _, _ = self.encode(inputs, training=False, tasks=self.task_names[:1])
            for aux in self.auxiliaries:
                aux.build(z)
        self(inputs, training=False)
        for layer in [self, self.encoder] + list(self.heads.values()):
            _keras_compat.forget_build_batch_size(layer)

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
                `"accuracy"` resolves from the task's loss as in Keras.
            balancer: a `keras_mtl.balancers.Balancer`, a registered name
                (`"gradnorm"`) or a config dict. Defaults to equal weights.
            nonfinite: what a non-finite value does. The step is
                transactional either way: a NaN/inf loss or gradient of one
                task excludes that task from the step (counted in
                `nonfinite_counts`), a NaN/inf shared value (representation,
                shared gradient, batch statistics, new balancer state) skips
                the whole step (counted in `skipped_steps`), so nothing is
                poisoned. `"raise"` (default) then stops training with a
                `FloatingPointError` naming the task or value, `"skip"`
                warns and continues.
            learning_rate_multipliers: optional dict with keys
                `"task_specific"` (heads and the task-specific variables of
                task-conditioned layers) and/or `"discriminator"`: those
                groups are updated by copies of `optimizer` whose learning
                rate (or schedule) is multiplied by the given factor, while
                the shared variables keep `optimizer` (attentive
                single-tasking, appendix D: `{"task_specific": T,
                "discriminator": 10.0}`).
            jit_compile: compile the train step with XLA. Defaults to
                `False` on every platform (the default lives here): on CPU
                XLA was slower than graph mode for conv nets and for the
                Frank-Wolfe solvers (MGDA ~2x at T=10: XLA runs the
                `while_loop` and its small float64 ops serially), and no
                faster for the rest (README, "jit_compile"); GPUs were not
                measured.
                Under a strategy with more than one replica, `True` falls
                back to graph mode with one warning (see
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
        self.task_losses = compile_utils.resolve_losses(loss, self.task_names)
        task_metrics, self.metric_names = compile_utils.resolve_metrics(
            metrics, self.task_names, self.task_losses)
        bal = compile_utils.resolve_balancer(self, balancer)
        multipliers = group_optimizers.check_multipliers(learning_rate_multipliers)
        _keras_compat.set_tracked(self, "balancer", bal)
        _keras_compat.set_tracked(self, "task_metrics", task_metrics)
        self.nonfinite = nonfinite
        jit_compile = distribute.resolve_jit_compile(jit_compile)
        super().compile(
            optimizer=optimizer,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            **kwargs,
        )
        _keras_compat.set_tracked(self, "group_optimizers", {
            group: group_optimizers.scaled_copy(self.optimizer, factor)
            for group, factor in multipliers.items()
        })
        self.learning_rate_multipliers = multipliers
        _keras_compat.set_compile_config(
            self,
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

    def compile_from_config(self, config):
        self.compile(**_keras_compat.deserialize_compile_config(config))
        if self.built:
            self.build_optimizers()

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
        for container in [self.encoder] + list(self.heads.values()):
            for layer in tc.task_variable_layers(container):
                variables += [v for v in layer.task_variables(i) if v.trainable]
        return unique_variables(variables)

    def network_variables(self, absent_tasks=()):
        """All trainable network variables, minus those of `absent_tasks`."""
        excluded = [v for task in absent_tasks for v in self.task_specific_variables(task)]
        variables = self.shared_variables()
        for task in self.task_names:
            variables += self.heads[task].trainable_variables
        for aux in self.auxiliaries:
            variables += aux.trainable_variables
        return unique_variables(variables, excluded)

    def forward_state_variables(self):
        """Non-trainable network state a forward pass may change (BN statistics)."""
        layers = [self.encoder] + list(self.heads.values())
        return unique_variables(v for layer in layers for v in layer.non_trainable_variables)

    def variable_groups(self):
        """`{id(variable): group}` for the task-specific and auxiliary groups."""
        groups = {}
        for task in self.task_names:
            groups.update({id(v): "task_specific" for v in self.task_specific_variables(task)})
        for aux in self.auxiliaries:
            groups.update({id(v): aux.group for v in aux.trainable_variables})
        return groups

    def build_optimizers(self):
        """Builds each optimizer on every variable of its group (idempotent).

        Also gives the balancer the shared variables' total size
        (`Balancer.build_gradient_state`), for state sized by it.
        """
        for opt, variables in group_optimizers.split_by_optimizer(
                self, self.network_variables()):
            if not opt.built:
                opt.build(variables)
        for opt in self.group_optimizers.values():
            if not opt.built:
                opt.build([])
        if self.balancer is not None and self.built:
            self.balancer.build_gradient_state(
                sum(int(np.prod(v.shape)) for v in self.shared_variables()))

    def apply_network_gradients_to(self, variables):
        """`apply(grads, finite=None)`: one optimizer step of `variables`, group by group.

        `grads` are unscaled; under loss scaling (`finite` given: whether
        the step is applied) each `LossScaleOptimizer` gets them times its
        scale, or non-finite on an overflow step
        (`keras_mtl.training.optimizers.loss_scaled`).
        """
        def apply(grads, finite=None):
            by_id = {id(v): g for v, g in zip(variables, grads)}
            for opt, vs in group_optimizers.split_by_optimizer(self, variables):
                gs = [by_id[id(v)] for v in vs]
                if finite is not None:
                    gs = group_optimizers.loss_scaled(opt, gs, finite)
                opt.apply(gs, vs)
        return apply

    def task_objective_scale(self):
        """The factor prod_a (1 - w_a) of the task objective next to auxiliaries."""
        scale = 1.0
        for aux in self.auxiliaries:
            scale *= 1.0 - aux.weight
        return scale

    # ------------------------------------------------------------------
    # Losses (keras_mtl.training.losses)
    # ------------------------------------------------------------------
    def check_labels(self, y):
        return losses_module.check_labels(self, y)

    def compute_task_losses(self, y, outputs, sample_weight=None):
        """Per-task losses: see `keras_mtl.training.losses.task_losses`."""
        return losses_module.task_losses(self, y, outputs, sample_weight)

    # ------------------------------------------------------------------
    # Train / test / predict
    # ------------------------------------------------------------------
    def train_step(self, data):
        return training.train_step(self, data)

    def test_step(self, data):
        return training.test_step(self, data)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    @property
    def metrics(self):
        metrics = [self.loss_tracker] + self.task_loss_trackers + self.task_weight_trackers
        for task in self.task_names:
            metrics += self.task_metrics.get(task, [])
        for aux in self.auxiliaries:
            metrics += aux.metrics
        return metrics

    # ------------------------------------------------------------------
    # fit: preparation and the step guard
    # ------------------------------------------------------------------
    def fit(self, x=None, *args, callbacks=None, **kwargs):
        training.prepare(self, x)
        callbacks = list(callbacks or []) + [training.StepGuard()]
        return super().fit(x, *args, callbacks=callbacks, **kwargs)

    # ------------------------------------------------------------------
    # Checkpoint compatibility
    # ------------------------------------------------------------------
    def checkpoint_signature(self):
        """What a checkpoint of this model must match: tasks and balancer."""
        return checkpointing.signature(self)

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
        checkpointing.save_signature(self, store)

    def load_own_variables(self, store):
        super().load_own_variables(checkpointing.check_and_strip_signature(self, store))

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
        if self.dtype_policy.name != "float32":
            # A mixed precision model reloads as one (its compile then wraps
            # the optimizer in a LossScaleOptimizer again).
            config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
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

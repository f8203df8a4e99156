"""The balancer interface: how a multi-task train step turns T losses into one update."""

import sys

import keras
import tensorflow as tf

# What a balancer asks the train step to compute, cheapest first.
LOSSES = "losses"
"""Only the per-task losses (equal/static weights, uncertainty, DWA, GLS, RLW, IMTL-L)."""
LAYER_GRAD_NORMS = "layer_grad_norms"
"""Per-task gradient norms ||d L_t / d W|| at one shared kernel W (GradNorm)."""
FEATURE_GRADS = "feature_grads"
"""Per-task gradients d L_t / d z at the shared representation z (IMTL-G, MGDA-UB)."""
SHARED_GRADS = "shared_grads"
"""Per-task gradients w.r.t. every shared parameter (exact PCGrad / MGDA / IMTL-G)."""
REQUIREMENTS = (LOSSES, LAYER_GRAD_NORMS, FEATURE_GRADS, SHARED_GRADS)


class Balancer(keras.layers.Layer):
    """Base class of the multi-task balancing strategies.

    A balancer is a small Keras-tracked object: hyper-parameters in
    `__init__`, state (task weights, initial losses, learned scales, loss
    histories, step counters) in Keras variables created by `build(task_names)`,
    so `.keras` files, `tf.train.Checkpoint` and `BackupAndRestore` keep it.
    `MultiTaskModel.compile(balancer=...)` builds it once the task names are
    known.

    The train step talks to a balancer through four methods:

    - `combine(losses, present)`: the scalar loss whose gradient trains the
      task-specific parameters (heads) and, for `requires == LOSSES` and
      `LAYER_GRAD_NORMS`, the shared ones as well. The default is
      `sum_t w_t * L_t` over present tasks with `w = task_weights()`.
      It may depend on the balancer's own learned variables (listed by
      `learned_variables`): the train step differentiates `combine` w.r.t.
      them too and hands the result to `apply_learned_gradients`.
    - `gradient_losses(losses)`: the per-task losses whose gradients form the
      rows of the gradient matrix G (gradient balancers only). Defaults to
      `losses`.
    - `aggregate(grads, losses, present)`: for `FEATURE_GRADS` and
      `SHARED_GRADS`, map G (T x d) to the combined shared gradient (d,).
    - `update(losses, present, grad_norms=None)`: the balancer's own state
      update after the network's gradients are taken (GradNorm's weight
      step, DWA's loss history, counters). Runs once per train step.

    `losses` is a float32 vector (T,) of per-task mean losses, `present` a
    float32 vector (T,) of 1.0 for the tasks labelled in the batch and 0.0
    for the others (a missing task's loss is 0 and must not move the state).

    Args:
        optimizer: optimizer for the balancer's learned variables (GradNorm's
            w_i, uncertainty log-variances, IMTL-L scales). A string, config
            or instance, resolved with `keras.optimizers.get`. Defaults to
            each balancer's paper value.
        name: layer name.
    """

    requires = LOSSES

    def __init__(self, optimizer=None, name=None, **kwargs):
        super().__init__(name=name, trainable=False, **kwargs)
        self._optimizer_config = optimizer
        self.optimizer = None
        self.task_names = None

    # --- construction -----------------------------------------------------
    def build(self, task_names):
        """Creates the state for `task_names` (a list of task names)."""
        task_names = list(task_names)
        if not task_names:
            raise ValueError(
                f"A balancer needs at least one task. Received: task_names={task_names}"
            )
        self.task_names = task_names
        self.num_tasks = len(task_names)
        # An optimizer made outside the strategy's scope (e.g. by gin) is
        # re-created here, inside it.
        from keras_mtl.distribute import in_current_scope

        self._optimizer_config = in_current_scope(self._optimizer_config)
        self.build_state(self.num_tasks)
        if self.learned_variables:
            self.optimizer = keras.optimizers.get(
                self._optimizer_config or self.default_optimizer()
            )
            self.optimizer.build(self.learned_variables)
        self.built = True

    def build_state(self, num_tasks):
        """Creates the Keras variables of the balancer's state (override)."""

    def default_optimizer(self):
        return keras.optimizers.Adam(learning_rate=0.025)

    def add_state(self, name, shape, initializer="zeros", dtype="float32"):
        """A non-trainable Keras variable that checkpoints with the model.

        Balancer variables are updated by the balancer itself, never by the
        model's optimizer, so they are all created non-trainable; replicas
        under `tf.distribute` keep one copy (updates come from values that the
        train step has already reduced across replicas).
        """
        return self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            dtype=dtype,
            trainable=False,
            aggregation="only_first_replica",
        )

    @property
    def learned_variables(self):
        """Variables that `combine` is differentiated against (override)."""
        return []

    # --- the step ---------------------------------------------------------
    def task_weights(self):
        """Current task weights (T,), reported as `<task>_weight` metrics."""
        return tf.ones([self.num_tasks], dtype="float32")

    def combine(self, losses, present):
        w = tf.convert_to_tensor(self.task_weights())
        return tf.reduce_sum(w * losses * present)

    def gradient_losses(self, losses):
        return losses

    def aggregate(self, grads, losses, present):
        raise NotImplementedError(
            f"{type(self).__name__} declares requires={self.requires!r} but "
            "implements no `aggregate`."
        )

    def update(self, losses, present, grad_norms=None):
        """State update after the step (override). Must return nothing."""

    def apply_learned_gradients(self, grads):
        """Applies d combine / d learned_variables with the balancer optimizer."""
        self.apply_balancer_gradients(grads, self.learned_variables)
        self.after_learned_update()

    def apply_balancer_gradients(self, grads, variables):
        """Steps the balancer's optimizer on its own variables.

        Gradients given here are computed from values already reduced across
        replicas, so they are identical on every replica; the Keras optimizer
        sums gradients over replicas, hence the division.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            grads = [g / replicas for g in grads]
        self.optimizer.apply(grads, variables)

    def warn_if(self, condition, message, *values):
        """Prints a warning to stderr from inside the compiled train step.

        Skipped under XLA (`jit_compile=True`), where host prints cannot be
        compiled; balancers also count such events in a state variable.
        """
        if getattr(self, "_xla", False):
            return
        tf.cond(
            condition,
            lambda: _print_true(message, *values),
            lambda: tf.constant(False),
        )

    def after_learned_update(self):
        """Hook run after the learned variables move (projection, renorm)."""

    # --- Keras plumbing ---------------------------------------------------
    def call(self, losses):
        raise TypeError(
            "A balancer is not called like a layer: pass it to "
            "`MultiTaskModel.compile(balancer=...)`."
        )

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.pop("dtype", None)
        if self._optimizer_config is not None:
            config["optimizer"] = keras.optimizers.serialize(
                keras.optimizers.get(self._optimizer_config)
            )
        return config

    def _hparams(self):
        config = self.get_config()
        config.pop("name", None)
        config.pop("optimizer", None)
        return config

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._hparams().items())
        return f"{type(self).__name__}({args})"


def _print_true(message, *values):
    with tf.control_dependencies(
        [tf.print(message, *values, output_stream=sys.stderr)]
    ):
        return tf.constant(True)


def check_positive(name, value, allow_zero=True):
    """Raises a clear error for a negative (or zero) hyper-parameter."""
    bad = value < 0 if allow_zero else value <= 0
    if bad or value != value:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a number "
            f"{bound}. Received: {name}={value}"
        )
    return value

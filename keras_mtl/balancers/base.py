"""The balancer interface: how a multi-task train step turns T losses into one update."""

import random

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

    `requires` says what the train step computes for it (`LOSSES`,
    `LAYER_GRAD_NORMS`, `FEATURE_GRADS` or `SHARED_GRADS`); the engine
    (`keras_mtl.training`) has one gradient function per requirement and
    talks to the balancer through these methods:

    - `combine(losses, present)`: the scalar whose derivatives d/dL_t weigh
      the task gradients of the task-specific parameters (heads) and, for
      `LOSSES` and `LAYER_GRAD_NORMS`, of the shared ones as well. The
      default is `sum_t w_t * L_t` over present tasks with
      `w = task_weights()`. It may depend on the balancer's `learned_variables`:
      the step differentiates `combine` w.r.t. them and hands the result to
      `apply_learned_gradients`.
    - `record_grad_norms(norms)` (`LAYER_GRAD_NORMS`): the per-task norms
      ||dL_t/dW|| at the balancer's `find_kernel(encoder)`.
    - `aggregate(grads, losses, present)` (`FEATURE_GRADS`, `SHARED_GRADS`):
      maps the task-gradient matrix G (T x d) to the shared direction (d,).
    - `update(losses, present)`: the balancer's own state update, once per
      step, after the network's gradients are taken.
    - `build_gradient_state(dim)`: called by the model once its shared
      variables exist (`MultiTaskModel.build_optimizers`: before the first
      traced step, under the distribution strategy's scope) with `dim`, the
      total size of the shared variables, i.e. the number of columns of G in
      `SHARED_GRADS` mode. Balancers with per-task gradient state (T, dim)
      create it here (see `TrackedGradientBalancer`); the default does
      nothing. It must be idempotent.

    `losses` is a float32 vector (T,) of per-task mean losses, `present` a
    float32 vector (T,) of 1.0 for the tasks that take part in the step and
    0.0 for the others (absent, unlabelled, or excluded for a non-finite
    value: their loss is 0 and must not move the state). The step is
    transactional: if any value it produced is not finite, the balancer's
    variables and its optimizer's are restored as they were.

    Args:
        optimizer: optimizer of the balancer's `optimized_variables`
            (GradNorm's w_i, uncertainty log-variances, IMTL-L scales). A
            string, config or instance, resolved with `keras.optimizers.get`.
            Defaults to each balancer's paper value.
        name: layer name.
    """

    requires = LOSSES

    def __init__(self, optimizer=None, name=None, **kwargs):
        # State and arithmetic in float32 whatever the global dtype policy
        # (mixed_float16 / mixed_bfloat16 apply to the network only).
        kwargs.setdefault("dtype", "float32")
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
        if self.optimized_variables:
            self.optimizer = keras.optimizers.get(
                self._optimizer_config or self.default_optimizer()
            )
            self.optimizer.build(self.optimized_variables)
        self.built = True

    def build_state(self, num_tasks):
        """Creates the Keras variables of the balancer's state (override)."""

    def build_gradient_state(self, dim):
        """Creates state sized by the shared parameters' total size (override).

        The default does nothing; see the class docstring.
        """

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

    @property
    def optimized_variables(self):
        """Variables stepped by the balancer's optimizer (override to add more)."""
        return self.learned_variables

    def state_variables(self):
        """Every variable of the balancer's state and of its optimizer."""
        variables = list(self.variables)
        if self.optimizer is not None:
            variables += list(self.optimizer.variables)
        return variables

    # --- the step ---------------------------------------------------------
    def task_weights(self):
        """Current task weights (T,), reported as `<task>_weight` metrics."""
        return tf.ones([self.num_tasks], dtype="float32")

    def combine(self, losses, present):
        w = tf.convert_to_tensor(self.task_weights())
        return tf.reduce_sum(w * losses * present)

    def aggregate(self, grads, losses, present):
        raise NotImplementedError(
            f"{type(self).__name__} declares requires={self.requires!r} but "
            "implements no `aggregate`."
        )

    def record_grad_norms(self, norms):
        raise NotImplementedError(
            f"{type(self).__name__} declares requires={self.requires!r} but "
            "implements no `record_grad_norms`."
        )

    def update(self, losses, present):
        """State update after the step (override). Must return nothing."""

    def apply_learned_gradients(self, grads):
        """Applies d combine / d learned_variables with the balancer optimizer."""
        self.optimizer_step(grads, self.learned_variables)

    def optimizer_step(self, grads, variables):
        """Steps the balancer's optimizer on its own variables.

        Gradients given here are computed from values already reduced across
        replicas, so they are identical on every replica; the Keras optimizer
        sums gradients over replicas, hence the division.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            grads = [g / replicas for g in grads]
        self.optimizer.apply(grads, variables)

    def warnings(self):
        """`[(counter_variable, message)]`: events the fit loop reports.

        A balancer counts a noteworthy event (e.g. GradNorm flooring its
        weights) in an int64 state variable; `keras_mtl.training.StepGuard`
        turns each increase into a Python `BalancerWarning`, which warning
        filters can silence (nothing is printed from inside the graph).
        """
        return []

    # --- Keras plumbing ---------------------------------------------------
    def call(self, losses):
        raise TypeError(
            "A balancer is not called like a layer: pass it to "
            "`MultiTaskModel.compile(balancer=...)`."
        )

    def compute_output_shape(self, *args, **kwargs):
        """(T,): what a balancer produces per step, its task weights (for summaries)."""
        return (self.num_tasks,) if self.task_names else (None,)

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


class BalancerWarning(UserWarning):
    """A balancer event worth a user's attention (see `Balancer.warnings`)."""


MODES = {"features": FEATURE_GRADS, "shared": SHARED_GRADS}


class GradientBalancer(Balancer):
    """Base of the balancers that map the task-gradient matrix G to one gradient.

    `mode="features"` asks the train step for feature-level gradients
    `dL_t/dz` at the shared representation z (one backward pass of each head,
    then one pass of the combined gradient through the trunk);
    `mode="shared"` for the gradients w.r.t. every shared parameter (T
    backward passes through the trunk: the "exact" variants). Task-specific
    parameters (heads) train on their own raw loss, `combine = sum_t L_t`,
    as in the papers' algorithms. The weights of the last step are kept in a
    state variable and reported as `<task>_weight`.

    Subclasses implement `gradient_weights(grads, losses, present) -> (T,)`
    or override `aggregate` for directions that are not a weighting of G.

    Args:
        mode: `"features"` (default) or `"shared"`.
    """

    def __init__(self, mode="features", optimizer=None, name=None, **kwargs):
        super().__init__(optimizer=optimizer, name=name, **kwargs)
        if mode not in MODES:
            raise ValueError(
                "Invalid value received for argument `mode`. Expected one of "
                f"{sorted(MODES)}. Received: mode={mode!r}"
            )
        self.mode = mode
        self.requires = MODES[mode]

    def build_state(self, num_tasks):
        self.last_weights = self.add_state(
            "last_weights", (num_tasks,), initializer="ones"
        )

    def task_weights(self):
        return tf.convert_to_tensor(self.last_weights)

    def combine(self, losses, present):
        return tf.reduce_sum(losses * present)

    def gradient_weights(self, grads, losses, present):
        raise NotImplementedError(
            f"{type(self).__name__} implements neither `gradient_weights` nor "
            "`aggregate`."
        )

    def aggregate(self, grads, losses, present):
        grads = tf.convert_to_tensor(grads)
        weights = tf.cast(self.gradient_weights(grads, losses, present), grads.dtype)
        self.last_weights.assign(self.reported_weights(weights))
        return tf.linalg.matvec(grads, weights, transpose_a=True)

    def reported_weights(self, weights):
        """The weights on the raw losses reported as metrics (override)."""
        return tf.cast(weights, "float32")

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class TrackedGradientBalancer(GradientBalancer):
    """Base of the balancers that keep a per-task state of the gradients (T, d).

    DB-MTL's gradient EMA, MoCo's tracked gradients and ExcessMTL's
    accumulated squared gradients carry one entry per column of G from step
    to step. That is only meaningful at the parameter level
    (`mode="shared"`, d = the number of shared parameters, fixed once the
    model is built): in `"features"` mode the columns are per-example
    gradients at the shared representation, whose number and meaning change
    with every batch, so these balancers reject it.

    The state is created by `build_gradient_state(dim)`, which the model
    calls before the first traced step (`build_gradient_variables(num_tasks,
    dim)` in subclasses). Called eagerly on an unprepared balancer,
    `aggregate` creates it from the matrix it receives.
    """

    def __init__(self, mode="shared", optimizer=None, name=None, **kwargs):
        if mode == "features":
            raise ValueError(
                f"{type(self).__name__} keeps a per-task state of the gradients "
                "(one entry per column of the task-gradient matrix) from step to "
                "step. In mode='features' the columns are per-example gradients "
                "at the shared representation: their number and meaning change "
                "with every batch, so the state cannot carry across steps. Use "
                "mode='shared' (gradients w.r.t. every shared parameter)."
            )
        super().__init__(mode=mode, optimizer=optimizer, name=name, **kwargs)
        self.gradient_dim = None

    def build_gradient_state(self, dim):
        dim = int(dim)
        if not self.built:
            raise ValueError(
                f"{type(self).__name__}.build_gradient_state needs the task "
                "names first: build the balancer (or compile the model) before."
            )
        if self.gradient_dim is not None:
            if dim != self.gradient_dim:
                raise ValueError(
                    f"{type(self).__name__} was built for {self.gradient_dim} "
                    f"shared parameters, but the model has {dim}. A balancer with "
                    "gradient state belongs to one model: use a new instance."
                )
            return
        from keras_mtl import _keras_compat

        self.gradient_dim = dim
        with _keras_compat.unlocked_state(self):
            self.build_gradient_variables(self.num_tasks, dim)

    def build_gradient_variables(self, num_tasks, dim):
        """Creates the (num_tasks, dim) state variables (override)."""

    def ensure_gradient_state(self, grads):
        """Checks (or, eagerly, creates) the state for the matrix `grads`."""
        dim = grads.shape[1]
        if self.gradient_dim is None:
            if not tf.executing_eagerly() or dim is None:
                raise RuntimeError(
                    f"{type(self).__name__} keeps per-parameter state that must "
                    "exist before the first traced step: `model.fit` creates it; "
                    "otherwise call `model.build_optimizers()` (or "
                    "`balancer.build_gradient_state(num_shared_parameters)`) "
                    "first."
                )
            self.build_gradient_state(dim)
        elif dim is not None and dim != self.gradient_dim:
            raise ValueError(
                f"{type(self).__name__} was built for {self.gradient_dim} shared "
                f"parameters, but received gradients of size {dim}."
            )


def resolve_seed(seed):
    """A Python int seed; None draws one (kept in the config for replays)."""
    if seed is None:
        return random.SystemRandom().randrange(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(
            "Invalid value received for argument `seed`. Expected None or an "
            f"integer. Received: seed={seed!r}"
        )
    return seed


class SeededMixin:
    """Per-step stateless randomness for a balancer: seed `(seed, step)`.

    The step counter is balancer state, so every replica of a distributed
    step and every resumed run draws the same numbers. Call
    `build_step_counter()` from `build_state` and `advance()` from `update`.
    """

    def build_step_counter(self):
        self.step = self.add_state("step", (), dtype="int64")

    def step_seed(self):
        return tf.stack([tf.constant(self.seed, "int64"), tf.convert_to_tensor(self.step)])

    def advance(self):
        self.step.assign_add(1)


def check_fraction(name, value):
    """Raises a clear error for a hyper-parameter outside [0, 1]; returns it as a float."""
    if not 0 <= value <= 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a number "
            f"between 0 and 1. Received: {name}={value!r}"
        )
    return float(value)


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

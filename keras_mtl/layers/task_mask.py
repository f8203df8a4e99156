"""Binary task masks on shared channels: Maximum Roaming and Task Routing."""

import keras
import numpy as np
import tensorflow as tf

from keras_mtl.layers.task_conditioned import TaskConditionedLayer

# Stream numbers of the stateless RNG: the initial partition draws from
# (seed, _INIT_STREAM) and (seed, _ORPHAN_STREAM); roaming update c draws from
# (seed, c), so update c is a pure function of (seed, c, mask, visited).
_INIT_STREAM = -1
_ORPHAN_STREAM = -2


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskMask(TaskConditionedLayer):
    """Per-task binary channel mask of a shared layer (Maximum Roaming).

    Holds the partition matrix M (units, T) of one shared layer: the output
    for an example of task t is multiplied channel-wise by column t (the
    paper's Eq. 2). Place it after a convolution or dense layer, e.g.
    Conv -> BatchNorm -> TaskMask -> ReLU, inside a `TaskSequential` encoder
    of a `MultiTaskModel`, which folds the T per-task passes into the batch.

    Initialisation: every m_{i,t} ~ Bernoulli(p); a unit used by no task is
    given to one task drawn uniformly (constraint 3). `p=0` is a disjoint
    partition, `p=1` the plain shared layer. With constraint 3 the marginal
    P(m_{i,t} = 1) is p + (1 - p)^T / T.

    Roaming (Definition 1): `roam()` applies one update of the plan to every
    task t: a unit i- drawn uniformly from the active set A_t leaves it and a
    unit i+ drawn uniformly from the units t has never used (outside the
    visited set B_t) joins it. |A_t| never changes (Lemma 1) and
    P(m_{i,t} = 1) stays at its initial value (Lemma 2). The
    `keras_mtl.callbacks.MaximumRoaming` callback calls `roam()` every Delta
    steps. For fixed masks (Task Routing) use `TaskRouting`.

    Batch statistics: in the folded batch a plain `BatchNormalization`
    computes its statistics over all tasks' passes together, which couples
    them: in training mode a task's loss then reaches units it drops in
    earlier layers through the batch statistics of later BN layers. The
    paper's passes are separate; to reproduce Eq. 2 exactly in deep stacks
    use per-task statistics (`TaskBatchNormalization`).

    The mask, the visited sets B_t and the update counter c are non-trainable
    Keras variables, saved in `.keras` files and checkpoints. All draws come
    from a stateless RNG keyed by (seed, c), so a resumed run makes the same
    next update as an uninterrupted one.

    Args:
        num_tasks: number of tasks T.
        sharing_ratio: p in [0, 1], the probability that a task uses a unit.
            Defaults to `0.5`.
        axis: the channel axis of the input. Defaults to `-1`.
        seed: int seed of the partition and of the roaming draws. `None`
            draws one from NumPy's global RNG (seeded by
            `keras.utils.set_random_seed`) and stores it in the config.

    Call arguments:
        inputs: a tensor (batch, ..., units, ...) with units on `axis`.
        task: int tensor (batch,) of task indices in [0, T), or a scalar
            task index for the whole batch.

    Example:

    >>> encoder = keras_mtl.layers.TaskSequential([
    ...     keras.layers.Conv2D(16, 3, padding="same"),
    ...     keras.layers.BatchNormalization(),
    ...     keras_mtl.layers.TaskMask(num_tasks=2, sharing_ratio=0.6, seed=1),
    ...     keras.layers.ReLU(),
    ... ])
    >>> y = encoder(np.zeros((4, 8, 8, 3)), task=np.array([0, 0, 1, 1]))

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021.
    """

    roaming = True

    def __init__(self, num_tasks, sharing_ratio=0.5, axis=-1, seed=None, **kwargs):
        super().__init__(num_tasks=num_tasks, **kwargs)
        if (
            isinstance(sharing_ratio, bool)
            or not isinstance(sharing_ratio, (int, float, np.integer, np.floating))
            or not 0.0 <= float(sharing_ratio) <= 1.0
        ):
            raise ValueError(
                "Invalid value received for argument `sharing_ratio`. Expected a "
                f"float in [0, 1]. Received: sharing_ratio={sharing_ratio}"
            )
        if not isinstance(axis, int):
            raise ValueError(
                "Invalid value received for argument `axis`. Expected an int. "
                f"Received: axis={axis}"
            )
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(
                "Invalid value received for argument `seed`. Expected an int or "
                f"None. Received: seed={seed}"
            )
        self.sharing_ratio = float(sharing_ratio)
        self.axis = axis
        self.seed = int(seed)

    # --- weights ------------------------------------------------------------
    def build(self, input_shape):
        rank = len(input_shape)
        axis = self.axis % rank
        units = input_shape[axis]
        if units is None or axis == 0:
            raise ValueError(
                f"TaskMask '{self.name}' needs a known channel dimension on "
                f"axis={self.axis} (not the batch axis). Received: "
                f"input_shape={input_shape}"
            )
        self.units = int(units)
        self._rank = rank
        initial = self.initial_mask()
        self.mask = self.add_weight(
            name="mask",
            shape=(self.units, self.num_tasks),
            initializer=lambda shape, dtype=None: tf.constant(initial, "float32"),
            dtype="float32",
            trainable=False,
            aggregation="only_first_replica",
        )
        if self.roaming:
            self.visited = self.add_weight(
                name="visited",
                shape=(self.units, self.num_tasks),
                initializer=lambda shape, dtype=None: tf.constant(initial, "float32"),
                dtype="float32",
                trainable=False,
                aggregation="only_first_replica",
            )
            self.update_count = self.add_weight(
                name="update_count",
                shape=(),
                initializer="zeros",
                dtype="int64",
                trainable=False,
                aggregation="only_first_replica",
            )
        self.built = True

    def initial_mask(self):
        """The seeded initial partition M(0), a float32 array (units, T).

        Bernoulli(p) entries; rows that no task uses go to one uniformly drawn
        task (constraint 3).
        """
        shape = (self.units, self.num_tasks)
        with tf.init_scope():
            u = tf.random.stateless_uniform(shape, seed=[self.seed, _INIT_STREAM])
            mask = tf.cast(u < self.sharing_ratio, "float32")
            owner = tf.argmax(
                tf.random.stateless_uniform(shape, seed=[self.seed, _ORPHAN_STREAM]),
                axis=1,
            )
            orphan = tf.reduce_sum(mask, axis=1, keepdims=True) == 0.0
            mask = tf.where(orphan, tf.one_hot(owner, self.num_tasks), mask)
            return mask.numpy()

    # --- forward ------------------------------------------------------------
    def call(self, inputs, task=None, training=None):
        if task is None:
            raise ValueError(
                f"TaskMask '{self.name}' needs `task=`: an int32 vector with the "
                "task index of every example (or one scalar task index)."
            )
        inputs = tf.convert_to_tensor(inputs)
        task = tf.cast(task, "int32")
        if task.shape.rank == 0:
            task = tf.fill(tf.shape(inputs)[:1], task)
        columns = tf.gather(tf.transpose(self.mask), task)  # (batch, units)
        shape = [1] * self._rank
        shape[self.axis % self._rank] = self.units
        shape = tf.concat([tf.shape(task), shape[1:]], axis=0)
        return inputs * tf.cast(tf.reshape(columns, shape), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    # --- roaming (Definition 1) --------------------------------------------
    def _targets(self, completion):
        """|B_t| at which task t stops: |A_t| + ceil(r (S - |A_t|)), per task."""
        active = tf.reduce_sum(tf.convert_to_tensor(self.mask), axis=0)
        left = float(self.units) - active
        return active + tf.math.ceil(completion * left - 1e-6)

    def roam(self, completion=1.0):
        """Applies one update of the roaming plan to every task.

        For each task t that has not finished, one unit i- drawn uniformly
        from A_t leaves the partition and one unit i+ drawn uniformly from
        the never-visited units joins it (and B_t). Task t has finished when
        |B_t| reaches |A_t| + ceil(r (S - |A_t|)), r the completion rate; for
        r = 1 that is when it has visited every unit, after S - |A_t| updates,
        about r (1 - p) S. The counter c advances by one in every call.

        Args:
            completion: the completion rate r in [0, 1]. Defaults to `1.0`.

        Returns:
            int32 scalar tensor: the number of tasks that were updated.
        """
        self._check_roaming()
        mask = tf.convert_to_tensor(self.mask)
        visited = tf.convert_to_tensor(self.visited)
        count = tf.convert_to_tensor(self.update_count)
        key = tf.stack([tf.constant(self.seed, "int64"), count])
        u = tf.random.stateless_uniform((2, self.units, self.num_tasks), seed=key)
        active = mask > 0.5
        unvisited = visited < 0.5
        go = (
            tf.reduce_any(active, axis=0)
            & tf.reduce_any(unvisited, axis=0)
            & (tf.reduce_sum(visited, axis=0) < self._targets(completion))
        )
        # argmax of iid uniforms restricted to a set = a uniform draw from it.
        i_minus = tf.argmax(tf.where(active, u[0], -1.0), axis=0)
        i_plus = tf.argmax(tf.where(unvisited, u[1], -1.0), axis=0)
        go_f = tf.cast(go, "float32")
        leave = tf.one_hot(i_minus, self.units, axis=0) * go_f
        join = tf.one_hot(i_plus, self.units, axis=0) * go_f
        self.mask.assign(mask - leave + join)
        self.visited.assign(tf.maximum(visited, join))
        self.update_count.assign_add(1)
        return tf.reduce_sum(tf.cast(go, "int32"))

    def plan_finished(self, completion=1.0):
        """True when no task of this layer has an update left at rate r."""
        self._check_roaming()
        visited = tf.convert_to_tensor(self.visited)
        mask = tf.convert_to_tensor(self.mask)
        pending = (
            tf.reduce_any(mask > 0.5, axis=0)
            & tf.reduce_any(visited < 0.5, axis=0)
            & (tf.reduce_sum(visited, axis=0) < self._targets(completion))
        )
        return not bool(tf.reduce_any(pending))

    def _check_roaming(self):
        if not self.roaming:
            raise ValueError(
                f"Layer '{self.name}' ({type(self).__name__}) has fixed masks and "
                "does not roam. Use `TaskMask` for Maximum Roaming."
            )
        if not self.built:
            raise ValueError(
                f"TaskMask '{self.name}' is not built yet: call it on data (or "
                "build the model) before roaming."
            )

    def get_config(self):
        return {
            **super().get_config(),
            "sharing_ratio": self.sharing_ratio,
            "axis": self.axis,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="keras_mtl")
class TaskRouting(TaskMask):
    """Fixed per-task binary channel masks (Task Routing).

    The same layer as `TaskMask` with a partition that never changes: it has
    no visited sets or update counter, `roam()` raises, and the
    `MaximumRoaming` callback ignores it. Initialised as in `TaskMask`
    (Bernoulli(p) plus constraint 3), the fixed-partition baseline of the
    Maximum Roaming paper.

    Args:
        num_tasks: number of tasks T.
        sharing_ratio: p in [0, 1], the probability that a task uses a unit.
            Defaults to `0.5`.
        axis: the channel axis of the input. Defaults to `-1`.
        seed: int seed of the partition; `None` draws one from NumPy's global
            RNG and stores it in the config.

    Example:

    >>> layer = keras_mtl.layers.TaskRouting(num_tasks=3, sharing_ratio=0.8, seed=0)
    >>> y = layer(np.ones((3, 16)), task=np.array([0, 1, 2]))

    Reference:
        Strezoski, van Noord and Worring, "Many Task Learning With Task
        Routing", ICCV 2019.
    """

    roaming = False

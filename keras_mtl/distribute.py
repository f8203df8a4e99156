"""Distributed training helpers: strategies by name, the XLA fallback, a multi-worker loop.

`MultiTaskModel.train_step` is one code path for one device,
`MirroredStrategy` and `MultiWorkerMirroredStrategy`: per-task losses are
un-scaled means that are all-reduced (MEAN) across replicas before any
balancer reads them (`combine` is evaluated at the replica-mean losses, so
non-linear combinations such as GLS get the global batch's derivatives),
GradNorm's kernel gradients and the shared-parameter gradient matrix are
all-reduced too, the feature-level matrix dL_t/dz (one column block per
replica) is all-gathered so IMTL-G / MGDA / PCGrad weigh the global matrix,
the network loss is scaled by 1/R (the optimizer sums over replicas), and
balancer state, masks and counters are variables with
`aggregation="only_first_replica"`, so every replica holds the same balancer
state after every step. `tests/test_distribute.py` checks that one epoch on
2 logical CPU devices ends with the same weights as one device, for every
registered balancer and a roaming-mask model.

Exact resume needs a data stream whose batch k depends on k only:
`position_seeded_stream`.

Two limits of the stack (Keras 3.15, TensorFlow 2.21), handled here:

- `jit_compile=True` under a strategy with more than one replica fails to
  compile even for a plain model: `resolve_jit_compile` turns it off with
  one warning (graph mode, same numbers). `MultiTaskModel.compile` calls it.
- `model.fit` under `MultiWorkerMirroredStrategy` fails on Keras 3
  (keras-team/keras#20585). `fit` below is the path the launcher takes for
  `--distribution_strategy=multi_worker`: a custom loop that runs the same
  `model.train_step` with `strategy.run` on a distributed dataset, with
  Keras callbacks (`BackupAndRestore`, `MaximumRoaming`, ...) called as
  `model.fit` calls them.
"""

import os
import warnings

import keras
import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")

_WARNED_JIT = False


def get_strategy(name="default", devices=None):
    """Returns a `tf.distribute.Strategy` from its launcher name.

    Args:
        name: `"default"` (TensorFlow's default strategy), `"one_device"`
            (first GPU if any, else CPU), `"mirrored"` (all local GPUs, or
            `devices`), `"multi_worker"` (`MultiWorkerMirroredStrategy`,
            cluster from `TF_CONFIG`) or `"tpu"` (`TPUStrategy`; raises when
            no TPU is found).
        devices: optional device names for `"mirrored"` / `"one_device"`.

    Example:

    >>> strategy = keras_mtl.distribute.get_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = build_model(); model.compile(...)
    """
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    if name == "one_device":
        if devices:
            device = devices[0]
        else:
            device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy()
    raise ValueError(
        "Invalid value received for argument `distribution_strategy`. Expected "
        f"one of {STRATEGIES}. Received: distribution_strategy={name!r}"
    )


def _tpu_strategy():
    """TPUStrategy on a local or named TPU; a clear error when there is none."""
    local = tf.config.list_logical_devices("TPU")
    named = os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
    if not local and not named:
        raise ValueError(
            "distribution_strategy='tpu' needs a TPU, and none was found (no "
            "local TPU device, TPU_NAME unset). Use one_device, mirrored or "
            "multi_worker on this machine."
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu="" if local else named)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(
            f"distribution_strategy='tpu': could not reach the TPU ({e})."
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def resolve_jit_compile(jit_compile, strategy=None):
    """`jit_compile`, or False (with one warning) under a multi-replica strategy.

    XLA compilation of the train step failed under `MirroredStrategy` on
    this stack even for a plain model; graph mode gives the same numbers.
    """
    global _WARNED_JIT
    strategy = strategy or tf.distribute.get_strategy()
    if jit_compile is True and strategy.num_replicas_in_sync > 1:
        if not _WARNED_JIT:
            warnings.warn(
                "jit_compile=True is not supported under "
                f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} "
                "replicas on this stack (XLA compilation of a distributed "
                "train step fails); falling back to graph mode "
                "(jit_compile=False).",
                RuntimeWarning,
                stacklevel=3,
            )
            _WARNED_JIT = True
        return False
    return jit_compile


def prepare(model, strategy=None):
    """Applies `resolve_jit_compile` to an already compiled model; returns it."""
    if model.compiled and model.jit_compile:
        if not resolve_jit_compile(True, strategy):
            model.jit_compile = False
            model.make_train_function(force=True)
    return model


def in_current_scope(optimizer):
    """A Keras optimizer usable under the current strategy.

    Keras optimizers remember the strategy they were created under and
    cannot build their variables under another one (gin creates
    `@keras.optimizers.Adam()` before the launcher enters the strategy's
    scope). An unbuilt optimizer from another strategy is re-created from
    its config; anything else is returned unchanged.
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    created_under = getattr(optimizer, "_distribution_strategy", None)
    if (
        created_under is None
        or created_under is tf.distribute.get_strategy()
        or optimizer.built
    ):
        return optimizer
    return optimizer.__class__.from_config(optimizer.get_config())


def position_seeded_stream(examples, batch_size, seed=0):
    """An endless stream of batches where batch k depends on k only.

    Pass p over the in-memory `examples` is a permutation drawn with the
    stateless seed `(seed, p)`, batched with the remainder dropped. A
    `shuffle(..., reshuffle_each_iteration=True)` pipeline instead draws each
    pass's order from a generator shared by all iterators of the dataset,
    and Keras' `fit` under a strategy opens (and discards, after prefetching)
    one extra iterator, so the order a run reads depends on how far that
    iterator read. With this stream, `stream.skip(n)` is exactly where a run
    was after n steps: what `BackupAndRestore` needs for an exact resume.

    Args:
        examples: a nest of arrays / tensors with a common first dimension N
            (e.g. `(x, {task: y})`).
        batch_size: batch size (<= N).
        seed: int seed.

    Example:

    >>> stream = keras_mtl.distribute.position_seeded_stream((x, y), 64, seed=0)
    >>> model.fit(stream.skip(start_step), steps_per_epoch=100, epochs=10)
    """
    data = tf.nest.map_structure(tf.convert_to_tensor, examples)
    size = int(tf.nest.flatten(data)[0].shape[0])
    if not 0 < int(batch_size) <= size:
        raise ValueError(
            "Invalid value received for argument `batch_size`. Expected an int "
            f"in [1, {size}] (the number of examples). Received: "
            f"batch_size={batch_size}"
        )

    def one_pass(p):
        key = tf.stack([tf.constant(seed, "int64"), p])
        order = tf.argsort(tf.random.stateless_uniform([size], seed=key))
        return tf.data.Dataset.from_tensor_slices(order).batch(
            batch_size, drop_remainder=True)

    def gather(index):
        return tf.nest.map_structure(lambda t: tf.gather(t, index), data)

    return tf.data.Dataset.range(2**62).flat_map(one_pass).map(gather)


def _first_replica(strategy, value):
    return tf.nest.map_structure(
        lambda v: strategy.experimental_local_results(v)[0], value
    )


def fit(model, dataset, strategy=None, epochs=1, steps_per_epoch=None,
        callbacks=None, initial_epoch=0, verbose=0):
    """Trains `model` with a custom distributed loop over `model.train_step`.

    The loop the launcher uses for `MultiWorkerMirroredStrategy` (where
    `model.fit` fails on Keras 3); it works under any strategy. The dataset
    yields global batches; each is split across all replicas of all
    workers (data auto-sharding), so every worker must build the same
    dataset. The model must have been built and compiled under
    `strategy.scope()`.

    Args:
        model: a compiled `MultiTaskModel`.
        dataset: `tf.data.Dataset` of global batches `(x, {task: y})`.
        strategy: the strategy; defaults to the current one.
        epochs: number of epochs.
        steps_per_epoch: steps per epoch; defaults to one pass of `dataset`.
        callbacks: Keras callbacks, called like `model.fit` calls them.
        initial_epoch: epoch to start from (BackupAndRestore overrides it).
        verbose: 1 prints the logs of every epoch.

    Returns:
        a `keras.callbacks.History`.

    Example:

    >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()
    >>> with strategy.scope():
    ...     model = keras_mtl.models.toy_mlp(2); model.compile(loss="mse")
    >>> keras_mtl.distribute.fit(model, train_ds, strategy, epochs=3)
    """
    from keras_mtl import training

    strategy = strategy or tf.distribute.get_strategy()
    training.prepare(model, dataset, strategy)
    prepare(model, strategy)
    if steps_per_epoch is None:
        cardinality = int(dataset.cardinality())
        if cardinality < 0:
            raise ValueError(
                "`steps_per_epoch` is needed for a dataset of unknown or "
                f"infinite length. Received: cardinality={cardinality}"
            )
        steps_per_epoch = cardinality
        dataset = dataset.repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    dataset = dataset.with_options(options)
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        list(callbacks or []) + [training.StepGuard(), history],
        add_history=False,
        add_progbar=False,
        model=model,
        epochs=epochs,
        steps=steps_per_epoch,
        verbose=verbose,
    )

    @tf.function
    def train_step(iterator):
        data = next(iterator)
        logs = strategy.run(model.train_step, args=(data,))
        return _first_replica(strategy, logs)

    model.stop_training = False
    model._initial_epoch = None
    callback_list.on_train_begin()
    start = model._initial_epoch or initial_epoch
    # The data stream continues where the run left off: epoch e reads
    # batches e*steps_per_epoch ... of the (repeated) dataset.
    dataset = dataset.skip(start * steps_per_epoch)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for metric in model.metrics:
        metric.reset_state()
    logs = {}
    for epoch in range(start, epochs):
        for metric in model.metrics:
            metric.reset_state()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            logs = train_step(iterator)
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = {k: float(v) for k, v in logs.items()}
        callback_list.on_epoch_end(epoch, epoch_logs)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in epoch_logs.items()))
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history


"""Gin-configured training runs: what `launch/train.py` executes.

A gin file binds `train.model`, `train.train_data`, `train.loss`,
`train.balancer`, ... (see `gin/toy_gradnorm_t2.gin`). Model and dataset
factories are gin configurables (functions, never Keras classes); Keras
optimizers, schedules and losses and every keras-mtl balancer are registered
here with `gin.external_configurable`, so configs write
`@keras.optimizers.Adam()` or `@GradNorm()`.
"""

import contextlib
import json
import math
import os
import warnings

import gin
import keras
import tensorflow as tf

import keras_mtl
from keras_mtl import balancers
from keras_mtl import callbacks as mtl_callbacks
from keras_mtl import distribute as mtl_distribute
from keras_mtl import model as mtl_model
from keras_mtl.data import toy as toy_data_module
from keras_mtl.models import toy as _toy_models  # noqa: F401 (gin registration)

_REGISTERED = False


def register_gin_externals():
    """Registers Keras classes and all balancers with gin (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    for name in ("Adam", "AdamW", "SGD", "RMSprop"):
        gin.external_configurable(
            getattr(keras.optimizers, name), module="keras.optimizers"
        )
    for name in ("ExponentialDecay", "PiecewiseConstantDecay", "CosineDecay",
                 "PolynomialDecay"):
        gin.external_configurable(
            getattr(keras.optimizers.schedules, name),
            module="keras.optimizers.schedules",
        )
    for name in (
        "MeanSquaredError",
        "MeanAbsoluteError",
        "SparseCategoricalCrossentropy",
        "CategoricalCrossentropy",
        "BinaryCrossentropy",
        "CosineSimilarity",
    ):
        gin.external_configurable(getattr(keras.losses, name), module="keras.losses")
    from keras_mtl import losses as mtl_losses

    for cls in (mtl_losses.MaskedDepthLoss, mtl_losses.NormalCosineLoss):
        gin.external_configurable(cls, module="keras_mtl.losses")
    for name in balancers.distinct_names():
        gin.external_configurable(
            balancers.ALL_BALANCERS[name], module="keras_mtl.balancers"
        )
    for name in dir(mtl_callbacks):
        obj = getattr(mtl_callbacks, name)
        if isinstance(obj, type) and issubclass(obj, keras.callbacks.Callback):
            gin.external_configurable(obj, module="keras_mtl.callbacks")
    # `include 'gin/...'` resolves from the repository root and the cwd.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gin.add_config_file_search_path(root)
    _REGISTERED = True


@gin.configurable
def toy_data(split="train", sigmas=(1.0, 100.0), train_size=10_000,
             test_size=2_000, batch_size=100, seed=0):
    """One split ('train' or 'test') of the GradNorm toy problem, for gin.

    The train split is an endless stream of batches, reshuffled every pass
    with position-derived seeds (`keras_mtl.distribute.position_seeded_stream`),
    so that resumed runs are exact; the test split is one ordered pass.
    """
    if split not in ("train", "test"):
        raise ValueError(
            f"Invalid value received for argument `split`. Expected 'train' or "
            f"'test'. Received: split={split!r}"
        )
    train, test, _ = toy_data_module.toy_datasets(
        sigmas=sigmas, train_size=train_size, test_size=test_size,
        batch_size=batch_size, seed=seed, shuffle=False,
    )
    if split == "test":
        return test
    # Reshuffled every pass, batch k a function of k alone: a run resumed by
    # BackupAndRestore reads exactly the batches an uninterrupted one reads.
    examples = next(iter(train.unbatch().batch(train_size)))
    return mtl_distribute.position_seeded_stream(examples, batch_size, seed=seed)


@gin.configurable
def wide_sigmas(num_tasks=10, seed=0, scale=20.0, floor=1.0):
    """Gin access to `keras_mtl.data.toy.wide_sigmas` (the T=10 scales)."""
    return toy_data_module.wide_sigmas(num_tasks, seed=seed, scale=scale, floor=floor)


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` without its per-batch no-op.

    With `update_freq="epoch"` (the default, what `train` uses) Keras sets no
    summary writer within epochs, yet still builds a `batch_<name>` scalar
    summary for every log of every batch, written nowhere: about 0.1 ms of
    CPU per log per step (2 ms a step for the 21 logs of the T=10 toy). This
    skips those batch logs and writes exactly the same files.
    """

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq == "epoch":
            logs = None
        super().on_train_batch_end(batch, logs)


def _materialize(value):
    """Calls a gin-given factory (a class or function), or returns an instance."""
    if isinstance(value, type) or (callable(value) and not isinstance(
            value, (keras.Model, keras.layers.Layer, keras.optimizers.Optimizer,
                    tf.data.Dataset))):
        return value()
    return value


MIXED_PRECISION = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """The global Keras dtype policy for building the model, restored after."""
    if mixed_precision in (None, "float32"):
        yield None
        return
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            "Invalid value received for argument `mixed_precision`. Expected "
            f"None, 'float32', 'float16' or 'bfloat16'. Received: {mixed_precision!r}"
        )
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(MIXED_PRECISION[mixed_precision])
    try:
        yield MIXED_PRECISION[mixed_precision]
    finally:
        keras.mixed_precision.set_global_policy(before)


@gin.configurable(denylist=["model_dir", "reuse"])
def train(
    model_dir,
    model=gin.REQUIRED,
    train_data=gin.REQUIRED,
    eval_data=None,
    loss=gin.REQUIRED,
    metrics=None,
    balancer="equal",
    optimizer=None,
    steps=1_000,
    steps_per_epoch=100,
    eval_every=None,
    callbacks=(),
    learning_rate_multipliers=None,
    seed=0,
    jit_compile=False,
    strategy=None,
    deterministic=False,
    verbose=1,
    validate_every=1,
    keep_checkpoints=3,
    best_checkpoint_monitor=None,
    best_checkpoint_mode="min",
    summary_every=10,
    records="full",
    steps_per_execution=1,
    reuse=None,
    mixed_precision=None,
):
    """Trains a MultiTaskModel and writes everything a run needs to be reproduced.

    Writes into `model_dir` (see the README's "run directory"):
    `operative_config.gin` (before the first step, again at the end),
    `history.csv` (per-epoch logs: `loss`, per-task losses and weights, task
    metrics, `normalized_loss`, and `val_*` for validated epochs),
    `task_weights.csv` (w_i(t) every step), `task_normalized_loss.csv`
    (sum_i L_i/L_i(0) on `eval_data` every `eval_every` steps, when given),
    `normalized_loss_reference.json` (the L_t(0) of `normalized_loss`),
    `checkpoints/` (the last `keep_checkpoints` epoch `.keras` files, and
    `best.keras` with `best_checkpoint_monitor`), `tensorboard/`,
    `model.keras` and `metrics.json`; while it runs, `backup/`
    (`BackupAndRestore`, removed when training ends). A run killed and
    restarted with the same configuration resumes from its last epoch, and
    its records equal an uninterrupted run's. With `records="sweep"` only
    `operative_config.gin`, `task_weights.csv` and `metrics.json` are
    written (see `records`).

    Args:
        model_dir: output directory (created).
        model: a factory returning an uncompiled `MultiTaskModel` (e.g.
            `@toy_mlp`), or an instance.
        train_data: a `tf.data.Dataset` of `(x, {task: y})` (repeated here),
            or a factory returning one (preferred: `@train/toy_data`, built
            after seeding so that its shuffle order is reproducible).
        eval_data: optional held-out dataset or factory.
        loss: dict `{task: loss}` or one loss for all tasks.
        metrics: dict `{task: [metrics]}`.
        balancer: balancer instance, name or factory.
        optimizer: network optimizer (instance or factory); defaults to Adam.
        steps: total training steps.
        steps_per_epoch: steps between epoch ends (logs, checkpoints).
        eval_every: steps between task-normalised evaluations; defaults to
            `steps_per_epoch`.
        callbacks: extra Keras callbacks (instances or factories).
        learning_rate_multipliers: per-group learning-rate factors, passed to
            `MultiTaskModel.compile` (e.g. `{"task_specific": T}`).
        seed: seeds Python, numpy and TensorFlow (`keras.utils.set_random_seed`).
        jit_compile: XLA-compile the train step.
        strategy: optional `tf.distribute.Strategy` to build and train
            under, or its name for `keras_mtl.distribute.get_strategy`
            (`"one_device"`, `"mirrored"`, `"multi_worker"`, `"tpu"`).
            Under `multi_worker` training runs the custom distributed loop
            `keras_mtl.distribute.fit` (Keras 3 `fit` fails there), and
            workers other than the chief write into `model_dir/worker_<i>`.
        deterministic: enable TensorFlow's deterministic ops, so that a run
            killed and resumed by `BackupAndRestore` ends with the same
            weights as an uninterrupted one.
        verbose: `0` silent, `1` one line per epoch (losses, task weights,
            validation; `keras_mtl.callbacks.ProgressLogger`), `2` also Keras'
            progress bar within epochs. Defaults to `1`.
        validate_every: validate on `eval_data` every this many epochs
            (`val_*` logs, TensorBoard validation scalars); `None` or `0`
            never. Defaults to `1`. An epoch is `steps_per_epoch` steps, so
            that sets the validation interval in steps.
        keep_checkpoints: epoch `.keras` files kept in `checkpoints/` (the
            most recent); `None` keeps all. Defaults to `3`.
        best_checkpoint_monitor: optional log key (e.g.
            `"val_normalized_loss"`): also keep `checkpoints/best.keras`, the
            best epoch by it.
        best_checkpoint_mode: `"min"` or `"max"` for the monitor.
        summary_every: steps between task-weight summaries in TensorBoard.
            Defaults to `10`.
        records: `"full"` (default) writes everything listed above.
            `"sweep"`, for many short runs (`launch.digits_demo`,
            `launch.grid_search`), keeps the training identical (same
            seed, data, steps: the same weights and `task_weights.csv`) but
            writes only `operative_config.gin`, `task_weights.csv` and
            `metrics.json` (the final evaluation on `eval_data`, without
            `task_normalized_loss`): no TensorBoard, checkpoints, backup
            (so no resume), `history.csv`, normalised-loss records,
            per-epoch validation or `model.keras`.
        steps_per_execution: train steps run per call of the compiled
            train function (`keras.Model.compile`): the same steps and
            results, less per-step Python overhead, but callbacks see every
            `steps_per_execution`-th step only, so `task_weights.csv` holds
            w_i(t) every `steps_per_execution` steps (step 0 included).
            Defaults to `1`.
        reuse: optional result of an earlier `train` call in this process
            whose configuration differs from this one at most in seeds
            (model initialisers, data order): its compiled model, with the
            train and test functions already traced, trains this run. The
            model, optimizer and balancer are built from this run's
            configuration as usual (same calls, same random state) and
            every variable of theirs is copied into the reused ones, so the
            run equals a fresh one without the trace (`launch.digits_demo`
            re-runs a balancer over seeds this way). Raises `ValueError`
            when the two differ in structure, optimizer or balancer
            configuration (a balancer `seed` is traced in as a constant),
            or under `multi_worker`.
        mixed_precision: `None` (float32, default), `"float16"` or
            `"bfloat16"`: the model is built under Keras's
            `"mixed_float16"` / `"mixed_bfloat16"` policy (float32 variables,
            low-precision compute; the global policy is restored after). Under
            float16 the network optimizer is wrapped in a dynamic
            `keras.optimizers.LossScaleOptimizer` (see the README's "Mixed
            precision"). `model` must then be a factory, so that its layers
            are created under the policy.

    Returns:
        dict with the `model`, the Keras `history`, the `balancer_history`,
        the `normalized_loss` callback (or None) and the final `metrics`.
    """
    register_gin_externals()
    if records not in ("full", "sweep"):
        raise ValueError(
            "Invalid value received for argument `records`. Expected 'full' or "
            f"'sweep'. Received: records={records!r}"
        )
    full = records == "full"
    if int(steps) < 1 or int(steps_per_epoch) < 1:
        raise ValueError(
            "`steps` and `steps_per_epoch` must be >= 1. Received: "
            f"steps={steps}, steps_per_epoch={steps_per_epoch}"
        )
    os.makedirs(model_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    if strategy is None or isinstance(strategy, str):
        strategy = mtl_distribute.get_strategy(strategy)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if multi_worker and not strategy.extended.should_checkpoint:
        # Only the chief writes the run; the others write beside it.
        model_dir = os.path.join(
            model_dir, f"worker_{strategy.cluster_resolver.task_id}")
        os.makedirs(model_dir, exist_ok=True)
    # Datasets given as factories are built after seeding: a tf.data shuffle
    # seed combines with the global seed at construction time.
    train_data = _materialize(train_data)
    eval_data = _materialize(eval_data) if eval_data is not None else None
    with strategy.scope(), dtype_policy(mixed_precision) as policy:
        net = _materialize(model)
        if not isinstance(net, keras_mtl.MultiTaskModel):
            raise ValueError(
                "`model` must build a keras_mtl.MultiTaskModel. Received: "
                f"{type(net).__name__}"
            )
        if policy is not None and net.dtype_policy.name != policy:
            raise ValueError(
                f"mixed_precision={mixed_precision!r} needs a model built under "
                f"the {policy!r} policy: pass `model` as a factory (e.g. "
                "`train.model = @toy_mlp`), not a model built beforehand."
            )
        net.compile(
            optimizer=mtl_distribute.in_current_scope(_materialize(optimizer))
            if optimizer is not None else keras.optimizers.Adam(),
            loss=loss,
            metrics=metrics,
            balancer=_materialize(balancer),
            jit_compile=jit_compile,
            learning_rate_multipliers=learning_rate_multipliers,
            steps_per_execution=int(steps_per_execution),
        )
    steps_per_epoch = min(int(steps_per_epoch), int(steps))
    epochs = int(math.ceil(int(steps) / steps_per_epoch))
    weight_history = mtl_callbacks.BalancerHistory(
        csv_path=os.path.join(model_dir, "task_weights.csv")
    )
    # Order matters at epoch ends: the monitor quantity first, then user
    # callbacks (EarlyStopping may monitor it), the records, and the backup
    # last, so that a backed-up epoch always has its records written. The
    # callbacks read the restored state lazily (at the first epoch), after
    # BackupAndRestore's `on_train_begin`, whatever their place.
    cbs = [
        mtl_callbacks.NormalizedLoss(
            state_path=os.path.join(model_dir, "normalized_loss_reference.json")),
        weight_history,
    ] if full else [weight_history]
    normalized = None
    if eval_data is not None and full:
        normalized = mtl_callbacks.TaskNormalizedLoss(
            eval_data, every=int(eval_every or steps_per_epoch),
            csv_path=os.path.join(model_dir, "task_normalized_loss.csv"),
        )
        cbs.append(normalized)
    tensorboard_dir = os.path.join(model_dir, "tensorboard")
    if full:
        cbs.append(mtl_callbacks.TaskWeightSummaries(tensorboard_dir, every=summary_every))
    cbs += [_materialize(c) for c in callbacks]
    if full:
        cbs += [
            mtl_callbacks.RotatingCheckpoint(
                os.path.join(model_dir, "checkpoints"), keep=keep_checkpoints,
                monitor=best_checkpoint_monitor, mode=best_checkpoint_mode),
            mtl_callbacks.CSVHistory(os.path.join(model_dir, "history.csv")),
            EpochTensorBoard(tensorboard_dir),
        ]
    if int(verbose) >= 1:
        cbs.append(mtl_callbacks.ProgressLogger())
    backup_dir = os.path.join(model_dir, "backup")
    if full:
        cbs.append(keras.callbacks.BackupAndRestore(backup_dir))
    validate = eval_data is not None and bool(validate_every) and full
    _write_operative_config(model_dir)
    if multi_worker and reuse is not None:
        raise ValueError("`reuse` is not available under multi_worker.")
    if multi_worker:
        if validate:
            warnings.warn(
                "Validation during training is not available under "
                "multi_worker (keras_mtl.distribute.fit takes no validation "
                "data): `eval_data` is evaluated after training only.",
                UserWarning, stacklevel=2)
        history = mtl_distribute.fit(
            net, train_data.repeat(), strategy=strategy, epochs=epochs,
            steps_per_epoch=steps_per_epoch, callbacks=cbs, verbose=0,
        )
    else:
        # BackupAndRestore resumes at the start of the epoch after its last
        # backup; the data stream must resume there too for an exact resume.
        start = _backup_epoch(backup_dir) if full else 0
        fit_data = train_data.repeat().skip(start * steps_per_epoch)
        if reuse is not None:
            net = reuse_compiled_model(reuse["model"], net, fit_data)
        history = net.fit(
            fit_data,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=cbs,
            verbose=1 if int(verbose) >= 2 else 0,
            # A dataset is never shuffled by fit; the default True only warns.
            shuffle=False,
            validation_data=eval_data if validate else None,
            validation_freq=int(validate_every) if validate else 1,
        )
    final = {}
    if eval_data is not None:
        final = {k: float(v) for k, v in net.evaluate(
            eval_data, verbose=0, return_dict=True).items()}
        if normalized is not None:
            final["task_normalized_loss"] = normalized.values[-1]
    if full:
        net.save(os.path.join(model_dir, "model.keras"))
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump(final, f, indent=2, sort_keys=True)
    _write_operative_config(model_dir)
    return {
        "model": net,
        "history": history,
        "balancer_history": weight_history,
        "normalized_loss": normalized,
        "metrics": final,
    }


def state_variables(model):
    """Every variable a train step of `model` reads or writes, in structural order.

    The model's variables (network, balancer, step counters), its
    optimizers', then any other tracked variable (e.g. a balancer's own
    optimizer). Metric variables are not included: `fit` and `evaluate`
    reset them.
    """
    groups = [model.variables, model.optimizer.variables]
    groups += [opt.variables for opt in getattr(model, "group_optimizers", {}).values()]
    groups.append([obj for obj in tf.train.TrackableView(model).descendants()
                   if isinstance(obj, keras.Variable)])
    metric_variables = [v for m in model.metrics for v in m.variables]
    return mtl_model.unique_variables((v for group in groups for v in group), metric_variables)


def _config_without_names(obj):
    config = dict(obj.get_config())
    config.pop("name", None)
    return config


def reuse_compiled_model(target, fresh, data):
    """`target` (compiled, traced) set to the state of `fresh` (compiled, unbuilt).

    `fresh` is prepared as `fit` would prepare it (built from the first batch
    of `data`, optimizers built), then every variable of
    `state_variables(fresh)` is copied into its counterpart of `target`.

    Raises:
        ValueError: the models differ in tasks, balancer or optimizer
            configuration, compile options or variable structure.
    """
    import re

    from keras_mtl import training

    training.prepare(fresh, data)

    def fail(what, a, b):
        raise ValueError(
            f"Cannot reuse the compiled model: its {what} differs from this "
            f"run's ({a!r} != {b!r}). Train without `reuse`.")

    for what, get in (
            ("class", lambda m: type(m).__name__),
            ("tasks", lambda m: list(m.task_names)),
            ("balancer", lambda m: (type(m.balancer).__name__,
                                    _config_without_names(m.balancer))),
            ("optimizer", lambda m: (type(m.optimizer).__name__,
                                     _config_without_names(m.optimizer))),
            ("compile options", lambda m: (m.steps_per_execution, m.jit_compile,
                                           m.nonfinite, m.run_eagerly))):
        if get(target) != get(fresh):
            fail(what, get(target), get(fresh))
    a, b = state_variables(target), state_variables(fresh)

    def key(v):  # layer-name counters (dense_3 / dense_7) aside
        return re.sub(r"_\d+(?=[_/]|$)", "", v.path), tuple(v.shape), str(v.dtype)

    keys_a, keys_b = [key(v) for v in a], [key(v) for v in b]
    if keys_a != keys_b:
        i = next((i for i, (x, y) in enumerate(zip(keys_a, keys_b)) if x != y),
                 min(len(keys_a), len(keys_b)))
        fail(f"variable structure (at variable {i} of {len(keys_a)} / {len(keys_b)})",
             keys_a[i] if i < len(keys_a) else None, keys_b[i] if i < len(keys_b) else None)
    for t, f in zip(a, b):
        t.assign(f.value)
    target.reset_metrics()
    target.stop_training = False
    return target


def _backup_epoch(backup_dir):
    """The epoch a `BackupAndRestore` backup in `backup_dir` resumes at (0 if none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


def _write_operative_config(model_dir):
    """Writes gin's operative config (what the run has used so far)."""
    path = os.path.join(model_dir, "operative_config.gin")
    with open(f"{path}.tmp", "w") as f:
        f.write(gin.operative_config_str())
    os.replace(f"{path}.tmp", path)

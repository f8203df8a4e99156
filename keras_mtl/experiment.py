"""Gin-configured training runs: what `launch/train.py` executes.

A gin file binds `train.model`, `train.train_data`, `train.loss`,
`train.balancer`, ... (see `gin/toy_gradnorm_t2.gin`). Model and dataset
factories are gin configurables (functions, never Keras classes); Keras
optimizers, schedules and losses and every keras-mtl balancer are registered
here with `gin.external_configurable`, so configs write
`@keras.optimizers.Adam()` or `@GradNorm()`.
"""

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


def _materialize(value):
    """Calls a gin-given factory (a class or function), or returns an instance."""
    if isinstance(value, type) or (callable(value) and not isinstance(
            value, (keras.Model, keras.layers.Layer, keras.optimizers.Optimizer,
                    tf.data.Dataset))):
        return value()
    return value


@gin.configurable(denylist=["model_dir"])
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
    its records equal an uninterrupted run's.

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

    Returns:
        dict with the `model`, the Keras `history`, the `balancer_history`,
        the `normalized_loss` callback (or None) and the final `metrics`.
    """
    register_gin_externals()
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
    with strategy.scope():
        net = _materialize(model)
        if not isinstance(net, keras_mtl.MultiTaskModel):
            raise ValueError(
                "`model` must build a keras_mtl.MultiTaskModel. Received: "
                f"{type(net).__name__}"
            )
        net.compile(
            optimizer=mtl_distribute.in_current_scope(_materialize(optimizer))
            if optimizer is not None else keras.optimizers.Adam(),
            loss=loss,
            metrics=metrics,
            balancer=_materialize(balancer),
            jit_compile=jit_compile,
            learning_rate_multipliers=learning_rate_multipliers,
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
    ]
    normalized = None
    if eval_data is not None:
        normalized = mtl_callbacks.TaskNormalizedLoss(
            eval_data, every=int(eval_every or steps_per_epoch),
            csv_path=os.path.join(model_dir, "task_normalized_loss.csv"),
        )
        cbs.append(normalized)
    tensorboard_dir = os.path.join(model_dir, "tensorboard")
    cbs.append(mtl_callbacks.TaskWeightSummaries(tensorboard_dir, every=summary_every))
    cbs += [_materialize(c) for c in callbacks]
    cbs += [
        mtl_callbacks.RotatingCheckpoint(
            os.path.join(model_dir, "checkpoints"), keep=keep_checkpoints,
            monitor=best_checkpoint_monitor, mode=best_checkpoint_mode),
        mtl_callbacks.CSVHistory(os.path.join(model_dir, "history.csv")),
        keras.callbacks.TensorBoard(tensorboard_dir),
    ]
    if int(verbose) >= 1:
        cbs.append(mtl_callbacks.ProgressLogger())
    backup_dir = os.path.join(model_dir, "backup")
    cbs.append(keras.callbacks.BackupAndRestore(backup_dir))
    validate = eval_data is not None and bool(validate_every)
    _write_operative_config(model_dir)
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
        start = _backup_epoch(backup_dir)
        history = net.fit(
            train_data.repeat().skip(start * steps_per_epoch),
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
        final["task_normalized_loss"] = normalized.values[-1]
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

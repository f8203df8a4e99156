"""Gin-configured training runs: what `launch/train.py` executes.

A gin file binds `train.model`, `train.train_data`, `train.loss`,
`train.balancer`, ... (see `gin/toy_gradnorm_t2.gin`). Model and dataset
factories are gin configurables (functions, never Keras classes); Keras
optimizers, schedules and losses and every keras-mtl balancer are registered
here with `gin.external_configurable`, so configs write
`@keras.optimizers.Adam()` or `@GradNorm()`.
"""

import csv
import json
import math
import os

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
    verbose=0,
):
    """Trains a MultiTaskModel and writes everything a run needs to be reproduced.

    Writes into `model_dir`: `operative_config.gin`, `history.csv` (per-epoch
    logs: per-task losses and weights), `task_weights.csv` (w_i(t) every
    step), `task_normalized_loss.csv` (sum_i L_i/L_i(0) on `eval_data`, when
    given), `checkpoints/` (`.keras` after every epoch), `backup/`
    (`BackupAndRestore`: a killed run resumes from its last epoch),
    `tensorboard/`, `model.keras` and `metrics.json`.

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
        verbose: Keras fit verbosity.

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
    cbs = [weight_history]
    normalized = None
    if eval_data is not None:
        normalized = mtl_callbacks.TaskNormalizedLoss(
            eval_data, every=int(eval_every or steps_per_epoch)
        )
        cbs.append(normalized)
    os.makedirs(os.path.join(model_dir, "checkpoints"), exist_ok=True)
    backup_dir = os.path.join(model_dir, "backup")
    cbs += [
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.ModelCheckpoint(
            os.path.join(model_dir, "checkpoints", "epoch_{epoch:04d}.keras")
        ),
        keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard")),
    ]
    cbs += [_materialize(c) for c in callbacks]
    if multi_worker:
        history = mtl_distribute.fit(
            net, train_data.repeat(), strategy=strategy, epochs=epochs,
            steps_per_epoch=steps_per_epoch, callbacks=cbs, verbose=verbose,
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
            verbose=verbose,
        )
    _write_history_csv(os.path.join(model_dir, "history.csv"), history.history)
    if normalized is not None:
        with open(os.path.join(model_dir, "task_normalized_loss.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "task_normalized_loss"] + net.task_names)
            for step, v, per in zip(normalized.steps, normalized.values, normalized.per_task):
                writer.writerow([step, f"{v:.6g}"] + [f"{p:.6g}" for p in per])
    final = {}
    if eval_data is not None:
        final = {k: float(v) for k, v in net.evaluate(
            eval_data, verbose=0, return_dict=True).items()}
        final["task_normalized_loss"] = normalized.values[-1]
    net.save(os.path.join(model_dir, "model.keras"))
    with open(os.path.join(model_dir, "metrics.json"), "w") as f:
        json.dump(final, f, indent=2, sort_keys=True)
    with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
        f.write(gin.operative_config_str())
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


def _write_history_csv(path, history):
    keys = sorted(history)
    n = max((len(v) for v in history.values()), default=0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch"] + keys)
        for i in range(n):
            writer.writerow([i + 1] + [
                f"{history[k][i]:.6g}" if i < len(history[k]) else "" for k in keys
            ])

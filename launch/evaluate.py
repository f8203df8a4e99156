r"""Evaluates a trained multi-task model with its config's metrics; writes a table.

    python -m launch.evaluate --model=runs/toy_t2 --out_dir=runs/toy_t2/eval
    python -m launch.evaluate --model=runs/nyu/model.keras \
        --gin_file=mr_nyuv2_mr.gin --gin_bindings="NYUV2_DIR = '/data/nyuv2'" \
        --out_dir=runs/nyu/eval

`--model` is a `.keras` file (as `launch.train` writes), a run directory
holding `model.keras`, a `.weights.h5` file or a TensorFlow checkpoint prefix;
for the last two the architecture comes from the config's `train.model`.
Without `--gin_file`, the run directory's `operative_config.gin` is the
config. The dataset is the config's `train.eval_data` (override it with
bindings, e.g. `val/nyuv2.split = 'val'`).

The metrics are the config's own: its `train.loss` (reported per task as
`loss`) and `train.metrics` (the shipped paper configs compile each paper's
metric set, e.g. `@segmentation_metrics()`); nothing is guessed from task
names or shapes. A config without `train.metrics` is evaluated on its losses.
Writes `<out_dir>/metrics.json` ({task: {metric: value}}, the names the model
logs as `<task>_<metric>`) and `<out_dir>/metrics.md` (a markdown table).
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
    """Defines the launcher's flags (at run time, so that importing this module
    next to `launch.train`, which defines `--gin_file` too, is harmless)."""
    flags.DEFINE_string("model", None, ".keras file, run dir, .weights.h5 file or checkpoint prefix.")
    flags.DEFINE_multi_string(
        "gin_file", [], "Gin config files: paths or shipped config names (defaults to "
        "the run directory's operative_config.gin).")
    flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings overriding the files.")
    flags.DEFINE_string("out_dir", None, "Where metrics.json and metrics.md are written.")
    flags.mark_flags_as_required(["model", "out_dir"])


def _materialize(value):
    """Calls a gin-given factory (`@toy_data`, `@toy_mlp`), or returns an instance."""
    import keras
    import tensorflow as tf

    if callable(value) and not isinstance(
            value, (keras.Model, keras.layers.Layer, tf.data.Dataset)):
        return value()
    return value


def _bound(name, default=None):
    """`train.<name>` from the parsed gin config, references called (or `default`)."""
    import copy

    import gin

    try:
        value = gin.query_parameter(f"train.{name}")
    except ValueError:  # not bound
        return default
    # A deep copy evaluates gin references (`@val/nyuv2()` builds the dataset,
    # `@toy_data` stays a factory), as gin does when it calls `train`.
    return copy.deepcopy(value)


def load_model(path):
    """Loads a MultiTaskModel from a .keras file, run dir, weights file or checkpoint."""
    import keras
    import tensorflow as tf

    import keras_mtl.models  # noqa: F401 (registers the serializable layers)

    if os.path.isdir(path) and os.path.exists(os.path.join(path, "model.keras")):
        path = os.path.join(path, "model.keras")
    if path.endswith(".keras"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"No model file at {path!r}. Expected a .keras file.")
        return keras.saving.load_model(path)
    factory = _bound("model")
    if factory is None:
        raise ValueError(
            f"{path!r} holds weights only: give the run's gin config (it must "
            "bind `train.model`) so that the architecture can be rebuilt."
        )
    model = _materialize(factory)
    if not model.built:
        x, _ = next(iter(_eval_data()))
        model(x, training=False)
    if path.endswith(".weights.h5"):
        model.load_weights(path)
    else:
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return model


def _eval_data():
    data = _bound("eval_data")
    if data is None:
        raise ValueError(
            "No evaluation data: bind `train.eval_data` in the gin config (or "
            "pass `data=` to `evaluate`)."
        )
    return _materialize(data)


def _compile_with_config_metrics(model, run_eagerly=False):
    """Compiles `model` with the config's `train.loss` / `train.metrics`.

    Without a parsed `train.loss` the model must already be compiled (a
    `.keras` file keeps the compile arguments it was trained with).
    """
    import keras

    loss = _bound("loss")
    if loss is None:
        if not getattr(model, "compiled", False):
            raise ValueError(
                "Nothing to evaluate with: the gin config binds no `train.loss` "
                "and the model is not compiled. Give the run's gin config."
            )
        return model
    # Evaluation only: equal weights (per-task losses and metrics do not depend
    # on the balancer) and an optimizer that never runs.
    model.compile(optimizer=keras.optimizers.SGD(), loss=loss,
                  metrics=_bound("metrics"), balancer="equal", run_eagerly=run_eagerly)
    return model


def split_logs(logs, task_names):
    """`{"<task>_<metric>": v}` -> `{task: {metric: v}}` (longest task name first).

    The balancer's `<task>_weight`, the weighted total `loss` and the
    discriminator's logs are dropped: they are not measurements of a task.
    """
    table = {task: {} for task in task_names}
    by_length = sorted(task_names, key=len, reverse=True)
    for key, value in logs.items():
        task = next((t for t in by_length if key.startswith(t + "_")), None)
        if task is None:
            continue
        name = key[len(task) + 1:]
        if name != "weight":
            table[task][name] = float(value)
    return table


def evaluate(model_path, out_dir, data=None, model=None, run_eagerly=False):
    """Evaluates a model with the parsed config's loss and metrics.

    Args:
        model_path: see `load_model`; ignored when `model` is given.
        out_dir: output directory (created).
        data: dataset of `(x, {task: y})`; defaults to the gin config's
            `train.eval_data`.
        model: an already loaded model (optional).
        run_eagerly: evaluate without tracing a graph (faster for a batch or
            two; for debugging).

    Returns:
        dict `{task: {metric: value}}`, also written to `metrics.json`.
    """
    model = model or load_model(model_path)
    data = data if data is not None else _eval_data()
    if not model.built:
        x, _ = next(iter(data))
        model(x, training=False)
    model = _compile_with_config_metrics(model, run_eagerly)
    logs = model.evaluate(data, verbose=0, return_dict=True)
    table = split_logs(logs, model.task_names)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(table, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "metrics.md"), "w") as f:
        f.write(markdown_table(table))
    return table


def markdown_table(table):
    """`{task: {metric: value}}` as a markdown table (one row per task and metric)."""
    lines = ["| task | metric | value |", "|---|---|---:|"]
    for task, values in table.items():
        for name, value in values.items():
            lines.append(f"| {task} | {name} | {value:.6g} |")
    return "\n".join(lines) + "\n"


def _operative_config(model_path):
    """The `operative_config.gin` of the run `model_path` belongs to, or None."""
    run_dir = model_path if os.path.isdir(model_path) else os.path.dirname(model_path)
    for folder in (run_dir, os.path.dirname(run_dir)):
        path = os.path.join(folder, "operative_config.gin")
        if folder and os.path.isfile(path):
            return path
    return None


def main(argv):
    del argv
    from keras_mtl import configs
    from keras_mtl import experiment

    experiment.register_gin_externals()
    import keras_mtl.data  # noqa: F401 (registers the dataset readers)
    import keras_mtl.models  # noqa: F401 (registers the model factories)

    gin_files = list(FLAGS.gin_file)
    if not gin_files:
        operative = _operative_config(FLAGS.model)
        if operative is None:
            raise app.UsageError(
                f"No --gin_file given and no operative_config.gin beside "
                f"{FLAGS.model!r}: give the run's config.")
        gin_files = [operative]
    configs.parse(gin_files, FLAGS.gin_bindings)
    table = evaluate(FLAGS.model, FLAGS.out_dir)
    print(markdown_table(table))


if __name__ == "__main__":
    define_flags()
    app.run(main)

r"""Evaluates a trained multi-task model and writes its metrics table.

    python -m launch.evaluate --model=runs/nyu/model.keras \
        --gin_file=gin/mr_nyuv2_mr.gin --gin_bindings="NYUV2_DIR = '/data/nyuv2'" \
        --out_dir=runs/nyu/eval

`--model` is a `.keras` file (as `launch.train` writes), a run directory
holding `model.keras`, a `.weights.h5` file or a TensorFlow checkpoint prefix;
for the last two the architecture comes from the gin config's `train.model`.
The dataset is the config's `train.eval_data` (override it with bindings,
e.g. `val/nyuv2.split = 'val'`). Metrics follow the papers and are chosen
from each task's name and label: mIoU and pixel accuracy (segmentation, and
per binary segmentation task of Maximum Roaming), depth absolute / relative
error and RMSE, normal angle mean / median / within 11.25, 22.5, 30 degrees
and 1 - cos, keypoint error and failure rate (MTFL), attribute precision /
recall / F-score and accuracy (CelebA), accuracy (classifiers), plus each
task's loss. Writes `<out_dir>/metrics.json` ({task: {metric: value}}) and
`<out_dir>/metrics.md` (a markdown table).
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
    flags.DEFINE_multi_string("gin_file", [], "Gin config files (the run's experiment config).")
    flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings overriding the files.")
    flags.DEFINE_string("out_dir", None, "Where metrics.json and metrics.md are written.")
    flags.mark_flags_as_required(["model", "out_dir"])


def load_model(path):
    """Loads a MultiTaskModel from a .keras file, run dir, weights file or checkpoint."""
    import gin
    import keras
    import tensorflow as tf

    import keras_mtl.models  # noqa: F401 (registers the serializable layers)

    if os.path.isdir(path) and os.path.exists(os.path.join(path, "model.keras")):
        path = os.path.join(path, "model.keras")
    if path.endswith(".keras"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"No model file at {path!r}. Expected a .keras file.")
        return keras.saving.load_model(path)
    try:
        factory = gin.get_bindings("train", resolve_references=True)["model"]
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"{path!r} holds weights only: give the run's gin config (it must "
            "bind `train.model`) so that the architecture can be rebuilt."
        ) from error
    model = factory() if callable(factory) and not isinstance(factory, keras.Model) else factory
    if path.endswith(".weights.h5"):
        _build(model)
        model.load_weights(path)
    else:
        _build(model)
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return model


def _build(model):
    if not model.built:
        data = _eval_data()
        x, _ = next(iter(data))
        model(x, training=False)
    return model


def _eval_data():
    import gin

    try:
        return gin.get_bindings("train", resolve_references=True)["eval_data"]
    except (KeyError, ValueError) as error:
        raise ValueError(
            "No evaluation data: bind `train.eval_data` in the gin config (or "
            "pass `data=` to `evaluate`)."
        ) from error


def task_metrics(task, y_true, y_pred):
    """The paper metrics for one task, picked from its name and label / output shapes.

    Returns:
        list of (prefix-free name, keras metric, transform) where transform
        maps (y_true, y_pred) to what the metric takes.
    """
    import keras

    from keras_mtl import metrics as mtl_metrics

    channels = y_pred.shape[-1]
    spatial = y_pred.shape.rank == 4
    identity = lambda t, p: (t, p)  # noqa: E731
    if task.startswith("normal"):
        return [
            ("mean_angle", mtl_metrics.NormalMeanAngle(), identity),
            ("median_angle", mtl_metrics.NormalMedianAngle(), identity),
            ("within_11.25", mtl_metrics.NormalWithinAngle(11.25), identity),
            ("within_22.5", mtl_metrics.NormalWithinAngle(22.5), identity),
            ("within_30", mtl_metrics.NormalWithinAngle(30.0), identity),
            ("cosine_error", mtl_metrics.NormalCosineError(), identity),
        ]
    if task.startswith("depth"):
        return [
            ("abs_error", mtl_metrics.DepthAbsError(), identity),
            ("rel_error", mtl_metrics.DepthRelError(), identity),
            ("rmse", mtl_metrics.DepthRMSE(), identity),
        ]
    if spatial and channels == 1:
        # a binary segmentation task (Maximum Roaming's per-class tasks):
        # logits z -> class scores [0, z]; mask -> class id.
        def binary(t, p):
            import tensorflow as tf

            scores = tf.concat([tf.zeros_like(p), p], axis=-1)
            return tf.cast(tf.round(t), "int32"), scores

        return [
            ("mean_iou", mtl_metrics.MeanIoU(2), binary),
            ("pixel_accuracy", mtl_metrics.PixelAccuracy(2), binary),
        ]
    if spatial:
        return [
            ("mean_iou", mtl_metrics.MeanIoU(channels), identity),
            ("pixel_accuracy", mtl_metrics.PixelAccuracy(channels), identity),
        ]
    if task == "landmarks" or (channels == 10 and y_true.dtype.is_floating):
        return [
            ("keypoint_error", mtl_metrics.KeypointError(), identity),
            ("failure_rate", mtl_metrics.KeypointFailureRate(), identity),
        ]
    if y_true.dtype.is_floating and y_true.shape[-1] == channels:
        # binary attributes (CelebA): logits against {0, 1}
        def probabilities(t, p):
            return t, keras.ops.sigmoid(p)

        return [
            ("precision", mtl_metrics.AttributeScore(channels, "precision"), identity),
            ("recall", mtl_metrics.AttributeScore(channels, "recall"), identity),
            ("fscore", mtl_metrics.AttributeScore(channels, "fscore"), identity),
            ("accuracy", keras.metrics.BinaryAccuracy(), probabilities),
        ]
    return [("accuracy", keras.metrics.SparseCategoricalAccuracy(), identity)]


def evaluate(model_path, out_dir, data=None, model=None):
    """Evaluates a model on a dataset; writes metrics.json and metrics.md into `out_dir`.

    Args:
        model_path: see `load_model`; ignored when `model` is given.
        out_dir: output directory (created).
        data: dataset of `(x, {task: y})`; defaults to the gin config's
            `train.eval_data`.
        model: an already loaded model (optional).

    Returns:
        dict `{task: {metric: value}}`, also written to `metrics.json`.
    """
    import numpy as np

    model = model or load_model(model_path)
    data = data if data is not None else _eval_data()
    table = {task: {} for task in model.task_names}
    if getattr(model, "task_losses", None) is not None:
        logs = model.evaluate(data, verbose=0, return_dict=True)
        for task in model.task_names:
            if f"{task}_loss" in logs:
                table[task]["loss"] = float(logs[f"{task}_loss"])
    metrics = None
    for x, y in data:
        out = model(x, training=False)
        if metrics is None:
            metrics = {t: task_metrics(t, y[t], out[t]) for t in model.task_names if t in y}
        for task, entries in metrics.items():
            for _, metric, transform in entries:
                metric.update_state(*transform(y[task], out[task]))
    if metrics is None:
        raise ValueError("The evaluation dataset is empty.")
    for task, entries in metrics.items():
        for name, metric, _ in entries:
            table[task][name] = float(np.asarray(metric.result()))
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


def main(argv):
    del argv
    import gin

    from keras_mtl import experiment

    experiment.register_gin_externals()
    import keras_mtl.data  # noqa: F401 (registers the dataset readers)
    import keras_mtl.models  # noqa: F401 (registers the model factories)

    gin.parse_config_files_and_bindings(FLAGS.gin_file, FLAGS.gin_bindings)
    table = evaluate(FLAGS.model, FLAGS.out_dir)
    print(markdown_table(table))


if __name__ == "__main__":
    define_flags()
    app.run(main)

"""launch.evaluate scores a model with its config's own loss and metrics.

One config per shipped family runs on fixture data written by
`keras_mtl.data.testing` (sizes shrunk by the bindings of
test_gin_paper_configs.py): the table names exactly the metrics the config
compiles, and one metric per family is recomputed here with numpy from the
model's outputs. The toy config goes the README's way: train, then evaluate
the run directory from its operative config and from the shipped config.
"""

import copy
import json
import os

import gin
import numpy as np
import pytest

from keras_mtl import configs
from keras_mtl import experiment
from keras_mtl.data import testing
from launch import evaluate
from test_gin_paper_configs import FAMILIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEG = {"loss", "mean_iou", "pixel_accuracy"}
DEPTH = {"loss", "abs_error", "rel_error"}
NORMAL = {"loss", "mean_angle", "median_angle", "within_11_25", "within_22_5", "within_30"}
CLASSIFIER = {"loss", "accuracy"}

# family prefix -> (config, {task or "seg_*" / "*": expected metric names}, checked metric)
CASES = {
    "gradnorm_nyuv2_seg_": ("gradnorm_nyuv2_seg_gradnorm.gin", {
        "depth": DEPTH | {"rmse"}, "seg": SEG, "normal": {"loss", "cosine_error"}},
        "pixel_accuracy"),
    "gradnorm_mtfl40_": ("gradnorm_mtfl40_equal.gin", {
        "landmarks": {"loss", "keypoint_error", "failure_rate"}, "*": CLASSIFIER}, "accuracy"),
    "gradnorm_mtfl160_": ("gradnorm_mtfl160_base.gin", {
        "landmarks": {"loss", "keypoint_error", "failure_rate"}, "*": CLASSIFIER}, "accuracy"),
    "imtl_celeba_": ("imtl_celeba_imtl.gin", {"*": CLASSIFIER}, "accuracy"),
    "imtl_cityscapes_": ("imtl_cityscapes_base.gin", {"seg19": SEG, "depth": DEPTH}, "abs_error"),
    "imtl_nyuv2_": ("imtl_nyuv2_base.gin", {"seg": SEG, "normal": NORMAL, "depth": DEPTH},
                    "pixel_accuracy"),
    "mr_celeba_": ("mr_celeba_mr.gin", {"*": {"loss", "precision", "recall", "fscore"}}, "fscore"),
    "mr_cityscapes_": ("mr_cityscapes_base.gin", {"seg_*": SEG, "depth": DEPTH}, "pixel_accuracy"),
    "mr_nyuv2_": ("mr_nyuv2_base.gin", {"seg_*": SEG, "depth": DEPTH, "normal": NORMAL},
                  "abs_error"),
    "digits_": ("digits_base.gin", {"*": CLASSIFIER}, "accuracy"),
    "arch_nyuv2_": ("arch_nyuv2_mtan.gin", {"seg": SEG, "normal": NORMAL, "depth": DEPTH},
                    "pixel_accuracy"),
    "arch_cityscapes_": ("arch_cityscapes_mmoe.gin", {"seg": SEG, "depth": DEPTH}, "abs_error"),
    "arch_celeba_": ("arch_celeba_ple.gin", {"*": {"loss", "precision", "recall", "fscore"}},
                     "fscore"),
    "astmt_nyud_": ("astmt_nyud_sea.gin", {"seg": SEG, "normal": NORMAL, "depth": DEPTH | {"rmse"}},
                    "pixel_accuracy"),
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    dirs = {k: str(root / k) for k in ("nyuv2", "cityscapes", "celeba", "mtfl")}
    testing.write_nyuv2(dirs["nyuv2"], num_train=2, num_val=2, height=32, width=32)
    testing.write_cityscapes(dirs["cityscapes"], num_train=2, num_val=2, height=32, width=64)
    testing.write_celeba(dirs["celeba"], num_train=2, num_val=2, num_test=2)
    testing.write_mtfl(dirs["mtfl"], num_train=2, num_test=2)
    return dirs


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    experiment.register_gin_externals()
    import keras_mtl.data  # noqa: F401 (gin registration of the readers)
    import keras_mtl.models  # noqa: F401 (gin registration of the factories)
    yield
    gin.clear_config()


def config_model():
    """The parsed config's `train.model` factory, called."""
    return copy.deepcopy(gin.query_parameter("train.model"))()


def expected_names(spec, task):
    if task in spec:
        return spec[task]
    if task.startswith("seg_") and "seg_*" in spec:
        return spec["seg_*"]
    return spec["*"]


def numpy_metric(name, y, out):
    """The metric over one batch, from labels and raw outputs (logits)."""
    y, out = np.asarray(y, "float64"), np.asarray(out, "float64")
    if name == "pixel_accuracy":
        pred = (out[..., 0] > 0).astype(int) if out.shape[-1] == 1 else out.argmax(-1)
        true = np.round(y.reshape(pred.shape))
        valid = true >= 0
        return float(np.mean(pred[valid] == true[valid]))
    if name == "accuracy":
        if out.shape[-1] == y.reshape(len(y), -1).shape[-1]:  # binary logits
            return float(np.mean((out > 0) == (y > 0.5)))
        return float(np.mean(out.argmax(-1) == y.reshape(-1)))
    if name == "abs_error":
        valid = y > 0
        return float(np.mean(np.abs(out - y)[valid]))
    if name == "fscore":
        pred, true = out > 0, y > 0.5
        tp = (pred & true).sum(0)
        precision = np.divide(tp, pred.sum(0), out=np.zeros(tp.shape), where=pred.sum(0) > 0)
        recall = np.divide(tp, true.sum(0), out=np.zeros(tp.shape), where=true.sum(0) > 0)
        total = precision + recall
        return float(np.mean(np.divide(2 * precision * recall, total,
                                       out=np.zeros(tp.shape), where=total > 0)))
    raise AssertionError(name)


def test_every_config_family_has_a_case():
    missing = set(FAMILIES) - set(CASES)
    assert not missing, (
        f"Config families {sorted(missing)} (test_gin_paper_configs.FAMILIES) have no "
        "evaluation case here: add one to CASES (a config, its metric names, a metric "
        "numpy_metric recomputes).")
    for config, _, _ in CASES.values():
        assert os.path.isfile(os.path.join(configs.config_dir(), config)), config


@pytest.mark.parametrize("prefix", sorted(CASES))
def test_family_is_scored_with_its_config_metrics(prefix, fixtures, tmp_path):
    config, spec, checked = CASES[prefix]
    bindings = [b.format(**fixtures) for b in FAMILIES[prefix]]
    configs.parse([config], bindings)
    model = config_model()
    data = evaluate._eval_data()
    table = evaluate.evaluate(None, str(tmp_path), model=model, run_eagerly=True)

    assert list(table) == model.task_names
    with open(tmp_path / "metrics.json") as f:
        written = json.load(f)
    assert written.keys() == table.keys()
    for task in table:
        assert written[task] == pytest.approx(table[task], rel=1e-6)
    markdown = (tmp_path / "metrics.md").read_text()
    for task, values in table.items():
        assert set(values) == expected_names(spec, task), (task, sorted(values))
        assert all(np.isfinite(v) for v in values.values()), (task, values)
        for name in values:
            assert f"| {task} | {name} |" in markdown

    x, y = next(iter(data))  # fixture eval splits are one batch
    out = model(x, training=False)
    scored = [t for t in model.task_names if checked in table[t]]
    assert scored, (prefix, checked)
    for task in scored:
        expected = numpy_metric(checked, y[task], out[task])
        assert table[task][checked] == pytest.approx(expected, rel=1e-4, abs=1e-5), task


def test_config_without_metrics_is_scored_on_its_losses_only(tmp_path):
    """The README's toy commands: evaluate a run dir (operative config) and
    the shipped config; per-task losses equal what training measured."""
    run_dir = str(tmp_path / "run")
    small = ["toy_data.train_size = 200", "toy_data.test_size = 64", "toy_data.batch_size = 32",
             "train.steps = 2", "train.steps_per_epoch = 2"]
    configs.parse(["gin/toy_gradnorm_t2.gin"], small)
    experiment.train(run_dir)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        trained = json.load(f)

    for gin_files in ([evaluate._operative_config(run_dir)], ["gin/toy_gradnorm_t2.gin"]):
        gin.clear_config()
        configs.parse(gin_files, small if "toy" in gin_files[0] else [])
        table = evaluate.evaluate(run_dir, str(tmp_path / "eval"))
        assert table == {t: {"loss": pytest.approx(trained[f"{t}_loss"], rel=1e-5)}
                         for t in ("task_0", "task_1")}


def test_metrics_come_from_the_config_not_from_task_names(tmp_path):
    """A regression task named like a classifier gets no guessed metric, and
    a metric the config binds is reported under its own name."""
    small = ["toy_data.train_size = 64", "toy_data.test_size = 64", "toy_data.batch_size = 32",
             "toy_mlp.num_tasks = 2"]
    configs.parse(["toy_t2.gin"], small + [
        "train.metrics = {'task_1': [@keras.metrics.CategoricalAccuracy()]}",
        "keras.metrics.CategoricalAccuracy.name = 'argmax_agreement'",
    ])
    model = config_model()
    table = evaluate.evaluate(None, str(tmp_path), model=model, run_eagerly=True)
    assert set(table["task_0"]) == {"loss"}
    assert set(table["task_1"]) == {"loss", "argmax_agreement"}
    agree = []
    for x, y in evaluate._eval_data():
        out = np.asarray(model(x, training=False)["task_1"])
        agree.append(out.argmax(-1) == np.asarray(y["task_1"]).argmax(-1))
    expected = np.mean(np.concatenate(agree))
    assert 0.0 < expected < 1.0
    assert table["task_1"]["argmax_agreement"] == pytest.approx(expected, abs=1e-6)


def test_missing_config_is_a_clear_error(tmp_path):
    from keras_mtl.models.toy import toy_mlp

    with pytest.raises(ValueError, match="train.eval_data"):
        evaluate.evaluate(None, str(tmp_path), model=toy_mlp(num_tasks=2))
    with pytest.raises(ValueError, match="train.model"):
        evaluate.load_model(str(tmp_path / "run.weights.h5"))

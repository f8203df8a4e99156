"""Every paper config in gin/ parses, builds and trains on fixture data.

Sizes are reduced by gin bindings only (data dirs, batch, image size, widths);
the fixtures are written in the real on-disk formats by keras_mtl.data.testing.
Every paper config is parsed after `gin.clear_config()` and its `train`
bindings resolved; its model is built and compiled with its loss, optimizer
and balancer as `experiment.train` does, and each base config's readers are
checked against the model's tasks on a real batch. Two training steps run for
one row per architecture / balancer kind here (eagerly: tracing a graph per
config costs more than the steps), and for every config under
`pytest -m slow`. One roaming config goes through `experiment.train` and
`launch/evaluate.py` end to end.
"""

import copy
import glob
import json
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl import experiment
from keras_mtl.data import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "gin", "*.gin"))
    if not os.path.basename(p).startswith("toy_")
)

SEGNET_SMALL = [
    "segnet_multitask.filters = (4, 4, 4, 4, 4)",
    "segnet_multitask.convs_per_stage = (1, 1, 1, 1, 1)",
]
RESNET18_SMALL = [
    "resnet18_multitask.stage_filters = (4, 4, 8, 8)",
    "resnet18_multitask.stem_filters = 4",
    "resnet18_multitask.stage_blocks = (1, 1, 1, 1)",
]
RESNET_FCN_SMALL = [
    "thin_resnet_multitask.stage_blocks = (1, 1, 1, 1)",
    "thin_resnet_multitask.stage_filters = (8, 8, 16, 16)",
    "thin_resnet_multitask.bottleneck_filters = (2, 2, 4, 4)",
    "thin_resnet_multitask.stem_filters = 4",
    "thin_resnet_multitask.head_filters = 4",
]
ROAMING_FAST = ["keras_mtl.callbacks.MaximumRoaming.update_every = 1"]

# Config family (file-name prefix) -> bindings that shrink it. Every paper
# config must belong to one family (checked below).
FAMILIES = {
    "gradnorm_nyuv2_seg_": [
        "NYUV2_DIR = '{nyuv2}'", "nyuv2.batch_size = 2", "nyuv2.image_size = (32, 32)",
        "nyuv2.label_size = (8, 8)", "GRADNORM_STATIC_WEIGHTS = [0.5, 1.5, 1.0]",
    ] + SEGNET_SMALL,
    "gradnorm_mtfl40_": ["MTFL_DIR = '{mtfl}'", "mtfl.batch_size = 2"],
    "gradnorm_mtfl160_": ["MTFL_DIR = '{mtfl}'", "mtfl.batch_size = 2"],
    "mr_celeba_": [
        "CELEBA_DIR = '{celeba}'", "celeba.batch_size = 2", "celeba.image_size = (32, 32)",
    ] + RESNET18_SMALL + ROAMING_FAST,
    "mr_cityscapes_": [
        "CITYSCAPES_DIR = '{cityscapes}'", "cityscapes.batch_size = 2",
        "segnet_multitask.output_filters = 4", "segnet_multitask.head_filters = 4",
    ] + SEGNET_SMALL + ROAMING_FAST,
    "mr_nyuv2_": [
        "NYUV2_DIR = '{nyuv2}'", "nyuv2.batch_size = 2",
        "segnet_multitask.output_filters = 4", "segnet_multitask.head_filters = 4",
    ] + SEGNET_SMALL + ROAMING_FAST,
    "imtl_cityscapes_": ["CITYSCAPES_DIR = '{cityscapes}'", "cityscapes.batch_size = 2"] + RESNET_FCN_SMALL,
    "imtl_nyuv2_": ["NYUV2_DIR = '{nyuv2}'", "nyuv2.batch_size = 2"] + RESNET_FCN_SMALL,
    "imtl_celeba_": [
        "CELEBA_DIR = '{celeba}'", "celeba.batch_size = 2", "celeba.image_size = (32, 32)",
    ] + RESNET18_SMALL,
    "astmt_nyud_": ["NYUV2_DIR = '{nyuv2}'", "nyuv2.batch_size = 2"] + RESNET_FCN_SMALL,
    "digits_": ["multidigits.num_examples = 8", "multidigits.batch_size = 4"],
}
RUN = ["train.steps = 2", "train.steps_per_epoch = 2"]

# Expert-based architectures (issue 14): gin/arch_<data>_experts_base.gin
# configures all four builders; arch_<data>_<arch>.gin picks one.
RESNET_EXPERT_SMALL = [
    "HEAD_HIDDEN = 4",
    "resnet_expert.stage_blocks = (1, 1, 1, 1)",
    "resnet_expert.stage_filters = (8, 8, 16, 16)",
    "resnet_expert.bottleneck_filters = (2, 2, 4, 4)",
    "resnet_expert.stem_filters = 4",
    "lower/resnet_expert.stage_blocks = (1, 1)",
    "lower/resnet_expert.stage_filters = (8, 8)",
    "lower/resnet_expert.bottleneck_filters = (2, 2)",
    "upper/resnet_expert.stage_blocks = (1, 1)",
    "upper/resnet_expert.stage_filters = (16, 16)",
    "upper/resnet_expert.bottleneck_filters = (4, 4)",
]
RESNET18_EXPERT_SMALL = [
    "resnet_expert.stage_blocks = (1, 1, 1, 1)",
    "resnet_expert.stage_filters = (4, 4, 8, 8)",
    "resnet_expert.stem_filters = 4",
    "lower/resnet_expert.stage_blocks = (1, 1)",
    "lower/resnet_expert.stage_filters = (4, 4)",
    "upper/resnet_expert.stage_blocks = (1, 1)",
    "upper/resnet_expert.stage_filters = (8, 8)",
]

# MTAN, Cross-stitch, LTB (issue 14): gin/arch_<data>_columns_base.gin
# configures all three builders; arch_<data>_<arch>.gin picks one.
COLUMNS_SMALL = [
    f"{fn}.{key} = {value}"
    for fn in ("mtan_multitask", "cross_stitch_multitask", "ltb_multitask")
    for key, value in (("stage_blocks", "(1, 1, 1, 1)"), ("stage_filters", "(8, 8, 16, 16)"),
                       ("bottleneck_filters", "(2, 2, 4, 4)"), ("stem_filters", "4"),
                       ("head_filters", "4"))
]
# One family per dataset: its bindings shrink every architecture's builder.
FAMILIES["arch_nyuv2_"] = [
    "NYUV2_DIR = '{nyuv2}'", "nyuv2.batch_size = 2"] + RESNET_EXPERT_SMALL + COLUMNS_SMALL
FAMILIES["arch_cityscapes_"] = [
    "CITYSCAPES_DIR = '{cityscapes}'", "cityscapes.batch_size = 2",
] + RESNET_EXPERT_SMALL + COLUMNS_SMALL
FAMILIES["arch_celeba_"] = [
    "CELEBA_DIR = '{celeba}'", "celeba.batch_size = 2", "celeba.image_size = (32, 32)",
] + RESNET18_EXPERT_SMALL


def family(path):
    name = os.path.basename(path)
    matches = [f for f in FAMILIES if name.startswith(f)]
    assert len(matches) == 1, f"{name} belongs to no config family of this test: {matches}"
    return matches[0]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_data")
    dirs = {k: str(root / k) for k in ("nyuv2", "cityscapes", "celeba", "mtfl")}
    testing.write_nyuv2(dirs["nyuv2"], num_train=4, num_val=2, height=32, width=32)
    testing.write_cityscapes(dirs["cityscapes"], num_train=4, num_val=2, height=32, width=64)
    testing.write_celeba(dirs["celeba"], num_train=4, num_val=2, num_test=2)
    testing.write_mtfl(dirs["mtfl"], num_train=4, num_test=2)
    return dirs


def parse(path, dirs, extra=()):
    experiment.register_gin_externals()
    import keras_mtl.data  # noqa: F401 (gin registration of the readers)
    import keras_mtl.models  # noqa: F401 (gin registration of the factories)

    gin.clear_config()
    bindings = [b.format(**dirs) for b in FAMILIES[family(path)]] + RUN + list(extra)
    gin.parse_config_files_and_bindings([os.path.join(ROOT, path)], bindings)


def resolved_train_args():
    """The bound arguments of `train`, references called, as train() gets them."""
    return gin.get_bindings("train", resolve_references=True)


def resolve(key, default=None):
    """One bound parameter with its references called (gin resolves on deepcopy)."""
    try:
        value = gin.query_parameter(key)
    except ValueError:
        return default
    return copy.deepcopy(value)


def build_and_compile(run_eagerly=False):
    """What `experiment.train` does before `fit`, from the parsed config."""
    model = resolve("train.model")()
    balancer = balancers.get(resolve("train.balancer", "equal"))
    optimizer = resolve("train.optimizer") or keras.optimizers.Adam()
    loss = resolve("train.loss")
    model.compile(optimizer=optimizer, loss=loss, balancer=balancer, run_eagerly=run_eagerly)
    return model, loss


@pytest.mark.parametrize("path", PAPER_CONFIGS)
def test_paper_config_parses_and_builds(path, fixtures):
    parse(path, fixtures)
    model, loss = build_and_compile()
    if isinstance(loss, dict):
        assert list(loss) == model.task_names, path
    for callback in resolve("train.callbacks", ()):
        assert isinstance(callback, keras.callbacks.Callback)
    assert resolve("train.steps") == 2
    if path.endswith("_base.gin"):
        # the readers' label dicts name exactly the model's tasks, with
        # label shapes the outputs can be scored against
        for key in ("train.train_data", "train.eval_data"):
            data = resolve(key)
            data = data() if callable(data) else data  # a factory (`@train/multidigits`)
            x, y = next(iter(data))
            out = model(x)
            assert set(y) == set(model.task_names), (path, key, sorted(y))
            for task in model.task_names:
                rank = out[task].shape.rank
                assert out[task].shape[: rank - 1] == y[task].shape[: rank - 1], (path, task)


def train_two_steps(path, dirs):
    parse(path, dirs)
    model, _ = build_and_compile(run_eagerly=True)
    data = resolve("train.train_data").repeat()
    callbacks = list(resolve("train.callbacks", ()))
    history = model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, callbacks=callbacks)
    assert int(model.optimizer.iterations.numpy()) == 2
    logs = {k: v[-1] for k, v in history.history.items()}
    assert np.isfinite(logs["loss"]), (path, logs)
    for task in model.task_names:
        assert np.isfinite(logs[f"{task}_loss"]) and np.isfinite(logs[f"{task}_weight"])
    return model, logs


# One row per architecture and balancer kind in the default suite; every
# config in the slow one.
REPRESENTATIVE = [
    "gin/gradnorm_nyuv2_seg_gradnorm.gin",  # SegNet (stride 4), GradNorm
    "gin/gradnorm_mtfl40_uncertainty.gin",  # MTFL CNN, uncertainty weighting
    "gin/imtl_nyuv2_imtl.gin",  # dilated ResNet-50 FCN, IMTL hybrid
    # mr_celeba_se_mtl.gin (ResNet-18 + task SE) trains in the slow suite;
    # folded passes train here through the roaming end-to-end test below
    # (SegNet + TaskMask) and the SE ResNet in test_se_resnet.py.
    "gin/astmt_nyud_sea.gin",  # task SE + gradient discriminator
]


@pytest.mark.parametrize("path", REPRESENTATIVE)
def test_representative_paper_configs_train_two_steps(path, fixtures):
    model, logs = train_two_steps(path, fixtures)
    if "gradnorm" in path and "gradnorm_nyuv2" in path:
        weights = [logs[f"{t}_weight"] for t in model.task_names]
        assert sum(weights) == pytest.approx(len(weights), rel=1e-4)  # sum w_i = T
        assert weights != pytest.approx([1.0] * len(weights))  # the weights moved


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS)
def test_every_paper_config_trains_two_steps(path, fixtures):
    train_two_steps(path, fixtures)


def test_gradnorm_static_needs_the_time_averaged_weights(fixtures):
    experiment.register_gin_externals()
    import keras_mtl.data  # noqa: F401
    import keras_mtl.models  # noqa: F401

    gin.clear_config()
    with pytest.raises(ValueError, match="GRADNORM_STATIC_WEIGHTS"):
        gin.parse_config_files_and_bindings(
            [os.path.join(ROOT, "gin/gradnorm_nyuv2_seg_gradnorm_static.gin")], [])


def test_roaming_config_end_to_end_with_train_and_evaluate(fixtures, tmp_path):
    """experiment.train (the launcher's path) then launch/evaluate.py on its model."""
    from launch import evaluate

    path = "gin/mr_cityscapes_mr.gin"
    parse(path, fixtures)
    run_dir = str(tmp_path / "run")
    result = experiment.train(run_dir)
    assert os.path.exists(os.path.join(run_dir, "model.keras"))
    roaming = [l for l in result["model"].encoder._flatten_layers()
               if getattr(l, "roaming", False)]
    assert roaming and all(int(l.update_count.numpy()) == 2 for l in roaming)

    out_dir = str(tmp_path / "eval")
    table = evaluate.evaluate(os.path.join(run_dir, "model.keras"), out_dir)
    with open(os.path.join(out_dir, "metrics.json")) as f:
        written = json.load(f)
    assert written.keys() == table.keys()
    for task in table:
        assert written[task] == pytest.approx(table[task])
    markdown = open(os.path.join(out_dir, "metrics.md")).read()
    assert "| seg_sky | mean_iou |" in markdown and "| depth | abs_error |" in markdown
    assert set(written) == set(result["model"].task_names)
    assert np.isfinite(written["depth"]["loss"]) and written["depth"]["abs_error"] > 0.0
    for task in written:
        if task.startswith("seg_"):
            # binary mIoU <= pixel accuracy (x / (x + e) is concave and increasing)
            assert 0.0 <= written[task]["mean_iou"] <= written[task]["pixel_accuracy"] <= 1.0

    # a weights file: the architecture comes from the parsed config's train.model
    weights = str(tmp_path / "run.weights.h5")
    result["model"].save_weights(weights)
    again = evaluate.evaluate(weights, str(tmp_path / "eval_weights"))
    for task in table:
        for name, value in table[task].items():
            if name != "loss":  # a weights-only model is not compiled
                assert again[task][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)

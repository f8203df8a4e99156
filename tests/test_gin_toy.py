"""The toy gin configs parse, bind what they say, and train through the launcher."""

import glob
import os
import subprocess
import sys

import gin
import pytest

from keras_mtl import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = sorted(p for p in glob.glob(os.path.join(ROOT, "gin", "toy_*.gin"))
             if not p.endswith("toy_base.gin"))


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    experiment.register_gin_externals()
    yield
    gin.clear_config()


@pytest.mark.parametrize("path", TOY, ids=os.path.basename)
def test_toy_config_parses_and_binds(path):
    gin.parse_config_file(path)
    name = os.path.basename(path)
    assert gin.query_parameter("train.steps") == 3_000
    assert gin.query_parameter("keras.optimizers.Adam.learning_rate") == 1e-3
    num_tasks = gin.query_parameter("toy_mlp.num_tasks")
    assert num_tasks == (2 if "t2" in name else 10)
    if "gradnorm" in name:
        assert gin.query_parameter("GradNorm.alpha") == 0.12
        assert gin.query_parameter("gradnorm/keras.optimizers.Adam.learning_rate") == 0.025
    if "t10" in name:
        from keras_mtl.data.toy import wide_sigmas

        sigmas = experiment.wide_sigmas()
        assert sigmas == wide_sigmas(10, seed=0) and len(sigmas) == 10


def test_train_writes_a_reproducible_run(tmp_path):
    gin.parse_config_files_and_bindings(
        [os.path.join(ROOT, "gin", "toy_gradnorm_t2.gin")],
        ["train.steps = 6", "train.steps_per_epoch = 3", "toy_data.train_size = 300",
         "toy_data.test_size = 100"])
    result = experiment.train(str(tmp_path))
    for name in ("operative_config.gin", "history.csv", "task_weights.csv",
                 "task_normalized_loss.csv", "model.keras", "metrics.json",
                 "checkpoints/epoch_0002.keras"):
        assert (tmp_path / name).exists(), name
    operative = (tmp_path / "operative_config.gin").read_text()
    assert "GradNorm.alpha = 0.12" in operative
    weights = (tmp_path / "task_weights.csv").read_text().splitlines()
    assert len(weights) == 1 + 7  # header + step 0 + 6 steps
    assert result["metrics"]["task_normalized_loss"] > 0


def test_launcher_runs_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train",
         "--gin_file=gin/toy_uncertainty_t2.gin",
         "--gin_bindings=toy_data.train_size = 200",
         "--gin_bindings=toy_data.test_size = 100",
         "--gin_bindings=train.steps_per_epoch = 2",
         f"--model_dir={out}", "--steps=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "UncertaintyWeighting" in (out / "operative_config.gin").read_text()

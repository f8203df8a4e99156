"""launch.compare: mean +- std over seeds, Delta_m against a baseline, ranks, plot.

Hand-written run directories (the on-disk format launch.train writes) check
the numbers against values worked out here; two real toy runs check that
what `experiment.train` writes is read as is, and the CLI runs once on them
(`pytest -m slow`).
"""

import json
import math
import os
import subprocess
import sys

import gin
import pytest

from keras_mtl import configs
from keras_mtl import experiment
from launch import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(folder, metrics, weights=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    if weights is not None:
        with open(os.path.join(folder, "task_weights.csv"), "w") as f:
            f.write("step,seg,depth\n")
            for step, (a, b) in enumerate(weights):
                f.write(f"{step},{a},{b}\n")


def run(acc, err, loss_seg=1.0):
    """A run's metrics.json as launch.train writes it (flat, with weights)."""
    return {"loss": 123.0, "seg_loss": loss_seg, "seg_weight": 1.1, "seg_accuracy": acc,
            "depth_loss": 0.5, "depth_weight": 0.9, "depth_abs_error": err,
            "task_normalized_loss": 1.7}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    # equal: acc 0.5, 0.7 (mean 0.6); err 2, 2 (mean 2)
    write_run(root / "equal" / "seed0", run(0.5, 2.0), [(1, 1), (1, 1), (1, 1)])
    write_run(root / "equal" / "seed1", run(0.7, 2.0), [(1, 1), (1, 1), (1, 1)])
    # gradnorm: acc 0.66, 0.66; err 1.0, 2.0 (mean 1.5)
    write_run(root / "gradnorm" / "seed0", run(0.66, 1.0), [(1, 1), (1.2, 0.8), (1.4, 0.6)])
    write_run(root / "gradnorm" / "seed1", run(0.66, 2.0), [(1, 1), (1.0, 1.0), (1.2, 0.8)])
    # uncertainty: one seed, acc 0.3, err 3
    write_run(root / "uncertainty" / "seed0", run(0.3, 3.0), [(1, 1), (0.5, 2.0), (0.2, 3.0)])
    return str(root)


def test_table_numbers(runs_root, tmp_path):
    out = str(tmp_path / "out")
    result = compare.compare(runs_root, "equal", out)
    assert result["metrics"] == {"depth_abs_error": "min", "seg_accuracy": "max"}
    equal, grad, unc = (result["methods"][m] for m in ("equal", "gradnorm", "uncertainty"))
    assert equal["seeds"] == 2 and unc["seeds"] == 1
    assert equal["metrics"]["seg_accuracy"]["mean"] == pytest.approx(0.6)
    assert equal["metrics"]["seg_accuracy"]["std"] == pytest.approx(math.sqrt(0.02))
    assert grad["metrics"]["depth_abs_error"]["std"] == pytest.approx(math.sqrt(0.5))
    assert unc["metrics"]["seg_accuracy"]["std"] is None
    # Delta_m = 100/2 * ((0.66 - 0.6)/0.6 - (1.5 - 2)/2) = 50 * (0.1 + 0.25)
    assert grad["delta_m"] == pytest.approx(17.5)
    assert equal["delta_m"] == 0.0
    # uncertainty: 50 * ((0.3 - 0.6)/0.6 - (3 - 2)/2) = -50
    assert unc["delta_m"] == pytest.approx(-50.0)
    assert grad["ranks"] == {"depth_abs_error": 1.0, "seg_accuracy": 1.0}
    assert equal["ranks"] == {"depth_abs_error": 2.0, "seg_accuracy": 2.0}
    assert result["order"] == ["gradnorm", "equal", "uncertainty"]

    with open(os.path.join(out, "comparison.json")) as f:
        assert json.load(f)["methods"]["gradnorm"]["delta_m"] == pytest.approx(17.5)
    markdown = open(os.path.join(out, "comparison.md")).read()
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | seeds | depth_abs_error ↓ | seg_accuracy ↑ |")
    assert rows[1].startswith("| gradnorm | 2 | 1.5 ± 0.71 (1) | 0.66 ± 0 (1) | +17.50 |")
    assert rows[3].startswith("| uncertainty | 1 | 3 (3) | 0.3 (3) | -50.00 |")
    png = os.path.join(out, "task_weights.png")
    assert result["plot"] == "task_weights.png" and os.path.getsize(png) > 5_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_ties_share_their_mean_rank():
    assert compare._rank([1.0, 3.0, 1.0, 2.0], "min") == [1.5, 4.0, 1.5, 3.0]
    assert compare._rank([1.0, 3.0, 1.0, 2.0], "max") == [3.5, 1.0, 3.5, 2.0]


def test_directions_choose_and_override(runs_root, tmp_path):
    result = compare.compare(runs_root, "equal", str(tmp_path / "o"),
                             directions={"seg_loss": "max", "seg_accuracy": None})
    assert result["metrics"] == {"seg_loss": "max", "seg_accuracy": "max"}
    assert result["methods"]["gradnorm"]["ranks"]["seg_loss"] == 2.0  # all equal: tie


def test_unknown_direction_is_an_error_not_a_guess(tmp_path):
    root = tmp_path / "runs"
    for method in ("a", "b"):
        write_run(root / method / "s0", {"t_weight": 1.0, "t_smoothness": 0.3})
    with pytest.raises(ValueError, match=r"--metrics=t_smoothness:max"):
        compare.compare(str(root), "a", str(tmp_path / "o"))
    result = compare.compare(str(root), "a", str(tmp_path / "o"),
                             directions={"t_smoothness": "min"})
    assert result["methods"]["b"]["delta_m"] == 0.0
    with pytest.raises(ValueError, match="Unknown baseline method 'c'"):
        compare.compare(str(root), "c", str(tmp_path / "o"))
    assert compare.direction("normal_within_11_25") == "max"
    assert compare.direction("normal_median_angle") == "min"
    assert compare.direction("landmarks_failure_rate") == "min"
    assert compare.direction("seg_mean_iou") == "max"


def test_missing_metric_names_the_run(runs_root, tmp_path):
    broken = os.path.join(runs_root, "gradnorm", "seed1")
    write_run(broken, {"seg_weight": 1.0, "seg_accuracy": 0.5, "depth_weight": 1.0})
    with pytest.raises(ValueError, match=r"seed1.*depth_abs_error"):
        compare.compare(runs_root, "equal", str(tmp_path / "o"))


@pytest.mark.slow  # two trainings and a subprocess: ~30 s on 2 busy cores
def test_real_toy_runs_and_the_cli(tmp_path):
    """Runs written by experiment.train, named explicitly with --runs."""
    dirs = {}
    for method, config in (("equal", "toy_t2.gin"), ("gradnorm", "toy_gradnorm_t2.gin")):
        gin.clear_config()
        experiment.register_gin_externals()
        configs.parse([config], [
            "toy_data.train_size = 200", "toy_data.test_size = 64", "toy_data.batch_size = 32",
            "train.steps = 3", "train.steps_per_epoch = 3"])
        dirs[method] = str(tmp_path / method / "s0")
        experiment.train(dirs[method])
    gin.clear_config()

    out = tmp_path / "cmp"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.compare", f"--runs=equal={dirs['equal']}",
         f"--runs=gradnorm={dirs['gradnorm']}", "--baseline=equal", f"--out_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "comparison.json").read_text())
    assert result["metrics"] == {"task_0_loss": "min", "task_1_loss": "min"}
    for method, run_dir in dirs.items():
        with open(os.path.join(run_dir, "metrics.json")) as f:
            trained = json.load(f)
        for name in result["metrics"]:
            assert result["methods"][method]["metrics"][name]["mean"] == trained[name]
    expected = compare.compare(None, "equal", str(tmp_path / "api"),
                               runs={m: [d] for m, d in dirs.items()})
    assert result["methods"]["gradnorm"]["delta_m"] == pytest.approx(
        expected["methods"]["gradnorm"]["delta_m"])
    assert (out / "task_weights.png").stat().st_size > 5_000
    assert "| gradnorm | 1 |" in (out / "comparison.md").read_text()

"""The records of a run: the monitor quantity, bounded checkpoints, resumable CSV
files, TensorBoard task weights, validation and progress through `experiment.train`.

The SIGKILL-and-restart equality of the records is in tests/test_resume.py.
"""

import json
import os
import subprocess
import sys
import warnings

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl as mtl
from keras_mtl import experiment
from keras_mtl.callbacks import mean_task_losses
from keras_mtl.models.toy import toy_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 250)).astype("float32")
    # Learnable targets: fixed linear maps (the same for every seed) of x.
    maps = np.random.default_rng(99).normal(size=(2, 250, 4)) / np.sqrt(250)
    y = {"task_0": (x @ maps[0]).astype("float32"),
         "task_1": (30.0 * x @ maps[1]).astype("float32")}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def _model(balancer="equal", optimizer=None):
    model = toy_mlp(2, width=16, depth=1, output_dim=4, seed=0)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-2), loss="mse",
                  balancer=balancer)
    return model


# ---------------------------------------------------------------------------
# NormalizedLoss: a weight-independent quantity to monitor
# ---------------------------------------------------------------------------
def test_normalized_loss_is_mean_of_task_losses_over_first_batch_losses():
    train, val = _data(), _data(16, seed=1)
    model = _model("uncertainty")
    first = mean_task_losses(model, train.take(1))  # the untrained network
    cb = mtl.callbacks.NormalizedLoss()
    h = model.fit(train, validation_data=val, epochs=3, verbose=0, shuffle=False,
                  callbacks=[cb]).history
    ref = np.array([cb.reference["task_0"], cb.reference["task_1"]])
    np.testing.assert_allclose(ref, first, rtol=1e-5)
    for prefix in ("", "val_"):
        expected = np.mean(np.stack([np.array(h[f"{prefix}task_{t}_loss"]) / ref[t]
                                     for t in range(2)]), axis=0)
        np.testing.assert_allclose(h[f"{prefix}normalized_loss"], expected, rtol=1e-6)
    # task_1's loss is ~300x task_0's: training lowers it, and `loss` with it,
    # while task_0 gets worse; the normalised loss counts both tasks alike.
    assert h["loss"][-1] < 0.8 * h["loss"][0]
    assert h["task_0_loss"][-1] > 1.5 * h["task_0_loss"][0]
    assert h["normalized_loss"][-1] > h["normalized_loss"][0]


def test_normalized_loss_does_not_move_with_the_task_weights():
    # No learning (rate 0): the task losses stay, only the weights differ.
    logs = []
    for weights in ([1.0, 1.0], [1.9, 0.1]):
        model = _model(mtl.balancers.StaticWeights(weights),
                       keras.optimizers.SGD(learning_rate=0.0))
        logs.append(model.fit(_data(), epochs=1, verbose=0, shuffle=False,
                              callbacks=[mtl.callbacks.NormalizedLoss()]).history)
    equal, skewed = logs
    assert skewed["loss"][0] < 0.2 * equal["loss"][0]  # the weighted sum moved 5x
    np.testing.assert_allclose(skewed["normalized_loss"], equal["normalized_loss"], rtol=1e-6)


def test_normalized_loss_reference_is_kept_for_a_restart(tmp_path):
    state = tmp_path / "ref.json"
    model = _model()
    cb = mtl.callbacks.NormalizedLoss(state_path=str(state))
    model.fit(_data(), epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    saved = json.loads(state.read_text())["reference"]
    assert saved == cb.reference
    # A new process (new callback) on the trained model reads it back.
    now = mean_task_losses(model, _data().take(1))  # what it would take instead
    again = mtl.callbacks.NormalizedLoss(state_path=str(state))
    h = model.fit(_data(), epochs=1, verbose=0, shuffle=False, callbacks=[again]).history
    assert again.reference == saved
    losses = np.array([h[f"task_{t}_loss"][0] for t in range(2)])
    expected = np.mean(losses / np.array([saved["task_0"], saved["task_1"]]))
    assert h["normalized_loss"][0] == pytest.approx(expected, rel=1e-6)
    # ... which differs from the first-batch losses of the trained model.
    assert np.all(np.abs(now / np.array([saved["task_0"], saved["task_1"]]) - 1) > 0.1)


# ---------------------------------------------------------------------------
# RotatingCheckpoint: bounded, and the best by a monitored value
# ---------------------------------------------------------------------------
def test_rotating_checkpoint_keeps_the_last_files_and_the_best(tmp_path):
    model = _model()
    ckpt = mtl.callbacks.RotatingCheckpoint(tmp_path, keep=2, monitor="normalized_loss")
    norm = mtl.callbacks.NormalizedLoss()
    h = model.fit(_data(), epochs=5, verbose=0, shuffle=False,
                  callbacks=[norm, ckpt]).history
    assert sorted(os.listdir(tmp_path)) == [
        "best.json", "best.keras", "epoch_0004.keras", "epoch_0005.keras"]
    best = json.loads((tmp_path / "best.json").read_text())
    values = h["normalized_loss"]
    assert best["epoch"] == 1 + int(np.argmin(values))
    assert best["value"] == pytest.approx(min(values), rel=1e-12)
    loaded = keras.saving.load_model(tmp_path / "epoch_0005.keras")
    for a, b in zip(loaded.variables, model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A restart reads the best back: epochs no better than it replace nothing.
    model.optimizer.learning_rate.assign(0.0)
    before = (tmp_path / "best.keras").stat().st_mtime_ns
    again = mtl.callbacks.RotatingCheckpoint(tmp_path, keep=2, monitor="normalized_loss")
    h2 = model.fit(_data(), epochs=1, verbose=0, shuffle=False, callbacks=[
        mtl.callbacks.NormalizedLoss(reference=norm.reference), again]).history
    assert h2["normalized_loss"][0] > best["value"]
    assert again.best == pytest.approx(min(values), rel=1e-12)
    assert json.loads((tmp_path / "best.json").read_text()) == best
    assert (tmp_path / "best.keras").stat().st_mtime_ns == before


def test_rotating_checkpoint_keep_all_or_none_and_argument_errors(tmp_path):
    model = _model()
    model.fit(_data(), epochs=3, verbose=0, shuffle=False, callbacks=[
        mtl.callbacks.RotatingCheckpoint(tmp_path / "all", keep=None),
        mtl.callbacks.RotatingCheckpoint(tmp_path / "none", keep=0, monitor="loss")])
    assert len(os.listdir(tmp_path / "all")) == 3
    assert sorted(os.listdir(tmp_path / "none")) == ["best.json", "best.keras"]
    with pytest.raises(ValueError, match="Received: keep=-1"):
        mtl.callbacks.RotatingCheckpoint(tmp_path, keep=-1)
    with pytest.raises(ValueError, match="Received: mode='lower'"):
        mtl.callbacks.RotatingCheckpoint(tmp_path, mode="lower")


# ---------------------------------------------------------------------------
# Records that a restart continues (the kill test is in test_resume.py)
# ---------------------------------------------------------------------------
def test_csv_history_continues_after_the_restored_epoch(tmp_path):
    path = tmp_path / "history.csv"
    # A killed run wrote epochs 1-3; its backup is the end of epoch 1.
    path.write_text("epoch,loss\n1,5.5\n2,4.5\n3,3.5\n")
    model = _model()
    h = model.fit(_data(), epochs=3, initial_epoch=1, verbose=0, shuffle=False,
                  callbacks=[mtl.callbacks.CSVHistory(str(path))]).history
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,loss,task_0_loss,task_0_weight,task_1_loss,task_1_weight"
    assert lines[1] == "1,5.5,,,,"
    rows = [l.split(",") for l in lines[2:]]
    assert [r[0] for r in rows] == ["2", "3"]
    np.testing.assert_allclose([float(r[1]) for r in rows], h["loss"], rtol=1e-8)


def test_balancer_history_restart_drops_steps_after_the_restored_one(tmp_path):
    path = tmp_path / "w.csv"
    model = _model("uncertainty")
    history = mtl.callbacks.BalancerHistory(csv_path=str(path))
    model.fit(_data(), epochs=2, verbose=0, shuffle=False, callbacks=[history])
    lines = path.read_text().splitlines()
    assert [l.split(",")[0] for l in lines[1:]] == [str(s) for s in range(9)]
    # Rows of steps the model has not taken (a killed run's, after its
    # backup) plus a line cut by the kill: the next fit keeps steps 0-8 only.
    path.write_text("\n".join(lines + ["9,0.5,0.5", "10,0.5,0.5", "11,0.4"]) + "\n")
    again = mtl.callbacks.BalancerHistory(csv_path=str(path))
    model.fit(_data(), epochs=1, verbose=0, shuffle=False, callbacks=[again])
    new = path.read_text().splitlines()
    assert new[:10] == lines
    assert [l.split(",")[0] for l in new[1:]] == [str(s) for s in range(13)]
    np.testing.assert_allclose([float(v) for v in new[-1].split(",")[1:]],
                               model.balancer.task_weights().numpy(), rtol=1e-7)
    assert again.steps == list(range(13))


def test_task_weight_summaries_at_the_optimizer_steps(tmp_path):
    model = _model("uncertainty")
    history = mtl.callbacks.BalancerHistory()
    model.fit(_data(), epochs=2, verbose=0, shuffle=False, callbacks=[
        history, mtl.callbacks.TaskWeightSummaries(str(tmp_path), every=3)])
    found = {}
    for path in (tmp_path / "train").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                found[(v.tag, event.step)] = float(tf.make_ndarray(v.tensor))
    steps, weights = history.as_array()
    assert sorted({s for _, s in found}) == [0, 3, 6]
    for s in (0, 3, 6):
        for t in range(2):
            assert found[(f"task_weight/task_{t}", s)] == pytest.approx(
                weights[list(steps).index(s), t], rel=1e-6)


# ---------------------------------------------------------------------------
# experiment.train: validation, progress, config first, quiet
# ---------------------------------------------------------------------------
@gin.configurable
def read_operative_config(path=gin.REQUIRED):
    """A callback recording, at the first step, what `path` then holds."""

    class ReadAtFirstStep(keras.callbacks.Callback):
        text = None

        def on_train_batch_begin(self, batch, logs=None):
            if ReadAtFirstStep.text is None:
                with open(path) as f:
                    ReadAtFirstStep.text = f.read()

    read_operative_config.callback = ReadAtFirstStep
    return ReadAtFirstStep()


def test_train_validates_prints_progress_and_writes_config_first(tmp_path, capsys):
    gin.clear_config()
    experiment.register_gin_externals()
    gin.parse_config_files_and_bindings(
        [os.path.join(ROOT, "gin", "toy_gradnorm_t2.gin")],
        ["train.steps = 8", "train.steps_per_epoch = 2", "train.validate_every = 2",
         "toy_data.train_size = 64", "toy_data.test_size = 32", "toy_data.batch_size = 16",
         "toy_mlp.width = 8", "toy_mlp.depth = 1",
         "train.callbacks = [@read_operative_config]",
         f"read_operative_config.path = '{tmp_path / 'operative_config.gin'}'"])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            experiment.train(str(tmp_path))
    finally:
        gin.clear_config()
    assert not [w for w in caught if "shuffle" in str(w.message)]
    assert "GradNorm.alpha = 0.12" in read_operative_config.callback.text
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch ")]
    assert [l.split(" (")[0] for l in lines] == [f"epoch {e}/4" for e in range(1, 5)]
    assert "task_1_weight=" in lines[0] and "normalized_loss=" in lines[0]
    assert "val_normalized_loss=" in lines[1] and "val_" not in lines[0]
    header, *rows = [l.split(",") for l in (tmp_path / "history.csv").read_text().splitlines()]
    val = header.index("val_normalized_loss")
    assert [r[val] != "" for r in rows] == [False, True, False, True]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "epoch_0002.keras", "epoch_0003.keras", "epoch_0004.keras"]
    assert os.listdir(tmp_path / "tensorboard" / "validation")
    assert not (tmp_path / "backup").exists()


def test_launcher_flags_set_verbosity_and_checkpoint_retention(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--gin_file=gin/toy_t2.gin",
         "--gin_bindings=toy_data.train_size = 64", "--gin_bindings=toy_data.test_size = 32",
         "--gin_bindings=toy_data.batch_size = 16", "--gin_bindings=toy_mlp.width = 8",
         "--gin_bindings=train.steps_per_epoch = 1",
         f"--model_dir={out}", "--steps=3", "--verbose=0", "--keep_checkpoints=1",
         "--best_checkpoint_monitor=val_normalized_loss"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "epoch " not in proc.stdout and "shuffle" not in proc.stderr
    assert sorted(os.listdir(out / "checkpoints")) == [
        "best.json", "best.keras", "epoch_0003.keras"]
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    header, *rows = [l.split(",") for l in (out / "history.csv").read_text().splitlines()]
    values = [float(r[header.index("val_normalized_loss")]) for r in rows]
    assert best["epoch"] == 1 + int(np.argmin(values))
    assert best["value"] == pytest.approx(min(values), rel=1e-6)

"""Checkpoints keep every piece of state, and a killed run resumes exactly."""

import os
import signal
import subprocess
import sys
import time

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl import balancers
from keras_mtl.models.toy import toy_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@gin.configurable
def pause_at_step(step=gin.REQUIRED, marker=gin.REQUIRED):
    """A callback that freezes training after optimizer step `step` (for the kill test).

    It writes `marker` and sleeps, so the test can SIGKILL the process at a
    known point in the middle of an epoch.
    """

    class PauseAtStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == step:
                with open(marker, "w") as f:
                    f.write(str(step))
                time.sleep(600)

    return PauseAtStep()


def _state(model):
    """Every variable: network, optimizer, balancer and its optimizer, masks, counters."""
    variables = list(model.variables) + list(model.optimizer.variables)
    if getattr(model.balancer, "optimizer", None) is not None:
        variables += list(model.balancer.optimizer.variables)
    return [np.array(v.numpy()) for v in variables]


# ---------------------------------------------------------------------------
# Kill and resume through the launcher
# ---------------------------------------------------------------------------
_GIN = """
import tests.test_resume
include '{root}/gin/toy_gradnorm_t2.gin'
train.steps = 12
train.steps_per_epoch = 4
train.eval_every = 3
train.deterministic = True
train.keep_checkpoints = 2
train.best_checkpoint_monitor = 'val_normalized_loss'
toy_data.train_size = 192
toy_data.test_size = 64
toy_data.batch_size = 32
toy_mlp.width = 16
toy_mlp.depth = 2
"""


def _launch(gin_file, model_dir, *bindings):
    cmd = [sys.executable, "-m", "launch.train", f"--gin_file={gin_file}",
           f"--model_dir={model_dir}", "--distribution_strategy=one_device"]
    cmd += [f"--gin_bindings={b}" for b in bindings]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=120):
    """Waits for a launcher; returns its stdout (the progress lines)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    return out


def _csv(path):
    """(header, rows as float arrays) of a record CSV file."""
    lines = path.read_text().splitlines()
    return lines[0].split(","), [np.array(l.split(","), "float64") for l in lines[1:]]


def assert_same_records(resumed_dir, clean_dir, files, rtol=1e-6):
    """The record files of two runs agree row by row: keys equal, numbers close."""
    for name in files:
        header, rows = _csv(resumed_dir / name)
        clean_header, clean_rows = _csv(clean_dir / name)
        assert header == clean_header, name
        assert [r[0] for r in rows] == [r[0] for r in clean_rows], name
        for row, clean_row in zip(rows, clean_rows):
            np.testing.assert_allclose(row, clean_row, rtol=rtol, atol=0, err_msg=name)


def test_sigkill_mid_epoch_then_restart_equals_uninterrupted_run(tmp_path):
    gin_file = tmp_path / "run.gin"
    gin_file.write_text(_GIN.format(root=ROOT))
    marker = tmp_path / "paused"
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    # 6 batches of 32 per pass of the data and 4 steps per epoch: epochs and
    # reshuffled passes are out of phase, so a resume that restarted the data
    # stream would see other batches.
    victim = _launch(gin_file, killed_dir, "train.callbacks = [@pause_at_step]",
                     "pause_at_step.step = 6", f"pause_at_step.marker = '{marker}'")
    clean = _launch(gin_file, clean_dir)
    try:
        for _ in range(600):  # a bounded wait (about 120 s), not a timing claim
            if marker.exists():
                break
            assert victim.poll() is None, victim.stderr.read()[-3000:]
            time.sleep(0.2)
        else:
            raise AssertionError("training never reached step 6")
        # Step 6 of 12, in the middle of epoch 2 (steps 5-8): killed there.
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    finally:
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
    assert victim.returncode == -signal.SIGKILL
    metadata = (killed_dir / "backup" / "training_metadata.json").read_text()
    assert '"epoch": 1' in metadata  # the backup is the end of epoch 1 (step 4)
    assert not (killed_dir / "model.keras").exists()
    # The killed run wrote records past its backup (steps 5-6): dropped on restart.
    assert (killed_dir / "task_weights.csv").read_text().splitlines()[-1].startswith("6,")
    restart_log = _finish(_launch(gin_file, killed_dir))
    _finish(clean)
    # The restart ran epochs 2 and 3 only, then matched the clean run exactly,
    # records included: every epoch, every step, every evaluation, numbered
    # as in an uninterrupted run.
    assert "epoch 1/3" not in restart_log
    assert "epoch 2/3 (step 8," in restart_log and "epoch 3/3 (step 12," in restart_log
    assert_same_records(killed_dir, clean_dir, [
        "history.csv", "task_weights.csv", "task_normalized_loss.csv"], rtol=1e-7)
    header, rows = _csv(killed_dir / "history.csv")
    assert [r[0] for r in rows] == [1, 2, 3] and "val_normalized_loss" in header
    assert [r[0] for r in _csv(killed_dir / "task_weights.csv")[1]] == list(range(13))
    assert [r[0] for r in _csv(killed_dir / "task_normalized_loss.csv")[1]] == [
        0, 3, 6, 9, 12]
    for name in ("normalized_loss_reference.json", "checkpoints/best.json"):
        assert (killed_dir / name).read_text() == (clean_dir / name).read_text()
    assert sorted(os.listdir(killed_dir / "checkpoints")) == [
        "best.json", "best.keras", "epoch_0002.keras", "epoch_0003.keras"]
    assert not (killed_dir / "backup").exists()  # removed when training ended
    resumed = keras.saving.load_model(killed_dir / "model.keras")
    uninterrupted = keras.saving.load_model(clean_dir / "model.keras")
    assert int(resumed.optimizer.iterations.numpy()) == 12
    weights = resumed.balancer.task_weights().numpy()
    assert abs(weights[0] - 1.0) > 1e-3  # GradNorm moved the weights
    for a, b in zip(_state(resumed), _state(uninterrupted)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# .keras files and tf.train.Checkpoint keep all state, for every balancer
# ---------------------------------------------------------------------------
# Seeds are configuration (kept by `.keras` files, not by checkpoints).
_ARGS = {"static": {"weights": [0.3, 0.7]}, "rlw": {"seed": 0}, "pcgrad": {"seed": 0},
         "graddrop": {"seed": 0}, "gradvac": {"seed": 0},
         "stch": {"warmup_steps": 1, "nadir_steps": 2}}


def _make_balancer(name):
    cls = balancers.ALL_BALANCERS[name]
    return cls(**_ARGS.get(name, {}))


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 250)).astype("float32") * 0.1
    y = {f"task_{t}": rng.normal(size=(n, 100)).astype("float32") * (1 + 9 * t)
         for t in range(2)}
    return x, y


def _toy(name):
    model = toy_mlp(num_tasks=2, width=8, depth=2, seed=0)
    # Eager: the same step without a trace per model (graph and XLA fits
    # of every balancer run in test_balancers_gradient.py).
    model.compile(optimizer="adam", loss="mse", balancer=_make_balancer(name),
                  run_eagerly=True)
    return model


# One balancer per kind of state in the default run; every registered one
# (a new balancer joins by registering) under `-m slow`.
_STATE_KINDS = {
    "equal", "gradnorm", "imtl", "pcgrad", "dwa", "mgda", "nash_mtl", "famo", "db_mtl",
}


@pytest.mark.parametrize("name", [
    n if n in _STATE_KINDS else pytest.param(n, marks=pytest.mark.slow)
    for n in balancers.distinct_names()])
def test_keras_file_and_tf_checkpoint_keep_all_state(name, tmp_path):
    x, y = _data()
    model = _toy(name)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    model.save(tmp_path / "m.keras")
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    from_file = keras.saving.load_model(tmp_path / "m.keras")
    from_ckpt = _toy(name)
    from_ckpt(x[:1])
    from_ckpt.build_optimizers()  # optimizer slots and per-parameter balancer state
    tf.train.Checkpoint(model=from_ckpt).read(str(tmp_path / "ckpt")).assert_consumed()
    reference = _state(model)
    for restored in (from_file, from_ckpt):
        state = _state(restored)
        assert len(state) == len(reference)
        for a, b in zip(state, reference):
            np.testing.assert_array_equal(a, b)
    # The restored models continue exactly like the original.
    x2, y2 = _data(16, seed=1)
    from_file.run_eagerly = True
    for m in (model, from_file, from_ckpt):
        keras.utils.set_random_seed(7)
        m.fit(x2, y2, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for restored in (from_file, from_ckpt):
        for a, b in zip(_state(restored), _state(model)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _roaming_model():
    keras.utils.set_random_seed(0)
    encoder = keras_mtl.layers.TaskSequential([
        keras.layers.Dense(12),
        keras_mtl.layers.TaskMask(2, sharing_ratio=0.5, seed=3),
        keras.layers.ReLU(),
        keras.layers.Dense(8),
    ])
    heads = {f"task_{t}": keras.layers.Dense(100) for t in range(2)}
    model = keras_mtl.MultiTaskModel(encoder, heads)
    model.compile(optimizer="adam", loss="mse",
                  balancer=balancers.GradNorm(alpha=1.5))
    return model


def test_roaming_plan_and_gradnorm_state_survive_a_checkpoint(tmp_path):
    x, y = _data()
    model = _roaming_model()
    roam = keras_mtl.callbacks.MaximumRoaming(update_every=3)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[roam])
    mask = model.encoder.layers[1]
    assert int(mask.update_count.numpy()) == 2
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    restored = _roaming_model()
    restored(x[:1])
    restored.optimizer.build(restored.network_variables())
    tf.train.Checkpoint(model=restored).read(str(tmp_path / "ckpt")).assert_consumed()
    np.testing.assert_array_equal(restored.encoder.layers[1].mask.numpy(), mask.mask.numpy())
    np.testing.assert_array_equal(restored.encoder.layers[1].visited.numpy(),
                                  mask.visited.numpy())
    # Same next roaming draws and the same training afterwards.
    for m in (model, restored):
        m.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False,
              callbacks=[keras_mtl.callbacks.MaximumRoaming(update_every=3)])
    # Steps 9-12 with Delta = 3: updates at steps 9 and 12.
    assert int(restored.encoder.layers[1].update_count.numpy()) == 4
    for a, b in zip(_state(restored), _state(model)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# Another task set or balancer: a clear error
# ---------------------------------------------------------------------------
def _built(num_tasks, balancer):
    model = toy_mlp(num_tasks=num_tasks, width=4, depth=1, output_dim=3)
    model(np.zeros((1, 250), "float32"))
    model.compile(optimizer="adam", loss="mse", balancer=balancer)
    model.optimizer.build(model.network_variables())
    return model


@pytest.mark.parametrize("other, message", [
    ((3, "gradnorm"), r"it has 2 tasks \['task_0', 'task_1'\], this model 3 tasks"),
    ((2, "equal"), "made with balancer GradNorm, this model is compiled with EqualWeights"),
    ((2, "imtl"), "made with balancer GradNorm, this model is compiled with IMTL"),
])
def test_loading_another_setup_is_a_clear_error(other, message, tmp_path):
    saved = _built(2, "gradnorm")
    saved.save_weights(tmp_path / "w.weights.h5")
    saved.save(tmp_path / "m.keras")
    tf.train.Checkpoint(model=saved).write(str(tmp_path / "ckpt"))
    target = _built(*other)
    with pytest.raises(ValueError, match=message):
        target.load_weights(tmp_path / "w.weights.h5")
    with pytest.raises(ValueError, match=message):
        target.load_weights(tmp_path / "m.keras")
    with pytest.raises(ValueError, match=message):
        tf.train.Checkpoint(model=_built(*other)).read(str(tmp_path / "ckpt"))

"""tf.distribute: MirroredStrategy on 2 logical CPUs and 2 local workers match one device.

The distributed runs happen in subprocesses (tests/distribute_worker.py):
logical devices must be set before TensorFlow starts, and a multi-worker
cluster needs one process per worker.

Tolerance: every variable (network, optimizer slots, balancer state and its
optimizer, masks, counters) after one epoch agrees to 1e-5 relative to
max(1, |value|). Replicas reduce in a different order than one device, so
bit-equality is not expected; a wrong scaling (loss not divided by R,
gradients summed instead of averaged) moves weights by ~1e-2 here, and a
balancer updated from one replica's view moves task weights by ~1e-3.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers
from keras_mtl import distribute

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "distribute_worker.py")
TOL = 1e-5


def _kill_all(procs):
    """Ends every still-running process of a test by its PID."""
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def _run(args, timeout, env=None):
    proc = subprocess.Popen([sys.executable, WORKER] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    return out


POISONED = ["equal+nan", "gradnorm+nan", "imtl+nan", "masked+nan"]


@pytest.fixture(scope="module")
def mirrored():
    cases = ["equal", "gradnorm", "imtl", "masked"] + POISONED
    out = _run(["mirrored", "--cases", ",".join(cases)], timeout=300)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("case", POISONED)
def test_mirrored_transactional_step_equals_single_device(mirrored, case):
    # A NaN label of task_1 on one replica excludes task_1 on both (step 2),
    # a NaN input row on one replica skips the whole step on both (step 3),
    # exactly as on one device.
    r = mirrored[case]
    assert "error" not in r, r.get("error")
    assert r["max_diff"] < TOL, r
    assert r["nonfinite"] == [[0, 1], [0, 1]]
    assert r["skipped"] == [1, 1]
    assert r["iterations"] == [3, 3]
    assert r["replica_spread"] == 0.0
    assert all(np.isfinite(w) for w in r["weights_mirrored"])


@pytest.mark.parametrize("case", ["equal", "gradnorm", "imtl", "masked"])
def test_mirrored_epoch_equals_single_device(mirrored, case):
    assert len(mirrored["devices"]) == 2
    r = mirrored[case]
    assert "error" not in r, r.get("error")
    # Same weights, optimizer slots, balancer state, masks and counters.
    assert r["max_diff"] < TOL, r
    np.testing.assert_allclose(r["weights_mirrored"], r["weights_single"], rtol=TOL)
    assert r["iterations"] == [4, 4]
    assert r["replica_spread"] == 0.0  # every replica holds the same values
    assert r["moved"] > 1e-3  # training happened: the comparison is not vacuous
    # Per-task losses and weights reported by fit and evaluate agree.
    for logs in (r["fit_logs"], r["eval_logs"]):
        assert {"loss", "task_0_loss", "task_1_loss", "task_0_weight"} <= set(logs)
        for name, (one, two) in logs.items():
            assert two == pytest.approx(one, rel=TOL), name
    if case == "gradnorm":
        assert abs(r["weights_single"][0] - 1.0) > 1e-2  # weights moved
        assert sum(r["weights_single"]) == pytest.approx(2.0, rel=1e-5)
    if case == "imtl":
        assert abs(r["weights_single"][0] - r["weights_single"][1]) > 1e-2
    if case == "masked":
        assert r["mask_updates"] == [2, 2]  # roaming every 2 steps, counted once


def test_jit_compile_under_mirrored_falls_back_with_one_warning(mirrored):
    r = mirrored["jit"]
    assert r["jit_compile"] is False
    assert len(r["warnings"]) == 1 and "falling back to graph mode" in r["warnings"][0]
    assert r["finite"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_processes_match_single_process(tmp_path):
    sys.path.insert(0, HERE)
    import distribute_worker

    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
    procs = []
    try:
        for i in range(2):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}))
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, "worker", "--cases", "gradnorm",
                 "--out", str(tmp_path / f"worker_{i}.npz")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True))
        # The reference runs here while the workers start up.
        distribute_worker.single("gradnorm", str(tmp_path / "single.npz"))
        errors = [p.communicate(timeout=90)[1] for p in procs]
    finally:
        _kill_all(procs)
    assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    cluster_state = np.load(tmp_path / "worker_0.npz")
    single_state = np.load(tmp_path / "single.npz")
    assert sorted(cluster_state.files) == sorted(single_state.files)
    worst = max(
        float(np.max(np.abs(cluster_state[k].astype("float64") - single_state[k])))
        / max(1.0, float(np.max(np.abs(single_state[k]))))
        for k in single_state.files if single_state[k].size
    )
    assert worst < TOL


def test_custom_loop_equals_model_fit_on_one_device():
    sys.path.insert(0, HERE)
    import distribute_worker as dw

    data = dw._toy_data()
    a = dw.build("gradnorm")
    a.fit(data, epochs=2, verbose=0)
    b = dw.build("gradnorm")
    history = distribute.fit(b, data, epochs=2)
    assert len(history.history["loss"]) == 2
    assert history.history["loss"][1] < history.history["loss"][0]
    for k, v in dw.state(a).items():
        np.testing.assert_allclose(dw.state(b)[k], v, rtol=1e-6, atol=1e-6)


def test_get_strategy_names_and_errors():
    assert distribute.get_strategy("one_device").num_replicas_in_sync == 1
    assert distribute.get_strategy(None) is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="Expected one of .*Received: distribution_strategy='gpu'"):
        distribute.get_strategy("gpu")
    with pytest.raises(ValueError, match="needs a TPU, and none was found"):
        distribute.get_strategy("tpu")
    # One replica: jit_compile is left alone.
    assert distribute.resolve_jit_compile(True) is True


_LAUNCH_GIN = """
include '{root}/gin/toy_gradnorm_t2.gin'
train.steps = 6
train.steps_per_epoch = 3
train.eval_data = None
toy_data.train_size = 256
toy_data.batch_size = 32
toy_mlp.width = 16
toy_mlp.depth = 2
"""


@pytest.mark.slow
def test_launcher_multi_worker_flag_matches_one_device_run(tmp_path):
    """`launch.train --distribution_strategy=multi_worker` on 2 local workers."""
    import keras
    import keras_mtl  # noqa: F401 (registers the classes of the .keras files)

    root = os.path.dirname(HERE)
    gin_file = tmp_path / "run.gin"
    gin_file.write_text(_LAUNCH_GIN.format(root=root))
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
    base = [sys.executable, "-m", "launch.train", f"--gin_file={gin_file}"]
    procs = []
    try:
        for i in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}))
            procs.append(subprocess.Popen(
                base + [f"--model_dir={tmp_path / 'mw'}",
                        "--distribution_strategy=multi_worker"],
                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True))
        procs.append(subprocess.Popen(
            base + [f"--model_dir={tmp_path / 'one'}", "--distribution_strategy=one_device"],
            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        _kill_all(procs)
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(e[-1500:] for e in errors)
    assert (tmp_path / "mw" / "worker_1").is_dir()  # the non-chief writes beside
    a = keras.saving.load_model(tmp_path / "mw" / "model.keras")
    b = keras.saving.load_model(tmp_path / "one" / "model.keras")
    assert int(a.optimizer.iterations.numpy()) == 6
    for x, y in zip(a.variables + a.optimizer.variables, b.variables + b.optimizer.variables):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=TOL, atol=TOL)


@pytest.mark.slow
def test_every_registered_balancer_mirrored_equals_single_device():
    """New balancers inherit this check by registering in ALL_BALANCERS."""
    names = balancers.distinct_names() + ["imtl_shared", "imtl_shared_vectorized", "mgda_shared"]
    out = _run(["mirrored", "--cases", ",".join(names)], timeout=600)
    results = json.loads(out.strip().splitlines()[-1])
    bad = {n: results[n].get("error") or results[n]["max_diff"] for n in names
           if "error" in results[n] or results[n]["max_diff"] >= TOL
           or results[n]["replica_spread"] != 0.0}
    assert not bad, bad

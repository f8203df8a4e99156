"""Per-group learning-rate multipliers (attentive single-tasking, appendix D)."""

import numpy as np
import pytest
import keras

from keras_mtl.models.toy import toy_mlp


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 250)).astype("float32")
    return x, {t: rng.normal(size=(n, 100)).astype("float32") for t in ("task_0", "task_1")}


def _step_deltas(optimizer, multipliers):
    x, y = _data()
    keras.utils.set_random_seed(0)
    model = toy_mlp(2)
    model.compile(optimizer=optimizer, loss="mse", learning_rate_multipliers=multipliers)
    model(x)
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    model.train_on_batch(x, y)
    return model, {v.path: v.numpy() - before[v.path] for v in model.trainable_variables}


@pytest.mark.parametrize("make", [lambda: keras.optimizers.SGD(0.01),
                                  lambda: keras.optimizers.Adam(1e-3)],
                         ids=["sgd", "adam"])
def test_task_specific_variables_move_faster_by_the_multiplier(make):
    _, reference = _step_deltas(make(), None)
    model, scaled = _step_deltas(make(), {"task_specific": 3.0})
    for path, delta in scaled.items():
        factor = 3.0 if "head_" in path else 1.0
        np.testing.assert_allclose(delta, factor * reference[path], rtol=1e-4, atol=1e-7)
    assert int(model.optimizer.iterations) == 1
    assert int(model.group_optimizers["task_specific"].iterations) == 1


def test_schedules_are_scaled_and_state_round_trips(tmp_path):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.5)
    model, _ = _step_deltas(keras.optimizers.Adam(schedule), {"task_specific": 2.0})
    group = model.group_optimizers["task_specific"]
    np.testing.assert_allclose(float(group.learning_rate), 2.0 * float(model.optimizer.learning_rate),
                               rtol=1e-6)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.learning_rate_multipliers == {"task_specific": 2.0}
    saved = [v.numpy() for v in group.variables]
    restored = [v.numpy() for v in loaded.group_optimizers["task_specific"].variables]
    assert len(saved) == len(restored) == 1 + 2 * 4  # iterations + Adam slots of 2 heads
    for a, b in zip(saved, restored):
        np.testing.assert_array_equal(a, b)
    assert int(restored[0]) == 1


def test_bad_multipliers_are_clear_errors():
    model = toy_mlp(2)
    with pytest.raises(ValueError, match=r"Unknown learning-rate group\(s\) \['shared'\]"):
        model.compile(loss="mse", learning_rate_multipliers={"shared": 0.5})
    with pytest.raises(ValueError, match="Expected a float > 0"):
        model.compile(loss="mse", learning_rate_multipliers={"task_specific": 0.0})

"""The train-step engine: transactional steps, task exclusion, fit preparation.

A non-finite task loss or gradient excludes that task only: the others
update exactly as if it were absent. A non-finite shared value
(representation, shared gradient, batch statistics, new balancer state)
skips the whole step: network, optimizer slots, balancer state and moving
statistics stay as they were. Both are counted and follow `nonfinite`.
"""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl as mtl
from keras_mtl import _keras_compat
from keras_mtl import balancers
from keras_mtl.models.toy import toy_mlp

B = 16
_ARGS = {"static": {"weights": [0.5, 1.5]}, "rlw": {"seed": 0}, "pcgrad": {"seed": 0},
         "graddrop": {"seed": 0}, "gradvac": {"seed": 0}}


def _balancer(name):
    return balancers.ALL_BALANCERS[name](**_ARGS.get(name, {}))


def _batch(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    y = {f"task_{t}": rng.normal(size=(n, 4)).astype("float32") * (1 + 5 * t)
         for t in range(2)}
    return x, y


def _mlp(bn=False):
    init = keras.initializers.GlorotUniform
    layers = [keras.layers.Dense(16, kernel_initializer=init(seed=1), use_bias=not bn)]
    if bn:
        layers.append(keras.layers.BatchNormalization())
    layers += [keras.layers.ReLU(),
               keras.layers.Dense(8, activation="tanh", kernel_initializer=init(seed=2))]
    heads = {f"task_{t}": keras.layers.Dense(4, kernel_initializer=init(seed=10 + t))
             for t in range(2)}
    return mtl.MultiTaskModel(keras.Sequential(layers), heads)


def _compiled(name, nonfinite="skip", bn=False, jit_compile=False, run_eagerly=False):
    keras.utils.set_random_seed(0)
    model = _mlp(bn)
    model(np.zeros((1, 12), "float32"))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                  balancer=_balancer(name), nonfinite=nonfinite, jit_compile=jit_compile,
                  run_eagerly=run_eagerly)
    model.build_optimizers()
    return model


def _state(model):
    """Every variable: network, optimizer slots, balancer and its optimizer."""
    variables = list(model.variables) + list(model.optimizer.variables)
    variables += model.balancer.state_variables()
    return {f"{i:03d} {v.path}": np.array(v.numpy()) for i, v in enumerate(variables)}


def _kept(model):
    """Values that a step without task_1 may change: all but task_1's head."""
    network = model.encoder.variables + model.heads["task_0"].variables
    variables = network + _keras_compat.optimizer_slots(model.optimizer, network)
    variables += model.balancer.state_variables() + [model.optimizer.iterations]
    return [np.array(v.numpy()) for v in variables]


def _fit(model, x, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0, **kwargs)


@pytest.mark.parametrize("name", balancers.distinct_names())
def test_nan_label_excludes_only_its_task_like_an_absent_one(name):
    # Two steps: the second sees a NaN label of task_1 (skip) or no task_1.
    x, y = _batch(0, 2 * B)
    poisoned = {k: v.copy() for k, v in y.items()}
    poisoned["task_1"][B + 3, 1] = np.nan
    # Eager (the same engine code, no tracing per balancer); the graph,
    # XLA-free and MirroredStrategy paths are checked below and in
    # test_distribute.py for representative balancers.
    nan_model, absent_model = _compiled(name, run_eagerly=True), _compiled(name, run_eagerly=True)
    _fit(nan_model, x[:B], {k: v[:B] for k, v in y.items()})
    _fit(absent_model, x[:B], {k: v[:B] for k, v in y.items()})
    _fit(nan_model, x[B:], {k: v[B:] for k, v in poisoned.items()})
    _fit(absent_model, x[B:], {"task_0": y["task_0"][B:]})
    assert nan_model.nonfinite_counts.numpy().tolist() == [0, 1]
    assert int(nan_model.skipped_steps.numpy()) == 0
    # Encoder, task_0's head and their optimizer slots, and the balancer's
    # state: as if task_1 had been absent (task_1's head got a zero gradient).
    a, b = _kept(nan_model), _kept(absent_model)
    assert len(a) == len(b) >= 12
    for i, (u, v) in enumerate(zip(a, b)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7, err_msg=str(i))
    for v in nan_model.variables:
        assert np.all(np.isfinite(v.numpy())), v.path


@pytest.mark.parametrize("name", ["imtl_g", "imtl", "mgda"])
def test_nan_label_raises_naming_the_task_without_an_eigen_failure(name):
    model = _compiled(name, nonfinite="raise")
    x, y = _batch(1)
    y["task_1"][0, 0] = np.nan
    before = _state(model)
    with pytest.raises(FloatingPointError, match=r"\['task_1'\]"):
        model.fit(x, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    after = _state(model)
    # task_0 trained; nothing is non-finite.
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert all(np.all(np.isfinite(v)) for v in after.values() if v.dtype.kind == "f")


@pytest.mark.parametrize("name", ["gradnorm", "equal", "imtl_g"])
def test_nan_input_row_skips_the_whole_step_and_training_goes_on(name):
    model = _compiled(name)
    x, y = _batch(2)
    bad = x.copy()
    bad[5] = np.nan
    before = _state(model)
    _fit(model, bad, y)
    after = _state(model)
    for key in before:  # bit for bit, optimizer slots and balancer included
        np.testing.assert_array_equal(after[key], before[key] if "skipped_steps" not in key
                                      else before[key] + 1, err_msg=key)
    assert int(model.skipped_steps.numpy()) == 1
    history = model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][1] < history.history["loss"][0]
    w = model.balancer.task_weights().numpy()
    assert np.all(np.isfinite(w))


def test_nan_input_row_never_reaches_batch_norm_statistics():
    # The ReLU after batch norm maps NaN to 0 in this model's z... the
    # statistics are what the check protects (losses may well be finite).
    model = _compiled("equal", nonfinite="raise", bn=True)
    bn = model.encoder.layers[1]
    x, y = _batch(3)
    _fit(model, x, y)
    stats = [v.numpy().copy() for v in bn.non_trainable_variables]
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="shared value"):
        model.fit(bad, y, batch_size=B, epochs=1, shuffle=False, verbose=0)
    for v, s in zip(bn.non_trainable_variables, stats):
        np.testing.assert_array_equal(v.numpy(), s)
    preds = model.predict(x, verbose=0)["task_0"]
    assert np.std(preds) > 1e-3  # not collapsed to a constant


def test_non_finite_balancer_state_restores_it_and_skips_the_step():
    class Exploding(balancers.EqualWeights):
        def build_state(self, num_tasks):
            self.scale = self.add_state("scale", (), initializer="ones")

        def update(self, losses, present):
            self.scale.assign(self.scale * 1e30)

    keras.utils.set_random_seed(0)
    model = _mlp()
    model(np.zeros((1, 12), "float32"))
    model.compile(optimizer="adam", loss="mse", balancer=Exploding(), nonfinite="skip")
    x, y = _batch(4)
    _fit(model, x[:B // 2], {k: v[:B // 2] for k, v in y.items()}, )
    # 1 -> 1e30 (finite) on the first step; the second would overflow to inf.
    before = _state(model)
    _fit(model, x[B // 2:], {k: v[B // 2:] for k, v in y.items()})
    assert float(model.balancer.scale.numpy()) == pytest.approx(1e30, rel=1e-6)
    assert int(model.skipped_steps.numpy()) == 1
    for key, value in _state(model).items():
        if "skipped_steps" not in key:
            np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_distribute_fit_raises_on_non_finite_like_model_fit():
    model = _compiled("equal", nonfinite="raise")
    x, y = _batch(5)
    y["task_0"][2, 2] = np.nan
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(B)
    with pytest.raises(FloatingPointError, match=r"\['task_0'\]"):
        mtl.distribute.fit(model, data, epochs=1)


def test_a_task_absent_from_the_whole_first_fit_trains_later():
    model = _compiled("equal")
    x, y = _batch(6)
    _fit(model, x, {"task_0": y["task_0"]})
    head = model.heads["task_1"].kernel.numpy().copy()
    _fit(model, x, y)
    assert np.abs(model.heads["task_1"].kernel.numpy() - head).max() > 1e-4


def test_regulariser_gradients_reach_the_shared_layers_for_every_requirement():
    # One SGD step with an L2 kernel regulariser equals the step without it
    # plus lr * 2 * l2 * W on that kernel, whatever the balancer needs.
    l2, lr = 0.05, 0.1
    for name in ("equal", "gradnorm", "imtl_g", "pcgrad"):
        kernels = []
        for reg in (None, keras.regularizers.L2(l2)):
            keras.utils.set_random_seed(0)
            model = _mlp()
            model.encoder.layers[0].kernel_regularizer = reg
            model(np.zeros((1, 12), "float32"))
            model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse",
                          balancer=_balancer(name))
            w0 = model.encoder.layers[0].kernel.numpy().copy()
            x, y = _batch(7)
            _fit(model, x, y)
            kernels.append(model.encoder.layers[0].kernel.numpy())
        np.testing.assert_allclose(kernels[1], kernels[0] - lr * 2 * l2 * w0,
                                   rtol=1e-4, atol=1e-6, err_msg=name)


def test_empty_dataset_on_an_unbuilt_model_is_a_clear_error():
    model = _mlp()
    model.compile(loss="mse")
    x, y = _batch(8)
    empty = tf.data.Dataset.from_tensor_slices((x, y)).batch(B).take(0)
    with pytest.raises(ValueError, match="empty"):
        model.fit(empty, epochs=1, verbose=0)


def test_one_head_for_two_tasks_is_rejected():
    head = keras.layers.Dense(2)
    with pytest.raises(ValueError, match="same head"):
        mtl.MultiTaskModel(keras.layers.Dense(3), {"a": head, "b": head})


def test_balancer_events_are_python_warnings():
    keras.utils.set_random_seed(0)
    model = toy_mlp(2, width=8, depth=2)
    model.compile(optimizer="sgd", loss="mse",
                  balancer=balancers.GradNorm(alpha=50.0, min_weight=0.5,
                                              optimizer=keras.optimizers.SGD(5.0)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 250)).astype("float32")
    y = {"task_0": rng.normal(size=(64, 100)).astype("float32"),
         "task_1": 100 * rng.normal(size=(64, 100)).astype("float32")}
    with pytest.warns(balancers.BalancerWarning, match="floored"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(model.balancer.num_floored.numpy()) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a filter silences it: nothing else is printed
        warnings.filterwarnings("ignore", category=balancers.BalancerWarning)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_fit_with_a_discriminator_warns_nothing_and_exports_no_discriminator(tmp_path):
    keras.utils.set_random_seed(0)
    model = mtl.MultiTaskModel(
        keras.Sequential([keras.layers.Dense(8, activation="tanh")]),
        {"a": keras.layers.Dense(2), "b": keras.layers.Dense(2)},
        discriminator=mtl.layers.GradientDiscriminator(2, hidden_units=4))
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = {"a": rng.normal(size=(32, 2)).astype("float32"),
         "b": rng.normal(size=(32, 2)).astype("float32")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not [w for w in caught if "build()" in str(w.message)]
    assert "discriminator_loss" in history.history
    mtl.export.saved_model(model, str(tmp_path / "export"))
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    exported = sum(int(np.prod(v.shape)) for v in loaded.variables)
    network = sum(int(np.prod(v.shape)) for v in
                  model.encoder.variables + model.heads["a"].variables + model.heads["b"].variables)
    assert exported == network

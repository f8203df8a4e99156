"""Mixed precision: every balancer and the task-conditioned layers under
`mixed_float16` (dynamic loss scaling) and `mixed_bfloat16`.

Equality with float32. A few SGD steps of the same tiny network, from the
same weights, on the same batches: the accumulated update
`delta = w_3 - w_0` of every network variable (one vector) under a mixed
policy must equal float32's within `||delta_mixed - delta_32|| <=
tol * ||delta_32||`, and the balancer's task weights within `tol`
(relative). `tol` is ten unit roundoffs of the compute dtype: 10 * 2**-11
~ 4.9e-3 for float16, 10 * 2**-8 ~ 3.9e-2 for bfloat16 (the network's
forward and backward passes round at every layer; everything after them
is float32/float64). Measured on this problem (SGD, 3 steps): float16 at
most 2.5e-3 (CAGrad; every other balancer <= 7e-4), bfloat16 at most
1.8e-2 (DB-MTL; Nash-MTL 1.3e-2, the others <= 7e-3) except GradDrop,
4.6e-2: its masks compare each component's sign purity with a uniform
draw, so a rounding that moves the purity across the draw flips the whole
component; it gets three times the tolerance. The update, not the
weights, is compared: the weights are dominated by their initial values,
so a relative error on them says little.

Overflow. A step whose scaled gradients overflow float16 is the
`LossScaleOptimizer`'s business: nothing is applied, the balancer's state
and the batch statistics stay, the scale halves, and the step is counted
neither in `skipped_steps` nor in `nonfinite_counts` (so
`nonfinite="raise"` goes on); a NaN input or label is still bad data.
"""

import contextlib
import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl as mtl
from keras_mtl import balancers
from keras_mtl import training
from keras_mtl.layers import ResidualAdapter
from keras_mtl.layers import TaskBatchNormalization
from keras_mtl.layers import TaskMask
from keras_mtl.layers import TaskSequential
from keras_mtl.layers import TaskSqueezeExcite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = 16
STEPS = 3
TOL = {"mixed_float16": 10 * 2.0**-11, "mixed_bfloat16": 10 * 2.0**-8}
DISCONTINUOUS = {"graddrop": 3.0}  # tolerance factor (see the module docstring)
# Convolutions' weight gradients accumulate in the compute dtype on CPU
# (over batch x height x width); before a batch norm these sums nearly
# cancel (its backward pass removes the mean), so the first convolution's
# update carries ~1% relative error under float16 (measured 1.1e-2 on the
# task-conditioned model below, every other variable <= 1e-3), 3.7e-2
# under bfloat16.
TOL_CONV = {"mixed_float16": 2.5e-2, "mixed_bfloat16": 8e-2}
_ARGS = {"static": {"weights": [0.5, 1.5]}, "rlw": {"seed": 0}, "pcgrad": {"seed": 0},
         "graddrop": {"seed": 0}, "gradvac": {"seed": 0}}


@pytest.fixture(autouse=True)
def _restore_policy():
    before = keras.mixed_precision.global_policy().name
    yield
    keras.mixed_precision.set_global_policy(before)


@contextlib.contextmanager
def _policy(name):
    before = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def _batches(seed=0, steps=STEPS, features=12, shape=None):
    rng = np.random.default_rng(seed)
    shape = shape or (features,)
    out = []
    for _ in range(steps):
        x = rng.normal(size=(B,) + shape).astype("float32")
        y = {f"task_{t}": (rng.normal(size=(B, 4)) * (1 + 2 * t)).astype("float32")
             for t in range(2)}
        out.append((tf.constant(x), {k: tf.constant(v) for k, v in y.items()}))
    return out


def _mlp():
    init = keras.initializers.GlorotUniform
    encoder = keras.Sequential([
        keras.layers.Dense(16, activation="relu", kernel_initializer=init(seed=1)),
        keras.layers.Dense(8, activation="tanh", kernel_initializer=init(seed=2)),
    ])
    heads = {f"task_{t}": keras.layers.Dense(4, kernel_initializer=init(seed=10 + t))
             for t in range(2)}
    return mtl.MultiTaskModel(encoder, heads)


def _task_conditioned():
    init = keras.initializers.GlorotUniform
    encoder = TaskSequential([
        keras.layers.Conv2D(6, 3, padding="same", kernel_initializer=init(seed=1)),
        TaskBatchNormalization(2),
        TaskMask(2, sharing_ratio=0.5, seed=0),
        keras.layers.ReLU(),
        ResidualAdapter(2, keras.layers.Conv2D(6, 3, padding="same",
                                               kernel_initializer=init(seed=2)),
                        kernel_initializer=init(seed=3)),
        TaskSqueezeExcite(2, ratio=2),
        keras.layers.GlobalAveragePooling2D(),
    ])
    heads = {f"task_{t}": keras.layers.Dense(4, kernel_initializer=init(seed=10 + t))
             for t in range(2)}
    return mtl.MultiTaskModel(encoder, heads)


_BUILT = {}


def _model(policy, build):
    """A model of `build` under `policy`, at its initial weights (one per pair)."""
    key = (policy, build)
    if key not in _BUILT:
        keras.utils.set_random_seed(0)
        model = build()
        _BUILT[key] = (model, None)
        return model
    model, weights = _BUILT[key]
    for v, value in zip(_network_state(model), weights):
        v.assign(value)
    return model


def _network_state(model):
    layers = [model.encoder] + list(model.heads.values())
    return [v for layer in layers for v in layer.weights] + [
        model.skipped_steps, model.nonfinite_counts]


def _train(policy, balancer, batches, build=_mlp, optimizer=None, **compile_kwargs):
    """(model, w_0, w_end) after one eager train step per batch under `policy`."""
    with _policy(policy):
        model = _model(policy, build)
        model.compile(optimizer=optimizer or keras.optimizers.SGD(0.05), loss="mse",
                      balancer=balancer, **compile_kwargs)
        training.prepare(model, batches[0][0])
        if _BUILT.get((policy, build), (None, 1))[1] is None:
            _BUILT[(policy, build)] = (model, [v.numpy() for v in _network_state(model)])
        start = [np.array(v.numpy(), "float64") for v in model.trainable_variables]
        for x, y in batches:
            model.train_step((x, y))  # eager: the engine's code, no trace per balancer
    end = [np.array(v.numpy(), "float64") for v in model.trainable_variables]
    return model, start, end


def _update_error(run, reference):
    """||delta_run - delta_ref|| / ||delta_ref|| over every trainable variable."""
    (_, s0, s1), (_, r0, r1) = run, reference
    d = np.concatenate([(b - a).ravel() for a, b in zip(s0, s1)])
    r = np.concatenate([(b - a).ravel() for a, b in zip(r0, r1)])
    np.testing.assert_array_equal(np.concatenate([a.ravel() for a in s0]),
                                  np.concatenate([a.ravel() for a in r0]))
    return float(np.linalg.norm(d - r) / np.linalg.norm(r))


def _check_like_float32(name, policies, build=_mlp, **kwargs):
    batches = _batches()
    make = (lambda: balancers.ALL_BALANCERS[name](**_ARGS.get(name, {}))) if isinstance(
        name, str) else name
    reference = _train("float32", make(), batches, build=build, **kwargs)
    ref_weights = reference[0].balancer.task_weights().numpy()
    for policy in policies:
        run = _train(policy, make(), batches, build=build, **kwargs)
        model = run[0]
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            # No overflow on this problem: the comparison is step for step.
            assert float(model.optimizer.dynamic_scale.numpy()) == 2.0**15
        err = _update_error(run, reference)
        assert err <= TOL[policy] * DISCONTINUOUS.get(name, 1.0), (name, policy, err)
        weights = model.balancer.task_weights().numpy()
        np.testing.assert_allclose(weights, ref_weights, rtol=TOL[policy],
                                   atol=TOL[policy] * 1e-2, err_msg=f"{name} {policy}")
        assert int(model.skipped_steps.numpy()) == 0
        assert model.nonfinite_counts.numpy().tolist() == [0, 0]
        for v in model.balancer.state_variables():  # its optimizer's included
            assert v.dtype == "float32" or not v.dtype.startswith("float"), v.path
        for v in model.trainable_variables:
            assert v.dtype == "float32", v.path


# --- every balancer under mixed_float16 (bfloat16: slow, and two here) --------
@pytest.mark.parametrize("name", balancers.distinct_names())
def test_every_balancer_under_mixed_float16_equals_float32(name):
    _check_like_float32(name, ["mixed_float16"])


@pytest.mark.parametrize("name", ["gradnorm", "imtl"])
def test_representative_balancers_under_mixed_bfloat16_equal_float32(name):
    _check_like_float32(name, ["mixed_bfloat16"])


@pytest.mark.slow
@pytest.mark.parametrize("name", balancers.distinct_names())
def test_every_balancer_under_mixed_bfloat16_equals_float32(name):
    _check_like_float32(name, ["mixed_bfloat16"])


def _pcgrad_shared():
    return balancers.PCGrad(mode="shared", seed=0)


def _mgda_shared():
    return balancers.MGDA(mode="shared")


def test_parameter_level_mode_under_mixed_float16():
    _check_like_float32(_pcgrad_shared, ["mixed_float16"])


@pytest.mark.slow
@pytest.mark.parametrize("make", [_pcgrad_shared, _mgda_shared])
def test_parameter_level_modes_under_both_policies(make):
    _check_like_float32(make, ["mixed_float16", "mixed_bfloat16"])


@pytest.mark.slow
@pytest.mark.parametrize("make", [balancers.DWA, _pcgrad_shared])
def test_task_conditioned_layers_under_both_policies(make):
    _check_task_conditioned(make, ["mixed_float16", "mixed_bfloat16"])


def _check_task_conditioned(make, policies):
    # TaskBatchNormalization, TaskMask, ResidualAdapter, task SE in one
    # folded encoder; heads in a learning-rate group of their own.
    batches = _batches(shape=(4, 4, 3))
    kwargs = dict(build=_task_conditioned, learning_rate_multipliers={"task_specific": 2.0})
    reference = _train("float32", make(), batches, **kwargs)
    for policy in policies:
        run = _train(policy, make(), batches, **kwargs)
        model = run[0]
        if policy == "mixed_float16":
            assert all(isinstance(o, keras.optimizers.LossScaleOptimizer)
                       for o in [model.optimizer] + list(model.group_optimizers.values()))
        assert _update_error(run, reference) <= TOL_CONV[policy], policy
        for v in model.non_trainable_variables:  # task BN statistics, masks
            assert np.all(np.isfinite(v.numpy())), v.path


def test_task_conditioned_layers_and_lr_groups_under_mixed_float16():
    _check_task_conditioned(balancers.DWA, ["mixed_float16"])


# --- overflow under loss scaling -------------------------------------------------
def _scaled(initial_scale):
    return keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05),
                                               initial_scale=initial_scale)


def _state(model):
    variables = list(model.trainable_variables) + model.forward_state_variables()
    variables += [model.skipped_steps, model.nonfinite_counts]
    variables += model.balancer.state_variables()
    variables += list(model.optimizer.inner_optimizer.variables)
    return [np.array(v.numpy()) for v in variables]


@pytest.mark.parametrize("name", [
    "gradnorm",
    pytest.param("dwa", marks=pytest.mark.slow),
    pytest.param("imtl_g", marks=pytest.mark.slow),
])
def test_forced_overflow_is_the_loss_scale_optimizers_and_leaves_no_trace(name):
    """A scale too large for these gradients (2**13 here, where 2**10 fits)
    overflows float16: the LossScaleOptimizer halves it step by step,
    nothing else moves, nothing is counted, `raise` does not stop; once the
    scale fits, training equals a run that started at that scale."""
    make = lambda: balancers.ALL_BALANCERS[name](**_ARGS.get(name, {}))  # noqa: E731
    x, y = _batches(steps=1)[0]
    y = {k: v * 30.0 for k, v in y.items()}  # large loss gradients
    with _policy("mixed_float16"):
        keras.utils.set_random_seed(0)
        model = _mlp()
        model.compile(optimizer=_scaled(2.0**13), loss="mse", balancer=make(),
                      run_eagerly=True)
        training.prepare(model, x)
        before = _state(model)
        model.train_step((x, y))
        after = _state(model)
        scale = float(model.optimizer.dynamic_scale.numpy())
        assert scale == 2.0**12  # halved by the LossScaleOptimizer itself
        for i, (a, b) in enumerate(zip(before, after)):
            np.testing.assert_array_equal(a, b, err_msg=str(i))
        assert int(model.skipped_steps.numpy()) == 0
        assert model.nonfinite_counts.numpy().tolist() == [0, 0]
        # Through fit with nonfinite="raise" (the StepGuard): no error; the
        # scale comes down until the gradients fit float16.
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(4), epochs=1,
                      shuffle=False, verbose=0)
        settled = float(model.optimizer.dynamic_scale.numpy())
        assert settled < 2.0**12
        assert int(model.skipped_steps.numpy()) == 0
        assert model.nonfinite_counts.numpy().tolist() == [0, 0]
        assert all(np.all(np.isfinite(v)) for v in _state(model))
        applied = int(model.optimizer.iterations.numpy())
        assert 0 < applied < 4
        # A run that starts at the settled scale takes the same applied steps.
        keras.utils.set_random_seed(0)
        fresh = _mlp()
        fresh.compile(optimizer=_scaled(settled), loss="mse", balancer=make())
        training.prepare(fresh, x)
        for _ in range(applied):
            fresh.train_step((x, y))
    assert float(fresh.optimizer.dynamic_scale.numpy()) == settled
    for a, b in zip(fresh.trainable_variables + fresh.balancer.variables,
                    model.trainable_variables + model.balancer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7,
                                   err_msg=a.path)


def test_nan_input_and_label_stay_bad_data_under_loss_scaling():
    x, y = _batches(steps=1)[0]
    with _policy("mixed_float16"):
        model = _mlp()
        model.compile(optimizer="sgd", loss="mse", balancer="imtl", nonfinite="skip")
        training.prepare(model, x)
        scale = float(model.optimizer.dynamic_scale.numpy())
        bad_x = tf.tensor_scatter_nd_update(x, [[3, 0]], [np.nan])
        model.train_step((bad_x, y))
        assert int(model.skipped_steps.numpy()) == 1  # counted, as in float32
        assert float(model.optimizer.dynamic_scale.numpy()) == scale  # scale untouched
        bad_y = dict(y, task_1=tf.tensor_scatter_nd_update(y["task_1"], [[2, 1]], [np.nan]))
        model.train_step((x, bad_y))
        assert model.nonfinite_counts.numpy().tolist() == [0, 1]  # task excluded
        assert int(model.skipped_steps.numpy()) == 1
        assert float(model.optimizer.dynamic_scale.numpy()) == scale
        assert int(model.optimizer.iterations.numpy()) == 1  # applied without task_1
    for v in model.variables:
        assert np.all(np.isfinite(v.numpy())), v.path


# --- the launcher ---------------------------------------------------------------
def _toy_run(tmp_path, mixed_precision, extra=()):
    import gin

    from keras_mtl import experiment

    gin.clear_config()
    experiment.register_gin_externals()
    try:
        gin.parse_config_files_and_bindings(
            [os.path.join(ROOT, "gin", "toy_t2.gin")],
            ["train.steps = 2", "train.steps_per_epoch = 2", "toy_data.train_size = 200",
             "toy_data.test_size = 100", "train.records = 'sweep'", "train.verbose = 0",
             f"train.mixed_precision = {mixed_precision!r}", *extra])
        return experiment.train(str(tmp_path))
    finally:
        gin.clear_config()


def test_train_mixed_precision_policy_is_validated_and_restored():
    from keras_mtl import experiment

    with experiment.dtype_policy("bfloat16") as policy:
        assert policy == keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with experiment.dtype_policy(None) as policy:
        assert policy is None
    with pytest.raises(ValueError, match="float8"):
        with experiment.dtype_policy("float8"):
            pass
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_train_mixed_precision_builds_under_the_policy_and_restores_it(tmp_path):
    result = _toy_run(tmp_path, "float16")
    model = result["model"]
    assert model.dtype_policy.name == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert not isinstance(model.balancer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert np.isfinite(result["metrics"]["loss"])
    assert "train.mixed_precision = 'float16'" in (tmp_path / "operative_config.gin").read_text()
    with pytest.raises(ValueError, match="float8"):
        _toy_run(tmp_path / "bad", "float8")
    assert keras.mixed_precision.global_policy().name == "float32"


# The launcher's `--mixed_precision` flag (and its values) is checked in its
# own process with the other launcher flags in test_architectures_experts.py.


@pytest.mark.slow
def test_launcher_trains_under_mixed_bfloat16_from_the_command_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--gin_file=gin/toy_gradnorm_t2.gin",
         "--gin_bindings=toy_data.train_size = 200", "--gin_bindings=toy_data.test_size = 100",
         "--gin_bindings=train.steps_per_epoch = 2", f"--model_dir={tmp_path / 'run'}",
         "--steps=2", "--mixed_precision=bfloat16"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    operative = (tmp_path / "run" / "operative_config.gin").read_text()
    assert "train.mixed_precision = 'bfloat16'" in operative


def test_a_scale_below_one_is_reported_like_a_skipped_step():
    """Gradients that overflow float16 at any scale (here: labels of 1e6)
    drive the scale below 1: `raise` stops there, `skip` warns once."""
    x, y = _batches(steps=1)[0]
    y = {k: v * 1e6 for k, v in y.items()}
    data = tf.data.Dataset.from_tensors((x, y)).repeat(4)
    for nonfinite in ("raise", "skip"):
        with _policy("mixed_float16"):
            model = _mlp()
            model.compile(optimizer=_scaled(2.0), loss="mse", balancer="equal",
                          nonfinite=nonfinite, run_eagerly=True)
            if nonfinite == "raise":
                with pytest.raises(FloatingPointError, match="loss scale fell"):
                    model.fit(data, verbose=0, shuffle=False)
            else:
                with pytest.warns(RuntimeWarning, match="loss scale fell") as caught:
                    model.fit(data, verbose=0, shuffle=False)
                assert sum("loss scale" in str(w.message) for w in caught) == 1
        assert int(model.optimizer.iterations.numpy()) == 0
        assert int(model.skipped_steps.numpy()) == 0
        assert all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)


def test_a_saved_mixed_float16_model_reloads_with_its_policy_and_loss_scale(tmp_path):
    x, y = _batches(steps=1)[0]
    with _policy("mixed_float16"):
        model = _mlp()
        model.compile(optimizer=_scaled(2.0**13), loss="mse", balancer="gradnorm",
                      learning_rate_multipliers={"task_specific": 2.0})
        training.prepare(model, x)
        model.optimizer.dynamic_scale.assign(2.0**11)  # as after two overflows
        model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.dtype_policy.name == "mixed_float16"
    assert loaded.encoder.layers[0].compute_dtype == "float16"
    assert loaded.balancer.dtype_policy.name == "float32"
    for opt in [loaded.optimizer] + list(loaded.group_optimizers.values()):
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert float(loaded.optimizer.dynamic_scale.numpy()) == 2.0**11
    np.testing.assert_array_equal(loaded.predict(x, verbose=0)["task_0"],
                                  model.predict(x, verbose=0)["task_0"])

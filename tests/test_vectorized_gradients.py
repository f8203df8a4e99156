"""The vectorised per-task trunk gradients equal the one-pass-per-task loop.

`keras_mtl.training.gradients.shared_jacobian` (the (T, P) Jacobian of the
shared parameters of `mode="shared"` balancers) and GradNorm's kernel norms
back-propagate all tasks' dL_t/dz at once (`tf.vectorized_map`) when
`jacobian_plan` allows it; the loop is kept past the memory budget. Both
must give the same matrix: here to 1e-6 (float32, relative to the largest
entry), on a plain MLP, a BatchNorm trunk and a task-conditioned
(TaskMask, folded-batch) trunk, with a task absent from the batch. The
2-device MirroredStrategy run of a parameter-level balancer is in
tests/test_distribute.py (`imtl_shared`).
"""

import functools

import numpy as np
import pytest
import tensorflow as tf
import keras

import keras_mtl as mtl
from keras_mtl import balancers
from keras_mtl.training import gradients
from keras_mtl.training import step as step_module

TASKS = 3
B = 6


def _model(kind):
    init = keras.initializers.GlorotUniform
    if kind == "task_conditioned":
        encoder = mtl.layers.TaskSequential([
            keras.layers.Dense(10, kernel_initializer=init(seed=1)),
            mtl.layers.TaskMask(TASKS, sharing_ratio=0.5, seed=3),
            keras.layers.ReLU(),
            keras.layers.Dense(7, activation="tanh", kernel_initializer=init(seed=2)),
        ])
    else:
        layers = [keras.layers.Dense(10, kernel_initializer=init(seed=1))]
        if kind == "batch_norm":
            layers.append(keras.layers.BatchNormalization())
        layers += [keras.layers.ReLU(),
                   keras.layers.Dense(7, activation="tanh", kernel_initializer=init(seed=2))]
        encoder = keras.Sequential(layers)
    heads = {f"task_{t}": keras.layers.Dense(3, kernel_initializer=init(seed=10 + t))
             for t in range(TASKS)}
    model = mtl.MultiTaskModel(encoder, heads)
    model(np.zeros((1, 5), "float32"))
    model.compile(optimizer="sgd", loss="mse", balancer=balancers.GradNorm())
    return model


def _batch(absent=()):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, 5)).astype("float32")
    y = {f"task_{t}": rng.normal(size=(B, 3)).astype("float32") * (1 + t)
         for t in range(TASKS) if t not in absent}
    return x, y


def _both(model, x, y, what):
    def run(plan):
        @tf.function
        def f(x, y):
            step = step_module.forward(model, x, y, None)
            step.compute_task_gradients(model)
            if what == "jacobian":
                return gradients.shared_jacobian(model, step, plan=plan)
            kernel = model.balancer.find_kernel(model.encoder)
            tasks = [t for t in range(TASKS) if step.task_gradients[t] is not None]
            norms = (gradients._kernel_norms_vectorized if plan == "vectorized"
                     else gradients._kernel_norms_loop)
            return norms(step, kernel, tasks)
        return f(x, y).numpy()
    return run("vectorized"), run("loop")


@pytest.mark.parametrize("kind", ["plain", "batch_norm", "task_conditioned"])
def test_vectorized_jacobian_equals_the_loop(kind):
    model = _model(kind)
    x, y = _batch(absent=(1,))
    vec, loop = _both(model, x, y, "jacobian")
    size = sum(int(np.prod(v.shape)) for v in model.shared_variables())
    assert vec.shape == loop.shape == (TASKS, size)
    assert np.all(vec[1] == 0.0) and np.all(loop[1] == 0.0)  # absent task
    assert np.abs(loop).max() > 1e-3  # not vacuous
    np.testing.assert_allclose(vec, loop, rtol=0, atol=1e-6 * np.abs(loop).max())
    vec, loop = _both(model, x, y, "norms")
    assert vec.shape == (TASKS - 1,) and np.all(loop > 1e-3)
    np.testing.assert_allclose(vec, loop, rtol=1e-6)


def test_plan_rule_states_the_memory_budget(monkeypatch):
    # 4 bytes x T x (P + B x A) against VECTORIZE_MEMORY_BYTES.
    # On CPU (no accelerator) the loop, unless VECTORIZE_ON_CPU.
    budget = gradients.VECTORIZE_MEMORY_BYTES
    plan = functools.partial(gradients.jacobian_plan, accelerator=True)
    assert plan(10, 55_000, 100, 400) == "vectorized"
    p = budget // (4 * 10) - 100 * 400
    assert plan(10, p, 100, 400) == "vectorized"
    assert plan(10, p + 1, 100, 400) == "loop"
    assert plan(10, 10, 1, 1, memory_bytes=0) == "loop"
    assert gradients.jacobian_plan(10, 55_000, 100, 400, accelerator=False) == "loop"
    monkeypatch.setattr(gradients, "VECTORIZE_ON_CPU", True)
    assert gradients.jacobian_plan(10, 55_000, 100, 400, accelerator=False) == "vectorized"
    assert gradients.jacobian_plan(10, 10, 1, 1, accelerator=None) == "vectorized"


def test_shared_mode_step_is_the_same_with_either_plan(monkeypatch):
    """One fit step of IMTL-G (mode="shared"): same weights after it, either path."""
    def fitted():
        keras.utils.set_random_seed(0)
        model = _model("batch_norm")
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                      balancer=balancers.IMTLG(mode="shared"))
        x, y = _batch()
        model.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
        return [v.numpy() for v in model.variables]

    monkeypatch.setattr(gradients, "VECTORIZE_ON_CPU", True)  # this machine may lack a GPU
    vec = fitted()
    monkeypatch.setattr(gradients, "VECTORIZE_MEMORY_BYTES", 0)
    loop = fitted()
    for a, b in zip(vec, loop):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

"""Benchmark suites measure what they claim.

The floor suite (launch/bench/floor.py): its minimal TensorFlow steps must
compute what keras-mtl computes (else the floor would be of another
method), and the multiply-adds it reports must be the matrix products those
steps actually run. The balancers suite builds its models under the dtype
policy it reports.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl import balancers, ops
from keras_mtl.models.toy import toy_mlp
from launch.bench import balancers as bench
from launch.bench import floor


def _batch(num_tasks):
    x, y = next(iter(bench._dataset(num_tasks, "toy")))
    return x, y


def _raw(num_tasks, x, learning_rate=1e-4):
    keras.utils.set_random_seed(0)
    model = toy_mlp(num_tasks)
    model(x)
    return model, floor.RawSteps(model, learning_rate=learning_rate)


def _needed_matmul_macs(graph):
    """Multiply-adds of the MatMul ops the function runs.

    The ops reachable backwards from its outputs and its variable updates:
    what TensorFlow executes (a persistent tape also records backward ops
    nobody reads; they are pruned).
    """
    roots = [t.op for t in graph.outputs]
    roots += [op for op in graph.get_operations() if op.type.startswith("Assign")]
    seen, stack = set(), list(roots)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        stack += [t.op for t in op.inputs] + list(op.control_inputs)
    total = 0
    for op in graph.get_operations():
        if op.name not in seen:
            continue
        assert op.type not in ("BatchMatMulV2", "Einsum"), op.type
        if op.type != "MatMul":
            continue
        a, b = (t.shape.as_list() for t in op.inputs)
        m, k = (a[1], a[0]) if op.get_attr("transpose_a") else a
        n = b[0] if op.get_attr("transpose_b") else b[1]
        total += m * k * n
    return total


@pytest.mark.parametrize("num_tasks", [2, 5])
def test_toy_macs_count_the_matrix_products_of_the_raw_steps(num_tasks):
    x, y = _batch(num_tasks)
    ys = list(y.values())
    for name in ("equal",) + floor.METHODS:
        _, raw = _raw(num_tasks, x)
        graph = raw.step(name).get_concrete_function(x, ys).graph
        assert _needed_matmul_macs(graph) == floor.toy_macs(num_tasks)[name], name
    # The closed forms at T = 10: what the README's floor table divides.
    macs = floor.toy_macs(10)
    assert macs["equal"] == 44_000_000
    assert macs["gradnorm"] / macs["equal"] == pytest.approx(54 / 44)


def test_imtl_g_from_the_gramian_equals_the_op():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(5, 40)) * np.array([[1.0], [3.0], [0.2], [1.0], [8.0]])
    got = floor._imtl_g_from_gramian(tf.constant(grads @ grads.T)).numpy()
    np.testing.assert_allclose(got, ops.imtl_g_weights(grads).numpy(), rtol=1e-9)


@pytest.mark.parametrize("name, make", [
    ("gradnorm", balancers.GradNorm),
    ("imtl_g features", lambda: balancers.IMTLG(mode="features")),
    ("imtl_g shared", lambda: balancers.IMTLG(mode="shared")),
])
def test_raw_steps_take_keras_mtl_steps(name, make):
    """One raw step moves every variable as keras-mtl's train step does."""
    num_tasks, lr = 3, 1e-2
    x, y = _batch(num_tasks)
    model, raw = _raw(num_tasks, x, learning_rate=lr)
    keras.utils.set_random_seed(0)
    ours = toy_mlp(num_tasks)
    ours.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", balancer=make())
    ours(x)
    before = [v.numpy() for v in ours.trainable_variables]
    for a, b in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())
    out = raw.step(name)(x, list(y.values())).numpy()
    ours.train_on_batch(x, y)
    for v, r, b in zip(ours.trainable_variables, model.trainable_variables, before):
        moved, raw_moved = v.numpy() - b, r.numpy() - b
        assert np.max(np.abs(moved)) > 0, v.path
        # float32; IMTL-G's weights are solved in float64 by keras-mtl.
        assert np.max(np.abs(moved - raw_moved)) <= 1e-3 * np.max(np.abs(moved)), v.path
    if name == "gradnorm":
        np.testing.assert_allclose(out, ours.balancer.layer_norms.numpy(), rtol=1e-6)
    else:
        np.testing.assert_allclose(out, ours.balancer.last_weights.numpy(), rtol=1e-5)


def test_floor_suite_reports_every_method():
    text, data = floor.run_with_data(task_counts=(2,), rounds=1, steps=2,
                                     steps_per_execution=1)
    for name in ("equal (MACs; ms/step)",) + floor.METHODS:
        assert f"| {name} |" in text
    keys = {(r["implementation"], r["method"]) for r in data["rows"]}
    assert keys == {(impl, m) for impl in ("raw TF", "keras-mtl")
                    for m in ("equal",) + floor.METHODS}
    assert [len(r["seconds"]) for r in data["rows"]] == [1] * 8  # one per round
    # The MACs cells are toy_macs' ratios (T=2: 20.0 M; 1.10x, 1.00x, 1.44x).
    macs = floor.toy_macs(2)
    assert data["macs"][2] == macs
    assert "| equal (MACs; ms/step) | 20.0 M |" in text
    for name in floor.METHODS:
        assert f"| {name} | {macs[name] / macs['equal']:.2f}x |" in text
    assert "| gradnorm | 1.10x |" in text and "| imtl_g shared | 1.44x |" in text


def test_balancers_suite_builds_every_model_under_the_mixed_policy(monkeypatch):
    from keras_mtl.models import toy

    built, make = [], toy.toy_mlp

    def spy(num_tasks):
        model = make(num_tasks)
        built.append((keras.mixed_precision.global_policy().name,
                      model.encoder.layers[0].compute_dtype))
        return model

    monkeypatch.setattr(toy, "toy_mlp", spy)
    before = keras.mixed_precision.global_policy().name
    text, data = bench.run_with_data(task_counts=(2,), rounds=1, steps=2,
                                     steps_per_execution=1, only=["gradnorm"],
                                     problems=("toy",), mixed_precision="float16")
    assert "mixed_float16" in text and data["mixed_precision"] == "float16"
    # Equal weights and GradNorm (`only` keeps the labels asked for).
    assert built == [("mixed_float16", "float16")] * 2
    assert keras.mixed_precision.global_policy().name == before

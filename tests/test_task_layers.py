"""Task SE, residual adapters and task batch norm (attentive single-tasking)."""

import keras
import keras_cv
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.layers import (
    ResidualAdapter,
    TaskBatchNormalization,
    TaskMask,
    TaskSequential,
    TaskSqueezeExcite,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 5, 5, 8)).astype("float32")
TASK = np.array([0, 0, 1, 1, 2, 2], "int32")


def _grads(layer, loss_fn, variables):
    with tf.GradientTape() as tape:
        loss = loss_fn()
    return [np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
            for g, v in zip(tape.gradient(loss, variables), variables)]


# --- task squeeze-and-excitation ---------------------------------------------
def test_task_se_switching_task_changes_output():
    se = TaskSqueezeExcite(3, ratio=4)
    y = [se(X, task=np.full(6, t, "int32")).numpy() for t in range(3)]
    assert np.abs(y[0] - y[1]).max() > 1e-3
    assert np.abs(y[1] - y[2]).max() > 1e-3
    # A mixed batch takes, row by row, the output of the row's task.
    mixed = se(X, task=TASK).numpy()
    for n, t in enumerate(TASK):
        np.testing.assert_allclose(mixed[n], y[t][n], rtol=1e-6, atol=1e-6)


def test_task_se_identical_weights_identical_outputs_equal_keras_cv_se():
    se = TaskSqueezeExcite(3, ratio=4)
    se.build(X.shape)
    reference = keras_cv.layers.SqueezeAndExcite2D(8, bottleneck_filters=2)
    reference(X)
    weights = reference.get_weights()
    for block in se.blocks:
        block.set_weights(weights)
    expected = reference(X).numpy()
    for t in range(3):
        out = se(X, task=np.full(6, t, "int32")).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(se(X, task=TASK).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_task_se_gradient_reaches_only_own_block():
    x = np.abs(X) + 0.5  # post-ReLU-like features
    se = TaskSqueezeExcite(3, ratio=2)
    se(x, task=TASK)
    for block in se.blocks:  # positive squeeze kernels: every bottleneck unit active
        kernel = block.squeeze_conv.kernel
        kernel.assign(np.abs(kernel.numpy()) + 0.1)
    for t in range(3):
        rows = np.where(TASK == t)[0]
        variables = se.trainable_variables
        grads = _grads(se, lambda: tf.reduce_sum(tf.gather(se(x, task=TASK), rows) ** 2),
                       variables)
        own = {id(v) for v in se.task_variables(t)}
        for v, g in zip(variables, grads):
            if id(v) in own:
                assert np.abs(g).max() > 1e-6, v.path
            else:
                assert np.all(g == 0.0), v.path


def test_task_se_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ratio=0"):
        TaskSqueezeExcite(2, ratio=0)
    with pytest.raises(ValueError, match="task="):
        TaskSqueezeExcite(2)(X)


# --- residual adapters --------------------------------------------------------
def test_residual_adapter_starts_as_the_shared_layer():
    conv = keras.layers.Conv2D(7, 3, strides=2, padding="same")
    adapter = ResidualAdapter(3, layer=conv)
    out = adapter(X, task=TASK).numpy()
    np.testing.assert_array_equal(out, conv(X).numpy())
    assert adapter.strides == 2 and out.shape == (6, 3, 3, 7)
    dense = keras.layers.Dense(4)
    x2 = X[:, 0, 0, :]
    np.testing.assert_array_equal(ResidualAdapter(3, layer=dense)(x2, task=TASK).numpy(),
                                  dense(x2).numpy())


def test_residual_adapter_adds_task_one_by_one_conv():
    conv = keras.layers.Conv2D(7, 3, strides=2, padding="same")
    adapter = ResidualAdapter(3, layer=conv)
    adapter(X, task=TASK)
    kernels = [RNG.normal(size=(8, 7)).astype("float32") for _ in range(3)]
    for var, k in zip(adapter.kernels, kernels):
        var.assign(k)
    out = adapter(X, task=TASK).numpy()
    shared = conv(X).numpy()
    for n, t in enumerate(TASK):
        expected = shared[n] + X[n, ::2, ::2, :] @ kernels[t]
        np.testing.assert_allclose(out[n], expected, rtol=1e-5, atol=1e-5)
    # Only task t's kernel receives task t's gradient.
    rows = np.where(TASK == 1)[0]
    grads = _grads(adapter, lambda: tf.reduce_sum(tf.gather(adapter(X, task=TASK), rows) ** 2),
                   adapter.kernels)
    assert np.all(grads[0] == 0) and np.all(grads[2] == 0) and np.abs(grads[1]).max() > 0


def test_residual_adapter_composes_with_task_mask():
    mask = TaskMask(3, sharing_ratio=0.5, seed=3)
    adapter = ResidualAdapter(3, layer=mask)
    adapter(X, task=TASK)
    k = RNG.normal(size=(8, 8)).astype("float32")
    adapter.kernels[2].assign(k)
    out = adapter(X, task=TASK).numpy()
    m = mask.mask.numpy()  # (units, T)
    for n, t in enumerate(TASK):
        expected = X[n] * m[:, t] + (X[n] @ k if t == 2 else 0.0)
        np.testing.assert_allclose(out[n], expected, rtol=1e-5, atol=1e-5)


# --- task batch normalisation -------------------------------------------------
def test_task_batch_norm_matches_keras_bn_per_task():
    x = (RNG.normal(size=(6, 4, 4, 3)) * [1.0, 3.0, 0.5] + [0.0, 5.0, -2.0]).astype("float32")
    x[TASK == 1] = 4.0 * x[TASK == 1] + 10.0  # a task with different statistics
    tbn = TaskBatchNormalization(3, momentum=0.9)
    out = tbn(x, task=TASK, training=True).numpy()
    for t in range(3):
        ref = keras.layers.BatchNormalization(momentum=0.9)
        rows = TASK == t
        expected = ref(x[rows], training=True).numpy()
        np.testing.assert_allclose(out[rows], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(tbn.moving_means[t].numpy(), ref.moving_mean.numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tbn.moving_variances[t].numpy(),
                                   ref.moving_variance.numpy(), rtol=1e-4, atol=1e-6)
        inference = tbn(x[rows], task=t, training=False).numpy()
        np.testing.assert_allclose(inference, ref(x[rows], training=False).numpy(),
                                   rtol=1e-4, atol=1e-4)
    # Each task's examples are normalised by their own statistics.
    for t in range(3):
        np.testing.assert_allclose(out[TASK == t].mean(axis=(0, 1, 2)), 0.0, atol=1e-4)


def test_task_batch_norm_absent_task_keeps_statistics_bitwise():
    tbn = TaskBatchNormalization(3)
    tbn(X, task=TASK, training=True)
    before = [v.numpy().copy() for v in tbn.task_variables(2)]
    tbn(X[:4] * 3.0, task=TASK[:4], training=True)
    for b, v in zip(before, tbn.task_variables(2)):
        np.testing.assert_array_equal(b, v.numpy())


# --- composition and the no-drift optimiser rule (appendix D) -------------------
def _encoder():
    return TaskSequential([
        ResidualAdapter(2, layer=keras.layers.Conv2D(8, 3, padding="same", use_bias=False)),
        TaskBatchNormalization(2),
        keras.layers.ReLU(),
        TaskSqueezeExcite(2, ratio=4),
        TaskMask(2, sharing_ratio=0.75, seed=1),
    ])


def test_one_task_step_leaves_other_task_variables_and_slots_bitwise():
    encoder = _encoder()
    x = X[:4]
    task1 = np.ones(4, "int32")
    encoder(x, task=task1, training=True)
    layers = [l for l in encoder.layers if hasattr(l, "task_variables")]
    other = [v for l in layers for v in l.task_variables(1)]
    other_ids = {id(v) for v in other}
    for v in encoder.trainable_variables:  # non-zero values: weight decay moves them
        v.assign(v.numpy() + 0.1)

    def step(optimizer, variables):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(encoder(x, task=np.zeros(4, "int32"), training=True) ** 2)
        optimizer.apply(tape.gradient(loss, variables), variables)

    # Naively updating every variable lets weight decay move task 1's weights.
    trainable = encoder.trainable_variables
    snapshot = {id(v): v.numpy().copy() for v in trainable}
    step(keras.optimizers.AdamW(1e-2, weight_decay=0.1), trainable)
    drifted = [v for v in trainable if id(v) in other_ids
               and not np.array_equal(v.numpy(), snapshot[id(v)])]
    assert drifted
    for v in trainable:
        v.assign(snapshot[id(v)])
    # The rule: task 0's step only updates what task 0 uses.
    used = [v for v in trainable if id(v) not in other_ids]
    optimizer = keras.optimizers.AdamW(1e-2, weight_decay=0.1)
    before = {id(v): v.numpy().copy() for v in other}
    for _ in range(3):
        step(optimizer, used)
    for v in other:
        np.testing.assert_array_equal(before[id(v)], v.numpy())
    slots = {id(s) for s in optimizer.variables}
    assert len(optimizer.variables) == 2 * len(used) + 2  # m, v per used var + counters
    assert all(id(v) not in slots for v in other)
    for v in used:  # ... and moves everything task 0 uses
        assert not np.array_equal(v.numpy(), snapshot[id(v)]), v.path


def test_layers_round_trip_through_config():
    encoder = _encoder()
    y = encoder(X[:4], task=TASK[:4] % 2, training=False).numpy()
    clone = TaskSequential.from_config(encoder.get_config())
    clone(X[:4], task=TASK[:4] % 2, training=False)
    clone.set_weights(encoder.get_weights())
    np.testing.assert_allclose(clone(X[:4], task=TASK[:4] % 2, training=False).numpy(), y,
                               rtol=1e-6, atol=1e-6)


def test_model_step_without_a_task_leaves_its_variables_and_slots_bitwise():
    from keras_mtl.model import MultiTaskModel

    keras.utils.set_random_seed(1)
    model = MultiTaskModel(_encoder(), {"a": keras.layers.Conv2D(2, 1),
                                        "b": keras.layers.Conv2D(1, 1)})
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.1),
                  loss={"a": "mse", "b": "mse"})
    x = X[:4]
    y = {"a": np.ones((4, 5, 5, 2), "float32"), "b": np.zeros((4, 5, 5, 1), "float32")}
    model.train_on_batch(x, y)  # both tasks: momentum slots are now non-zero
    b_vars = model.task_specific_variables("b")
    assert len(b_vars) > len(model.heads["b"].trainable_variables)  # SE, BN, adapter
    opt = model.optimizer

    def slot(v):
        return opt.momentums[opt._get_variable_index(v)]

    before = [v.numpy().copy() for v in b_vars]
    before_slots = [slot(v).numpy().copy() for v in b_vars]
    assert any(np.any(s != 0) for s in before_slots)
    a_vars = model.task_specific_variables("a")
    a_before = [v.numpy().copy() for v in a_vars]
    model.train_on_batch(x, {"a": y["a"]})
    for b, v in zip(before, b_vars):
        np.testing.assert_array_equal(b, v.numpy(), err_msg=v.path)
    for b, v in zip(before_slots, b_vars):
        np.testing.assert_array_equal(b, slot(v).numpy(), err_msg=v.path)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(a_before, a_vars))

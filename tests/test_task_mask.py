"""TaskMask / TaskRouting: partition initialisation, Eq. 2 forward, Lemmas 1-2."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.layers import TaskMask
from keras_mtl.layers import TaskRouting
from keras_mtl.layers import TaskSequential


def built_mask(units, num_tasks, p, seed, cls=TaskMask):
    layer = cls(num_tasks=num_tasks, sharing_ratio=p, seed=seed)
    layer.build((None, units))
    return layer


def marginal(p, num_tasks):
    """P(m_{i,t} = 1) at initialisation: Bernoulli(p) plus constraint 3."""
    return p + (1.0 - p) ** num_tasks / num_tasks


@pytest.mark.parametrize("p", [0.0, 0.3, 0.6, 0.9])
def test_constraint_3_and_bernoulli_marginal_at_initialisation(p):
    units, num_tasks = 3000, 3
    m = built_mask(units, num_tasks, p, seed=11).mask.numpy()
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert m.sum(axis=1).min() >= 1  # constraint 3: every unit has a task
    # Each column is iid over units: its mean is within 5 sigma of the marginal.
    q = marginal(p, num_tasks)
    tol = 5 * math.sqrt(q * (1 - q) / units)
    np.testing.assert_allclose(m.mean(axis=0), q, atol=tol)
    # Without constraint 3 a unit is unused with probability (1-p)^T: those
    # units (and only those) hold exactly one task.
    single = (m.sum(axis=1) == 1).mean()
    p_single = num_tasks * p * (1 - p) ** (num_tasks - 1) + (1 - p) ** num_tasks
    assert abs(single - p_single) <= 5 * math.sqrt(p_single * (1 - p_single) / units) + 1e-9


def test_p0_is_a_disjoint_partition_and_p1_fully_shared():
    m0 = built_mask(64, 4, 0.0, seed=3).mask.numpy()
    np.testing.assert_array_equal(m0.sum(axis=1), np.ones(64))
    gram = m0.T @ m0
    np.testing.assert_array_equal(gram - np.diag(np.diag(gram)), np.zeros((4, 4)))
    m1 = built_mask(64, 4, 1.0, seed=3).mask.numpy()
    np.testing.assert_array_equal(m1, np.ones((64, 4)))


def test_p1_equals_the_plain_shared_network_exactly():
    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(6, 3, padding="same")
    bn = keras.layers.BatchNormalization()
    masked = TaskSequential([conv, bn, TaskMask(2, sharing_ratio=1.0, seed=0), keras.layers.ReLU()])
    x = np.random.default_rng(0).normal(size=(4, 5, 5, 3)).astype("float32")
    task = np.array([0, 1, 0, 1], "int32")
    for training in (False, True):
        plain = keras.ops.relu(bn(conv(x), training=training))
        out = masked(x, task=task, training=training)
        np.testing.assert_array_equal(out.numpy(), plain.numpy())


def test_forward_multiplies_each_example_by_its_task_column():
    layer = TaskMask(3, sharing_ratio=0.4, seed=5)
    x = np.random.default_rng(1).normal(size=(6, 2, 7)).astype("float32")
    task = np.array([2, 0, 1, 1, 0, 2])
    y = layer(x, task=task).numpy()
    m = layer.mask.numpy()
    np.testing.assert_array_equal(y, x * m.T[task][:, None, :])
    # A scalar task index is the same as a constant vector.
    np.testing.assert_array_equal(layer(x, task=1).numpy(), x * m[:, 1])
    # Channels-first: units on axis 1.
    first = TaskMask(2, sharing_ratio=0.5, seed=2, axis=1)
    xc = np.ones((2, 9, 3, 3), "float32")
    yc = first(xc, task=np.array([0, 1])).numpy()
    np.testing.assert_array_equal(yc[:, :, 1, 2], first.mask.numpy().T)


def test_dropped_units_receive_zero_gradient_and_do_not_change_the_loss():
    keras.utils.set_random_seed(1)
    num_tasks, batch = 3, 4
    masks = [TaskMask(num_tasks, 0.5, seed=7), TaskMask(num_tasks, 0.5, seed=8)]
    conv1 = keras.layers.Conv2D(6, 3, padding="same")
    conv2 = keras.layers.Conv2D(5, 3, padding="same")
    encoder = TaskSequential([
        conv1, keras.layers.BatchNormalization(), masks[0], keras.layers.ReLU(),
        conv2, masks[1], keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
    ])
    heads = [keras.layers.Dense(1) for _ in range(num_tasks)]
    x = np.random.default_rng(2).normal(size=(batch, 6, 6, 2)).astype("float32")
    folded = np.concatenate([x] * num_tasks)
    task = np.repeat(np.arange(num_tasks), batch).astype("int32")

    def task_losses():
        z = tf.split(encoder(folded, task=task, training=True), num_tasks)
        return [tf.reduce_mean(tf.square(heads[t](z[t]) - 1.0)) for t in range(num_tasks)]

    task_losses()
    kernels = [conv1.kernel, conv2.kernel, conv1.bias, conv2.bias]
    for t in range(num_tasks):
        with tf.GradientTape() as tape:
            loss = task_losses()[t]
        grads = tape.gradient(loss, kernels)
        for grad, layer_mask in zip(grads, [masks[0], masks[1]] * 2):
            per_unit = np.abs(grad.numpy()).reshape(-1, grad.shape[-1]).sum(axis=0)
            dropped = layer_mask.mask.numpy()[:, t] == 0
            assert dropped.any() and (~dropped).any()
            np.testing.assert_array_equal(per_unit[dropped], 0.0)
            assert (per_unit[~dropped] > 0).all()
    # Forward check of the same fact: perturbing a dropped unit's filter leaves
    # the task's loss bit-identical; perturbing a kept one changes it.
    t = 0
    m = masks[1].mask.numpy()[:, t]
    base = float(task_losses()[t])
    kernel = conv2.kernel.numpy()
    for unit, expect_same in ((int(np.flatnonzero(m == 0)[0]), True),
                              (int(np.flatnonzero(m == 1)[0]), False)):
        bumped = kernel.copy()
        bumped[..., unit] += 0.5
        conv2.kernel.assign(bumped)
        assert (float(task_losses()[t]) == base) == expect_same
        conv2.kernel.assign(kernel)


def test_per_task_batch_statistics_keep_dropped_units_gradient_free_in_deep_stacks():
    """Conv-TaskBN-TaskMask-ReLU x 2: separate statistics per task pass, as in Eq. 2."""
    from keras_mtl.layers.task_batch_norm import TaskBatchNormalization

    keras.utils.set_random_seed(2)
    num_tasks, batch = 3, 4
    mask1 = TaskMask(num_tasks, 0.5, seed=7)
    conv1 = keras.layers.Conv2D(6, 3, padding="same")
    encoder = TaskSequential([
        conv1, TaskBatchNormalization(num_tasks), mask1, keras.layers.ReLU(),
        keras.layers.Conv2D(5, 3, padding="same"), TaskBatchNormalization(num_tasks),
        TaskMask(num_tasks, 0.5, seed=8), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
    ])
    head = keras.layers.Dense(1)
    x = np.random.default_rng(3).normal(size=(batch, 6, 6, 2)).astype("float32")
    folded = np.concatenate([x] * num_tasks)
    task = np.repeat(np.arange(num_tasks), batch).astype("int32")
    encoder(folded, task=task)
    for t in range(num_tasks):
        with tf.GradientTape() as tape:
            z = tf.split(encoder(folded, task=task, training=True), num_tasks)[t]
            loss = tf.reduce_mean(tf.square(head(z) - 1.0))
        per_unit = np.abs(tape.gradient(loss, conv1.kernel).numpy()).reshape(-1, 6).sum(axis=0)
        dropped = mask1.mask.numpy()[:, t] == 0
        assert dropped.any()
        np.testing.assert_array_equal(per_unit[dropped], 0.0)
        assert (per_unit[~dropped] > 0).all()


def test_lemma_1_constant_partition_sizes_and_completion():
    p, num_tasks, widths = 0.5, 3, (8, 12, 20)
    layers = [built_mask(s, num_tasks, p, seed=100 + s) for s in widths]
    sizes = [l.mask.numpy().sum(axis=0) for l in layers]
    needed = max(s - a.min() for s, a in zip(widths, sizes))
    updates = 0
    while not all(l.plan_finished() for l in layers):
        before = [(l.mask.numpy(), l.visited.numpy()) for l in layers]
        for l in layers:
            l.roam()
        updates += 1
        for l, (m, b), a, s in zip(layers, before, sizes, widths):
            m2, b2 = l.mask.numpy(), l.visited.numpy()
            np.testing.assert_array_equal(m2.sum(axis=0), a)  # |A_t| constant
            assert (m2 <= b2).all()  # A_t is a subset of B_t
            moved = np.abs(m2 - m).sum(axis=0)
            grew = b2.sum(axis=0) - b.sum(axis=0)
            left = b.sum(axis=0) < s
            # An unfinished task swaps exactly one unit out and one new unit in.
            np.testing.assert_array_equal(moved, np.where(left, 2, 0))
            np.testing.assert_array_equal(grew, np.where(left, 1, 0))
            assert ((m2 - m == 1) <= (b == 0)).all()  # i+ was never visited
        assert updates <= needed
    # The plan takes max_t (S - |A_t(0)|) updates, ~ (1 - p) S_max.
    assert updates == needed
    s_max = max(widths)
    assert abs(updates - (1 - p) * s_max) <= 4 * math.sqrt(p * (1 - p) * s_max) + 1
    for l in layers:
        np.testing.assert_array_equal(l.visited.numpy(), 1.0)  # every unit, every task
        assert int(l.update_count.numpy()) == updates
    # A finished plan no longer changes the masks.
    frozen = layers[-1].mask.numpy()
    assert int(layers[-1].roam()) == 0
    np.testing.assert_array_equal(layers[-1].mask.numpy(), frozen)


@pytest.mark.parametrize("completion", [0.0, 0.5])
def test_completion_rate_stops_each_task_after_r_of_its_updates(completion):
    layer = built_mask(16, 2, 0.25, seed=4)
    a = layer.mask.numpy().sum(axis=0)
    while not layer.plan_finished(completion):
        layer.roam(completion)
    made = layer.visited.numpy().sum(axis=0) - a
    np.testing.assert_array_equal(made, np.ceil(completion * (16 - a) - 1e-6))
    np.testing.assert_array_equal(layer.mask.numpy().sum(axis=0), a)


def test_lemma_2_marginal_stays_constant_over_the_plan():
    """P(m_{i,t}(c) = 1) equals its initial value for every unit, task and c."""
    units, num_tasks, p, seeds, steps = 6, 2, 0.5, 300, 5
    counts = np.zeros((steps + 1, units, num_tasks))
    for seed in range(seeds):
        layer = built_mask(units, num_tasks, p, seed=seed)
        counts[0] += layer.mask.numpy()
        for c in range(1, steps + 1):
            layer.roam()
            counts[c] += layer.mask.numpy()
    freq = counts / seeds
    q = marginal(p, num_tasks)
    # Per-cell binomial standard error; 4.5 sigma keeps the family-wise false
    # alarm rate of these 72 cells below 1e-3.
    tol = 4.5 * math.sqrt(q * (1 - q) / seeds)
    assert np.abs(freq - q).max() <= tol, (np.abs(freq - q).max(), tol)
    # The cells are not trivially constant: roaming moved units around.
    assert np.abs(freq[steps] - freq[0]).max() > 0


def test_roam_is_a_function_of_seed_and_count_and_survives_checkpoints(tmp_path):
    a = built_mask(10, 3, 0.4, seed=21)
    a.roam()
    a.roam()
    ckpt = tf.train.Checkpoint(layer=a).write(str(tmp_path / "mask"))
    b = built_mask(10, 3, 0.4, seed=21)
    np.testing.assert_array_equal(b.mask.numpy(), built_mask(10, 3, 0.4, seed=21).mask.numpy())
    tf.train.Checkpoint(layer=b).read(ckpt).assert_consumed()
    for layer in (a, b):
        layer.roam()
    np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
    np.testing.assert_array_equal(a.visited.numpy(), b.visited.numpy())
    assert int(b.update_count.numpy()) == 3
    # Config round trip keeps the seed; weights carry the plan state.
    c = TaskMask.from_config(a.get_config())
    c.build((None, 10))
    c.set_weights(a.get_weights())
    for layer in (a, c):
        layer.roam()
    np.testing.assert_array_equal(a.mask.numpy(), c.mask.numpy())
    # A different seed gives a different partition.
    assert not np.array_equal(built_mask(10, 3, 0.4, seed=22).mask.numpy(), b.mask.numpy())


def test_task_routing_masks_are_fixed():
    fixed = built_mask(12, 2, 0.5, seed=9, cls=TaskRouting)
    np.testing.assert_array_equal(fixed.mask.numpy(), built_mask(12, 2, 0.5, seed=9).mask.numpy())
    assert [w.name for w in fixed.weights] == ["mask"]
    with pytest.raises(ValueError, match="fixed masks"):
        fixed.roam()
    restored = TaskRouting.from_config(fixed.get_config())
    assert restored.seed == 9 and restored.sharing_ratio == 0.5


@pytest.mark.parametrize("p", [-0.1, 1.5, True, "0.5", None])
def test_invalid_sharing_ratio_is_a_clear_error(p):
    with pytest.raises(ValueError, match=r"Expected a float in \[0, 1\]. Received: sharing_ratio="):
        TaskMask(2, sharing_ratio=p)


def test_missing_task_is_a_clear_error():
    with pytest.raises(ValueError, match="needs `task=`"):
        TaskMask(2, 0.5, seed=0)(np.ones((2, 4), "float32"))

"""MaximumRoaming callback and masked multi-task models, end to end."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.callbacks import MaximumRoaming
from keras_mtl.layers import TaskMask
from keras_mtl.layers import TaskRouting
from keras_mtl.layers import TaskSequential

TASKS = ("mean", "orientation", "contrast")
BATCH, STEPS_PER_EPOCH, EPOCHS = 16, 8, 6


def image_tasks(n=BATCH * STEPS_PER_EPOCH, seed=0):
    """Three tasks on 8x8 stripe images: mean level, stripe orientation, contrast."""
    rng = np.random.default_rng(seed)
    orient = rng.integers(0, 2, size=n)
    level = rng.uniform(0.2, 0.8, size=n)
    contrast = rng.uniform(0.1, 0.5, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    grid = np.arange(8)
    rows = np.sin(np.pi / 2 * grid[None, :, None] + phase[:, None, None]) * np.ones((1, 1, 8))
    stripes = np.where(orient[:, None, None] == 1, rows, np.swapaxes(rows, 1, 2))
    x = level[:, None, None] + contrast[:, None, None] * stripes
    x = x + 0.05 * rng.normal(size=x.shape)
    y = {
        "mean": (4 * x.mean(axis=(1, 2)))[:, None].astype("float32"),
        "orientation": orient.astype("int32"),
        "contrast": (10 * x.std(axis=(1, 2)))[:, None].astype("float32"),
    }
    return x[..., None].astype("float32"), y


def dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def masked_model(mask_cls=TaskMask, p=0.5, widths=(8, 12), num_tasks=3, seed=0):
    keras.utils.set_random_seed(seed)
    layers = []
    for i, width in enumerate(widths):
        layers += [
            keras.layers.Conv2D(width, 3, padding="same"),
            keras.layers.BatchNormalization(momentum=0.9),
            mask_cls(num_tasks, sharing_ratio=p, seed=seed * 10 + i),
            keras.layers.ReLU(),
        ]
    encoder = TaskSequential(layers + [keras.layers.GlobalAveragePooling2D()])
    heads = {
        "mean": keras.layers.Dense(1),
        "orientation": keras.layers.Dense(2),
        "contrast": keras.layers.Dense(1),
    }
    model = keras_mtl.MultiTaskModel(encoder, heads)
    model(np.zeros((1, 8, 8, 1), "float32"))  # builds the masks
    model.compile(
        optimizer=keras.optimizers.Adam(2e-2),
        loss={
            "mean": "mse",
            "orientation": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "contrast": "mse",
        },
    )
    return model


def masks_of(model, cls=TaskMask):
    return [l for l in model._flatten_layers() if isinstance(l, cls)]


def task_losses(model, x, y):
    logs = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    return np.array([logs[f"{t}_loss"] for t in TASKS])


class MaskRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.history = []

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.history.append((step, [l.mask.numpy().copy() for l in masks_of(self.model)]))


def test_roaming_model_trains_and_the_plan_follows_lemma_1():
    x, y = image_tasks()
    model = masked_model()
    before = task_losses(model, x, y)
    layers = masks_of(model)
    initial = [l.mask.numpy().copy() for l in layers]
    sizes = [m.sum(axis=0) for m in initial]
    needed = max(l.units - a.min() for l, a in zip(layers, sizes))
    delta = 3
    roaming = MaximumRoaming(update_every=delta)
    recorder = MaskRecorder()
    model.fit(dataset(x, y), epochs=EPOCHS, verbose=0, callbacks=[roaming, recorder])
    after = task_losses(model, x, y)
    print("roaming losses", before, after)
    assert (after < 0.6 * before).all()
    # Lemma 1: the plan finishes after Delta * max_t (S - |A_t|) steps, with
    # every unit visited by every task, and |A_t| constant throughout.
    assert roaming.finished_step == delta * needed < EPOCHS * STEPS_PER_EPOCH
    assert roaming.updates == needed
    for l, a in zip(layers, sizes):
        np.testing.assert_array_equal(l.visited.numpy(), 1.0)
        np.testing.assert_array_equal(l.mask.numpy().sum(axis=0), a)
    # Masks change only at multiples of Delta, and stop changing at the end.
    prev, changes = initial, 0
    for step, masks in recorder.history:
        if any(not np.array_equal(m, q) for m, q in zip(masks, prev)):
            assert step % delta == 0 and step <= roaming.finished_step
            changes += 1
        prev = masks
    assert changes == needed


def test_task_routing_model_trains_with_fixed_masks():
    x, y = image_tasks()
    model = masked_model(TaskRouting, p=0.5)
    fixed = [l.mask.numpy().copy() for l in masks_of(model, TaskRouting)]
    before = task_losses(model, x, y)
    model.fit(dataset(x, y), epochs=EPOCHS, verbose=0)
    after = task_losses(model, x, y)
    print("routing losses", before, after)
    assert (after < 0.6 * before).all()
    for m, l in zip(fixed, masks_of(model, TaskRouting)):
        np.testing.assert_array_equal(l.mask.numpy(), m)
    with pytest.raises(ValueError, match="no roaming `TaskMask`"):
        model.fit(dataset(x, y), epochs=1, verbose=0, callbacks=[MaximumRoaming(1)])


def test_save_reload_and_resume_mid_plan_continues_the_same_plan(tmp_path):
    x, y = image_tasks(seed=1)
    ds = dataset(x, y)
    # Delta = 0.25 epoch = 2 steps.
    whole = masked_model(widths=(16, 24), seed=3)
    whole.fit(ds, epochs=2, verbose=0, callbacks=[MaximumRoaming(0.25)])

    first = masked_model(widths=(16, 24), seed=3)
    cb = MaximumRoaming(0.25)
    first.fit(ds, epochs=1, verbose=0, callbacks=[cb])
    assert cb.updates == STEPS_PER_EPOCH // 2 and cb.finished_step is None  # mid-plan
    path = str(tmp_path / "roaming.keras")
    first.save(path)
    loaded = keras.saving.load_model(path)
    assert int(loaded.optimizer.iterations.numpy()) == STEPS_PER_EPOCH
    for a, b in zip(masks_of(first), masks_of(loaded)):
        for name in ("mask", "visited", "update_count"):
            np.testing.assert_array_equal(getattr(a, name).numpy(), getattr(b, name).numpy())
    out_a, out_b = first.predict(x[:8], verbose=0), loaded.predict(x[:8], verbose=0)
    for t in TASKS:
        np.testing.assert_allclose(out_a[t], out_b[t], rtol=1e-5, atol=1e-6)
    loaded.fit(ds, epochs=1, verbose=0, callbacks=[MaximumRoaming(0.25)])
    for a, b in zip(masks_of(whole), masks_of(loaded)):
        assert int(a.update_count.numpy()) == int(b.update_count.numpy()) == STEPS_PER_EPOCH
        np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
        np.testing.assert_array_equal(a.visited.numpy(), b.visited.numpy())


def test_per_task_inference_uses_that_task_mask():
    x, _ = image_tasks(n=8)
    model = masked_model(p=0.3)
    full = model(x, training=False)
    only = model(x, tasks=["orientation"], training=False)
    assert list(only) == ["orientation"]
    np.testing.assert_allclose(only["orientation"].numpy(), full["orientation"].numpy(), rtol=1e-5, atol=1e-6)
    z = model.encoder(x, task=1, training=False)
    np.testing.assert_allclose(model.heads["orientation"](z).numpy(), full["orientation"].numpy(), rtol=1e-5, atol=1e-6)
    # Another task's mask gives another output (the masks differ at p=0.3).
    z0 = model.encoder(x, task=0, training=False)
    assert np.abs(model.heads["orientation"](z0).numpy() - full["orientation"].numpy()).max() > 1e-4


def test_num_tasks_mismatch_and_bad_arguments_are_clear_errors():
    encoder = TaskSequential([keras.layers.Dense(4), TaskMask(3, 0.5, seed=0)])
    with pytest.raises(ValueError, match="num_tasks=3"):
        keras_mtl.MultiTaskModel(encoder, {"a": keras.layers.Dense(1), "b": keras.layers.Dense(1)})
    for bad in (0, -2, True, "3"):
        with pytest.raises(ValueError, match="Received: update_every="):
            MaximumRoaming(bad)
    for bad in (-0.5, 1.2):
        with pytest.raises(ValueError, match=r"Expected a float in \[0, 1\]. Received: completion="):
            MaximumRoaming(4, completion=bad)
    x, y = image_tasks(n=32)
    model = masked_model()
    unknown_length = tf.data.Dataset.from_generator(
        lambda: iter([(x[:16], y)]),
        output_signature=(
            tf.TensorSpec((None, 8, 8, 1), "float32"),
            {k: tf.TensorSpec((None,) + v.shape[1:], v.dtype) for k, v in y.items()},
        ),
    )
    with pytest.raises(ValueError, match="steps per epoch"):
        model.fit(unknown_length, epochs=1, verbose=0, callbacks=[MaximumRoaming(0.5)])


@pytest.mark.slow
def test_mask_benchmark_quick_run_reports_both_task_counts():
    from launch.bench import masks

    table = masks.run(quick=True)
    rows = [r for r in table.splitlines() if r.startswith("| 2 ") or r.startswith("| 8 ")]
    assert len(rows) == 2
    for row in rows:
        values = [float(v) for v in row.strip("|").split("|")[1:]]
        assert len(values) == 8 and all(v > 0 for v in values)

"""Benchmark: the cost of per-task masked passes (Maximum Roaming / Task Routing).

Each task of a masked network needs its own forward pass (Eq. 2 of the
Maximum Roaming paper), so a training step costs about T shared passes. This
benchmark times one SGD step of the same conv encoder with T heads:

- `shared`: no masks, the encoder runs once and every head reads it;
- `tiled`: no masks, the encoder runs on the input tiled T times (the cost
  of T passes without any mask op, the reference for the mask overhead);
- `folded`: `TaskMask` layers, the T passes folded into one (T*B) batch, as
  `MultiTaskModel` runs them;
- `loop`: `TaskMask` layers, one pass per task in a Python loop (unrolled
  into the traced graph).

and reports the step-time ratios masked / shared at T=2 and T=8.

Usage: `python -m launch.bench.masks [--quick]`.
"""

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_mtl.layers import TaskMask
from keras_mtl.layers import TaskSequential
from keras_mtl.layers import fold_tasks

MODES = ("shared", "tiled", "folded", "loop")


def _encoder(widths, num_tasks, masked, seed):
    layers = []
    for i, width in enumerate(widths):
        layers += [
            keras.layers.Conv2D(width, 3, padding="same"),
            keras.layers.BatchNormalization(),
        ]
        if masked:
            layers.append(TaskMask(num_tasks, sharing_ratio=0.5, seed=seed + i))
        layers.append(keras.layers.ReLU())
    layers.append(keras.layers.GlobalAveragePooling2D())
    return TaskSequential(layers)


def _step_fn(mode, num_tasks, widths, image, batch, seed=0):
    """Builds the model of `mode` and returns a compiled train step and data."""
    keras.utils.set_random_seed(seed)
    encoder = _encoder(widths, num_tasks, mode in ("folded", "loop"), seed)
    heads = [keras.layers.Dense(1) for _ in range(num_tasks)]
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, image, image, 3)), "float32")
    y = tf.constant(rng.normal(size=(batch, num_tasks)), "float32")

    def features(x):
        if mode == "shared":
            z = encoder(x, training=True)
            return [z] * num_tasks
        if mode == "tiled":
            z = encoder(tf.concat([x] * num_tasks, axis=0), training=True)
            return tf.split(z, num_tasks)
        if mode == "folded":
            folded, task_ids = fold_tasks(x, num_tasks)
            z = encoder(folded, task=task_ids, training=True)
            return tf.split(z, num_tasks)
        return [encoder(x, task=t, training=True) for t in range(num_tasks)]

    zs = features(x)  # builds the layers eagerly
    for head, z in zip(heads, zs):
        head(z)
    variables = encoder.trainable_variables + [
        v for head in heads for v in head.trainable_variables
    ]
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            zs = features(x)
            loss = tf.add_n(
                [
                    tf.reduce_mean(tf.square(heads[t](zs[t])[:, 0] - y[:, t]))
                    for t in range(num_tasks)
                ]
            )
        grads = tape.gradient(loss, variables)
        optimizer.apply(grads, variables)
        return loss

    return step, x, y


def time_step(step, x, y, steps, repeats):
    """Median seconds per step over `repeats` timed runs of `steps` steps."""
    for _ in range(2):
        step(x, y).numpy()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            loss = step(x, y)
        loss.numpy()
        times.append((time.perf_counter() - start) / steps)
    return float(np.median(times))


def run(quick=False):
    """Times shared, folded and looped masked steps; returns a markdown table.

    Args:
        quick: tiny sizes and few steps (a smoke run of a few seconds).
    """
    if quick:
        widths, image, batch, steps, repeats = (8, 8), 8, 4, 3, 1
    else:
        widths, image, batch, steps, repeats = (32, 32, 64), 32, 16, 10, 3
    rows = [
        f"Step time of a conv encoder ({' -> '.join(map(str, widths))} channels, "
        f"Conv-BN-[TaskMask]-ReLU, {image}x{image}x3 inputs, batch {batch}) with "
        f"T heads; device: {_device()}.",
        "",
        "| T | shared (ms) | tiled (ms) | folded (ms) | loop (ms) | folded / shared "
        "| loop / shared | folded / tiled | loop / folded |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for num_tasks in (2, 8):
        ms = {}
        for mode in MODES:
            step, x, y = _step_fn(mode, num_tasks, widths, image, batch)
            ms[mode] = 1e3 * time_step(step, x, y, steps, repeats)
        rows.append(
            f"| {num_tasks} | {ms['shared']:.2f} | {ms['tiled']:.2f} | "
            f"{ms['folded']:.2f} | {ms['loop']:.2f} | "
            f"{ms['folded'] / ms['shared']:.2f} | {ms['loop'] / ms['shared']:.2f} | "
            f"{ms['folded'] / ms['tiled']:.2f} | {ms['loop'] / ms['folded']:.2f} |"
        )
    return "\n".join(rows) + "\n"


def _device():
    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else "CPU"


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv[1:]))

"""Benchmark: MirroredStrategy on 2 logical CPU devices against one device.

Trains the GradNorm toy network (4 x 100 ReLU trunk, T = 2 heads of 100,
the paper's size) with `model.fit` on the same global batches, once on one
device and once under `MirroredStrategy` over 2 logical CPU devices, for
equal weights, GradNorm and IMTL, and reports the throughput ratio
mirrored / one device (examples per second), rounds interleaved in one
process. Logical devices must be configured before TensorFlow starts, so
`run()` times in a child process.

Both "devices" share the same physical cores: the ratio measures the
overhead of the distributed step (all-reduces of gradients, losses and
gradient norms, per-replica dispatch), not a speed-up.

Usage: `python -m launch.bench.distribute [--quick]`.
"""

import json
import os
import subprocess
import sys
import time

CASES = ("equal", "gradnorm", "imtl")


def _child(quick):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    import numpy as np

    from keras_mtl import balancers
    from keras_mtl.data.toy import toy_datasets
    from keras_mtl.models.toy import toy_mlp

    batch, steps = (64, 10) if quick else (128, 40)
    rounds = 2 if quick else 5
    train, _, _ = toy_datasets(train_size=batch * 8, test_size=batch,
                               batch_size=batch, shuffle=False)
    data = train.repeat()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategies = {"one device": tf.distribute.get_strategy(),
                  "mirrored x2": tf.distribute.MirroredStrategy(devices)}
    make = {"equal": balancers.EqualWeights,
            "gradnorm": lambda: balancers.GradNorm(alpha=0.12),
            "imtl": balancers.IMTL}
    models = {}
    for case in CASES:
        for name, strategy in strategies.items():
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = toy_mlp(num_tasks=2)
                model(np.zeros((1, 250), "float32"))
                model.compile(optimizer="adam", loss="mse", balancer=make[case]())
            model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)  # trace
            models[case, name] = model
    times = {key: [] for key in models}
    for _ in range(rounds):
        for key, model in models.items():
            start = time.perf_counter()
            model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
            times[key].append((time.perf_counter() - start) / steps)
    result = {f"{c}|{n}": float(np.median(times[c, n])) for c, n in times}
    result["batch"] = batch
    print(json.dumps(result))


def run(quick=False):
    """Times the cases in a child process; returns a markdown table."""
    cmd = [sys.executable, "-m", "launch.bench.distribute", "--child"]
    if quick:
        cmd.append("--quick")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"distribute benchmark failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    lines = [
        f"Toy MLP (4 x 100, T = 2), global batch {r['batch']}, model.fit; "
        "2 logical devices on the same CPU cores (overhead, not speed-up).",
        "",
        "| balancer | one device (ms/step) | mirrored x2 (ms/step) | "
        "throughput mirrored / one device |",
        "|---|---|---|---|",
    ]
    for case in CASES:
        one, two = r[f"{case}|one device"], r[f"{case}|mirrored x2"]
        lines.append(f"| {case} | {one * 1e3:.2f} | {two * 1e3:.2f} | {one / two:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--child" in sys.argv:
        _child("--quick" in sys.argv)
    else:
        print(run(quick="--quick" in sys.argv))

"""Golden trajectories of the train step (never collected by pytest).

A few deterministic `fit` steps of small models, for every registered
balancer, in the set-ups the train step has paths for: a plain encoder, a
task-conditioned encoder (per-task passes), a gradient discriminator, a
regulariser (`kernel_regularizer` and `add_loss`), and 2-device
`MirroredStrategy`. Each run includes a batch where one task is absent.
The values were recorded before the train step moved into
`keras_mtl.training` (`python tests/golden.py record`) and
`tests/test_engine_golden.py` checks that today's step reproduces them.

    python tests/golden.py record [--mirrored]   # writes tests/data/golden_*.npz
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
BATCH = 16
TASKS = 3

# Gradient balancers run in both modes on plain encoders, in "shared" mode
# only on task-conditioned ones (no shared z there).
GRADIENT = ("imtl", "imtl_g", "mgda", "pcgrad")
_ARGS = {"static": {"weights": [0.3, 0.7, 2.0]}, "rlw": {"seed": 0}, "pcgrad": {"seed": 0}}


def _balancer(name):
    from keras_mtl import balancers

    base, _, mode = name.partition(":")
    kwargs = dict(_ARGS.get(base, {}))
    if mode:
        kwargs["mode"] = mode
    return balancers.ALL_BALANCERS[base](**kwargs)


def cases():
    """(setup, balancer) pairs of the golden set."""
    from keras_mtl import balancers

    names = [n for n in balancers.distinct_names()]
    out = []
    for n in names:
        if n in GRADIENT:
            out += [("plain", f"{n}:features"), ("plain", f"{n}:shared"),
                    ("tc", f"{n}:shared"), ("reg", f"{n}:features")]
        else:
            out += [("plain", n), ("tc", n), ("disc", n), ("reg", n)]
    return out


def mirrored_cases():
    from keras_mtl import balancers

    return [("plain", f"{n}:features" if n in GRADIENT else n)
            for n in balancers.distinct_names()]


def _model(setup):
    import keras

    import keras_mtl
    from keras_mtl.data.toy import task_names

    def init(i):
        return keras.initializers.GlorotUniform(seed=i)

    reg = keras.regularizers.L2(1e-2) if setup == "reg" else None
    names = task_names(TASKS)
    heads = {t: keras.layers.Dense(8, kernel_initializer=init(10 + i), kernel_regularizer=reg)
             for i, t in enumerate(names)}
    if setup == "tc":
        encoder = keras_mtl.layers.TaskSequential([
            # No bias before batch norm: its gradient is pure round-off, which
            # Adam would amplify into a trajectory no two orders of summation share.
            keras.layers.Dense(16, kernel_initializer=init(1), use_bias=False),
            keras_mtl.layers.TaskBatchNormalization(TASKS),
            keras_mtl.layers.TaskMask(TASKS, sharing_ratio=0.5, seed=3),
            keras.layers.ReLU(),
            keras.layers.Dense(12, kernel_initializer=init(2)),
            keras_mtl.layers.TaskMask(TASKS, sharing_ratio=0.5, seed=4),
            keras.layers.ReLU(),
        ])
    else:
        layers = [
            keras.layers.Dense(16, activation="tanh", kernel_initializer=init(1),
                               kernel_regularizer=reg),
            keras.layers.Dense(12, activation="tanh", kernel_initializer=init(2)),
        ]
        if setup == "reg":
            layers.append(keras.layers.ActivityRegularization(l1=1e-3))
        encoder = keras.Sequential(layers)
    disc = None
    if setup == "disc":
        disc = keras_mtl.layers.GradientDiscriminator(TASKS, hidden_units=8)
    return keras_mtl.MultiTaskModel(encoder, heads, discriminator=disc,
                                    discriminator_weight=0.2)


def _data(drop=None, offset=0):
    import numpy as np

    from keras_mtl.data.toy import task_names

    rng = np.random.default_rng(7 + offset)
    x = rng.normal(size=(2 * BATCH, 6)).astype("float32")
    w = rng.normal(size=(6, 8)).astype("float32")
    y = {t: (np.tanh(x @ w) * (1.0 + 3 * i) + 0.1 * i).astype("float32")
         for i, t in enumerate(task_names(TASKS)) if t != drop}
    return x, y


def state(model):
    """[value] of every variable: network, optimizers, balancer and its optimizer."""
    import numpy as np

    # skipped_steps arrived with the engine, MGDA's warm_start (its previous
    # min-norm weights) with issue 15: not in the recordings.
    variables = [v for v in model.variables
                 if not any(n in v.path for n in ("skipped_steps", "layer_norms",
                                                  "warm_start"))]
    variables += list(model.optimizer.variables)
    for opt in getattr(model, "group_optimizers", {}).values():
        variables += list(opt.variables)
    bal_opt = getattr(model.balancer, "optimizer", None)
    if bal_opt is not None:
        variables += list(bal_opt.variables)
    return [np.array(v.numpy(), dtype="float64").ravel() for v in variables]


def run(setup, name, strategy=None):
    """Trains 2 + 1 + 1 steps (the third without task_2); returns the state."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = _model(setup)
        model(np.zeros((1, 6), "float32"))
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                      balancer=_balancer(name), nonfinite="skip")
    for drop, offset, steps in ((None, 0, 2), ("task_2", 1, 1), (None, 2, 1)):
        x, y = _data(drop, offset)
        model.fit(x[: steps * BATCH], {k: v[: steps * BATCH] for k, v in y.items()},
                  batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return state(model)


def _key(setup, name):
    return f"{setup}/{name}"


def record(mirrored=False):
    import numpy as np

    os.makedirs(DATA, exist_ok=True)
    out = {}
    if mirrored:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        todo, path = mirrored_cases(), os.path.join(DATA, "golden_mirrored.npz")
    else:
        strategy, todo, path = None, cases(), os.path.join(DATA, "golden.npz")
    for setup, name in todo:
        values = run(setup, name, strategy)
        for i, v in enumerate(values):
            out[f"{_key(setup, name)}/{i:03d}"] = v
        print(setup, name, len(values), flush=True)
    np.savez_compressed(path, **out)


def load(path):
    """{(setup, name): [arrays]} from a recorded file."""
    import numpy as np

    data = np.load(path)
    out = {}
    for key in sorted(data.files):
        setup, name, _ = key.split("/")
        out.setdefault((setup, name), []).append(data[key])
    return out


def compare(setup, name, strategy=None, path=None):
    """Largest relative difference between today's run and the recording."""
    import numpy as np

    golden = load(path or os.path.join(DATA, "golden.npz"))[(setup, name)]
    now = run(setup, name, strategy)
    if len(now) != len(golden):
        return {"error": f"{len(now)} variables now, {len(golden)} recorded"}
    worst = 0.0
    for a, b in zip(now, golden):
        if a.shape != b.shape:
            return {"error": f"shape {a.shape} now, {b.shape} recorded"}
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b)),
                                         initial=0.0)))
    return {"max_diff": worst}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["record", "check"])
    parser.add_argument("--mirrored", action="store_true")
    args = parser.parse_args()
    if args.command == "record":
        record(args.mirrored)
        return
    import json

    import tensorflow as tf

    strategy, todo, path = None, cases(), None
    if args.mirrored:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        todo, path = mirrored_cases(), os.path.join(DATA, "golden_mirrored.npz")
    recorded = load(path or os.path.join(DATA, "golden.npz"))
    result = {_key(*c): compare(*c, strategy=strategy, path=path) for c in todo if c in recorded}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

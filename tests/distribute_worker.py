"""Subprocess helper of tests/test_distribute.py (never collected by pytest).

TensorFlow's logical devices must be configured before it initialises them,
and a multi-worker cluster needs one process per worker, so the distributed
checks run here, in processes the tests start with `sys.executable`, and
report their numbers as JSON (the last line of stdout, or `--out`).

Modes:
    mirrored   2 logical CPU devices; for each case (equal weights, GradNorm,
               IMTL, a roaming-mask model) train one epoch on one device and
               under MirroredStrategy on the same global batches, and report
               the largest differences of every variable; also the
               jit_compile fallback.
    worker     one worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG
               in the environment): trains with `keras_mtl.distribute.fit`
               and writes its final variables to --out (.npz).
    single     the same training in one process on one device (--out .npz).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_BATCH = 32
STEPS = 4
LEARNING_RATE = 0.01


def _setup_two_cpus():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )


def _toy_data(batch=GLOBAL_BATCH, steps=STEPS, num_tasks=2, seed=0, poison=False):
    from keras_mtl.data.toy import toy_datasets

    sigmas = (1.0, 100.0, 10.0)[:num_tasks]
    train, _, _ = toy_datasets(sigmas=sigmas, train_size=batch * steps,
                               test_size=batch, batch_size=batch, seed=seed,
                               shuffle=False)
    if not poison:
        return train
    import numpy as np
    import tensorflow as tf

    # Batch 1: a NaN label of task_1 in the second replica's half; batch 2: a
    # NaN input row in the first replica's half.
    xs, ys = [], {}
    for x, y in train.as_numpy_iterator():
        xs.append(x.copy())
        for k, v in y.items():
            ys.setdefault(k, []).append(v.copy())
    ys["task_1"][1][batch - 3, 0] = np.nan
    xs[2][2, :] = np.nan
    return tf.data.Dataset.from_tensor_slices(
        (np.concatenate(xs), {k: np.concatenate(v) for k, v in ys.items()})).batch(batch)


def _mlp(num_tasks=2):
    from keras_mtl.models.toy import toy_mlp

    return toy_mlp(num_tasks=num_tasks, width=16, depth=2, output_dim=100, seed=0)


def _masked(num_tasks=2):
    import keras

    import keras_mtl
    from keras_mtl.data.toy import task_names

    init = keras.initializers.GlorotUniform
    encoder = keras_mtl.layers.TaskSequential([
        keras.layers.Dense(16, kernel_initializer=init(seed=1)),
        keras_mtl.layers.TaskMask(num_tasks, sharing_ratio=0.5, seed=3),
        keras.layers.ReLU(),
        keras.layers.Dense(16, kernel_initializer=init(seed=2)),
        keras_mtl.layers.TaskMask(num_tasks, sharing_ratio=0.5, seed=4),
        keras.layers.ReLU(),
    ])
    heads = {
        t: keras.layers.Dense(100, kernel_initializer=init(seed=10 + i))
        for i, t in enumerate(task_names(num_tasks))
    }
    return keras_mtl.MultiTaskModel(encoder, heads, name="masked")


# Constructor arguments of registered balancers that need some.
_ARGS = {"static": {"weights": [0.3, 0.7]}, "rlw": {"seed": 0}, "pcgrad": {"seed": 0},
         "graddrop": {"seed": 0}, "gradvac": {"seed": 0},
         "stch": {"warmup_steps": 1, "nadir_steps": 2}}


def _balancer(name):
    from keras_mtl import balancers

    make = {
        "equal": lambda: balancers.EqualWeights(),
        "gradnorm": lambda: balancers.GradNorm(alpha=1.5),
        "imtl": lambda: balancers.IMTL(),
        "imtl_shared": lambda: balancers.IMTL(mode="shared"),
        "imtl_shared_vectorized": lambda: balancers.IMTL(mode="shared"),
        "mgda_shared": lambda: balancers.MGDA(mode="shared"),
        "uncertainty": lambda: balancers.UncertaintyWeighting(),
        "dwa": lambda: balancers.DWA(),
        "masked": lambda: balancers.EqualWeights(),
    }.get(name) or (lambda: balancers.ALL_BALANCERS[name](**_ARGS.get(name, {})))
    return make()


def build(case, strategy=None, jit_compile=False):
    """A compiled model of `case`, built under `strategy` (or the default)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_mtl.training import gradients

    keras.utils.set_random_seed(0)
    strategy = strategy or tf.distribute.get_strategy()
    name, poisoned = case.removesuffix("+nan"), case.endswith("+nan")
    # The one-pass Jacobian, which only accelerators choose by default
    # (read when the case's train step is traced).
    gradients.VECTORIZE_ON_CPU = name.endswith("_vectorized")
    with strategy.scope():
        model = _masked() if name == "masked" else _mlp()
        model(np.zeros((1, 250), "float32"))
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="mse",
                      balancer=_balancer(name), jit_compile=jit_compile,
                      nonfinite="skip" if poisoned else "raise")
        model.build_optimizers()  # and per-parameter balancer state, as `fit` would
    return model


def state(model):
    """{path: value} of every variable: network, optimizers, balancer, masks, counters."""
    import numpy as np

    variables = list(model.variables) + list(model.optimizer.variables)
    bal_opt = getattr(model.balancer, "optimizer", None)
    if bal_opt is not None:
        variables += list(bal_opt.variables)
    # Keyed by position and name (auto-numbered paths differ between builds).
    return {f"{i:03d}": np.array(v.numpy()) for i, v in enumerate(variables)}


def _callbacks(case):
    import keras_mtl

    if case.startswith("masked"):
        return [keras_mtl.callbacks.MaximumRoaming(update_every=2)]
    return []


def _compare(a, b):
    """Largest difference over all variables, relative to max(1, |value|)."""
    import numpy as np

    if sorted(a) != sorted(b):
        return {"error": f"variable sets differ: {sorted(set(a) ^ set(b))}"}
    worst, worst_name = 0.0, None
    for k in a:
        if a[k].shape != b[k].shape:
            return {"error": f"variable {k}: shapes {a[k].shape} != {b[k].shape}"}
        if not a[k].size:
            continue
        x, y = a[k].astype("float64"), b[k].astype("float64")
        diff = float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x))))
        if diff > worst:
            worst, worst_name = diff, k
    return {"max_diff": worst, "worst_variable": worst_name}


def mirrored(cases):
    import numpy as np
    import tensorflow as tf

    from keras_mtl import distribute

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    results = {"devices": devices}
    # One strategy for every case: two MirroredStrategy objects on the same
    # devices in one process reuse collective keys and clash.
    strategy = tf.distribute.MirroredStrategy(devices)
    for case in cases:
        data = _toy_data(poison=case.endswith("+nan"))
        single = build(case)
        changed_from = state(single)
        import warnings

        warnings.simplefilter("ignore", RuntimeWarning)  # the poisoned cases' reports
        h_single = single.fit(data, epochs=1, verbose=0, callbacks=_callbacks(case))
        s_single = state(single)
        mirrored_model = build(case, strategy)
        h = mirrored_model.fit(data, epochs=1, verbose=0, callbacks=_callbacks(case))
        s_mirrored = state(mirrored_model)
        entry = _compare(s_single, s_mirrored)
        entry["weights_single"] = np.asarray(single.balancer.task_weights()).tolist()
        entry["weights_mirrored"] = np.asarray(
            mirrored_model.balancer.task_weights()).tolist()
        entry["iterations"] = [int(single.optimizer.iterations.numpy()),
                               int(mirrored_model.optimizer.iterations.numpy())]
        entry["nonfinite"] = [single.nonfinite_counts.numpy().tolist(),
                              mirrored_model.nonfinite_counts.numpy().tolist()]
        entry["skipped"] = [int(single.skipped_steps.numpy()),
                            int(mirrored_model.skipped_steps.numpy())]
        entry["moved"] = max(
            float(np.max(np.abs(s_single[k] - changed_from[k]))) for k in s_single
            if s_single[k].size and s_single[k].dtype.kind == "f"
        )
        # Per-task metrics of fit and evaluate: (single, mirrored) pairs.
        entry["fit_logs"] = {k: [float(h_single.history[k][-1]), float(h.history[k][-1])]
                             for k in h_single.history}
        e_single = single.evaluate(data, verbose=0, return_dict=True)
        e_mirrored = mirrored_model.evaluate(data, verbose=0, return_dict=True)
        entry["eval_logs"] = {k: [float(e_single[k]), float(e_mirrored[k])]
                              for k in e_single}
        # Per-replica copies of every mirrored variable must agree.
        spread = 0.0
        for v in mirrored_model.variables:
            values = getattr(v.value, "values", None)
            if values:
                ref = values[0].numpy()
                for other in values[1:]:
                    spread = max(spread, float(np.max(np.abs(other.numpy() - ref)))
                                 if ref.size else 0.0)
        entry["replica_spread"] = spread
        if case == "masked":
            entry["mask_updates"] = [
                int(l.update_count.numpy()) for l in
                mirrored_model.encoder._flatten_layers(include_self=False)
                if hasattr(l, "update_count")
            ]
        results[case] = entry
    # jit_compile=True under MirroredStrategy falls back to graph mode.
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build("equal", strategy, jit_compile=True)
        model = distribute.prepare(model, strategy)
        model.fit(_toy_data(), epochs=1, verbose=0)
    results["jit"] = {
        "jit_compile": bool(model.jit_compile),
        "warnings": [str(w.message) for w in caught
                     if "jit_compile" in str(w.message)],
        "finite": bool(all(np.all(np.isfinite(v.numpy())) for v in model.variables)),
    }
    return results


def _save_npz(model, path):
    import numpy as np

    np.savez(path, **{k.replace("/", "|"): v for k, v in state(model).items()})


def worker(case, out):
    import tensorflow as tf

    from keras_mtl import distribute

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model = build(case, strategy)
    distribute.fit(model, _toy_data(), strategy=strategy, epochs=1)
    if strategy.cluster_resolver.task_id == 0:
        _save_npz(model, out)


def single(case, out):
    from keras_mtl import distribute
    import tensorflow as tf

    model = build(case)
    distribute.fit(model, _toy_data(), strategy=tf.distribute.get_strategy(), epochs=1)
    _save_npz(model, out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["mirrored", "worker", "single"])
    parser.add_argument("--cases", default="equal,gradnorm,imtl,masked")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cases = args.cases.split(",")
    if args.mode == "mirrored":
        _setup_two_cpus()
        print(json.dumps(mirrored(cases)))
    elif args.mode == "worker":
        worker(cases[0], args.out)
    else:
        single(cases[0], args.out)


if __name__ == "__main__":
    main()

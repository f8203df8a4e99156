"""Step time of GradNorm (and uncertainty weighting) relative to equal weights."""

import time

import numpy as np


def time_fit(model, data, steps):
    """Seconds per train step of `model.fit` over `steps` steps (after warm-up)."""
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def compare(make_model, balancers, data, steps, rounds=5, steps_per_execution=25,
            return_rounds=False):
    """Fastest step time of each balancer over interleaved rounds.

    The minimum, not the median: on a shared machine the noise only ever
    adds time, and it came in bursts of whole scheduler quanta here. With
    `return_rounds`, also `{name: [per-round ratio to the first balancer]}`
    (each round's time over the baseline's time in the same round).

    Args:
        make_model: `() -> MultiTaskModel` (uncompiled), called once per balancer.
        balancers: dict `{name: () -> balancer}`; the first is the baseline.
        data: a repeating `tf.data.Dataset`.

    Returns:
        dict `{name: (seconds_per_step, ratio_to_first)}`.
    """
    import keras

    models = {}
    for name, make in balancers.items():
        keras.utils.set_random_seed(0)
        model = make_model()
        model.compile(optimizer="adam", loss="mse", balancer=make(),
                      steps_per_execution=steps_per_execution)
        model.fit(data, epochs=1, steps_per_epoch=2 * steps_per_execution, verbose=0)
        models[name] = model
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(time_fit(model, data, steps))
    first = times[next(iter(times))]
    base = float(np.min(first))
    best = {name: (float(np.min(t)), float(np.min(t)) / base)
            for name, t in times.items()}
    if not return_rounds:
        return best
    return best, {name: [a / b for a, b in zip(t, first)] for name, t in times.items()}


def toy_data(num_tasks, batch=100):
    """The toy problem's training stream (sigmas spread over 1..100).

    Real data rather than one repeated random batch: a network that
    memorises a single batch drives its losses and gradients towards the
    denormal range, whose slow CPU arithmetic would time the data, not the
    balancer.
    """
    from keras_mtl.data.toy import toy_datasets

    sigmas = tuple(float(s) for s in np.geomspace(1.0, 100.0, num_tasks))
    train, _, _ = toy_datasets(sigmas=sigmas, train_size=5_000, test_size=100,
                               batch_size=batch, seed=0)
    # 50 distinct batches held in memory: input reading out of the timing.
    return train.take(50).cache().repeat().prefetch(4)


def run_with_data(quick=False, rounds=None):
    """(markdown table, JSON-able dict) of GradNorm and uncertainty vs equal weights."""
    from keras_mtl import balancers
    from keras_mtl.models.toy import toy_mlp
    from keras_mtl.reports import markdown_table

    steps = 50 if quick else 500
    rounds = rounds or (3 if quick else 7)
    rows, data = [], {"steps": steps, "rounds": rounds, "steps_per_execution": 25,
                      "results": []}
    for num_tasks in (2, 10):
        result, per_round = compare(
            lambda: toy_mlp(num_tasks),
            {"equal": balancers.EqualWeights,
             "uncertainty": balancers.UncertaintyWeighting,
             "gradnorm": lambda: balancers.GradNorm(alpha=0.12)},
            toy_data(num_tasks), steps, rounds=rounds, return_rounds=True)
        for name, (seconds, ratio) in result.items():
            r = np.asarray(per_round[name])
            rows.append([num_tasks, name, f"{seconds * 1e3:.3f}", f"{ratio:.3f}",
                         f"{np.median(r):.3f} ({r.min():.3f}-{r.max():.3f})"])
            data["results"].append({"T": num_tasks, "balancer": name, "seconds": seconds,
                                    "ratio_of_fastest": ratio, "ratio": per_round[name]})
    table = markdown_table(
        ["T", "balancer", "ms / step (this machine)", "ratio vs equal (fastest rounds)",
         "per-round ratio: median (min-max)"], rows)
    return table, data


def run(quick=False, rounds=None):
    return run_with_data(quick=quick, rounds=rounds)[0]

"""Step time of every balancer relative to equal weights, at T = 2, 10 and 40.

Each balancer trains the GradNorm toy network (`keras_mtl.models.toy.toy_mlp`:
4 x Dense(100) trunk, one Dense(100) head per task, batch 100 of 250-d inputs)
for a fixed number of steps in one process; the table reports its best step
time divided by that of `EqualWeights` on the same T. Gradient balancers are
timed at the feature level (dL_t/dz, one trunk backward pass) and at the
parameter level (gradients w.r.t. every shared parameter, T trunk passes).

Run: `python -m launch.bench.balancers [--quick]`.
"""

import sys
import time

import numpy as np


def _dataset(num_tasks, batch=100, input_dim=250, output_dim=100, seed=0):
    import tensorflow as tf

    from keras_mtl.data.toy import task_names

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, input_dim)).astype("float32")
    y = {t: rng.normal(size=(batch, output_dim)).astype("float32")
         for t in task_names(num_tasks)}
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _candidates(num_tasks):
    """(label, level, factory) for every balancer and mode."""
    from keras_mtl import balancers as b

    rows = [
        ("equal", "loss", b.EqualWeights),
        ("static", "loss", lambda: b.StaticWeights([1.0] * num_tasks)),
        ("uncertainty", "loss", b.UncertaintyWeighting),
        ("imtl_l", "loss", b.IMTLL),
        ("dwa", "loss", b.DWA),
        ("gls", "loss", b.GLS),
        ("rlw", "loss", lambda: b.RLW(seed=0)),
        ("gradnorm", "last shared kernel", b.GradNorm),
        ("famo", "loss", b.FAMO),
        ("stch", "loss", b.STCH),
        ("rlw (dirichlet)", "loss", lambda: b.RLW(seed=0, distribution="dirichlet")),
    ]
    gradient = [
        ("imtl_g", lambda m: b.IMTLG(mode=m)),
        ("imtl", lambda m: b.IMTL(mode=m)),
        ("mgda", lambda m: b.MGDA(mode=m)),
        ("mgda (loss+)", lambda m: b.MGDA(mode=m, normalization="loss+")),
        ("mgda (closed form)", lambda m: b.MGDA(mode=m, solver="closed_form")),
        ("pcgrad", lambda m: b.PCGrad(mode=m, seed=0)),
        ("upgrad", lambda m: b.UPGrad(mode=m)),
        ("dualproj", lambda m: b.DualProj(mode=m)),
        ("cagrad", lambda m: b.CAGrad(mode=m)),
        ("nash_mtl", lambda m: b.NashMTL(mode=m)),
        ("aligned_mtl", lambda m: b.AlignedMTL(mode=m)),
        ("fairgrad", lambda m: b.FairGrad(mode=m)),
        ("gradvac", lambda m: b.GradVac(mode=m, seed=0)),
        ("graddrop", lambda m: b.GradDrop(mode=m, seed=0)),
    ]
    for mode, level in (("features", "features"), ("shared", "parameters")):
        rows += [(name, level, lambda f=f, mode=mode: f(mode)) for name, f in gradient]
    return rows


def _train_function(factory, num_tasks, jit_compile):
    """A compiled, warmed-up train step of the toy model and its data iterator."""
    import keras

    from keras_mtl.models.toy import toy_mlp

    keras.utils.set_random_seed(0)
    model = toy_mlp(num_tasks)
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse",
                  balancer=factory(), jit_compile=jit_compile)
    iterator = iter(_dataset(num_tasks))
    model.fit(_dataset(num_tasks), steps_per_epoch=1, epochs=1, verbose=0)
    step = model.make_train_function()
    float(step(iterator)["loss"])  # trace and run once
    return step, iterator


def _time(step, iterator, steps):
    start = time.perf_counter()
    for _ in range(steps):
        logs = step(iterator)
    float(logs["loss"])
    return (time.perf_counter() - start) / steps


def measure(task_counts=(2, 10, 40), steps=20, repeats=3, jit_compile=False):
    """Returns {(label, level): {T: seconds per step}}.

    For each T every balancer's train step is built first, then the steps are
    timed round-robin `repeats` times, keeping each one's fastest round: a
    busy machine slows all balancers alike instead of whichever ran last.
    """
    results = {}
    for num_tasks in task_counts:
        built = [
            ((label, level), _train_function(factory, num_tasks, jit_compile))
            for label, level, factory in _candidates(num_tasks)
        ]
        best = {key: float("inf") for key, _ in built}
        for _ in range(repeats):
            for key, (step, iterator) in built:
                best[key] = min(best[key], _time(step, iterator, steps))
        for key, seconds in best.items():
            results.setdefault(key, {})[num_tasks] = seconds
    return results


def table(results, task_counts):
    """Markdown table of step times relative to equal weights."""
    base = results[("equal", "loss")]
    head = "| balancer | gradients | " + " | ".join(f"T={t}" for t in task_counts) + " |"
    lines = [head, "|" + "---|" * (2 + len(task_counts))]
    lines.append(
        "| equal (ms/step) | loss | "
        + " | ".join(f"{1000 * base[t]:.2f} ms" for t in task_counts) + " |"
    )
    for (label, level), times in results.items():
        if label == "equal":
            continue
        cells = " | ".join(f"{times[t] / base[t]:.2f}x" for t in task_counts)
        lines.append(f"| {label} | {level} | {cells} |")
    return "\n".join(lines)


def run(quick=False):
    """Benchmarks every balancer; returns the markdown table.

    Args:
        quick: T = 2 and 10 only, 2 rounds of 5 steps (a smoke run).
    """
    import tensorflow as tf

    task_counts = (2, 10) if quick else (2, 10, 40)
    steps, repeats = (5, 2) if quick else (30, 5)
    results = measure(task_counts, steps=steps, repeats=repeats)
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    note = (
        f"\n\nStep time relative to equal weights, GradNorm toy MLP (batch 100), "
        f"{device}, graph mode, fastest of {repeats} rounds of {steps} steps."
    )
    return table(results, task_counts) + note


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))

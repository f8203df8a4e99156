"""Step time of every balancer relative to equal weights, at T = 2, 10 and 40.

Each balancer trains the GradNorm toy network (`keras_mtl.models.toy.toy_mlp`:
4 x Dense(100) trunk, one Dense(100) head per task, batch 100 of 250-d inputs)
in one process, on two problems:

- `toy`: independent Gaussian targets per task (the development benchmark);
- `conflict`: a T-task regression whose targets share one signal with a
  random sign per task, `y_t = s_t * tanh(x A) B + noise`, `s_t = +-1`, so
  that the task gradients on the shared trunk conflict (half the tasks pull
  the trunk one way, half the other).

Gradient balancers are timed at the feature level (dL_t/dz) and at the
parameter level (the (T, P) Jacobian of the shared parameters). For each
problem and T every train step is built first, then `rounds` rounds time
every balancer in turn (interleaved, so that load hits all of them alike);
each round's step time is divided by equal weights' in the same round. The
table reports the median of those per-round ratios and their spread
(min-max over rounds); `measure` returns every round.

Run: `python -m launch.bench.balancers [--quick]` or through
`python -m launch.benchmark --suites=balancers --rounds=5 --json=out.json`.
"""

import sys
import time

import numpy as np

PROBLEMS = ("toy", "conflict")


def _toy_dataset(num_tasks, batch=100, input_dim=250, output_dim=100, seed=0):
    import tensorflow as tf

    from keras_mtl.data.toy import task_names

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, input_dim)).astype("float32")
    y = {t: rng.normal(size=(batch, output_dim)).astype("float32")
         for t in task_names(num_tasks)}
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def conflict_dataset(num_tasks, batch=100, input_dim=250, output_dim=100,
                     batches=20, seed=0):
    """Targets `y_t = s_t * tanh(x A) B + 0.1 noise`, signs `s_t` alternating +-1.

    One shared signal with opposite signs across tasks: the trunk's
    per-task gradients point in conflicting directions (their pairwise
    cosines are strongly negative for tasks of opposite sign), the case the
    gradient balancers are for. `batches` distinct batches are cached and
    repeated (no input pipeline in the timing, and no single memorised
    batch driving the losses to denormal values).
    """
    import tensorflow as tf

    from keras_mtl.data.toy import task_names

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(input_dim, 32)) / np.sqrt(input_dim)
    b = rng.normal(size=(32, output_dim))
    signs = np.where(np.arange(num_tasks) % 2 == 0, 1.0, -1.0)
    rng.shuffle(signs)
    x = rng.normal(size=(batches * batch, input_dim))
    signal = np.tanh(x @ a) @ b
    y = {t: (s * signal + 0.1 * rng.normal(size=signal.shape)).astype("float32")
         for t, s in zip(task_names(num_tasks), signs)}
    data = tf.data.Dataset.from_tensor_slices((x.astype("float32"), y))
    return data.batch(batch, drop_remainder=True).cache().repeat()


def _dataset(num_tasks, problem="toy"):
    if problem == "toy":
        return _toy_dataset(num_tasks)
    if problem == "conflict":
        return conflict_dataset(num_tasks)
    raise ValueError(f"Unknown problem {problem!r}; known: {PROBLEMS}")


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
        # per-parameter state: the parameter level only
        ("db_mtl", "parameters", b.DBMTL),
        ("moco", "parameters", b.MoCo),
        ("excess_mtl", "parameters", b.ExcessMTL),
        ("nash_mtl (every 10)", "parameters",
         lambda: b.NashMTL(mode="shared", update_weights_every=10)),
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


def _train_function(factory, num_tasks, jit_compile, problem, steps_per_execution,
                    mixed_precision=None):
    """A compiled, warmed-up train function of the toy model and its data iterator.

    `mixed_precision`: None / `"float32"`, `"float16"` or `"bfloat16"`: the
    model is built under that Keras dtype policy (`mixed_float16` compiles
    with a `LossScaleOptimizer`).
    """
    import keras

    from keras_mtl.experiment import dtype_policy
    from keras_mtl.models.toy import toy_mlp

    keras.utils.set_random_seed(0)
    with dtype_policy(mixed_precision):
        model = toy_mlp(num_tasks)
        model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse",
                      balancer=factory(), jit_compile=jit_compile,
                      steps_per_execution=steps_per_execution)
        model.fit(_dataset(num_tasks, problem), steps_per_epoch=steps_per_execution,
                  epochs=1, verbose=0)
        iterator = iter(_dataset(num_tasks, problem))
        step = model.make_train_function()
        float(step(iterator)["loss"])  # trace and run once
    return step, iterator


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _time(step, iterator, calls, steps_per_execution, clock="wall"):
    """Seconds per step: wall clock, or this process's CPU time (all threads).

    On a machine shared with other jobs, wall time measures the load; the
    process CPU time measures the work (but not how well it runs in parallel).
    """
    now = CLOCKS[clock]
    start = now()
    for _ in range(calls):
        logs = step(iterator)
    float(logs["loss"])
    return (now() - start) / (calls * steps_per_execution)


def measure(task_counts=(2, 10, 40), steps=20, repeats=3, jit_compile=False,
            problem="toy", steps_per_execution=1, only=None, clock="wall",
            mixed_precision=None):
    """Returns {(label, level): {T: [seconds per step, one per round]}}.

    For each T every balancer's train step is built first, then the steps are
    timed round-robin `repeats` times (each round: `steps` train steps of
    every balancer, in `steps / steps_per_execution` calls of the train
    function): a busy machine slows all balancers alike instead of whichever
    ran last. `only`: optional labels (e.g. `["equal", "mgda"]`) to time;
    equal weights is always included. `clock`: `"wall"` or `"cpu"` (`_time`).
    `mixed_precision`: the dtype policy every model is built under (equal
    weights too, so the ratios compare like with like).
    """
    calls = max(1, steps // steps_per_execution)
    results = {}
    for num_tasks in task_counts:
        built = [
            ((label, level), _train_function(factory, num_tasks, jit_compile, problem,
                                             steps_per_execution, mixed_precision))
            for label, level, factory in _candidates(num_tasks)
            if only is None or label == "equal" or label in only
        ]
        for _, (step, iterator) in built:  # an untimed round: thread pools, caches
            _time(step, iterator, 1, steps_per_execution)
        rounds = {key: [] for key, _ in built}
        for _ in range(repeats):
            for key, (step, iterator) in built:
                rounds[key].append(_time(step, iterator, calls, steps_per_execution, clock))
        for key, seconds in rounds.items():
            results.setdefault(key, {})[num_tasks] = seconds
    return results


def ratios(results):
    """{(label, level): {T: [per-round ratio to equal weights in the same round]}}."""
    base = results[("equal", "loss")]
    return {key: {t: [a / b for a, b in zip(times[t], base[t])] for t in times}
            for key, times in results.items()}


def _cell(values):
    values = np.asarray(values)
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{np.median(values):.2f}x ({values.min():.2f}-{values.max():.2f})"


def table(results, task_counts):
    """Markdown table: median ratio to equal weights (min-max over rounds)."""
    base = results[("equal", "loss")]
    rel = ratios(results)
    head = "| balancer | gradients | " + " | ".join(f"T={t}" for t in task_counts) + " |"
    lines = [head, "|" + "---|" * (2 + len(task_counts))]
    lines.append(
        "| equal (ms/step, median) | loss | "
        + " | ".join(f"{1000 * np.median(base[t]):.2f} ms" for t in task_counts) + " |"
    )
    for key, times in rel.items():
        if key[0] == "equal":
            continue
        cells = " | ".join(_cell(times[t]) for t in task_counts)
        lines.append(f"| {key[0]} | {key[1]} | {cells} |")
    return "\n".join(lines)


def run_with_data(quick=False, rounds=None, problems=PROBLEMS, task_counts=None,
                  steps=None, steps_per_execution=10, only=None, jit_compile=False,
                  clock="wall", mixed_precision=None):
    """Benchmarks every balancer on each problem; returns (markdown, JSON-able dict).

    Args:
        quick: T = 2 and 10 only, 2 rounds of 10 steps (a smoke run).
        rounds: interleaved rounds (default 5, quick 2).
        problems: which of `PROBLEMS`.
        steps_per_execution: train steps per call of the train function.
        only: optional balancer labels to time (equal weights always).
        clock: `"wall"` (default) or `"cpu"` (process CPU time, for a
            machine shared with other jobs).
        mixed_precision: None (float32), `"float16"` or `"bfloat16"`: the
            Keras dtype policy of every model (`mixed_float16` /
            `mixed_bfloat16`).
    """
    import tensorflow as tf

    from keras_mtl.experiment import MIXED_PRECISION

    task_counts = task_counts or ((2, 10) if quick else (2, 10, 40))
    steps = steps or (10 if quick else 30)
    rounds = rounds or (2 if quick else 5)
    if quick:
        steps_per_execution = min(steps_per_execution, steps)
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    sections, data = [], {
        "device": device, "task_counts": list(task_counts), "steps": steps,
        "rounds": rounds, "steps_per_execution": steps_per_execution,
        "jit_compile": jit_compile, "clock": clock,
        "mixed_precision": mixed_precision or "float32", "problems": {}}
    for problem in problems:
        results = measure(task_counts, steps=steps, repeats=rounds, problem=problem,
                          steps_per_execution=steps_per_execution, only=only,
                          jit_compile=jit_compile, clock=clock,
                          mixed_precision=mixed_precision)
        sections.append(
            f"Problem `{problem}`: median step time relative to equal weights over "
            f"{rounds} interleaved rounds of {steps} steps (min-max over rounds), "
            f"GradNorm toy MLP (batch 100), {device}, "
            f"{'XLA' if jit_compile else 'graph mode'}, "
            f"{MIXED_PRECISION.get(mixed_precision, 'float32')}, "
            f"steps_per_execution={steps_per_execution}, {clock} clock.\n\n"
            + table(results, task_counts))
        rel = ratios(results)
        data["problems"][problem] = [
            {"balancer": label, "gradients": level, "T": t,
             "seconds": results[(label, level)][t], "ratio": rel[(label, level)][t],
             "ratio_median": float(np.median(rel[(label, level)][t]))}
            for (label, level), times in results.items() for t in times]
    return "\n\n".join(sections), data


def run(quick=False, rounds=None):
    """Benchmarks every balancer; returns the markdown tables."""
    return run_with_data(quick=quick, rounds=rounds)[0]


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))

r"""Every balancer on real digits: the MultiDigits benchmark, 3 seeds each.

    python -m launch.digits_demo --out_dir=runs/digits   # (what `make demo-digits` runs)

Trains the MultiMNIST LeNet on MultiDigits (`gin/digits_base.gin`: two of
scikit-learn's 1,797 real 8x8 digits overlapped on a 12x12 canvas, tasks
"left" and "right", train and test composed from disjoint source images)
with every registered balancer (`keras_mtl.balancers.distinct_names()`, at its
library defaults) and seeds 0..n-1, through the same `experiment.train` as
`launch/train.py`. Run directories are `<out_dir>/runs/<method>/seed_<k>/`
(`metrics.json` with `left_accuracy` / `right_accuracy` on the test canvases,
`task_weights.csv`, the operative gin config). The seed fixes the network's
initial weights, the training pairs and their order; the test canvases are
the same for every run. `static` runs as "GradNorm static" (Chen et al.
2018, section 5.2): the time-averaged weights E_t[w_i(t)] of the same seed's
GradNorm run, retrained; its directory is `gradnorm_static`.

A sweep is many short runs, so it skips what a single run pays for once
(measured in the README): runs write `records="sweep"` (no TensorBoard,
checkpoints, backup, per-epoch validation or saved model; `--full_records`
restores them), train `--steps_per_execution` steps per call (w_i(t) is then
recorded every that many steps; GradNorm, whose trace GradNorm static
averages, keeps every step), run all seeds of a balancer in one process and
re-initialise its traced model from each seed instead of retracing
(`experiment.train(reuse=...)`; not for balancers with a `seed` argument,
which is traced in), and spread the balancers over `--workers` processes of
`--threads` TensorFlow threads each. None of it changes a run: a seed gives
the same weights as a lone `experiment.train` of the same configuration in a
process with the same thread count (tests/test_digits.py checks it). The
thread count is part of that configuration: TensorFlow's reductions round
differently with 1 and 2 threads, and 800 steps turn that into different
final accuracies (about as far apart as two seeds).

The table (per-task test accuracy mean +- std, Delta_m against equal weights,
rank, task-weight traces) is written by `launch.compare`; `report.md` wraps
it with the set-up and timings.
"""

import inspect
import os
import time

from absl import app
from absl import flags

flags.DEFINE_string("out_dir", "runs/digits", "Where runs/ and report.md go.")
flags.DEFINE_integer("steps", 800, "Training steps of every run (batch 64).")
flags.DEFINE_integer("seeds", 3, "Seeds per method: 0 .. seeds-1.")
flags.DEFINE_list("methods", [], "Registered balancer names; default: all of "
                  "keras_mtl.balancers.distinct_names().")
flags.DEFINE_integer("workers", 2, "Training processes run side by side (1: in this one).")
flags.DEFINE_integer("threads", 1, "TensorFlow intra- and inter-op threads per training "
                     "process (0: TensorFlow's default, one per core).")
flags.DEFINE_integer("steps_per_execution", 16, "Train steps per call of the traced "
                     "train function (GradNorm runs with 1 when GradNorm static is run).")
flags.DEFINE_bool("reuse_traces", True, "Re-initialise a balancer's traced model for "
                  "each further seed instead of rebuilding and retracing it.")
flags.DEFINE_bool("full_records", False, "Write every run's full records (TensorBoard, "
                  "checkpoints, history.csv, model.keras) instead of the sweep's.")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings for every run.")
FLAGS = flags.FLAGS

GIN_FILE = "gin/digits_base.gin"
BASELINE = "equal"
# Balancers whose constructor needs arguments, and what the demo gives them.
STATIC = "static"
STATIC_DIR = "gradnorm_static"
DIRECTIONS = {"left_accuracy": "max", "right_accuracy": "max"}


def plan(methods):
    """(method, run name) pairs in run order; GradNorm static after GradNorm.

    Raises:
        ValueError: for a method that is not registered.
    """
    from keras_mtl import balancers

    known = balancers.distinct_names()
    methods = list(methods) or known
    unknown = [m for m in methods if m not in balancers.ALL_BALANCERS]
    if unknown:
        raise ValueError(
            f"Unknown balancer name(s) {unknown}. Known names: {known}.")
    order = [m for m in methods if m != STATIC]
    if STATIC in methods:
        if "gradnorm" not in order:
            order.append("gradnorm")
        order.append(STATIC)
    if BASELINE not in order:
        order.insert(0, BASELINE)
    return [(m, STATIC_DIR if m == STATIC else m) for m in order]


def required_arguments(cls):
    """Constructor arguments of `cls` without a default."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.default is p.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def mean_weights_csv(path):
    """{task: E_t[w_i(t)]} from a run's task_weights.csv (step 0 included)."""
    import numpy as np

    with open(path) as f:
        header = f.readline().strip().split(",")[1:]
    values = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)[:, 1:]
    return {t: float(v) for t, v in zip(header, values.mean(axis=0))}


def skip_reason(method):
    """Why the demo cannot run `method` at defaults (None when it can)."""
    from keras_mtl import balancers

    cls = balancers.ALL_BALANCERS[method]
    missing = required_arguments(cls)
    if method != STATIC and missing:
        return f"`{cls.__name__}` needs {missing}, which the demo has no value for"
    return None


def balancer_bindings(method, seed, runs_root):
    """Gin bindings that select `method` for one run."""
    from keras_mtl import balancers

    cls = balancers.ALL_BALANCERS[method]
    ref = f"keras_mtl.balancers.{cls.__name__}"
    bindings = [f"train.balancer = @{ref}()"]
    if method == STATIC:
        source = os.path.join(runs_root, "gradnorm", f"seed_{seed}", "task_weights.csv")
        weights = mean_weights_csv(source)
        bindings.append(f"{ref}.weights = {weights!r}")
        return bindings
    if "seed" in inspect.signature(cls.__init__).parameters:
        bindings.append(f"{ref}.seed = {seed}")
    return bindings


def reusable(method):
    """Whether `method`'s traced model can be re-initialised for another seed.

    Not for GradNorm static (its weights differ per seed) nor for balancers
    with a `seed` argument (traced into the step as a constant).
    """
    from keras_mtl import balancers

    params = inspect.signature(balancers.ALL_BALANCERS[method].__init__).parameters
    return method != STATIC and "seed" not in params


def set_threads(threads):
    """TensorFlow intra- and inter-op threads of this process (0: its default)."""
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
        except RuntimeError:  # the runtime already started: keep its setting
            if tf.config.threading.get_intra_op_parallelism_threads() != int(threads):
                raise


def run_bindings(method, seed, runs_root, steps, extra_bindings=(),
                 records="sweep", steps_per_execution=1):
    """The gin bindings of one (method, seed) run over `gin/digits_base.gin`."""
    return [
        f"train.steps = {steps}",
        f"train.steps_per_epoch = {steps}",
        "train.verbose = 0",
        f"train.seed = {seed}",
        f"lenet_multitask.seed = {seed}",
        f"train/multidigits.seed = {seed}",
        f"train.records = '{records}'",
        f"train.steps_per_execution = {steps_per_execution}",
    ] + balancer_bindings(method, seed, runs_root) + list(extra_bindings)


def train_method(method, run_name, seeds, runs_root, steps, extra_bindings=(),
                 records="sweep", steps_per_execution=1, reuse=True, threads=0):
    """Trains `method` with each seed in this process: [(seed, seconds, metrics, reused)].

    With `reuse` (and a `reusable` method) the first seed's compiled model
    trains the others (`experiment.train(reuse=...)`: same result, no trace).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    set_threads(threads)
    import gin
    import keras

    import keras_mtl.data  # noqa: F401 (gin registration of multidigits)
    import keras_mtl.models  # noqa: F401 (gin registration of lenet_multitask)
    from keras_mtl import experiment

    reuse = reuse and reusable(method)
    previous, out = None, []
    for seed in seeds:
        gin.clear_config()
        experiment.register_gin_externals()
        gin.parse_config_files_and_bindings([GIN_FILE], run_bindings(
            method, seed, runs_root, steps, extra_bindings, records, steps_per_execution))
        model_dir = os.path.join(runs_root, run_name, f"seed_{seed}")
        start = time.time()
        try:
            result = experiment.train(model_dir, reuse=previous)
        except ValueError as e:
            if previous is None or "Cannot reuse" not in str(e):
                raise
            print(f"{run_name} seed {seed}: {e} Retracing.", flush=True)
            previous = None
            result = experiment.train(model_dir)
        out.append((seed, time.time() - start, result["metrics"], previous is not None))
        previous = {"model": result["model"]} if reuse else None
    del previous, result
    keras.backend.clear_session()  # the traced functions of this method
    return out


def train_one(method, run_name, seed, runs_root, steps, extra_bindings=(), **options):
    """Trains one (method, seed) run; returns (seconds, metrics dict)."""
    ((_, seconds, metrics, _),) = train_method(
        method, run_name, [seed], runs_root, steps, extra_bindings, **options)
    return seconds, metrics


def run_jobs(jobs, workers, threads=0, after=None):
    """Runs `train_method(*job)` for each job, in `workers` processes; yields (job, result).

    `after`: optional `{run name: [jobs]}`, jobs started once the job of that
    run name has finished (GradNorm static after GradNorm).
    """
    after = dict(after or {})
    if workers <= 1:
        queue = list(jobs)
        while queue:
            job = queue.pop(0)
            yield job, train_method(*job)
            queue += after.pop(job[1], [])
        return
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=set_threads,
            initargs=(threads,)) as pool:
        futures = {pool.submit(train_method, *job): job for job in jobs}
        while futures:
            done, _ = concurrent.futures.wait(
                futures, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                job = futures.pop(future)
                for follow in after.pop(job[1], []):
                    futures[pool.submit(train_method, *follow)] = follow
                yield job, future.result()


def cpu_seconds():
    """CPU time (user + system) of this process and its finished children."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv):
    del argv
    from launch import compare

    runs_root = os.path.join(FLAGS.out_dir, "runs")
    os.makedirs(runs_root, exist_ok=True)
    if FLAGS.workers <= 1:
        set_threads(FLAGS.threads)
    records = "full" if FLAGS.full_records else "sweep"
    order = plan(FLAGS.methods)
    with_static = any(m == STATIC for m, _ in order)
    seconds, skipped, jobs, after = {}, [], [], {}
    for method, run_name in order:
        reason = skip_reason(method)
        if reason:
            skipped.append((method, reason))
            continue
        # GradNorm static averages every step of GradNorm's trace.
        spe = 1 if (method == "gradnorm" and with_static) else FLAGS.steps_per_execution
        job = (method, run_name, tuple(range(FLAGS.seeds)), runs_root, FLAGS.steps,
               tuple(FLAGS.gin_bindings), records, spe, FLAGS.reuse_traces, FLAGS.threads)
        # GradNorm static reads its seeds' finished GradNorm runs.
        if method == STATIC:
            after.setdefault("gradnorm", []).append(job)
        else:
            jobs.append(job)
    total, cpu = time.time(), cpu_seconds()
    for job, results in run_jobs(jobs, FLAGS.workers, FLAGS.threads, after):
        for seed, s, metrics, reused in results:
            seconds.setdefault(job[1], []).append(s)
            print(f"{job[1]} seed {seed}: left {metrics['left_accuracy']:.4f} "
                  f"right {metrics['right_accuracy']:.4f} ({s:.1f} s"
                  f"{', traced model reused' if reused else ''})", flush=True)
    total, cpu = time.time() - total, cpu_seconds() - cpu
    timing = [(name, v[0], sum(v[1:]) / max(len(v) - 1, 1) if len(v) > 1 else None)
              for name, v in seconds.items()]
    compare.compare(runs_root, BASELINE, FLAGS.out_dir, directions=DIRECTIONS)
    write_report(FLAGS.out_dir, timing, skipped, total, cpu)


def write_report(out_dir, timing, skipped, total, cpu=None):
    """report.md: the set-up, the compare tool's table, timings, caveats."""
    with open(os.path.join(out_dir, "comparison.md")) as f:
        body = f.read().replace("# Method comparison", "## Test accuracy (launch.compare)", 1)
    lines = [
        "# keras-mtl demo on real data: every balancer on MultiDigits",
        "",
        f"MultiDigits (`gin/digits_base.gin`): two of scikit-learn's 1,797 real 8x8 "
        "digits overlapped on a 12x12 canvas, tasks `left` and `right` (10 classes each); "
        "train canvases (4 per source image, ~5,000) and test canvases (~2,200) come "
        "from disjoint source images (30% of each class held out). Sener and Koltun's "
        f"MultiMNIST LeNet, Adam 1e-3, batch 64, {FLAGS.steps} steps, seeds "
        f"0..{FLAGS.seeds - 1}; every balancer at its library defaults; "
        "`gradnorm_static` retrains with the same seed's time-averaged GradNorm weights. "
        "Accuracy is on the held-out test canvases; Delta_m is against equal weights.",
        "",
        body.strip(),
        "",
        "## Seconds per run (wall)",
        "",
        "| run | first seed | other seeds (mean) |",
        "|---|---:|---:|",
    ] + [f"| {name} | {first:.1f} | {'-' if rest is None else f'{rest:.1f}'} |"
         for name, first, rest in timing] + [
        "",
        f"Total: {total / 60:.1f} minutes of wall time"
        + (f", {cpu / 60:.1f} minutes of CPU time" if cpu is not None else "")
        + f" ({FLAGS.workers} worker process(es) of {FLAGS.threads or 'default'} "
        f"TensorFlow thread(s), steps_per_execution {FLAGS.steps_per_execution}, "
        f"{'full' if FLAGS.full_records else 'sweep'} records, traced models "
        f"{'reused across seeds' if FLAGS.reuse_traces else 'rebuilt per run'}).",
    ]
    if skipped:
        lines += ["", "## Not run", ""] + [f"- `{m}`: {why}" for m, why in skipped]
    lines += [
        "",
        "## What this shows and what it does not",
        "",
        "It shows each balancer training a real (if small) two-task image problem end "
        "to end and how far apart their accuracies are relative to the seed-to-seed "
        "spread. It does not rank methods in general: one small problem (about 1,260 "
        "training source images), two symmetric tasks of equal difficulty and loss "
        "scale (the regime where balancing matters least), short runs, 3 seeds, and "
        "library-default hyper-parameters with no tuning. Differences within about "
        "two standard deviations are noise.",
        "",
    ]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"Report written to {path}")


if __name__ == "__main__":
    app.run(main)

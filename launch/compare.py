r"""Compares methods over seeds: the table a paper prints, from run directories.

    python -m launch.compare --runs_root=runs/nyu --baseline=equal --out_dir=runs/nyu/compare
    python -m launch.compare --runs=equal=runs/a/s0,runs/a/s1 \
        --runs=gradnorm=runs/b/s0,runs/b/s1 --baseline=equal --out_dir=cmp \
        --metrics=left_accuracy:max,right_accuracy:max

Run layout: `<runs_root>/<method>/<seed_dir>/` (or `<runs_root>/<method>/`
for a single run), each run directory holding the `metrics.json` that
`launch.train` writes (flat `{"<task>_<metric>": value}`; a nested
`{task: {metric: value}}` from `launch.evaluate` works too) and
`task_weights.csv` (step, one column per task).

For every method: each metric as mean +- std over its seeds (sample std),
Delta_m against the baseline method (Maninis et al. 2019, Eq. 4, on the seed
means; percent, positive = better than the baseline,
`keras_mtl.metrics.delta_m`), the rank of the method on each metric (1 =
best, ties share the mean rank) and its mean rank. Writes `comparison.md`,
`comparison.json` and `task_weights.png` (w_i(t), mean over seeds, one panel
per method) into `--out_dir`.

Metrics compared: by default every task metric of `metrics.json` (tasks are
the `<task>_weight` entries; a task's loss only when the task has no other
metric; never the balancer-weighted total `loss` or the weights), with the
direction read from the name: lower is better for losses, errors, RMSE,
angles and failure rates, higher for accuracies, IoU, F-scores, precision,
recall and "% within". A metric whose direction cannot be read is an error:
name it in `--metrics` with `:max` or `:min`. `--metrics` also chooses the
metrics (a name alone keeps its default direction).
"""

import csv
import json
import math
import os
import re

from absl import app
from absl import flags

FLAGS = flags.FLAGS

_HIGHER = ("accuracy", "acc", "iou", "fscore", "f1", "precision", "recall", "within", "auc")
_LOWER = ("loss", "error", "err", "rmse", "mse", "mae", "angle", "failure", "distance")


def define_flags():
    """Defines the flags (at run time: this module is also imported as a library)."""
    flags.DEFINE_string("runs_root", None, "Folder of <method>/<seed_dir>/ run directories.")
    flags.DEFINE_multi_string(
        "runs", [], "method=dir1,dir2,...: explicit run directories of one method "
        "(repeat per method; with --runs_root, added to its methods).")
    flags.DEFINE_string("baseline", None, "Method that Delta_m is measured against.")
    flags.DEFINE_string("out_dir", None, "Where comparison.md / .json and task_weights.png go.")
    flags.DEFINE_list(
        "metrics", None, "name[:max|min],...: the metrics to compare and their "
        "directions (defaults: every task metric, direction from its name).")
    flags.mark_flags_as_required(["baseline", "out_dir"])


def direction(name):
    """`"max"` or `"min"`: which way metric `name` improves, read from its name.

    Raises:
        ValueError: the name says neither (or both).
    """
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    higher = bool(tokens & set(_HIGHER))
    lower = bool(tokens & set(_LOWER))
    if higher == lower:
        raise ValueError(
            f"Cannot tell whether metric {name!r} is better higher or lower. "
            f"Expected a name containing one of {_HIGHER} (higher is better) or "
            f"{_LOWER} (lower is better). Give its direction: "
            f"--metrics={name}:max or {name}:min (directions={{{name!r}: 'max'}})."
        )
    return "max" if higher else "min"


def discover(runs_root):
    """`{method: [run dirs]}` from `<runs_root>/<method>/<seed_dir>/metrics.json`."""
    if not os.path.isdir(runs_root):
        raise FileNotFoundError(f"No runs folder at {runs_root!r}.")
    runs = {}
    for method in sorted(os.listdir(runs_root)):
        folder = os.path.join(runs_root, method)
        if not os.path.isdir(folder):
            continue
        if os.path.isfile(os.path.join(folder, "metrics.json")):
            runs[method] = [folder]
            continue
        seeds = [os.path.join(folder, d) for d in sorted(os.listdir(folder))
                 if os.path.isfile(os.path.join(folder, d, "metrics.json"))]
        if seeds:
            runs[method] = seeds
    if not runs:
        raise FileNotFoundError(
            f"No run directories under {runs_root!r}: expected "
            "<runs_root>/<method>/<seed_dir>/metrics.json.")
    return runs


def parse_runs(specs):
    """`["method=dir1,dir2", ...]` -> `{method: [dir1, dir2]}`."""
    runs = {}
    for spec in specs:
        method, sep, dirs = spec.partition("=")
        if not sep or not method or not dirs:
            raise ValueError(
                f"Invalid --runs value {spec!r}. Expected method=dir1,dir2,...")
        runs.setdefault(method, []).extend(d for d in dirs.split(",") if d)
    return runs


def read_metrics(run_dir):
    """The run's `metrics.json` as a flat `{name: float}`."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No metrics.json in run directory {run_dir!r}.")
    with open(path) as f:
        raw = json.load(f)
    flat = {}
    for key, value in raw.items():
        if isinstance(value, dict):  # launch.evaluate: {task: {metric: value}}
            flat[f"{key}_weight"] = math.nan  # marks the task
            flat.update({f"{key}_{name}": float(v) for name, v in value.items()})
        elif isinstance(value, (int, float)):
            flat[key] = float(value)
    return flat


def default_metrics(flat):
    """Task metrics of one run's flat metrics (see the module docstring)."""
    tasks = sorted((k[: -len("_weight")] for k in flat if k.endswith("_weight")),
                   key=len, reverse=True)
    per_task = {t: [] for t in tasks}
    for key in sorted(flat):
        task = next((t for t in tasks if key.startswith(t + "_")), None)
        if task is not None and key != f"{task}_weight":
            per_task[task].append(key)
    chosen = []
    for task in sorted(per_task):
        keys = per_task[task]
        others = [k for k in keys if k != f"{task}_loss"]
        chosen += others or keys
    if not chosen:
        raise ValueError(
            "No task metrics found (no `<task>_weight` entries in metrics.json): "
            "name the metrics to compare with --metrics / directions.")
    return chosen


def _rank(values, better):
    """Ranks (1 = best) of `values`, ties sharing their mean rank."""
    sign = -1.0 if better == "max" else 1.0
    order = sorted(range(len(values)), key=lambda i: sign * values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def _read_weights(run_dir):
    """(steps, tasks, rows) of `task_weights.csv`, or None when absent."""
    path = os.path.join(run_dir, "task_weights.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    header, body = rows[0], rows[1:]
    steps = [int(float(r[0])) for r in body]
    return steps, header[1:], [[float(v) for v in r[1:]] for r in body]


def plot_weights(path, runs):
    """Writes w_i(t) (mean over seeds, per step they share) per method to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    traces = {}
    for method, dirs in runs.items():
        read = [w for w in (_read_weights(d) for d in dirs) if w is not None]
        if not read:
            continue
        length = min(len(w[0]) for w in read)
        steps, tasks = read[0][0][:length], read[0][1]
        mean = np.mean([np.asarray(w[2][:length]) for w in read], axis=0)
        traces[method] = (steps, tasks, mean)
    if not traces:
        return None
    fig, axes = plt.subplots(1, len(traces), figsize=(4.5 * len(traces), 3.5),
                             squeeze=False, sharey=True)
    for ax, (method, (steps, tasks, mean)) in zip(axes[0], traces.items()):
        for t, task in enumerate(tasks):
            ax.plot(steps, mean[:, t], label=task, linewidth=1.2)
        ax.set_title(method)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("task weight w_i")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare(runs_root, baseline, out_dir, directions=None, runs=None):
    """Compares methods' runs; writes comparison.md / .json and task_weights.png.

    Args:
        runs_root: folder of `<method>/<seed_dir>/` run directories (or None
            when `runs` gives them all).
        baseline: the method Delta_m is measured against.
        out_dir: output directory (created).
        directions: optional `{metric: "max" | "min" | None}` choosing the
            metrics to compare, in order (None: the default direction from the
            name); defaults to every task metric with directions from names.
        runs: optional `{method: [run dirs]}`, added to (or replacing the
            methods of) the discovered ones.

    Returns:
        The dict written to `comparison.json`: `baseline`, `metrics`
        (`{name: direction}`), `methods` (`{method: {"runs", "seeds",
        "metrics": {name: {"mean", "std", "values"}}, "delta_m", "ranks",
        "mean_rank"}}`), `order` (methods by mean rank) and `plot`.
    """
    from keras_mtl.metrics import delta_m

    found = discover(runs_root) if runs_root else {}
    found.update(runs or {})
    if not found:
        raise ValueError("No runs given: pass runs_root and/or runs.")
    if baseline not in found:
        raise ValueError(
            f"Unknown baseline method {baseline!r}. Expected one of {sorted(found)}.")
    values = {m: [read_metrics(d) for d in dirs] for m, dirs in found.items()}
    if directions:
        chosen = {name: d or direction(name) for name, d in directions.items()}
        bad = {n: d for n, d in chosen.items() if d not in ("max", "min")}
        if bad:
            raise ValueError(f"Directions must be 'max' or 'min'. Received: {bad}")
    else:
        chosen = {name: direction(name) for name in default_metrics(values[baseline][0])}
    for method, dirs in found.items():
        for run_dir, flat in zip(dirs, values[method]):
            missing = [n for n in chosen if n not in flat]
            if missing:
                raise ValueError(
                    f"Run {run_dir!r} ({method}) has no metric(s) {missing} in "
                    f"metrics.json. It has: {sorted(k for k in flat if not k.endswith('_weight'))}.")

    methods = {}
    for method, dirs in found.items():
        stats = {}
        for name in chosen:
            vals = [flat[name] for flat in values[method]]
            mean = sum(vals) / len(vals)
            std = (math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
                   if len(vals) > 1 else None)
            stats[name] = {"mean": mean, "std": std, "values": vals}
        methods[method] = {"runs": list(dirs), "seeds": len(dirs), "metrics": stats}
    base = {n: methods[baseline]["metrics"][n]["mean"] for n in chosen}
    higher = {n: d == "max" for n, d in chosen.items()}
    names = list(methods)
    for name, better in chosen.items():
        ranks = _rank([methods[m]["metrics"][name]["mean"] for m in names], better)
        for m, r in zip(names, ranks):
            methods[m].setdefault("ranks", {})[name] = r
    for m in names:
        results = {n: methods[m]["metrics"][n]["mean"] for n in chosen}
        methods[m]["delta_m"] = delta_m(results, base, higher)
        methods[m]["mean_rank"] = sum(methods[m]["ranks"].values()) / len(chosen)
    order = sorted(names, key=lambda m: (methods[m]["mean_rank"], -methods[m]["delta_m"]))

    os.makedirs(out_dir, exist_ok=True)
    plot = plot_weights(os.path.join(out_dir, "task_weights.png"), found)
    result = {"baseline": baseline, "metrics": chosen, "methods": methods,
              "order": order, "plot": os.path.basename(plot) if plot else None}
    with open(os.path.join(out_dir, "comparison.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out_dir, "comparison.md"), "w") as f:
        f.write(markdown(result))
    return result


def _cell(stat):
    if stat["std"] is None:
        return f"{stat['mean']:.4g}"
    return f"{stat['mean']:.4g} ± {stat['std']:.2g}"


def markdown(result):
    """The comparison as markdown: one row per method, best mean rank first."""
    chosen = result["metrics"]
    arrow = {"max": "↑", "min": "↓"}
    header = (["method", "seeds"] + [f"{n} {arrow[d]}" for n, d in chosen.items()]
              + [f"Δm % vs {result['baseline']} ↑", "mean rank ↓"])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for method in result["order"]:
        row = result["methods"][method]
        cells = [method, str(row["seeds"])]
        cells += [f"{_cell(row['metrics'][n])} ({row['ranks'][n]:g})" for n in chosen]
        cells += [f"{row['delta_m']:+.2f}", f"{row['mean_rank']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Mean ± sample std over seeds, (rank among methods, 1 = best). "
        f"Δm: mean relative change over the metrics against `{result['baseline']}`, "
        "signed so that positive is better (Maninis et al. 2019, Eq. 4).",
    ]
    if result.get("plot"):
        notes += ["", f"![task weights]({result['plot']})"]
    return "# Method comparison\n\n" + "\n".join(lines + notes) + "\n"


def _parse_metrics_flag(items):
    directions = {}
    for item in items:
        name, _, way = item.partition(":")
        if way and way not in ("max", "min"):
            raise app.UsageError(f"Invalid --metrics entry {item!r}: expected name[:max|min].")
        directions[name] = way or None
    return directions


def main(argv):
    del argv
    if not FLAGS.runs_root and not FLAGS.runs:
        raise app.UsageError("Give --runs_root and/or --runs.")
    result = compare(
        FLAGS.runs_root, FLAGS.baseline, FLAGS.out_dir,
        directions=_parse_metrics_flag(FLAGS.metrics) if FLAGS.metrics else None,
        runs=parse_runs(FLAGS.runs))
    print(markdown(result))
    print(f"Written to {FLAGS.out_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

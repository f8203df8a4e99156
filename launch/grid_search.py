r"""GradNorm versus a grid search over static task weights (Chen et al. 2018, section 5.3).

    python -m launch.grid_search --out_dir=runs/grid_search \
        [--problems=toy_t2,digits] [--resolution=10] [--steps=...]

For each problem it trains, from the same initial network and data:

- a grid of `StaticWeights` on the simplex sum_i w_i = T (every weight
  vector whose entries are positive multiples of T / resolution; for T=2
  and resolution 10: w_0 = 0.2, 0.4, ..., 1.8),
- GradNorm (the problem's shipped gin file), recording w_i(t),
- "GradNorm static": its time-averaged weights E_t[w_i(t)]
  (`callbacks.BalancerHistory.static_balancer()`), retrained,

and writes `grid_search.md`, `grid_search.json` and `grid_search.png` (the
score of every grid point against w_0, with GradNorm's and GradNorm static's
points at E_t[w_0]). Problems: `toy_t2` (section 4, sigma = (1, 100); score:
task-normalised test loss sum_i L_i/L_i(0), lower is better) and `digits`
(MultiDigits, real digits; score: mean test accuracy of left and right,
higher is better). Runs go to `<out_dir>/<problem>/<run>/`.
"""

import itertools
import json
import os

from absl import app
from absl import flags

PROBLEMS = {
    "toy_t2": {
        "gin": "gin/toy_t2.gin",
        "gradnorm_gin": "gin/toy_gradnorm_t2.gin",
        "score": "task_normalized_loss",
        "direction": "min",
        "task_metric": "normalized_loss",
        "description": "GradNorm toy problem, T=2, sigma = (1, 100) (section 4)",
    },
    "digits": {
        "gin": "gin/digits_base.gin",
        "gradnorm_gin": "gin/digits_gradnorm.gin",
        "score": "mean_accuracy",
        "direction": "max",
        "task_metric": "accuracy",
        "description": "MultiDigits, real 8x8 digits, tasks left and right",
    },
}


def define_flags():
    """Defines the flags (at run time: this module is also imported as a library)."""
    flags.DEFINE_string("out_dir", "runs/grid_search", "Where runs and the report go.")
    flags.DEFINE_list("problems", list(PROBLEMS), f"Problems among {list(PROBLEMS)}.")
    flags.DEFINE_integer("resolution", 10, "Grid step on the simplex is T / resolution.")
    flags.DEFINE_integer("steps", None, "Training steps of every run (default: the "
                         "problem's gin file, 3,000 for the toy, 1,000 for digits).")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings for every run.")


def simplex_grid(num_tasks, resolution):
    """Weight vectors with entries in {T/resolution, 2T/resolution, ...} summing to T.

    Every entry is > 0 (a zero weight would drop a task); ordered by w_0.
    """
    if num_tasks < 1 or resolution < num_tasks:
        raise ValueError(
            "Invalid values received for arguments `num_tasks` and `resolution`. "
            "Expected resolution >= num_tasks >= 1 (every weight > 0). Received: "
            f"num_tasks={num_tasks}, resolution={resolution}")
    unit = num_tasks / resolution
    grid = [tuple(k * unit for k in parts)
            for parts in itertools.product(range(1, resolution + 1), repeat=num_tasks)
            if sum(parts) == resolution]
    return sorted(grid, reverse=True)


def _final_normalized_losses(model_dir, tasks):
    """{task: L_i/L_i(0)} on the test set at the last step (task_normalized_loss.csv)."""
    import csv

    with open(os.path.join(model_dir, "task_normalized_loss.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return {t: float(rows[-1][t]) for t in tasks}


def _train(problem, gin_file, model_dir, bindings):
    import gin

    import keras_mtl.data  # noqa: F401 (gin registration of the readers)
    import keras_mtl.models  # noqa: F401 (gin registration of the models)
    from keras_mtl import experiment

    gin.clear_config()
    experiment.register_gin_externals()
    gin.parse_config_files_and_bindings([gin_file], ["train.verbose = 0"] + list(bindings))
    result = experiment.train(model_dir)
    metrics = dict(result["metrics"])
    tasks = list(result["model"].task_names)
    spec = PROBLEMS[problem]
    if spec["task_metric"] == "normalized_loss":
        per_task = _final_normalized_losses(model_dir, tasks)
    else:
        per_task = {t: metrics[f"{t}_{spec['task_metric']}"] for t in tasks}
    if spec["score"] == "mean_accuracy":
        score = sum(per_task.values()) / len(per_task)
    else:
        score = metrics[spec["score"]]
    return {"tasks": tasks, "per_task": per_task, "score": float(score),
            "task_normalized_loss": float(metrics["task_normalized_loss"]),
            "history": result["balancer_history"]}


def run_problem(problem, out_dir, resolution, steps=None, bindings=()):
    """Grid, GradNorm and GradNorm static on one problem; returns its result dict."""
    spec = PROBLEMS[problem]
    bindings = list(bindings) + ([f"train.steps = {steps}"] if steps else [])
    root = os.path.join(out_dir, problem)
    rows = []

    def add(kind, name, weights, run):
        rows.append({"run": name, "kind": kind, "weights": [float(w) for w in weights],
                     "per_task": run["per_task"], "score": run["score"],
                     "task_normalized_loss": run["task_normalized_loss"]})

    gradnorm = _train(problem, spec["gradnorm_gin"], os.path.join(root, "gradnorm"), bindings)
    tasks = gradnorm["tasks"]
    static = gradnorm["history"].static_balancer()  # StaticWeights(E_t[w_i(t)])
    mean_w = [static.weights_spec[t] for t in tasks]
    add("gradnorm", "gradnorm", mean_w, gradnorm)
    ref = "keras_mtl.balancers.StaticWeights"
    for weights in simplex_grid(len(tasks), resolution):
        name = "static_" + "_".join(f"{w:.3g}" for w in weights)
        run = _train(problem, spec["gin"], os.path.join(root, name), bindings + [
            f"train.balancer = @{ref}()", f"{ref}.weights = {list(weights)!r}"])
        add("grid", name, weights, run)
    run = _train(problem, spec["gin"], os.path.join(root, "gradnorm_static"), bindings + [
        f"train.balancer = @{ref}()", f"{ref}.weights = {static.weights_spec!r}"])
    add("gradnorm_static", "gradnorm_static", mean_w, run)

    sign = 1.0 if spec["direction"] == "min" else -1.0
    order = sorted(range(len(rows)), key=lambda i: sign * rows[i]["score"])
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank
    grid = [r for r in rows if r["kind"] == "grid"]
    best = min(grid, key=lambda r: sign * r["score"])
    gn = rows[0]
    summary = {
        "best_grid": best["run"],
        "best_grid_weights": best["weights"],
        "best_grid_score": best["score"],
        "gradnorm_score": gn["score"],
        "gradnorm_static_score": rows[-1]["score"],
        "gradnorm_mean_weights": mean_w,
        "grid_points_beaten_by_gradnorm": sum(sign * r["score"] > sign * gn["score"]
                                              for r in grid),
        "grid_points_beaten_by_gradnorm_static": sum(
            sign * r["score"] > sign * rows[-1]["score"] for r in grid),
        "grid_points": len(grid),
        "distance_mean_weights_to_best_grid": sum(
            (a - b) ** 2 for a, b in zip(mean_w, best["weights"])) ** 0.5,
    }
    return {"problem": problem, "description": spec["description"], "tasks": tasks,
            "score": spec["score"], "direction": spec["direction"],
            "task_metric": spec["task_metric"], "rows": rows, "summary": summary}


def markdown(results, resolution):
    lines = ["# GradNorm versus a grid search over static weights",
             "",
             "Chen et al. 2018, section 5.3: static weights on the simplex sum_i w_i = T "
             f"(step T/{resolution}), GradNorm, and GradNorm static (its time-averaged "
             "weights E_t[w_i(t)], retrained), same initial network and data for every "
             "run. GradNorm's row shows E_t[w_i(t)].", ""]
    for res in results:
        arrow = "lower" if res["direction"] == "min" else "higher"
        s = res["summary"]
        lines += [f"## {res['problem']}: {res['description']}", "",
                  f"Score: {res['score']} ({arrow} is better); per task: "
                  + ("L_i/L_i(0)" if res["task_metric"] == "normalized_loss"
                     else res["task_metric"]) + " on the test set.", "",
                  "| rank | run | " + " | ".join(f"w_{t}" for t in res["tasks"]) + " | "
                  + " | ".join(f"{t} {res['task_metric']}" for t in res["tasks"])
                  + f" | {res['score']} |",
                  "|---:|---|" + "---:|" * (2 * len(res["tasks"]) + 1)]
        for r in sorted(res["rows"], key=lambda r: r["rank"]):
            name = f"**{r['run']}**" if r["kind"] != "grid" else r["run"]
            lines.append(
                f"| {r['rank']} | {name} | " + " | ".join(f"{w:.3f}" for w in r["weights"])
                + " | " + " | ".join(f"{r['per_task'][t]:.4g}" for t in res["tasks"])
                + f" | {r['score']:.4g} |")
        lines += ["",
                  f"Best grid point: `{s['best_grid']}` ({s['best_grid_score']:.4g}). "
                  f"GradNorm ({s['gradnorm_score']:.4g}) beats {s['grid_points_beaten_by_gradnorm']}"
                  f" of {s['grid_points']} grid points; GradNorm static "
                  f"({s['gradnorm_static_score']:.4g}) beats "
                  f"{s['grid_points_beaten_by_gradnorm_static']}. L2 distance from "
                  f"E_t[w(t)] to the best grid weights: "
                  f"{s['distance_mean_weights_to_best_grid']:.3f}.", ""]
    lines += ["![grid search](grid_search.png)", ""]
    return "\n".join(lines)


def plot(path, results):
    """Score against w_0 for the grid, GradNorm and GradNorm static, one panel per problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, res in zip(axes[0], results):
        grid = [r for r in res["rows"] if r["kind"] == "grid"]
        ax.plot([r["weights"][0] for r in grid], [r["score"] for r in grid], "o-",
                color="gray", label="static grid")
        marks = {"gradnorm": ("*", "C3", 16), "gradnorm_static": ("D", "C0", 8)}
        for r in res["rows"]:
            if r["kind"] in marks:
                m, c, size = marks[r["kind"]]
                ax.plot([r["weights"][0]], [r["score"]], m, color=c, markersize=size,
                        label=f"{r['run']} (E_t[w])")
        ax.set_xlabel(f"w_{res['tasks'][0]}  (sum of weights = {len(res['tasks'])})")
        ax.set_ylabel(res["score"] + (" (lower is better)" if res["direction"] == "min"
                                      else " (higher is better)"))
        ax.set_title(res["problem"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grid_search(problems, out_dir, resolution=10, steps=None, bindings=()):
    """Runs every problem and writes grid_search.{md,json,png}; returns the results."""
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown:
        raise ValueError(f"Unknown problem(s) {unknown}. Expected among {list(PROBLEMS)}.")
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for problem in problems:
        results.append(run_problem(problem, out_dir, resolution, steps, bindings))
        s = results[-1]["summary"]
        print(f"{problem}: best grid {s['best_grid']} {s['best_grid_score']:.4g}, "
              f"GradNorm {s['gradnorm_score']:.4g}, static {s['gradnorm_static_score']:.4g}",
              flush=True)
    with open(os.path.join(out_dir, "grid_search.json"), "w") as f:
        json.dump({"resolution": resolution, "steps": steps, "results": results}, f, indent=2)
    plot(os.path.join(out_dir, "grid_search.png"), results)
    with open(os.path.join(out_dir, "grid_search.md"), "w") as f:
        f.write(markdown(results, resolution))
    return results


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    grid_search(FLAGS.problems, FLAGS.out_dir, FLAGS.resolution, FLAGS.steps,
                FLAGS.gin_bindings)
    print(f"Written to {os.path.join(FLAGS.out_dir, 'grid_search.md')}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

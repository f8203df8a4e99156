r"""The main job: the GradNorm toy experiments of Chen et al. 2018, section 4.

    python -m launch.demo --out_dir=runs/demo        # (what `make demo` runs)

For T=2 (sigma = 1, 100) and T=10 (sigmas from a wide normal) it trains the
paper's toy network with equal weights, uncertainty weighting (Kendall et al.)
and GradNorm (alpha = 0.12), each from the shipped gin file through the same
`train` as `launch/train.py`, and writes `report.md` with the task-normalised
test loss of each run and PNG plots like the paper's Figure 2.
"""

import os
import time

from absl import app
from absl import flags

flags.DEFINE_string("out_dir", "runs/demo", "Where runs, plots and report.md go.")
flags.DEFINE_integer("steps", 3_000, "Training steps of every run.")
flags.DEFINE_list("tasks", ["2", "10"], "Which toy problems to run (T values).")
FLAGS = flags.FLAGS

METHODS = (
    ("equal weights", "gin/toy_t{T}.gin"),
    ("uncertainty weighting", "gin/toy_uncertainty_t{T}.gin"),
    ("GradNorm (alpha=0.12)", "gin/toy_gradnorm_t{T}.gin"),
)


def run_problem(num_tasks, out_dir, steps):
    import gin

    from keras_mtl import configs
    from keras_mtl import experiment

    runs, rows = {}, []
    for method, gin_file in METHODS:
        gin.clear_config()
        experiment.register_gin_externals()
        configs.parse([gin_file.format(T=num_tasks)], [f"train.steps = {steps}"])
        name = method.split(" ")[0].lower()
        model_dir = os.path.join(out_dir, f"t{num_tasks}_{name}")
        start = time.time()
        result = experiment.train(model_dir)
        seconds = time.time() - start
        norm = result["normalized_loss"]
        steps_w, weights = result["balancer_history"].as_array()
        runs[method] = {"weights": (steps_w, weights),
                        "normalized": (norm.steps, norm.values)}
        final = norm.per_task[-1]
        rows.append([method, norm.values[-1], min(norm.values),
                     " ".join(f"{v:.3g}" for v in final),
                     " ".join(f"{v:.3g}" for v in weights[-1]), f"{seconds:.0f}"])
        print(f"T={num_tasks} {method}: task-normalised test loss "
              f"{norm.values[-1]:.4f} ({seconds:.0f} s)", flush=True)
    return runs, rows


def main(argv):
    del argv
    from keras_mtl import reports
    from keras_mtl.data.toy import wide_sigmas

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    sections = []
    for t in FLAGS.tasks:
        num_tasks = int(t)
        runs, rows = run_problem(num_tasks, FLAGS.out_dir, FLAGS.steps)
        png = reports.plot_weights_and_losses(
            os.path.join(FLAGS.out_dir, f"toy_t{num_tasks}.png"), runs,
            f"GradNorm toy problem, T={num_tasks}")
        sigmas = (1.0, 100.0) if num_tasks == 2 else wide_sigmas(num_tasks, seed=0)
        best = min(rows, key=lambda r: r[1])[0]
        sections.append("\n".join([
            f"## T = {num_tasks}",
            "",
            "sigma_i = " + ", ".join(f"{s:.3g}" for s in sigmas),
            "",
            reports.markdown_table(
                ["method", "task-normalised test loss (final)", "best during run",
                 "final L_i/L_i(0) per task", "final w_i", "seconds"], rows),
            "",
            f"Lowest final task-normalised test loss: **{best}**.",
            "",
            f"![T={num_tasks}]({os.path.basename(png)})",
        ]))
    report = "\n".join([
        "# keras-mtl demo: the GradNorm toy experiments",
        "",
        "Chen et al. 2018 (ICML), section 4: T regression tasks f_i(x) = sigma_i "
        "tanh((B + eps_i) x), a shared trunk of 4 x Dense(100, relu) and one affine "
        "head per task, squared loss, Adam (learning rate 1e-3), "
        f"{FLAGS.steps} steps of batch 100 on 10,000 training examples. The "
        "task-normalised test loss is sum_i L_i(t)/L_i(0) on 2,000 held-out "
        "examples (T for the untrained network; lower is better). Each run is "
        "the shipped gin file (`gin/toy_*.gin`) through `keras_mtl.experiment.train`, "
        "the same path as `python -m launch.train`; run directories hold the "
        "operative config, histories, w_i(t) per step and checkpoints.",
        "",
        "\n\n".join(sections),
        "",
    ])
    path = os.path.join(FLAGS.out_dir, "report.md")
    with open(path, "w") as f:
        f.write(report)
    print(f"Report written to {path}")


if __name__ == "__main__":
    app.run(main)

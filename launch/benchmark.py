r"""Benchmarks: step-time ratios against a baseline measured in the same run.

    python -m launch.benchmark                       # every suite
    python -m launch.benchmark --suites=gradnorm,balancers --quick
    python -m launch.benchmark --suites=balancers --rounds=7 --out=bench.md
        # also writes bench.json (or --json=path)

Machines here are noisy: each suite times its methods interleaved in one
process and reports ratios to a baseline (equal weights, an unmasked model,
one device); absolute milliseconds are printed for reference only. The
`balancers` and `gradnorm` suites time `--rounds` interleaved rounds and
report the median per-round ratio with its min-max spread over rounds; the
JSON file holds every round's times and ratios, so that a 10% claim can be
checked.
"""

import importlib
import json
import os

from absl import app
from absl import flags

SUITES = ("gradnorm", "balancers", "floor", "masks", "astmt", "distribute")

flags.DEFINE_list("suites", list(SUITES), f"Which suites to run, of {SUITES}.")
flags.DEFINE_bool("quick", False, "Fewer steps (a smoke run).")
flags.DEFINE_integer("rounds", None, "Interleaved rounds (suites that take it; "
                     "default: the suite's own).")
flags.DEFINE_string("out", None, "Optional markdown file to write the tables to "
                    "(the JSON goes beside it, same name with .json, unless --json).")
flags.DEFINE_string("json", None, "Optional JSON file of the measurements.")
flags.DEFINE_list("balancers", None, "balancers suite: only these labels "
                  "(equal weights is always timed).")
flags.DEFINE_list("problems", None, "balancers suite: which problems (toy, conflict).")
flags.DEFINE_list("task_counts", None, "balancers and floor suites: the T values "
                  "(default 2,10,40).")
flags.DEFINE_integer("steps_per_execution", 10, "balancers and floor suites: train "
                     "steps per call of the train function.")
flags.DEFINE_enum("mixed_precision", None, ["float32", "float16", "bfloat16"],
                  "balancers suite: build every model under Keras's mixed_float16 / "
                  "mixed_bfloat16 dtype policy (default float32).")
flags.DEFINE_enum("clock", "wall", ["wall", "cpu"], "balancers and floor suites: wall "
                  "time, or "
                  "this process's CPU time (robust to other jobs on a shared machine).")
FLAGS = flags.FLAGS


def run_suite(suite, quick=False, rounds=None):
    """(markdown, data) of one suite; data is None for suites without measurements."""
    module = importlib.import_module(f"launch.bench.{suite}")
    if suite in ("balancers", "floor"):
        kwargs = {"steps_per_execution": FLAGS.steps_per_execution, "clock": FLAGS.clock}
        if FLAGS.task_counts:
            kwargs["task_counts"] = tuple(int(t) for t in FLAGS.task_counts)
        if suite == "balancers" and FLAGS.balancers:
            kwargs["only"] = FLAGS.balancers
        if suite == "balancers" and FLAGS.problems:
            kwargs["problems"] = FLAGS.problems
        if suite == "balancers" and FLAGS.mixed_precision:
            kwargs["mixed_precision"] = FLAGS.mixed_precision
        return module.run_with_data(quick=quick, rounds=rounds, **kwargs)
    if hasattr(module, "run_with_data"):
        return module.run_with_data(quick=quick, rounds=rounds)
    return module.run(quick=quick), None


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    unknown = [s for s in FLAGS.suites if s not in SUITES]
    if unknown:
        raise app.UsageError(f"Unknown suite(s) {unknown}; known: {SUITES}")
    sections, data = [], {}
    json_path = FLAGS.json or (os.path.splitext(FLAGS.out)[0] + ".json" if FLAGS.out else None)
    for suite in FLAGS.suites:
        table, measured = run_suite(suite, quick=FLAGS.quick, rounds=FLAGS.rounds)
        section = f"## {suite}\n\n{table}\n"
        print(section, flush=True)
        sections.append(section)
        data[suite] = measured if measured is not None else {"table": table}
        # Written after every suite: a long run keeps what it measured.
        if FLAGS.out:
            with open(FLAGS.out, "w") as f:
                f.write("# keras-mtl benchmarks\n\n" + "\n".join(sections))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(data, f, indent=1)


if __name__ == "__main__":
    app.run(main)

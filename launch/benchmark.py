r"""Benchmarks: step-time ratios against a baseline measured in the same run.

    python -m launch.benchmark                       # every suite
    python -m launch.benchmark --suites=gradnorm,balancers --quick

Machines here are noisy: each suite times its methods interleaved in one
process and reports ratios to a baseline (equal weights, an unmasked model,
one device); absolute milliseconds are printed for reference only.
"""

import importlib
import os

from absl import app
from absl import flags

SUITES = ("gradnorm", "balancers", "masks", "astmt", "distribute")

flags.DEFINE_list("suites", list(SUITES), f"Which suites to run, of {SUITES}.")
flags.DEFINE_bool("quick", False, "Fewer steps (a smoke run).")
flags.DEFINE_string("out", None, "Optional markdown file to write the tables to.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    unknown = [s for s in FLAGS.suites if s not in SUITES]
    if unknown:
        raise app.UsageError(f"Unknown suite(s) {unknown}; known: {SUITES}")
    sections = []
    for suite in FLAGS.suites:
        module = importlib.import_module(f"launch.bench.{suite}")
        table = module.run(quick=FLAGS.quick)
        section = f"## {suite}\n\n{table}\n"
        print(section, flush=True)
        sections.append(section)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            f.write("# keras-mtl benchmarks\n\n" + "\n".join(sections))


if __name__ == "__main__":
    app.run(main)

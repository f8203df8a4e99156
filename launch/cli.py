"""Console entry points of the launchers (see `entry_points` in setup.py).

`keras-mtl-train ...` is `python -m launch.train ...`, and so on for
evaluate, export, benchmark, demo and compare. Each imports its launcher (which
defines its absl flags) only when called, so one command never pays for, or
clashes with, another's flags.
"""

import importlib

from absl import app


def _run(name):
    module = importlib.import_module(f"launch.{name}")
    if hasattr(module, "define_flags"):  # launchers that define flags lazily
        module.define_flags()
    app.run(module.main)


def train():
    """`keras-mtl-train`: `python -m launch.train`."""
    _run("train")


def evaluate():
    """`keras-mtl-evaluate`: `python -m launch.evaluate`."""
    _run("evaluate")


def export():
    """`keras-mtl-export`: `python -m launch.export`."""
    _run("export")


def benchmark():
    """`keras-mtl-benchmark`: `python -m launch.benchmark`."""
    _run("benchmark")


def demo():
    """`keras-mtl-demo`: `python -m launch.demo`."""
    _run("demo")


def compare():
    """`keras-mtl-compare`: `python -m launch.compare`."""
    _run("compare")

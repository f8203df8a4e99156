"""Benchmark: step time of attentive single-tasking relative to the shared baseline.

Times `MultiTaskModel.train_on_batch` (the library's real train step) of the
SE-ResNet + DeepLabV3+ model in the variants of the paper's ablations:

- `shared`: everything shared (SE-bb backbone, shared SE), T 1x1 heads; the
  encoder runs once;
- `shared + A`: the same with the adversarial gradient discriminator (double
  back-propagation through the heads);
- `SE dec`: task SE (+ task BN) in the decoder only;
- `SE enc+dec`: task SE everywhere (the encoder runs T times, folded);
- `SE + A`: task SE everywhere with the discriminator (the paper's SEA);
- `SE + RA + A`: plus residual adapters.

Reports the median step time, its ratio to `shared`, and the parameter
counts (trainable; all, and in inference: without the discriminator). In this library
`SE dec` still folds the whole encoder (one task-conditioned encoder per
model), so it costs like `SE enc+dec`; see the report of issue 6.

Usage: `python -m launch.bench.astmt [--quick]`.
"""

import sys
import time

import keras
import numpy as np

from keras_mtl.models.se_resnet import TINY, astmt_deeplab, shared_deeplab

SMALL = dict(stem_filters=16, stage_filters=(16, 32, 64, 128), stage_blocks=(2, 2, 2, 2),
             se_ratio=16, aspp_filters=64, aspp_rates=(6, 12, 18), low_level_filters=24,
             decoder_filters=64)
"""R-26 depth at a quarter of the paper's widths (CPU-sized)."""

VARIANTS = (
    ("shared", shared_deeplab, {}),
    ("shared + A", shared_deeplab, {"adversarial": True}),
    ("SE dec", astmt_deeplab, {"se_encoder": False}),
    ("SE enc+dec", astmt_deeplab, {}),
    ("SE + A", astmt_deeplab, {"adversarial": True}),
    ("SE + RA + A", astmt_deeplab, {"adversarial": True, "residual_adapters": True}),
)


def _data(batch, image, tasks, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, image, image, 3)).astype("float32")
    y = {
        "seg": rng.integers(0, tasks["seg"], size=(batch, image, image)).astype("int32"),
        "depth": rng.normal(size=(batch, image, image, 1)).astype("float32"),
    }
    return x, y


def build_variant(factory, kwargs, config, batch, image, tasks):
    """A compiled model of one variant, traced and warmed up, and its data."""
    keras.utils.set_random_seed(0)
    model = factory(tasks, config=config, **kwargs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.005, momentum=0.9),
        loss={"seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "depth": "mse"},
    )
    x, y = _data(batch, image, tasks)
    model.train_on_batch(x, y)  # trace + build
    model.train_on_batch(x, y)
    return model, x, y


def time_steps(model, x, y, steps):
    """Median seconds of `steps` train steps."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(quick=False):
    """Times every variant in this process; returns a markdown table.

    All variants are built and traced first, then timed in interleaved
    rounds (the best round's median counts), so that load drift on a shared
    machine hits all of them alike.
    """
    tasks = {"seg": 5, "depth": 1}
    if quick:
        config, batch, image, steps, rounds = TINY, 2, 32, 3, 2
    else:
        config, batch, image, steps, rounds = SMALL, 4, 64, 5, 3
    built = [(name, build_variant(factory, kwargs, config, batch, image, tasks))
             for name, factory, kwargs in VARIANTS]
    best = {name: float("inf") for name, _ in built}
    for _ in range(rounds):
        for name, (model, x, y) in built:
            best[name] = min(best[name], time_steps(model, x, y, steps))
    base = best["shared"]
    lines = [
        f"ASTMT step time, T={len(tasks)}, batch {batch}, {image}x{image}, "
        f"{'TINY' if quick else 'SMALL'} config, best of {rounds} interleaved "
        f"rounds of median-of-{steps} steps (keras {keras.__version__}, "
        f"{keras.backend.backend()}).",
        "",
        "| variant | step (ms) | ratio to shared | trainable params | without discriminator |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, (model, _, _) in built:
        params = _count(model.trainable_variables)
        disc = 0 if model.discriminator is None else _count(
            model.discriminator.trainable_variables)
        lines.append(f"| {name} | {1000 * best[name]:.1f} | {best[name] / base:.2f} | "
                     f"{params:,} | {params - disc:,} |")
    return "\n".join(lines)


def _count(variables):
    return int(sum(np.prod(v.shape) for v in {id(v): v for v in variables}.values()))


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))

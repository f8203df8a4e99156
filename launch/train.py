r"""Trains a multi-task model from gin configs.

    python -m launch.train --gin_file=gin/toy_gradnorm_t2.gin \
        --gin_bindings='GradNorm.alpha = 0.12' --model_dir=runs/toy_t2

Distributed training: `--distribution_strategy=one_device|mirrored|multi_worker|tpu`
(see keras_mtl/distribute.py; multi_worker reads the cluster from TF_CONFIG
and trains with the custom loop `keras_mtl.distribute.fit`). A killed run
restarted with the same flags resumes from its last epoch
(`keras.callbacks.BackupAndRestore` in `<model_dir>/backup`).

`--arch=ple` switches the model to a registered architecture
(`keras_mtl.models.architectures`; the `gin/arch_*` configs configure
every architecture of their family, e.g. `--gin_file=gin/arch_nyuv2_mmoe.gin
--arch=dselect_k`).

`--mixed_precision=float16|bfloat16` builds the model under Keras's
`mixed_float16` / `mixed_bfloat16` policy (README, "Mixed precision").

Run length, output directory, verbosity and checkpoint retention are flags;
everything about the model, data and method is in gin (see
keras_mtl/experiment.py for what `train` binds). Progress is one line per
epoch (`--verbose=0` silences it, `--verbose=2` adds Keras' progress bar);
with evaluation data in the config, every epoch is validated. The operative
config is written to `<model_dir>/operative_config.gin` before the first
step. `<model_dir>/checkpoints` keeps the last 3 epochs (`--keep_checkpoints`)
and, with `--best_checkpoint_monitor=val_normalized_loss`, the best one.
"""

from absl import app
from absl import flags
import gin

flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings overriding the files.")
flags.DEFINE_string("model_dir", None, "Output directory of the run.")
flags.DEFINE_integer("steps", None, "Overrides train.steps when given.")
flags.DEFINE_integer(
    "verbose", None,
    "Overrides train.verbose (default 1): 0 silent, 1 one line per epoch "
    "(loss, per-task losses and weights, normalized_loss, val_*), 2 also "
    "Keras' progress bar within epochs.")
flags.DEFINE_integer(
    "keep_checkpoints", None,
    "Overrides train.keep_checkpoints (default 3): epoch .keras files kept "
    "in <model_dir>/checkpoints; -1 keeps all.")
flags.DEFINE_string(
    "best_checkpoint_monitor", None,
    "Overrides train.best_checkpoint_monitor: a log key (e.g. "
    "val_normalized_loss, lower is better) by which "
    "<model_dir>/checkpoints/best.keras is kept.")
flags.DEFINE_enum(
    "distribution_strategy", None,
    ["one_device", "mirrored", "multi_worker", "tpu"],
    "tf.distribute strategy (overrides train.strategy). one_device: first "
    "GPU, else CPU; mirrored: all local GPUs (model.fit); multi_worker: "
    "MultiWorkerMirroredStrategy, cluster from TF_CONFIG, trained by the "
    "custom loop keras_mtl.distribute.fit (Keras 3 fit fails there); tpu: "
    "TPUStrategy, a clear error when no TPU is found.")
flags.DEFINE_string(
    "arch", None,
    "Multi-task architecture by name (keras_mtl.models.architectures, e.g. "
    "mmoe, cgc, ple, dselect_k): binds train.model to its builder, after the "
    "gin files. The builder's own parameters must be bound by the config "
    "(gin/arch_<dataset>_*.gin configure every architecture they name).")
flags.DEFINE_enum(
    "mixed_precision", None, ["float32", "float16", "bfloat16"],
    "Overrides train.mixed_precision: build the model under Keras's "
    "mixed_float16 (dynamic loss scaling) or mixed_bfloat16 policy; "
    "float32 variables, every balancer and its state in float32.")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from keras_mtl import distribute  # imports TensorFlow; keep --help fast
    from keras_mtl import experiment

    kwargs = {}
    if FLAGS.distribution_strategy is not None:
        # First: MultiWorkerMirroredStrategy must exist before TensorFlow
        # runs anything (gin creates optimizers when train() is called).
        kwargs["strategy"] = distribute.get_strategy(FLAGS.distribution_strategy)
    experiment.register_gin_externals()
    import keras_mtl.data  # noqa: F401 (registers the dataset readers)
    import keras_mtl.models  # noqa: F401 (registers the model factories)

    bindings = list(FLAGS.gin_bindings)
    if FLAGS.arch:
        from keras_mtl.models import architectures

        bindings.insert(0, architectures.gin_binding(FLAGS.arch))
    if FLAGS.steps is not None:
        bindings.append(f"train.steps = {FLAGS.steps}")
    if FLAGS.verbose is not None:
        bindings.append(f"train.verbose = {FLAGS.verbose}")
    if FLAGS.mixed_precision is not None:
        bindings.append(f"train.mixed_precision = {FLAGS.mixed_precision!r}")
    if FLAGS.keep_checkpoints is not None:
        keep = None if FLAGS.keep_checkpoints < 0 else FLAGS.keep_checkpoints
        bindings.append(f"train.keep_checkpoints = {keep}")
    if FLAGS.best_checkpoint_monitor:
        bindings.append(
            f"train.best_checkpoint_monitor = {FLAGS.best_checkpoint_monitor!r}")
    from keras_mtl import configs  # --gin_file: a path or a shipped config
    configs.parse(FLAGS.gin_file, bindings)
    result = experiment.train(FLAGS.model_dir, **kwargs)
    print(f"Run written to {FLAGS.model_dir}: {result['metrics']}")


if __name__ == "__main__":
    app.run(main)

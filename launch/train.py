r"""Trains a multi-task model from gin configs.

    python -m launch.train --gin_file=gin/toy_gradnorm_t2.gin \
        --gin_bindings='GradNorm.alpha = 0.12' --model_dir=runs/toy_t2

Run length and output directory are flags; everything about the model, data
and method is in gin (see keras_mtl/experiment.py for what `train` binds).
The operative config is written to `<model_dir>/operative_config.gin`.
"""

from absl import app
from absl import flags
import gin

flags.DEFINE_multi_string("gin_file", [], "Gin config files, applied in order.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings overriding the files.")
flags.DEFINE_string("model_dir", None, "Output directory of the run.")
flags.DEFINE_integer("steps", None, "Overrides train.steps when given.")
flags.mark_flag_as_required("model_dir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from keras_mtl import experiment  # imports TensorFlow; keep --help fast

    experiment.register_gin_externals()
    import keras_mtl.data  # noqa: F401 (registers the dataset readers)
    import keras_mtl.models  # noqa: F401 (registers the model factories)

    bindings = list(FLAGS.gin_bindings)
    if FLAGS.steps is not None:
        bindings.append(f"train.steps = {FLAGS.steps}")
    gin.parse_config_files_and_bindings(FLAGS.gin_file, bindings)
    result = experiment.train(FLAGS.model_dir)
    print(f"Run written to {FLAGS.model_dir}: {result['metrics']}")


if __name__ == "__main__":
    app.run(main)

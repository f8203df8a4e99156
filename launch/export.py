r"""Exports a trained multi-task model as a SavedModel with per-task signatures.

    python -m launch.export --model=runs/toy_t2/model.keras --export_dir=export/toy_t2

Writes `serve` (all task outputs) and one `serve_<task>` signature per task
(see `keras_mtl.export.saved_model`); the batch dimension is dynamic.
"""

from absl import app
from absl import flags

flags.DEFINE_string("model", None, "A `.keras` file written by launch.train.")
flags.DEFINE_string("export_dir", None, "Directory of the SavedModel.")
flags.mark_flags_as_required(["model", "export_dir"])
FLAGS = flags.FLAGS


def export_model(model_path, export_dir):
    """Loads `model_path` and writes its SavedModel; returns the signature names."""
    import keras

    import keras_mtl  # noqa: F401 (registers the classes the file names)
    from keras_mtl import export

    model = keras.saving.load_model(model_path)
    return export.saved_model(model, export_dir)


def main(argv):
    del argv
    names = export_model(FLAGS.model, FLAGS.export_dir)
    print(f"SavedModel written to {FLAGS.export_dir}: signatures {names}")


if __name__ == "__main__":
    app.run(main)

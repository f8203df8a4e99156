"""Per-task SavedModel export of a `MultiTaskModel`."""

import re

import keras
import tensorflow as tf


def signature_name(task):
    """The per-task signature name `serve_<task>` (non-word characters -> `_`)."""
    return "serve_" + re.sub(r"\W", "_", task)


def _input_signature(model, input_signature):
    if input_signature is not None:
        return input_signature
    config = model.get_build_config() if model.built else None
    shape = (config or {}).get("input_shape")
    if shape is None:
        raise ValueError(
            f"Model '{model.name}' has no known input shape: call it on a batch "
            "(or fit it) before exporting, or pass `input_signature`."
        )
    if isinstance(shape, dict):
        return [{k: tf.TensorSpec((None,) + tuple(s)[1:], "float32", name=k)
                 for k, s in shape.items()}]
    return [tf.TensorSpec((None,) + tuple(shape)[1:], "float32", name="inputs")]


def saved_model(model, export_dir, input_signature=None, verbose=False):
    """Writes a SavedModel with one signature for all tasks and one per task.

    Signatures:

    - `serve`: inputs -> `{task: output}` for every task;
    - `serve_<task>`: inputs -> `{task: output}` computing only that task:
      the shared encoder (for a task-conditioned encoder, the task's own
      pass with its masks / SE / adapters, a constant task index) and that
      task's head. No other head, no discriminator, no balancer is in its
      graph.

    The batch dimension is dynamic. The SavedModel loads with
    `tf.saved_model.load` without keras-mtl (or Keras) installed; the
    signatures also exist as plain methods of the loaded object
    (`loaded.serve(x)`, `loaded.serve_depth(x)`).

    Args:
        model: a built `keras_mtl.MultiTaskModel`.
        export_dir: directory to write the SavedModel to.
        input_signature: optional list with one `tf.TensorSpec` (or a dict of
            them) for the model's input; defaults to the input shape the
            model was built with, batch dimension set to None, float32.
        verbose: print Keras' endpoint summary.

    Returns:
        the list of signature names written.

    Example:

    >>> keras_mtl.export.saved_model(model, "export/")
    >>> loaded = tf.saved_model.load("export/")
    >>> loaded.signatures["serve_depth"](inputs=x)["depth"]
    """
    from keras_mtl.model import MultiTaskModel

    if not isinstance(model, MultiTaskModel):
        raise ValueError(
            "`saved_model` exports a keras_mtl.MultiTaskModel. Received: "
            f"{type(model).__name__}"
        )
    names = [signature_name(t) for t in model.task_names]
    if len(set(names)) != len(names):
        raise ValueError(
            f"Task names {model.task_names} give clashing signature names {names}."
        )
    signature = _input_signature(model, input_signature)
    archive = keras.export.ExportArchive()
    # The network only: encoder and heads. Tracking the whole model would
    # also carry the balancer's state and the discriminator's variables,
    # which no signature uses.
    archive.track(model.encoder)
    for head in model.heads.values():
        if isinstance(head, keras.layers.Layer):
            archive.track(head)

    def serve(inputs):
        return model(inputs, training=False)

    archive.add_endpoint("serve", serve, input_signature=signature)
    for task, name in zip(model.task_names, names):
        def serve_task(inputs, task=task):
            return {task: model(inputs, training=False, tasks=[task])[task]}

        archive.add_endpoint(name, serve_task, input_signature=signature)
    archive.write_out(export_dir, verbose=verbose)
    return ["serve"] + names

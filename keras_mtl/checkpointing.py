"""Checkpoint compatibility: a model's tasks and balancer travel with its weights.

`.keras` files and `tf.train.Checkpoint`s of a `MultiTaskModel` hold its
signature (task names, balancer class); restoring into a model of another
task set or balancer raises instead of restoring partially (unmatched
checkpoint values are otherwise silently ignored).
"""

import json

import numpy as np
import tensorflow as tf

from keras_mtl import _keras_compat

_SIGNATURE_KEY = "keras_mtl_signature"


class CheckpointSignature(_keras_compat.Trackable):
    """Saves the model's tasks and balancer in `tf.train.Checkpoint`s.

    On restore it compares them with the model being restored into and
    raises instead of letting a checkpoint of another task set or balancer
    restore partially (unmatched checkpoint values are otherwise ignored).
    """

    def __init__(self, model):
        self._model_ref = model

    def _serialize_to_tensors(self):
        return {_SIGNATURE_KEY: tf.constant(json.dumps(signature(self._model_ref)))}

    def _restore_from_tensors(self, restored_tensors):
        saved = restored_tensors[_SIGNATURE_KEY]
        check(self._model_ref, json.loads(saved.numpy().decode()))
        return tf.no_op()



def signature(model):
    """`{"tasks": [...], "balancer": class name or None}`."""
    balancer = model.balancer
    return {
        "tasks": list(model.task_names),
        "balancer": None if balancer is None else type(balancer).__name__,
    }


def check(model, saved):
    """Raises a clear error if a saved signature does not fit `model`."""
    mine = signature(model)
    problems = []
    if saved.get("tasks") != mine["tasks"]:
        problems.append(
            f"it has {len(saved.get('tasks') or [])} tasks {saved.get('tasks')}, "
            f"this model {len(mine['tasks'])} tasks {mine['tasks']}"
        )
    if None not in (saved.get("balancer"), mine["balancer"]) and (
        saved["balancer"] != mine["balancer"]
    ):
        problems.append(
            f"it was made with balancer {saved['balancer']}, this model is "
            f"compiled with {mine['balancer']}"
        )
    if problems:
        raise ValueError(
            f"Cannot restore a checkpoint of another multi-task setup into "
            f"model '{model.name}': " + "; ".join(problems) + ". Build and "
            "compile the model as it was when the checkpoint was saved."
        )


def save_signature(model, store):
    """Adds the signature to a `.keras` variable store."""
    text = json.dumps(signature(model)).encode("utf-8")
    store[_SIGNATURE_KEY] = np.frombuffer(text, dtype="uint8")


def check_and_strip_signature(model, store):
    """Checks a `.keras` store's signature (if any); returns the store without it."""
    keys = list(store.keys())
    if _SIGNATURE_KEY not in keys:
        return store
    raw = np.asarray(store[_SIGNATURE_KEY], dtype="uint8").tobytes()
    check(model, json.loads(raw.decode("utf-8")))
    return {k: store[k] for k in keys if k != _SIGNATURE_KEY}

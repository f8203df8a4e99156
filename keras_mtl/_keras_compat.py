"""The one seam between keras-mtl and private Keras / TensorFlow APIs.

Everything keras-mtl needs that Keras does not export publicly goes through
this module, so that a Keras upgrade that moves one of them touches this file
only. Each function says what it wraps.
"""

import contextlib

import keras
import tensorflow as tf
from keras.src.losses import loss as _loss_module
from keras.src.losses.losses import LossFunctionWrapper as _LossFunctionWrapper
from keras.src.saving import serialization_lib as _serialization_lib

LossFunctionWrapper = _LossFunctionWrapper
"""`keras.losses.Loss` around a plain loss function (reductions, sample weights)."""

Trackable = tf.__internal__.tracking.Trackable
"""TensorFlow's checkpointable base (for objects a `tf.train.Checkpoint` saves)."""


def unscale_loss_for_distribution(value):
    """Undoes the 1/R a Keras `Loss` applies under a strategy: the replica's mean."""
    return _loss_module.unscale_loss_for_distribution(value)


def serializable_dict(**kwargs):
    """The dict type Keras stores as `model._compile_config`."""
    return _serialization_lib.SerializableDict(**kwargs)


def deserialize_compile_config(config):
    return _serialization_lib.deserialize_keras_object(config)


def set_compile_config(model, **kwargs):
    """What `Model.compile` records so that `.keras` files re-compile the model."""
    model._compile_config = serializable_dict(**kwargs)


def flatten_layers(layer, include_self=True):
    """Every layer nested in `layer` (recursively), Keras's own traversal."""
    if not isinstance(layer, keras.layers.Layer):
        return []
    return list(layer._flatten_layers(include_self=include_self, recursive=True))


def set_tracked(layer, name, value):
    """Sets a tracked attribute of a built layer, untracking the previous value.

    Keras locks a layer's tracker once built; compile-time state (balancer,
    metrics, group optimizers) is replaced on every `compile`.
    """
    old = getattr(layer, name, None)
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        if old is not None:
            for item in old.values() if isinstance(old, dict) else [old]:
                for o in item if isinstance(item, list) else [item]:
                    tracker.untrack(o)
        setattr(layer, name, value)
    finally:
        if locked:
            tracker.lock()


def optimizer_learning_rate(optimizer):
    """The optimizer's learning rate as given: a float or a schedule object."""
    return optimizer._learning_rate


def optimizer_slots(optimizer, variables):
    """The optimizer variables (slots) that belong to `variables`.

    Keras optimizers name the slots they create for a variable after the
    variable's path (`add_variable_from_reference`): `<path with _>_<slot>`.
    """
    if not optimizer.built:
        return []
    prefixes = [v.path.replace("/", "_") + "_" for v in variables]
    own = {id(optimizer.iterations)}
    lr = getattr(optimizer, "_learning_rate", None)
    if isinstance(lr, keras.Variable):
        own.add(id(lr))
    out = []
    for slot in optimizer.variables:
        if id(slot) in own:
            continue
        if any(slot.name.startswith(p) for p in prefixes):
            out.append(slot)
    return out


def mark_built(layer):
    """Marks a layer built without calling its `build` (it was built by a call)."""
    layer.built = True


def updates_without_merge_call():
    """Whether the current strategy updates variables without `merge_call`."""
    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def forget_build_batch_size(layer):
    """Records a layer's build shapes with batch size None.

    A subclassed model is built by an eager call on one example, so Keras
    would report (and save) batch size 1; summaries and build configs should
    show the batch dimension as free, as a functional model's do.
    """
    shapes = getattr(layer, "_build_shapes_dict", None)
    if not shapes:
        return

    def unbatch(shape):
        if isinstance(shape, (tuple, list)) and shape and not isinstance(shape[0], (tuple, list, dict)):
            return (None,) + tuple(shape[1:])
        if isinstance(shape, dict):
            return {k: unbatch(v) for k, v in shape.items()}
        if isinstance(shape, (tuple, list)):
            return type(shape)(unbatch(v) for v in shape)
        return shape

    layer._build_shapes_dict = {k: unbatch(v) for k, v in shapes.items()}


@contextlib.contextmanager
def unlocked_state(layer):
    """Lets a built layer create state (Keras locks the tracker after `build`).

    For state whose size is known only later (a balancer's per-parameter
    state, sized when the model's shared variables exist).
    """
    tracker = layer._tracker
    locked = tracker.locked
    tracker.unlock()
    try:
        yield
    finally:
        if locked:
            tracker.lock()


def clear_losses(layer):
    """Forgets the `add_loss` values of earlier calls of `layer` and every sublayer.

    Keras clears them when a call enters through the model's `__call__`; the
    train step calls the encoder and the present tasks' heads directly, so a
    head skipped in a step (its task absent) would still hold a loss tensor of
    an earlier step (another graph).
    """
    layer._clear_losses()

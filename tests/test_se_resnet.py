"""SE-ResNet + DeepLabV3+ (attentive single-tasking) and its model-level training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.layers import TaskSqueezeExcite, fold_tasks
from keras_mtl.layers.task_conditioned import task_conditioned_layers
from keras_mtl.models.se_resnet import (
    TINY,
    SEResNetDeepLabEncoder,
    astmt_deeplab,
    shared_deeplab,
)

TASKS = {"seg": 3, "depth": 1}


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    # 4x4-pixel blocks: the labels are resolvable at the decoder's stride 4.
    x = rng.uniform(size=(n, 8, 8, 3)).repeat(4, axis=1).repeat(4, axis=2).astype("float32")
    seg = np.digitize(x[..., 0], [0.33, 0.66]).astype("int32")  # 3 classes from red
    depth = x[..., 1:2] * 2.0 - x[..., 2:3]
    return x, {"seg": seg, "depth": depth}


def _compile(model, lr=5e-3, **kwargs):
    model.compile(
        optimizer=keras.optimizers.Adam(lr, **kwargs),
        loss={"seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "depth": "mse"},
    )
    return model


def test_encoder_modes():
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    shared = SEResNetDeepLabEncoder(2, se_encoder="shared", se_decoder=False, **TINY)
    assert not shared.task_conditioned
    z = shared(x, training=False)
    assert z.shape == (2, 8, 8, TINY["decoder_filters"])
    assert not any(getattr(l, "task_conditioned", False) for l in
                   shared._flatten_layers(include_self=False, recursive=True))

    # Decoder-only modulation: the backbone blocks stay shared.
    dec_only = SEResNetDeepLabEncoder(2, se_encoder="shared", se_decoder=True, **TINY)
    folded, task = fold_tasks(x, 2)
    z = dec_only(folded, task=task, training=False).numpy()
    assert not any(b.task_conditioned for b in dec_only.blocks)
    owners = [l.name for l in task_conditioned_layers(dec_only) if l.task_variables(0)]
    assert owners and all(n.startswith(("decoder", "low_level")) for n in owners), owners
    assert np.abs(z[:2] - z[2:]).max() > 1e-4  # the task changes the features
    # Task SE everywhere: every block is task-conditioned.
    full = SEResNetDeepLabEncoder(2, se_encoder="task", se_decoder=True,
                                  residual_adapters=True, **TINY)
    full(folded, task=task)
    assert all(b.task_conditioned for b in full.blocks)
    # Task-specific variables are a small part of the network (SE, adapters, BN).
    task_vars = {id(v) for l in task_conditioned_layers(full) if hasattr(l, "task_variables")
                 for t in range(2) for v in l.task_variables(t)}
    assert 0 < len(task_vars) < len(full.weights)
    with pytest.raises(ValueError, match="task="):
        full(x)


def test_model_outputs_and_task_subset():
    x, _ = _data(2)
    for model in (shared_deeplab(TASKS, config=TINY), astmt_deeplab(TASKS, config=TINY)):
        out = model(x, training=False)
        assert set(out) == {"seg", "depth"}
        assert out["seg"].shape == (2, 32, 32, 3) and out["depth"].shape == (2, 32, 32, 1)
        only = model(x, training=False, tasks=["depth"])
        assert set(only) == {"depth"}
        np.testing.assert_allclose(only["depth"].numpy(), out["depth"].numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert not shared_deeplab(TASKS, config=TINY).task_conditioned


@pytest.mark.slow
def test_astmt_deeplab_se_adversarial_training():
    keras.utils.set_random_seed(0)
    x, y = _data(16)
    model = _compile(astmt_deeplab(TASKS, config=TINY, adversarial=True,
                                   discriminator_hidden_units=8), lr=1e-2)
    history = model.fit(x, y, batch_size=8, epochs=30, verbose=0).history
    for task in TASKS:
        first, last = history[f"{task}_loss"][0], history[f"{task}_loss"][-1]
        assert last < 0.7 * first, (task, history[f"{task}_loss"])
    assert all(0.0 <= a <= 1.0 for a in history["discriminator_accuracy"])
    assert set(model.predict(x[:2], verbose=0)) == {"seg", "depth"}


def test_keras_file_round_trip_keeps_outputs_and_reversal_strength(tmp_path):
    x, _ = _data(2)
    model = astmt_deeplab(TASKS, config=TINY, adversarial=True, discriminator_hidden_units=4)
    out = model(x, training=False)
    model.discriminator(tf.zeros((1, 8, 8, TINY["decoder_filters"])))
    model.discriminator.set_reversal_strength(0.25)
    path = str(tmp_path / "astmt.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    again = loaded(x, training=False)
    for task in TASKS:
        np.testing.assert_array_equal(out[task].numpy(), again[task].numpy())
    assert float(loaded.discriminator.strength.numpy()) == 0.25


def test_decoder_only_encoder_runs_its_backbone_once_equivalently():
    x = np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype("float32")
    encoder = SEResNetDeepLabEncoder(2, se_encoder="shared", se_decoder=True, **TINY)
    assert encoder.has_shared_prefix
    folded, task = fold_tasks(x, 2)
    full = encoder(folded, task=task, training=False).numpy()
    prefix = encoder.shared_prefix(x, training=False)  # the backbone, once
    refolded, _ = fold_tasks(prefix, 2)
    once = encoder.task_suffix(refolded, task=task, training=False).numpy()
    np.testing.assert_allclose(once, full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no shared prefix"):
        SEResNetDeepLabEncoder(2, se_encoder="task", **TINY).shared_prefix(x)

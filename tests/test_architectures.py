"""Paper architectures: unpooling, shapes, task-layer insertion, paper parameter counts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_mtl.layers import TaskMask
from keras_mtl.layers import TaskRouting
from keras_mtl.layers import TaskSqueezeExcite
from keras_mtl.models import ConvStackCNN
from keras_mtl.models import MaxPoolingWithArgmax2D
from keras_mtl.models import MaxUnpooling2D
from keras_mtl.models import ResNet
from keras_mtl.models import ResNetFCN
from keras_mtl.models import SegNet
from keras_mtl.models import mtfl_cnn_multitask
from keras_mtl.models import resnet18_multitask
from keras_mtl.models import segnet_multitask
from keras_mtl.models import thin_resnet_multitask
from keras_mtl.models.heads import clone_task_layer
from keras_mtl.models.segnet import max_pool_with_argmax
from keras_mtl.models.segnet import max_unpool

TINY_SEGNET = dict(filters=(4, 8), convs_per_stage=(1, 1), head_filters=4)


def trainable_count(layer):
    return int(sum(np.prod(v.shape) for v in layer.trainable_weights))


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype("float32")


# --- max-pool indices and unpooling ----------------------------------------


def test_unpooling_matches_a_hand_worked_example():
    x = np.array(
        [[1, 5, 2, 0],
         [3, 4, 7, 1],
         [0, 2, 9, 8],
         [6, 1, 3, 4]], dtype="float32",
    ).reshape(1, 4, 4, 1)
    pooled, indices = MaxPoolingWithArgmax2D()(x)
    np.testing.assert_array_equal(pooled.numpy()[0, ..., 0], [[5, 7], [6, 9]])
    # window position dy * 2 + dx of each maximum
    np.testing.assert_array_equal(indices.numpy()[0, ..., 0], [[1, 2], [2, 0]])
    up = MaxUnpooling2D()([pooled, indices]).numpy()[0, ..., 0]
    np.testing.assert_array_equal(
        up,
        [[0, 5, 0, 0],
         [0, 0, 7, 0],
         [0, 0, 9, 0],
         [6, 0, 0, 0]],
    )


def test_unpooling_agrees_with_tf_max_pool_with_argmax():
    x = rand(2, 6, 8, 3, seed=1)
    pooled, indices = max_pool_with_argmax(tf.constant(x))
    ref, ref_idx = tf.nn.max_pool_with_argmax(
        x, 2, 2, "VALID", include_batch_in_index=True
    )
    np.testing.assert_allclose(pooled, ref, rtol=0, atol=0)
    scattered = tf.scatter_nd(
        tf.reshape(ref_idx, [-1, 1]), tf.reshape(ref, [-1]), [x.size]
    ).numpy().reshape(x.shape)
    np.testing.assert_allclose(max_unpool(pooled, indices), scattered, atol=0)


def test_pooling_gradient_reaches_only_the_window_maximum():
    x = tf.constant(rand(1, 4, 6, 2, seed=2))
    w = tf.constant(rand(1, 2, 3, 2, seed=3))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = tf.reduce_sum(max_pool_with_argmax(x)[0] * w)
        ref = tf.reduce_sum(tf.nn.max_pool2d(x, 2, 2, "VALID") * w)
    np.testing.assert_allclose(tape.gradient(ours, x), tape.gradient(ref, x), atol=1e-7)


# --- shapes ------------------------------------------------------------------


def test_segnet_output_resolution_follows_decoder_stages():
    x = rand(2, 32, 32, 3)
    full = SegNet(filters=(4, 8, 8), convs_per_stage=(1, 1, 2), output_filters=6)
    assert full(x).shape == (2, 32, 32, 6)
    # GradNorm's 320 -> 80: two pooling stages left un-decoded give stride 4
    quarter = SegNet(filters=(4, 8, 8), convs_per_stage=(1, 1, 2), decoder_stages=1)
    assert quarter(x).shape == (2, 8, 8, 8)
    assert quarter.compute_output_shape((None, 32, 32, 3)) == (None, 8, 8, 8)


def test_segnet_rejects_sizes_the_indices_cannot_invert():
    with pytest.raises(ValueError, match="divisible by 4"):
        SegNet(filters=(4, 8), convs_per_stage=(1, 1))(rand(1, 30, 32, 3))
    with pytest.raises(ValueError, match="decoder_stages"):
        SegNet(filters=(4, 8), convs_per_stage=(1, 1), decoder_stages=3)


def test_multitask_factories_give_one_output_per_task():
    x = rand(2, 32, 32, 3)
    seg = segnet_multitask({"seg": 5, "depth": 1, "normals": 3}, **TINY_SEGNET)
    out = seg(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "seg": (2, 32, 32, 5), "depth": (2, 32, 32, 1), "normals": (2, 32, 32, 3)}
    # normals are unit vectors (an all-zero pre-activation stays 0 at init: zero biases)
    norms = np.linalg.norm(out["normals"], axis=-1)
    assert np.mean(norms > 0) > 0.8
    np.testing.assert_allclose(norms[norms > 0], 1.0, rtol=1e-5)

    fcn = thin_resnet_multitask(
        {"seg": 5, "depth": 1}, stage_blocks=(1, 1), stage_filters=(8, 16),
        bottleneck_filters=(2, 4), stage_strides=(2, 1), stem_filters=4,
        upsample_filters=(8, 8),
    )
    assert fcn(x)["seg"].shape == (2, 16, 16, 5)  # stride-8 trunk (4x4), 2 upsamplings

    r18 = resnet18_multitask({"eyes": 5, "nose": 2}, stage_filters=(4, 4, 8, 8), stem_filters=4)
    assert {k: tuple(v.shape) for k, v in r18(x).items()} == {"eyes": (2, 5), "nose": (2, 2)}

    mtfl = mtfl_cnn_multitask(resolution=40)
    out = mtfl(rand(2, 40, 40, 1))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "landmarks": (2, 10), "gender": (2, 2), "smile": (2, 2), "glasses": (2, 2), "pose": (2, 5)}


def test_mtfl_40_stack_shapes_follow_valid_padding():
    cnn = ConvStackCNN(["C5-20", "P", "C3-48", "P", "C3-64", "P", "C2-80"], fc_units=(), padding="valid")
    # 40 -c5-> 36 -p-> 18 -c3-> 16 -p-> 8 -c3-> 6 -p-> 3 -c2-> 2; 2*2*80 flattened
    assert cnn(rand(1, 40, 40, 1)).shape == (1, 320)
    with pytest.raises(ValueError, match="C<kernel>-<filters>"):
        ConvStackCNN(["C3-8", "Q"])


# --- parameter counts at paper widths ------------------------------------------


def test_resnet18_and_resnet50_trunks_match_he_et_al_parameter_counts():
    r18 = ResNet()
    r18.build((None, 64, 64, 3))
    assert trainable_count(r18) == 11_176_512  # ResNet-18 without its classifier
    r50 = ResNet(stage_blocks=(3, 4, 6, 3), stage_filters=(256, 512, 1024, 2048),
                 bottleneck_filters=(64, 128, 256, 512))
    r50.build((None, 224, 224, 3))
    assert trainable_count(r50) == 23_508_032  # ResNet-50 without its classifier


def test_gradnorm_segnet_and_thin_resnet_sizes():
    segnet = SegNet(decoder_stages=3)
    segnet.build((None, 320, 320, 3))
    assert segnet.compute_output_shape((None, 320, 320, 3)) == (None, 80, 80, 128)
    n_segnet = trainable_count(segnet)
    assert 28.5e6 < n_segnet < 29.5e6  # "the VGG SegNet has 29M parameters"
    thin = ResNetFCN()
    thin.build((None, 320, 320, 3))
    assert tuple(thin.compute_output_shape((None, 320, 320, 3))) == (None, 80, 80, 64)
    n_thin = trainable_count(thin)
    assert 14e6 < n_thin < 15.5e6  # "~14M" (preprint) / "15M" (ICML)
    assert max(w.shape[-1] for w in thin.trainable_weights if len(w.shape) == 4) == 1024


def test_mtfl_160_parameter_count_by_hand():
    model = mtfl_cnn_multitask(resolution=160, input_shape=(160, 160, 3))

    def conv(k, cin, cout):
        return k * k * cin * cout + cout

    trunk = (conv(5, 3, 16) + conv(3, 16, 32) + conv(3, 32, 32) + conv(3, 32, 64)
             + conv(3, 64, 64) + conv(3, 64, 128) + 3 * conv(3, 128, 128)
             + (5 * 5 * 128) * 100 + 100)  # 160 / 2**5 = 5 after five pools; FC-100
    heads = 100 * 21 + 21  # the final FC split into 10 + 2 + 2 + 2 + 5 (pose has 5 classes)
    assert trainable_count(model.encoder) == trunk
    assert trainable_count(model) == trunk + heads


# --- task-layer insertion -----------------------------------------------------


def test_task_masks_are_inserted_at_every_shared_convolution():
    trunk = SegNet(filters=(4, 8), convs_per_stage=(1, 2),
                   task_layer=TaskRouting(num_tasks=2, sharing_ratio=0.0, seed=7))
    x = rand(3, 8, 8, 3)
    masks = [l for l in trunk._flatten_layers() if isinstance(l, TaskRouting)]
    assert len(masks) == 3 + 3  # encoder convs + mirrored decoder convs
    assert len({m.seed for m in masks}) == len(masks)  # independent draws
    with pytest.raises(ValueError, match="task="):
        trunk(x)
    z0 = trunk(x, task=np.zeros(3, "int32")).numpy()
    z1 = trunk(x, task=np.ones(3, "int32")).numpy()
    last = trunk.decoder_convs[-1].task_block.mask.numpy()  # (channels, T)
    for t, z in ((0, z0), (1, z1)):
        off = last[:, t] == 0
        assert off.any()
        assert np.all(z[..., off] == 0.0)  # a disjoint partition: masked channels are dead
    assert not np.allclose(z0, z1)
    shared = SegNet(filters=(4, 8), convs_per_stage=(1, 2),
                    task_layer=TaskRouting(num_tasks=2, sharing_ratio=1.0, seed=7))
    np.testing.assert_allclose(
        shared(x, task=np.zeros(3, "int32")), shared(x, task=np.ones(3, "int32")))


def test_task_se_in_resnet_and_num_tasks_checked_by_model():
    model = resnet18_multitask({"a": 2, "b": 3}, stage_blocks=(1, 1), stage_filters=(8, 8),
                               stem_filters=8, task_layer=TaskSqueezeExcite(num_tasks=2, ratio=4))
    assert model.task_conditioned
    out = model(rand(2, 16, 16, 3))
    assert out["a"].shape == (2, 2) and out["b"].shape == (2, 3)
    with pytest.raises(ValueError, match="num_tasks=3"):
        resnet18_multitask({"a": 2, "b": 3}, stage_blocks=(1,), stage_filters=(8,),
                           stem_filters=8, task_layer=TaskMask(num_tasks=3, seed=0))
    with pytest.raises(ValueError, match="task_layer"):
        clone_task_layer("TaskMask")


def test_task_conditioned_segnet_trains_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    # piecewise-constant 4x4 blocks: SegNet (no skip connections) can map them
    x = np.kron(rand(4, 4, 4, 3, seed=5), np.ones((1, 4, 4, 1))).astype("float32")
    y = {"seg": (x[..., 0] > 0.5).astype("int32"), "depth": x[..., 1:2] * 2.0}
    model = segnet_multitask(
        {"seg": 2, "depth": 1}, **TINY_SEGNET,
        task_layer=TaskMask(num_tasks=2, sharing_ratio=0.6, seed=1), input_shape=(16, 16, 3))
    model.compile(
        optimizer=keras.optimizers.Adam(2e-2),
        loss={"seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "depth": "mse"},
    )
    history = model.fit(x, y, batch_size=4, epochs=40, verbose=0).history
    assert history["loss"][-1] < 0.25 * history["loss"][0]
    before = model(x)
    path = str(tmp_path / "segnet.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    after = restored(x)
    for task in before:
        np.testing.assert_allclose(before[task], after[task], atol=1e-6)
    restored_masks = [l.mask.numpy() for l in restored.encoder._flatten_layers()
                      if isinstance(l, TaskMask)]
    masks = [l.mask.numpy() for l in model.encoder._flatten_layers() if isinstance(l, TaskMask)]
    assert len(masks) == 4
    for a, b in zip(masks, restored_masks):
        np.testing.assert_array_equal(a, b)

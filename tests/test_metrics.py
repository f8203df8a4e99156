"""Metrics checked against values computed by hand (issue 7, Metrics)."""

import math

import keras
import numpy as np
import pytest

from keras_mtl import metrics as mtl_metrics


def one_hot_logits(classes, num_classes):
    """Logits whose argmax is `classes`."""
    return 3.0 * np.eye(num_classes, dtype="float32")[np.asarray(classes)]


# ---------------------------------------------------------------- segmentation

SEG_TRUE = np.array([[[0, 0, 1], [1, 2, -1]]])           # one 2x3 image, one ignored pixel
SEG_PRED = np.array([[[0, 1, 1], [2, 2, 0]]])            # last pixel ignored
# Confusion (rows truth): class 0: [1, 1, 0]; class 1: [0, 1, 1]; class 2: [0, 0, 1]
# IoU_0 = 1/(2+1-1) = 1/2, IoU_1 = 1/(2+2-1) = 1/3, IoU_2 = 1/(1+2-1) = 1/2


def test_mean_iou_and_pixel_accuracy_by_hand():
    miou = mtl_metrics.MeanIoU(3)
    acc = mtl_metrics.PixelAccuracy(3)
    logits = one_hot_logits(SEG_PRED, 3)
    miou.update_state(SEG_TRUE, logits)
    acc.update_state(SEG_TRUE, logits)
    assert float(miou.result()) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3, abs=1e-6)
    assert float(acc.result()) == pytest.approx(3 / 5, abs=1e-6)


def test_mean_iou_accumulates_over_batches_not_mean_of_batches():
    miou = mtl_metrics.MeanIoU(3)
    logits = one_hot_logits(SEG_PRED, 3)
    # The same image split into its two rows, fed as two batches, with the
    # label of shape (B, H, W, 1) and stored as floats like the .npy files.
    for row in range(2):
        miou.update_state(
            SEG_TRUE[:, row : row + 1, :, None].astype("float32"), logits[:, row : row + 1]
        )
    assert float(miou.result()) == pytest.approx(4 / 9, abs=1e-6)
    miou.reset_state()
    assert float(miou.result()) == 0.0


def test_mean_iou_skips_absent_classes_and_sample_weight_masks_images():
    miou = mtl_metrics.MeanIoU(4)  # class 3 never occurs: not averaged in
    y_true = np.concatenate([SEG_TRUE, np.full_like(SEG_TRUE, 3)])
    logits = one_hot_logits(np.concatenate([SEG_PRED, np.zeros_like(SEG_PRED)]), 4)
    miou.update_state(y_true, logits, sample_weight=np.array([1.0, 0.0]))
    assert float(miou.result()) == pytest.approx(4 / 9, abs=1e-6)


def test_mean_iou_matches_keras_mean_iou_with_ignore_class():
    rng = np.random.default_rng(0)
    y_true = rng.integers(-1, 5, size=(3, 6, 7))
    logits = rng.normal(size=(3, 6, 7, 5)).astype("float32")
    ours = mtl_metrics.MeanIoU(5)
    ours.update_state(y_true, logits)
    reference = keras.metrics.MeanIoU(5, ignore_class=-1, sparse_y_pred=False)
    reference.update_state(y_true, logits)
    assert float(ours.result()) == pytest.approx(float(reference.result()), abs=1e-6)


def test_binary_single_channel_segmentation():
    # y_pred (B, H, W, 1) logits: > 0 means class 1.
    y_true = np.array([[[1, 0, 1, 0]]])  # (1, 1, 4)
    y_pred = np.array([[[[2.0], [0.5], [-1.0], [-3.0]]]])  # (1, 1, 4, 1)
    miou = mtl_metrics.MeanIoU(2)
    miou.update_state(y_true, y_pred)
    # truth 1,0,1,0 ; pred 1,1,0,0 -> IoU_1 = 1/3, IoU_0 = 1/3
    assert float(miou.result()) == pytest.approx(1 / 3, abs=1e-6)
    probs = mtl_metrics.PixelAccuracy(2, from_logits=False)
    probs.update_state(np.array([[1, 0, 1]]), np.array([[[0.7], [0.2], [0.4]]]))
    assert float(probs.result()) == pytest.approx(2 / 3, abs=1e-6)


def test_invalid_num_classes_message():
    with pytest.raises(ValueError, match="Expected an integer >= 2. Received: num_classes=1"):
        mtl_metrics.MeanIoU(1)


# ----------------------------------------------------------------------- depth


def test_depth_errors_by_hand_skip_invalid_pixels():
    y_true = np.array([[[2.0], [4.0]], [[0.0], [1.0]]])  # (2, 2, 1), one missing
    y_pred = np.array([[[3.0], [3.0]], [[7.0], [0.5]]])
    errors = np.array([1.0, 1.0, 0.5])
    truths = np.array([2.0, 4.0, 1.0])
    expected = {
        mtl_metrics.DepthAbsError: errors.mean(),
        mtl_metrics.DepthRelError: (errors / truths).mean(),  # (0.5 + 0.25 + 0.5) / 3
        mtl_metrics.DepthRMSE: math.sqrt((errors**2).mean()),
    }
    for cls, value in expected.items():
        m = cls()
        m.update_state(y_true, y_pred)
        assert float(m.result()) == pytest.approx(value, rel=1e-6), cls.__name__


def test_depth_rmse_pools_squares_over_batches():
    m = mtl_metrics.DepthRMSE()
    m.update_state(np.array([[1.0, 1.0, 1.0]]), np.array([[2.0, 1.0, 1.0]]))  # 1 sq. error of 1
    m.update_state(np.array([[1.0]]), np.array([[4.0]]))  # 1 sq. error of 9
    assert float(m.result()) == pytest.approx(math.sqrt(10 / 4), rel=1e-6)  # not mean of 0.577, 3


# --------------------------------------------------------------------- normals


def test_normal_angles_by_hand():
    z = [0.0, 0.0, 1.0]
    y_true = np.array([[z, z, z, z, [0.0, 0.0, 0.0]]])
    s = math.sqrt(3) / 2
    # angles 0 (scaled prediction), 60, 90, 180; the last pixel is invalid.
    y_pred = np.array([[[0, 0, 5.0], [s, 0, 0.5], [0, 1.0, 0], [0, 0, -2.0], [1.0, 0, 0]]])
    mean = mtl_metrics.NormalMeanAngle()
    mean.update_state(y_true, y_pred)
    assert float(mean.result()) == pytest.approx((0 + 60 + 90 + 180) / 4, abs=1e-4)
    for threshold, fraction in ((11.25, 1 / 4), (22.5, 1 / 4), (30, 1 / 4), (61, 2 / 4)):
        within = mtl_metrics.NormalWithinAngle(threshold)
        within.update_state(y_true, y_pred)
        assert float(within.result()) == pytest.approx(100 * fraction, abs=1e-4)
    cosine = mtl_metrics.NormalCosineError()
    cosine.update_state(y_true, y_pred)
    # 1 - |cos|: 0, 0.5, 1, 0 (antiparallel counts as right)
    assert float(cosine.result()) == pytest.approx(1.5 / 4, abs=1e-6)
    median = mtl_metrics.NormalMedianAngle()
    median.update_state(y_true, y_pred)
    assert float(median.result()) == pytest.approx(75.0, abs=0.01)  # mean of 60 and 90


def test_small_angles_are_accurate():
    angle = math.radians(0.5)
    m = mtl_metrics.NormalMeanAngle()
    m.update_state(np.array([[[0.0, 0.0, 1.0]]]), np.array([[[math.sin(angle), 0.0, math.cos(angle)]]]))
    assert float(m.result()) == pytest.approx(0.5, abs=1e-5)


def test_normal_median_matches_numpy_within_bin_width():
    rng = np.random.default_rng(1)
    y_true = rng.normal(size=(2, 9, 11, 3))
    y_pred = y_true + rng.normal(scale=0.4, size=y_true.shape)
    cos = np.sum(y_true * y_pred, -1) / np.linalg.norm(y_true, axis=-1) / np.linalg.norm(y_pred, axis=-1)
    angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    m = mtl_metrics.NormalMedianAngle()
    m.update_state(y_true[:1], y_pred[:1])
    m.update_state(y_true[1:], y_pred[1:])
    assert float(m.result()) == pytest.approx(np.median(angles), abs=0.01)
    mean = mtl_metrics.NormalMeanAngle()
    mean.update_state(y_true, y_pred)
    assert float(mean.result()) == pytest.approx(angles.mean(), abs=1e-3)


# ------------------------------------------------------------------- keypoints


def test_keypoint_error_and_failure_rate_by_hand():
    # Two faces, K = 5, MTFL layout (x1..x5, y1..y5); eyes at (0,0) and (20,0).
    truth = np.array([0, 20, 10, 5, 15, 0, 0, 10, 20, 20], "float32")
    pred_a = truth.copy()
    pred_a[0] += 3.0
    pred_a[5] += 4.0  # left eye off by 5 px -> e = (5/5) / 20 = 0.05
    pred_b = truth.copy()
    pred_b[:5] += 6.0
    pred_b[5:] += 8.0  # every point off by 10 px -> e = 10 / 20 = 0.5
    y_true = np.stack([truth, truth])
    y_pred = np.stack([pred_a, pred_b])
    error = mtl_metrics.KeypointError()
    error.update_state(y_true, y_pred)
    assert float(error.result()) == pytest.approx((0.05 + 0.5) / 2, rel=1e-6)
    failures = mtl_metrics.KeypointFailureRate()
    failures.update_state(y_true, y_pred)
    assert float(failures.result()) == pytest.approx(0.5)
    # Interleaved layout of the same points gives the same numbers.
    def interleave(v):
        return np.stack([v[:, :5], v[:, 5:]], -1).reshape(-1, 10)

    inter = mtl_metrics.KeypointError(layout="interleaved")
    inter.update_state(interleave(y_true), interleave(y_pred))
    assert float(inter.result()) == pytest.approx(float(error.result()), rel=1e-6)


def test_keypoint_error_is_scale_invariant():
    rng = np.random.default_rng(2)
    y_true = rng.uniform(size=(4, 10))
    y_pred = y_true + rng.normal(scale=0.02, size=(4, 10))
    a, b = mtl_metrics.KeypointError(), mtl_metrics.KeypointError()
    a.update_state(y_true, y_pred)
    b.update_state(40 * y_true, 40 * y_pred)  # same faces at 40x40 pixels
    assert float(a.result()) == pytest.approx(float(b.result()), rel=1e-5)


# ------------------------------------------------------------------ attributes


def test_attribute_scores_by_hand():
    y_true = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 0]])
    y_pred = np.array([[2, 1, -1], [-1, 1, -1], [1, -2, -1], [3, -1, -1]], "float32")
    # attribute 0: TP 2, FP 1, FN 1 -> P 2/3, R 2/3, F 2/3
    # attribute 1: TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F 1/2
    # attribute 2: TP 0, FP 0, FN 1 -> P 0 (undefined), R 0, F 0
    expected = {"precision": (2 / 3 + 1 / 2) / 3, "recall": (2 / 3 + 1 / 2) / 3, "fscore": (2 / 3 + 1 / 2) / 3}
    for statistic, value in expected.items():
        m = mtl_metrics.AttributeScore(3, statistic)
        m.update_state(y_true, y_pred)
        assert float(m.result()) == pytest.approx(value, rel=1e-6), statistic


def test_attribute_fscore_is_mean_of_per_attribute_f():
    y_true = np.array([[1, 1], [0, 1], [0, 1]])
    y_pred = np.array([[1, 1], [1, -1], [1, -1]], "float32")
    # attr 0: P 1/3, R 1 -> F 1/2 ; attr 1: P 1, R 1/3 -> F 1/2
    # (F of the averaged P and R would be 2/3)
    f = mtl_metrics.AttributeFScore(2)
    f.update_state(y_true, y_pred)
    assert float(f.result()) == pytest.approx(0.5, rel=1e-6)
    p = mtl_metrics.AttributePrecision(2, from_logits=False)
    p.update_state(y_true, np.where(y_pred > 0, 0.8, 0.2))
    assert float(p.result()) == pytest.approx((1 / 3 + 1) / 2, rel=1e-6)


# ------------------------------------------------------ task-normalised loss


def test_task_normalized_loss_by_hand():
    assert mtl_metrics.task_normalized_loss([1.0, 50.0], [2.0, 100.0]) == pytest.approx(1.0)
    curve = mtl_metrics.task_normalized_loss(np.array([[2.0, 100.0], [1.0, 25.0]]), [2.0, 100.0])
    np.testing.assert_allclose(curve, [2.0, 0.75])
    history = {"val_a_loss": [4.0, 2.0, 1.0], "val_b_loss": [10.0, 10.0, 5.0], "loss": [0, 0, 0]}
    np.testing.assert_allclose(
        mtl_metrics.task_normalized_loss_curve(history, ["a", "b"]), [2.0, 1.5, 0.75]
    )
    with pytest.raises(ValueError, match="Received: initial_losses"):
        mtl_metrics.task_normalized_loss([1.0], [0.0])


# ------------------------------------------------- compile and serialisation


def test_metrics_in_compile_match_direct_computation():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 2))
    seg = keras.layers.Conv2D(3, 1, name="seg")(inputs)
    depth = keras.layers.Conv2D(1, 1, name="depth")(inputs)
    model = keras.Model(inputs, {"seg": seg, "depth": depth})
    model.compile(
        loss={"seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1), "depth": "mae"},
        metrics={"seg": [mtl_metrics.MeanIoU(3)], "depth": [mtl_metrics.DepthAbsError()]},
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 4, 2)).astype("float32")
    y = {"seg": rng.integers(-1, 3, size=(6, 4, 4)), "depth": rng.uniform(0, 2, size=(6, 4, 4, 1)).astype("float32")}
    y["depth"][y["depth"] < 0.3] = 0.0
    results = model.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)
    pred = model.predict(x, verbose=0)
    miou, abs_err = mtl_metrics.MeanIoU(3), mtl_metrics.DepthAbsError()
    miou.update_state(y["seg"], pred["seg"])
    abs_err.update_state(y["depth"], pred["depth"])
    assert results["seg_mean_iou"] == pytest.approx(float(miou.result()), abs=1e-5)
    assert results["depth_depth_abs_error"] == pytest.approx(float(abs_err.result()), abs=1e-5)


@pytest.mark.parametrize(
    "metric",
    [
        mtl_metrics.MeanIoU(7, ignore_index=255, from_logits=False),
        mtl_metrics.PixelAccuracy(13),
        mtl_metrics.DepthRelError(invalid_value=-1.0),
        mtl_metrics.NormalWithinAngle(22.5),
        mtl_metrics.NormalMedianAngle(bin_width=0.5),
        mtl_metrics.KeypointFailureRate(threshold=0.08, layout="interleaved"),
        mtl_metrics.AttributeScore(9, "recall"),
    ],
    ids=lambda m: m.name,
)
def test_metric_config_round_trip(metric):
    config = keras.saving.serialize_keras_object(metric)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(metric)
    assert restored.get_config() == metric.get_config()


def test_metrics_inside_multitask_model_on_nyuv2_fixture(tmp_path):
    from keras_mtl import MultiTaskModel
    from keras_mtl.data import nyuv2, testing

    testing.write_nyuv2(str(tmp_path), num_train=4, num_val=3, height=8, width=8)
    val = nyuv2(str(tmp_path), split="val", batch_size=2)
    encoder = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
    model = MultiTaskModel(
        encoder,
        heads={"seg": keras.layers.Conv2D(13, 1), "depth": keras.layers.Conv2D(1, 1), "normal": keras.layers.Conv2D(3, 1)},
    )
    model.compile(
        loss={"seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1), "depth": "mae", "normal": "cosine_similarity"},
        metrics={
            "seg": [mtl_metrics.MeanIoU(13), mtl_metrics.PixelAccuracy(13)],
            "depth": [mtl_metrics.DepthAbsError(), mtl_metrics.DepthRelError(), mtl_metrics.DepthRMSE()],
            "normal": [mtl_metrics.NormalMeanAngle(), mtl_metrics.NormalMedianAngle(), mtl_metrics.NormalWithinAngle(30), mtl_metrics.NormalCosineError()],
        },
    )
    results = model.evaluate(val, return_dict=True, verbose=0)
    direct = {
        "seg_mean_iou": mtl_metrics.MeanIoU(13), "depth_depth_rmse": mtl_metrics.DepthRMSE(),
        "normal_normal_mean_angle": mtl_metrics.NormalMeanAngle(),
        "normal_normal_within_30": mtl_metrics.NormalWithinAngle(30),
    }
    for image, labels in val:
        outputs = model(image)
        for key, metric in direct.items():
            task = key.split("_")[0]
            metric.update_state(labels[task], outputs[task])
    for key, metric in direct.items():
        assert results[key] == pytest.approx(float(metric.result()), rel=1e-4, abs=1e-5), key
    assert 0 < results["normal_normal_median_angle"] < 180

"""The papers' per-task metric sets, and gin names for every metric.

Configs compile these as `train.metrics` (what `launch.evaluate` reports):

    train.metrics = {'seg': @segmentation_metrics(), 'depth': @depth_metrics(),
                     'normal': @normal_metrics()}
    segmentation_metrics.num_classes = 13

Single metrics are gin configurables too (`@MeanIoU()`, `@DepthRMSE()`,
`@keras.metrics.SparseCategoricalAccuracy()`, ...). Names are short
(`mean_iou`, `abs_error`, ...): the model reports them as `<task>_<name>`.
"""

import gin
import keras

from keras_mtl.metrics.attributes import AttributeScore
from keras_mtl.metrics.depth import DepthAbsError, DepthRelError, DepthRMSE
from keras_mtl.metrics.keypoints import KeypointError, KeypointFailureRate
from keras_mtl.metrics.normals import NormalCosineError, NormalMeanAngle, NormalMedianAngle, NormalWithinAngle
from keras_mtl.metrics.segmentation import MeanIoU, PixelAccuracy


@gin.configurable(module="keras_mtl.metrics")
def segmentation_metrics(num_classes=gin.REQUIRED, ignore_index=-1):
    """mIoU and pixel accuracy (MTAN, Maximum Roaming Tables 2-3, IMTL Table 1).

    For a binary task with one logit channel, `num_classes=2`.
    """
    return [MeanIoU(num_classes, ignore_index, name="mean_iou"),
            PixelAccuracy(num_classes, ignore_index, name="pixel_accuracy")]


@gin.configurable(module="keras_mtl.metrics")
def depth_metrics(rmse=False):
    """Absolute and relative depth error (MTAN, Maximum Roaming, IMTL), `rmse` too if asked."""
    metrics = [DepthAbsError(name="abs_error"), DepthRelError(name="rel_error")]
    return metrics + [DepthRMSE(name="rmse")] if rmse else metrics


@gin.configurable(module="keras_mtl.metrics")
def normal_metrics():
    """Angle mean and median, % within 11.25, 22.5 and 30 degrees (MTAN, MR Table 3, IMTL)."""
    return [NormalMeanAngle(name="mean_angle"), NormalMedianAngle(name="median_angle")] + [
        NormalWithinAngle(t, name=f"within_{t:g}".replace(".", "_")) for t in (11.25, 22.5, 30.0)
    ]


@gin.configurable(module="keras_mtl.metrics")
def attribute_metrics(num_attributes=gin.REQUIRED):
    """Precision, recall and F-score over binary attributes (Maximum Roaming Table 1)."""
    return [AttributeScore(num_attributes, s, name=s) for s in ("precision", "recall", "fscore")]


@gin.configurable(module="keras_mtl.metrics")
def landmark_metrics(num_keypoints=5):
    """Inter-ocular normalised keypoint error and failure rate (MTFL, Zhang et al. 2014)."""
    return [KeypointError(num_keypoints, name="keypoint_error"),
            KeypointFailureRate(num_keypoints=num_keypoints, name="failure_rate")]


for _cls in (MeanIoU, PixelAccuracy, DepthAbsError, DepthRelError, DepthRMSE,
             NormalMeanAngle, NormalMedianAngle, NormalWithinAngle, NormalCosineError,
             KeypointError, KeypointFailureRate, AttributeScore):
    gin.external_configurable(_cls, module="keras_mtl.metrics")
for _name in ("SparseCategoricalAccuracy", "CategoricalAccuracy", "BinaryAccuracy"):
    gin.external_configurable(getattr(keras.metrics, _name), module="keras.metrics")

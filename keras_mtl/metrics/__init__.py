"""Multi-task metrics (Keras metrics usable in `compile`) and summary scores."""

# Per-task Keras metrics (datasets-and-metrics helper, issue 7).
from keras_mtl.metrics.attributes import AttributeFScore, AttributePrecision, AttributeRecall, AttributeScore
from keras_mtl.metrics.depth import DepthAbsError, DepthRelError, DepthRMSE
from keras_mtl.metrics.keypoints import KeypointError, KeypointFailureRate
from keras_mtl.metrics.normals import NormalCosineError, NormalMeanAngle, NormalMedianAngle, NormalWithinAngle
from keras_mtl.metrics.segmentation import MeanIoU, PixelAccuracy
from keras_mtl.metrics.task_normalized import task_normalized_loss, task_normalized_loss_curve
from keras_mtl.metrics.delta_m import delta_m
from keras_mtl.metrics.sets import attribute_metrics, depth_metrics, landmark_metrics, normal_metrics, segmentation_metrics

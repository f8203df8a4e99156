"""Datasets as tf.data pipelines yielding (x, {task: label}); nothing is downloaded."""

# Readers of the papers' datasets (gin-configurable factories) and fixture writers.
from keras_mtl.data._common import DatasetNotFoundError
from keras_mtl.data.celeba import CELEBA_ATTRIBUTES, CELEBA_GROUPS, celeba
from keras_mtl.data.cityscapes import CITYSCAPES_CLASSES_7, CITYSCAPES_ROAMING_TASKS, CITYSCAPES_TASKS, cityscapes
from keras_mtl.data.digits import DIGITS_TASKS, multidigits
from keras_mtl.data.mtfl import MTFL_NUM_CLASSES, MTFL_TASKS, mtfl
from keras_mtl.data.multimnist import multimnist
from keras_mtl.data.nyuv2 import NYUV2_CLASSES, NYUV2_ROAMING_TASKS, NYUV2_TASKS, nyuv2
from keras_mtl.data import augment, testing

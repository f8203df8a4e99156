"""keras-mtl: multi-task learning for Keras 3 / TensorFlow."""

__version__ = "0.1.0"

from keras_mtl import balancers
from keras_mtl import callbacks
from keras_mtl import data
from keras_mtl import distribute
from keras_mtl import export
from keras_mtl import layers
from keras_mtl import metrics
from keras_mtl import models
from keras_mtl import ops
from keras_mtl.model import MultiTaskModel

"""Task-conditioned layers: masks, task SE, residual adapters, task BN, discriminator."""

from keras_mtl.layers.task_conditioned import TaskConditioned
from keras_mtl.layers.task_conditioned import TaskConditionedLayer
from keras_mtl.layers.task_conditioned import TaskOutputs
from keras_mtl.layers.task_conditioned import TaskSequential
from keras_mtl.layers.task_conditioned import fold_tasks
from keras_mtl.layers.task_conditioned import is_task_conditioned
from keras_mtl.layers.task_conditioned import unfold_tasks
from keras_mtl.layers.task_mask import TaskMask
from keras_mtl.layers.task_mask import TaskRouting
from keras_mtl.layers.gradient_discriminator import GradientDiscriminator
from keras_mtl.layers.residual_adapter import ResidualAdapter
from keras_mtl.layers.task_batch_norm import TaskBatchNormalization
from keras_mtl.layers.task_se import TaskSqueezeExcite

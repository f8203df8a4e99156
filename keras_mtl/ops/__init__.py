"""Pure TensorFlow multi-task gradient math: no state, no Keras.

Every function takes a gradient matrix `grads` (T, d), one task per row, and/or
a loss vector (T,), and returns weights (T,) whose product with `grads` is the
combined gradient, or the combined gradient (d,) itself. They run eagerly,
under `tf.function` and under `jit_compile=True`.
"""

from keras_mtl.ops.dwa import dwa_weights
from keras_mtl.ops.gls import gls_loss
from keras_mtl.ops.gls import gls_weights
from keras_mtl.ops._gramian import gramian
from keras_mtl.ops._gramian import normalized_gramian
from keras_mtl.ops.imtl import imtl_g
from keras_mtl.ops.imtl import imtl_g_weights
from keras_mtl.ops.imtl import imtl_l_loss
from keras_mtl.ops.imtl import imtl_l_optimal_log_scales
from keras_mtl.ops.mgda import mgda_closed_form_weights
from keras_mtl.ops.mgda import mgda_normalizers
from keras_mtl.ops.mgda import mgda_weights
from keras_mtl.ops.mgda import min_norm_weights_from_gramian
from keras_mtl.ops.pcgrad import pcgrad
from keras_mtl.ops.pcgrad import pcgrad_task_orders
from keras_mtl.ops.pcgrad import pcgrad_weights
from keras_mtl.ops.rlw import rlw_weights

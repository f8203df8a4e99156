"""Pure TensorFlow multi-task gradient math: no state, no Keras.

Every function takes a gradient matrix `grads` (T, d), one task per row, and/or
a loss vector (T,), and returns weights (T,) whose product with `grads` is the
combined gradient, or the combined gradient (d,) itself. They run eagerly,
under `tf.function` and under `jit_compile=True`.

Edge cases (`imtl_g*`, `mgda*`, `pcgrad*`, `gls*`): one task gets weight 1
(the combined gradient is its gradient); no task, a (0, d) matrix, gets an
empty weight vector (a zero combined gradient), as a fully masked input gets
zeros; zero-dimensional gradients (T, 0) get well-defined finite weights.
A task excluded by `mask` / `present` is never read (`tf.where`, never
`0 * x`), so a NaN or inf there changes nothing; a NaN or inf in an included
row gives all-NaN weights, never an error (the CPU `eigh` is not reached).
"""

from keras_mtl.ops.aligned_mtl import aligned_mtl
from keras_mtl.ops.aligned_mtl import aligned_mtl_balance
from keras_mtl.ops.aligned_mtl import aligned_mtl_weights
from keras_mtl.ops.cagrad import cagrad
from keras_mtl.ops.cagrad import cagrad_weights
from keras_mtl.ops.dualproj import dualproj
from keras_mtl.ops.dualproj import dualproj_weights
from keras_mtl.ops.dwa import dwa_weights
from keras_mtl.ops.famo import famo_logit_gradient
from keras_mtl.ops.famo import famo_task_weights
from keras_mtl.ops.fairgrad import fairgrad
from keras_mtl.ops.fairgrad import fairgrad_weights
from keras_mtl.ops.graddrop import graddrop
from keras_mtl.ops.gls import gls_loss
from keras_mtl.ops.gls import gls_weights
from keras_mtl.ops._gramian import gramian
from keras_mtl.ops._gramian import normalized_gramian
from keras_mtl.ops.gradvac import gradvac_weights
from keras_mtl.ops.imtl import imtl_g
from keras_mtl.ops.imtl import imtl_g_weights
from keras_mtl.ops.imtl import imtl_l_loss
from keras_mtl.ops.imtl import imtl_l_optimal_log_scales
from keras_mtl.ops.mgda import mgda_closed_form_weights
from keras_mtl.ops.mgda import mgda_normalizers
from keras_mtl.ops.mgda import mgda_weights
from keras_mtl.ops.mgda import min_norm_weights_from_gramian
from keras_mtl.ops.nash_mtl import nash_mtl
from keras_mtl.ops.nash_mtl import nash_mtl_weights
from keras_mtl.ops.pcgrad import pcgrad
from keras_mtl.ops.pcgrad import pcgrad_task_orders
from keras_mtl.ops.pcgrad import pcgrad_weights
from keras_mtl.ops.rlw import rlw_weights
from keras_mtl.ops.stch import stch_loss
from keras_mtl.ops.upgrad import upgrad
from keras_mtl.ops.upgrad import upgrad_weights
from keras_mtl.ops.db_mtl import db_mtl
from keras_mtl.ops.db_mtl import db_mtl_ema
from keras_mtl.ops.db_mtl import db_mtl_weights
from keras_mtl.ops.excess_mtl import excess_mtl_weights
from keras_mtl.ops.excess_mtl import excess_risks
from keras_mtl.ops.moco import moco
from keras_mtl.ops.moco import moco_track
from keras_mtl.ops.moco import moco_weights
from keras_mtl.ops.moco import simplex_projection

"""Cross-replica reductions of the train step (identities on one device).

Everything a balancer reads is reduced across replicas first, so its state
moves identically on every replica; the network's gradients stay per
replica (the optimizer sums them, so losses are scaled by 1/R).
"""

import tensorflow as tf

from keras_mtl import _keras_compat


def _context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def mean(x):
    """Mean over replicas inside a replica context; identity on one device."""
    ctx = _context()
    return x if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.MEAN, x)


def any_true(flags):
    """Element-wise logical or of a bool tensor over replicas."""
    ctx = _context()
    if ctx is None:
        return flags
    count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(flags, "float32"))
    return count > 0


def global_value(x):
    """Replica mean of x in the forward pass, x's own gradient in the backward pass."""
    ctx = _context()
    return x if ctx is None else x + tf.stop_gradient(mean(x) - x)


def gather_columns(matrix):
    """Concatenates every replica's (T, n_r) matrix along axis 1.

    Returns `(matrix, offset)`: the gathered (T, sum_r n_r) matrix, identical
    on every replica, and where this replica's columns start. Identity on
    one device.
    """
    ctx = _context()
    if ctx is None:
        return matrix, 0
    sizes = ctx.all_gather(tf.shape(matrix)[1:2], axis=0)
    offset = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    return ctx.all_gather(matrix, axis=1), offset


def run_if(condition, fn, args):
    """Runs `fn(*args)` (state updates, returns nothing) when `condition` holds.

    `condition` must be the same on every replica. On one device, and under
    strategies that update without `merge_call`, this is a `tf.cond`; under
    the others (MirroredStrategy on CPUs, MultiWorkerMirroredStrategy) a
    `cond` in a replica context may not contain an optimizer update (which
    calls `merge_call`), so the cond runs in the cross-replica context and
    calls `fn` on every replica from there, as Keras's
    `LossScaleOptimizer` does. `args` must hold every per-replica tensor
    `fn` reads (closures may hold variables only).
    """

    def branch():
        fn(*args)
        return tf.constant(True)

    def skip():
        return tf.constant(False)

    ctx = tf.distribute.get_replica_context()
    if (
        ctx is None
        or not tf.distribute.has_strategy()
        or _keras_compat.updates_without_merge_call()
    ):
        tf.cond(condition, branch, skip)
        return

    def cross_replica(distribution, condition, *args):
        first = distribution.experimental_local_results(condition)[0]

        def run_everywhere():
            distribution.extended.call_for_each_replica(fn, args=args)
            return tf.constant(True)

        tf.cond(first, run_everywhere, skip)

    ctx.merge_call(cross_replica, args=(condition,) + tuple(args))

"""Auxiliary objectives: extra losses the train step adds to the task objective.

The step optimises `L = s * sum_balanced(L_t) + sum_a w_a L_a` where each
auxiliary objective `a` brings its loss `L_a`, its weight `w_a` and a scale
`s = prod_a (1 - w_a)` on the task objective (Maninis et al. 2019 write
`(1 - w_d) L_tasks + w_d L_d` for the discriminator). An objective owns its
variables (a Keras layer), its metrics, its learning-rate group and its
config; the step iterates over `model.auxiliaries` and knows none of them.
"""

import keras
import tensorflow as tf

from keras_mtl.layers.task_conditioned import task_vector
from keras_mtl.training import replicas


class AuxiliaryObjective:
    """Base class: an objective computed in the train step beside the tasks' losses.

    Attributes:
        layer: the Keras layer holding the objective's variables.
        weight: `w_a` in [0, 1].
        group: learning-rate group of the layer's variables
            (`compile(learning_rate_multipliers={group: ...})`).
        needs_feature_gradients: True if `loss` reads dL_t/dz (the step then
            records the heads' pass on an inner tape watching z).
    """

    group = None
    needs_feature_gradients = False

    def __init__(self, layer, weight):
        self.layer = layer
        self.weight = float(weight)

    @property
    def trainable_variables(self):
        return list(self.layer.trainable_variables)

    def build(self, z):
        """Creates the layer's variables from the shared representation `z`."""

    def loss(self, step, inner_tape):
        """Returns `{"loss": L_a, ...}`: the scalar loss (computed under the
        step's outer tape) and any values its metrics report."""
        raise NotImplementedError

    @property
    def metrics(self):
        return []

    def update_metrics(self, values, weight):
        """Updates the metrics from the values `loss` returned (`weight` 0 skips)."""


class AdversarialDiscriminator(AuxiliaryObjective):
    """Attentive single-tasking's discriminator on the per-task gradients dL_t/dz.

    `L_d` is the cross-entropy of `GradientDiscriminator` classifying which
    task each gradient came from; the gradients are taken with a second
    (inner) tape, so `L_d` back-propagates into the network through them
    (double back-propagation), reversed by the layer's gradient reversal.
    Reported as `discriminator_loss` and `discriminator_accuracy`; trained
    in the `"discriminator"` learning-rate group.
    """

    group = "discriminator"
    needs_feature_gradients = True

    def __init__(self, layer, weight):
        super().__init__(layer, weight)
        self.loss_tracker = keras.metrics.Mean(name="discriminator_loss")
        self.accuracy_tracker = keras.metrics.Mean(name="discriminator_accuracy")

    def build(self, z):
        if not self.layer.built:
            self.layer(tf.zeros_like(z), training=False)

    def loss(self, step, inner_tape):
        z = step.z
        if step.task_ids is not None:
            # Each row block of the folded z only reaches its own task's loss.
            g = inner_tape.gradient([step.loss_list[i] for i in step.indices], z)
            labels = step.task_ids
        else:
            g = tf.concat([inner_tape.gradient(step.loss_list[i], z)
                           for i in step.indices], axis=0)
            labels = task_vector(step.indices, tf.shape(z)[0])
        logits = self.layer(g, training=True)
        extra = len(logits.shape) - 2
        labels = tf.reshape(labels, [-1] + [1] * extra)
        labels = tf.broadcast_to(labels, tf.shape(logits)[:-1])
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        hits = tf.equal(tf.argmax(logits, -1, output_type="int32"), labels)
        return {"loss": tf.reduce_mean(ce),
                "accuracy": tf.reduce_mean(tf.cast(hits, "float32"))}

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def update_metrics(self, values, weight):
        self.loss_tracker.update_state(replicas.mean(values["loss"]), sample_weight=weight)
        self.accuracy_tracker.update_state(replicas.mean(values["accuracy"]),
                                           sample_weight=weight)

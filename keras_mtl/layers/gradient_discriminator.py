"""The task discriminator on exposed task gradients (adversarial disentanglement)."""

import keras
import tensorflow as tf


def reverse_gradient(x, strength):
    """Identity forward; multiplies the incoming gradient by `-strength`.

    Args:
        x: a tensor.
        strength: scalar lambda (tensor or float); lambda = 0 blocks the
            gradient, lambda = 1 negates it.

    Reference:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by
        Backpropagation", ICML 2015.
    """
    strength = tf.cast(tf.convert_to_tensor(strength), x.dtype)

    @tf.custom_gradient
    def _reverse(x, strength):
        def grad(upstream):
            return -strength * upstream, tf.zeros_like(strength)

        return tf.identity(x), grad

    return _reverse(x, strength)


def channel_normalize(g, epsilon):
    """g / (||g|| + epsilon), the L2 norm taken over the last axis per location."""
    sq = tf.reduce_sum(tf.square(g), axis=-1, keepdims=True)
    # max() keeps the gradient finite where g is exactly zero (d sqrt(0) = inf).
    norm = tf.sqrt(tf.maximum(sq, tf.cast(1e-30, g.dtype)))
    return g / (norm + tf.cast(epsilon, g.dtype))


@keras.saving.register_keras_serializable(package="keras_mtl")
class GradientDiscriminator(keras.layers.Layer):
    """Fully convolutional classifier of which task a gradient came from.

    Input: the exposed task gradients g_t = dL_t/dz at the shared feature
    map z (double back-propagation, see `MultiTaskModel(discriminator=...)`).
    The layer applies, per location:

    1. gradient reversal with strength lambda (`reversal_strength`, held in
       the non-trainable variable `strength` so a schedule such as
       `keras_mtl.callbacks.ReversalStrengthScheduler` can change it): the
       discriminator's own weights minimise the cross-entropy, the network
       receives -lambda times the gradient and so maximises it;
    2. L2 normalisation over channels, g / (||g|| + epsilon);
    3. 1x1 conv (`hidden_units`) -> ReLU -> 1x1 conv with T outputs (logits).

    The 1x1 convolutions are `Dense` layers on the channel axis, so the layer
    takes (N, H, W, C) and (N, C) alike and returns (..., T) logits. It
    exists only in training: the model neither runs it in `predict` nor
    exports it.

    Args:
        num_tasks: number of tasks T (output channels).
        hidden_units: channels of the hidden 1x1 convolution (the paper does
            not state it). Defaults to `64`.
        reversal_strength: initial lambda in [0, 1]. Defaults to `1.0`.
        epsilon: added to the per-location norm. Defaults to `1e-12` (the
            exposed gradients of mean losses are tiny, ~1/(N H W C)).

    Example:

    >>> disc = GradientDiscriminator(num_tasks=3, hidden_units=32)
    >>> logits = disc(np.random.randn(6, 8, 8, 16))  # (6, 8, 8, 3)

    Reference:
        Maninis, Radosavovic, Kokkinos, "Attentive Single-Tasking of Multiple
        Tasks", CVPR 2019, section 4 and appendix D.
    """

    def __init__(self, num_tasks, hidden_units=64, reversal_strength=1.0,
                 epsilon=1e-12, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 2:
            raise ValueError(
                "Invalid value received for argument `num_tasks`. Expected an "
                f"integer >= 2. Received: num_tasks={num_tasks}"
            )
        if isinstance(hidden_units, bool) or not isinstance(hidden_units, int) or hidden_units < 1:
            raise ValueError(
                "Invalid value received for argument `hidden_units`. Expected a "
                f"positive integer. Received: hidden_units={hidden_units}"
            )
        if not 0.0 <= float(reversal_strength) <= 1.0:
            raise ValueError(
                "Invalid value received for argument `reversal_strength`. "
                "Expected a float in [0, 1]. Received: "
                f"reversal_strength={reversal_strength}"
            )
        if not float(epsilon) >= 0.0:
            raise ValueError(
                "Invalid value received for argument `epsilon`. Expected a "
                f"float >= 0. Received: epsilon={epsilon}"
            )
        self.num_tasks = num_tasks
        self.hidden_units = hidden_units
        self.reversal_strength = float(reversal_strength)
        self.epsilon = float(epsilon)
        self.strength = self.add_weight(
            name="reversal_strength",
            shape=(),
            initializer=keras.initializers.Constant(self.reversal_strength),
            trainable=False,
        )
        self.hidden = keras.layers.Dense(hidden_units, activation="relu",
                                         name="conv1x1_hidden", dtype=self.dtype_policy)
        self.classifier = keras.layers.Dense(num_tasks, name="conv1x1_logits",
                                             dtype=self.dtype_policy)

    def build(self, input_shape):
        self.hidden.build(input_shape)
        self.classifier.build(tuple(input_shape[:-1]) + (self.hidden_units,))
        self.built = True

    def set_reversal_strength(self, value):
        """Sets lambda (a float in [0, 1])."""
        self.strength.assign(float(value))

    def call(self, inputs, training=None):
        g = tf.convert_to_tensor(inputs)
        g = reverse_gradient(g, self.strength.value)
        g = channel_normalize(g, self.epsilon)
        return self.classifier(self.hidden(g))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_tasks,)

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "hidden_units": self.hidden_units,
            "reversal_strength": self.reversal_strength,
            "epsilon": self.epsilon,
        }

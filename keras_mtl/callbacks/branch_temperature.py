"""Anneals the Gumbel-softmax temperature of learning-to-branch encoders."""

import keras

from keras_mtl._keras_compat import flatten_layers


class BranchTemperature(keras.callbacks.Callback):
    """Sets every `LearnToBranch` temperature from the optimizer's step count.

    Before each training batch, each layer of the model with an
    `anneal_temperature(step)` method (`keras_mtl.models.LearnToBranch`)
    gets `step = model.optimizer.iterations`. The schedule is the layer's
    own (`temperature_at`), a function of the checkpointed step count, so a
    restored run continues where it stopped; the temperature itself is a
    layer variable, saved with the model. A model without such a layer is
    left alone, so one config's callback list serves every architecture
    that `--arch` switches to.

    Example:

    >>> model.fit(data, epochs=10, callbacks=[keras_mtl.callbacks.BranchTemperature()])
    """

    def on_train_begin(self, logs=None):
        self.layers = [l for l in flatten_layers(self.model)
                       if callable(getattr(l, "anneal_temperature", None))]

    def on_train_batch_begin(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        for layer in self.layers:
            layer.anneal_temperature(step)

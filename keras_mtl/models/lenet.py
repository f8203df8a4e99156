"""The MultiMNIST LeNet of Sener and Koltun (2018), sized for small canvases."""

import gin
import keras

from keras_mtl.models.heads import build_model


def lenet_encoder(filters=(10, 20), kernel_size=5, units=50, seed=0, name="lenet"):
    """The shared LeNet trunk: [conv -> max-pool 2 -> ReLU] x 2 -> dense -> ReLU.

    Sener and Koltun (appendix, MultiMNIST): conv 5x5x10, pool, conv 5x5x20,
    pool, FC 50, shared by both tasks. Convolutions use `same` padding so a
    12x12 canvas (`keras_mtl.data.multidigits`) keeps 3x3 cells after two
    poolings. The last dense layer is the "last shared layer" GradNorm reads.

    Args:
        filters: channels of the two convolutions. Defaults to `(10, 20)`.
        kernel_size: side of the convolution kernels. Defaults to `5`.
        units: width of the shared representation z. Defaults to `50`.
        seed: seed of the initialisers.
        name: model name.

    Returns:
        an unbuilt `keras.Sequential`.
    """
    if len(tuple(filters)) != 2 or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ValueError(
            "Invalid value received for argument `filters`. Expected two "
            f"positive integers. Received: filters={filters!r}"
        )

    def init(i):
        return keras.initializers.GlorotUniform(seed=seed * 1000 + i)

    layers = []
    for i, f in enumerate(filters):
        layers += [
            keras.layers.Conv2D(f, kernel_size, padding="same", kernel_initializer=init(i),
                                name=f"conv_{i}"),
            keras.layers.MaxPooling2D(2, name=f"pool_{i}"),
            keras.layers.Activation("relu", name=f"relu_{i}"),
        ]
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(units, activation="relu", kernel_initializer=init(10),
                           name="shared_fc"),
    ]
    return keras.Sequential(layers, name=name)


@gin.configurable
def lenet_multitask(
    tasks=None,
    filters=(10, 20),
    kernel_size=5,
    units=50,
    head_units=50,
    seed=0,
    input_shape=None,
    **model_kwargs,
):
    """A `MultiTaskModel` for MultiMNIST / MultiDigits: LeNet trunk + one MLP head per task.

    Each head is FC `head_units` -> ReLU -> FC classes (logits), as in Sener
    and Koltun's MultiMNIST network.

    Args:
        tasks: dict `{task: classes}`; defaults to `{"left": 10, "right": 10}`.
            A sequence of names takes the classes from
            `keras_mtl.data.digits.TASK_CLASSES`.
        filters, kernel_size, units: see `lenet_encoder`.
        head_units: hidden width of each head. Defaults to `50`.
        seed: seed of the initialisers (trunk and heads), so a seed fixes the
            initial weights.
        input_shape: optional (H, W, C); builds the model at once.
        **model_kwargs: forwarded to `MultiTaskModel`.

    Returns:
        a `keras_mtl.MultiTaskModel`.

    Example:

    >>> model = lenet_multitask(input_shape=(12, 12, 1))
    >>> model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), balancer="gradnorm")

    Reference:
        Sener and Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018, appendix (MultiMNIST architecture).
    """
    from keras_mtl.data.digits import TASK_CLASSES
    from keras_mtl.model import MultiTaskModel

    if tasks is None:
        tasks = {"left": 10, "right": 10}
    elif not isinstance(tasks, dict):
        tasks = {t: TASK_CLASSES[t] for t in tasks}
    trunk = lenet_encoder(filters, kernel_size, units, seed=seed)
    heads = {}
    for t, (name, classes) in enumerate(tasks.items()):
        def init(k, t=t):
            return keras.initializers.GlorotUniform(seed=seed * 1000 + 100 + 10 * t + k)

        heads[name] = keras.Sequential([
            keras.layers.Dense(head_units, activation="relu", kernel_initializer=init(0)),
            keras.layers.Dense(int(classes), kernel_initializer=init(1)),
        ], name=f"{name}_head")
    model = MultiTaskModel(encoder=trunk, heads=heads, name="lenet_multitask", **model_kwargs)
    return build_model(model, input_shape)

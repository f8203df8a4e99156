"""MultiMNIST: two overlapping MNIST digits, classify the left and the right one.

Built on the fly from an MNIST `.npz` file (the `mnist.npz` of
`keras.datasets.mnist`: `x_train` (60000, 28, 28) uint8, `y_train`,
`x_test`, `y_test`), as in Sener and Koltun (2018) after Sabour et al.
(2017): on a 36x36 canvas the left digit is placed at the top-left and the
right digit at the bottom-right, each shifted by up to 3 pixels towards the
centre, the two are merged with a pixel-wise maximum, and the canvas is
resized to `image_size`. Given `seed` the pairs and shifts are fixed.
"""

import os

import gin
import numpy as np
import tensorflow as tf

from keras_mtl.data import _common

CANVAS = 36
MAX_SHIFT = 3

HOW_TO_OBTAIN = (
    "Point `mnist_path` at an MNIST .npz with x_train, y_train, x_test, y_test "
    "(for example keras' mnist.npz, "
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz, "
    "fetched once on a machine with network access)."
)


def load_mnist(mnist_path, split):
    """(images uint8 (N, 28, 28), labels int32 (N,)) of one split of the `.npz`."""
    _common.require_file(mnist_path, "MultiMNIST", HOW_TO_OBTAIN)
    x_key, y_key = f"x_{split}", f"y_{split}"
    try:
        with np.load(mnist_path, allow_pickle=False) as data:
            if x_key not in data or y_key not in data:
                raise ValueError(f"keys {sorted(data.keys())}, expected {x_key!r} and {y_key!r}")
            x, y = data[x_key], data[y_key]
    except Exception as error:  # noqa: BLE001 - any parse failure is corruption
        raise _common.missing(
            "MultiMNIST", mnist_path, HOW_TO_OBTAIN,
            detail=f"it is not a valid MNIST .npz ({error})",
        ) from None
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise _common.missing(
            "MultiMNIST", mnist_path, HOW_TO_OBTAIN,
            detail=f"{x_key} has shape {x.shape} and {y_key} {y.shape}, expected "
            "(N, 28, 28) and (N,)",
        )
    return x.astype("uint8"), y.astype("int32")


def pairs(num_source, num_examples, seed, split):
    """The deterministic construction: (left index, right index, shifts (N, 4))."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    left = rng.permutation(np.arange(num_examples) % num_source)
    right = rng.integers(0, num_source, size=num_examples)
    shifts = rng.integers(0, MAX_SHIFT + 1, size=(num_examples, 4)).astype("int32")
    return left, right, shifts


@gin.configurable
def multimnist(
    mnist_path,
    split="train",
    batch_size=256,
    shuffle=None,
    seed=0,
    image_size=(28, 28),
    num_examples=None,
    drop_remainder=False,
    repeat=False,
):
    """MultiMNIST as a tf.data pipeline of `(image, {"left": y, "right": y})`.

    Yields (batched along a leading axis when `batch_size` is set):
        image: float32 (h, w, 1) in [0, 1].
        "left", "right": int32 digit classes in [0, 10).

    Args:
        mnist_path: path of the MNIST `.npz` file.
        split: `"train"` (built from x_train) or `"test"` (from x_test).
            Defaults to `"train"`.
        batch_size: Defaults to 256.
        shuffle: shuffle the order each epoch (the pairs stay fixed).
            Defaults to True on `"train"`.
        seed: seed of the pairing, shifts and shuffling. Defaults to 0.
        image_size: (height, width) of the output. Defaults to (28, 28);
            (36, 36) keeps the canvas as is.
        num_examples: how many pairs; defaults to the number of source
            images (each is a left digit once).
        drop_remainder: Defaults to False.
        repeat: Defaults to False.

    Returns:
        A `tf.data.Dataset`.

    Example:

    ```python
    ds = keras_mtl.data.multimnist("/data/mnist.npz", batch_size=256)
    ```

    Reference:
        Sener and Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018; Sabour et al., "Dynamic Routing Between
        Capsules", NeurIPS 2017.
    """
    _common.check_choice("split", split, ("train", "test"))
    _common.check_batch_size(batch_size)
    image_size = _common.check_size("image_size", image_size)
    if num_examples is not None and (not isinstance(num_examples, int) or num_examples < 1):
        raise ValueError(
            "Invalid value received for argument `num_examples`. Expected None "
            f"or an integer >= 1. Received: num_examples={num_examples}"
        )
    if shuffle is None:
        shuffle = split == "train"
    x, y = load_mnist(os.path.expanduser(mnist_path), split)
    n = num_examples or len(x)
    left, right, shifts = pairs(len(x), n, seed, split)

    ds = tf.data.Dataset.from_tensor_slices((x[left], x[right], y[left], y[right], shifts))
    ds = _common.shuffled(ds, shuffle, n, seed)
    far = CANVAS - 28

    def compose(a, b, ya, yb, s):
        # Left digit: top-left corner at (s0, s1); right digit: at (far - s2, far - s3).
        a = tf.pad(a, [[s[0], far - s[0]], [s[1], far - s[1]]])
        b = tf.pad(b, [[far - s[2], s[2]], [far - s[3], s[3]]])
        canvas = tf.cast(tf.maximum(a, b), "float32")[..., None] / 255.0
        if image_size != (CANVAS, CANVAS):
            canvas = tf.image.resize(canvas, image_size, method="area")
        canvas.set_shape(image_size + (1,))
        return canvas, {"left": ya, "right": yb}

    ds = ds.map(compose, num_parallel_calls=tf.data.AUTOTUNE)
    return _common.finish(ds, batch_size, drop_remainder, repeat)

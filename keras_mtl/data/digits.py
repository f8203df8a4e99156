"""MultiDigits: a MultiMNIST-style problem built from scikit-learn's real digits.

scikit-learn ships 1,797 real handwritten digits (8x8, 16 grey levels; the
UCI "Optical Recognition of Handwritten Digits" test set) inside its wheel,
so this dataset needs no download. As in MultiMNIST (Sener and Koltun 2018,
after Sabour et al. 2017), two digits are overlapped on one canvas: the
"left" digit in the top-left corner and the "right" digit in the
bottom-right corner, each shifted by up to `max_shift` pixels towards the
centre, merged with a pixel-wise maximum; the tasks classify the left and
the right digit.

The source images are split *before* composing: a stratified, seeded
fraction of the 1,797 images is held out, and test canvases are composed only
from held-out images, so no source image appears in both train and test.

Optional extra tasks (see `EXTRA_TASKS`) derive a label from both digits.
"""

import gin
import numpy as np
import tensorflow as tf

from keras_mtl.data import _common

DIGIT = 8  # side of a source image
NUM_SOURCES = 1797

# Task name -> number of classes. "left" and "right" are the MultiMNIST tasks;
# the others are derived from the pair of digits.
TASK_CLASSES = {"left": 10, "right": 10, "sum": 19, "larger": 2}
DIGITS_TASKS = ("left", "right")
EXTRA_TASKS = ("sum", "larger")


def load_sources():
    """The 1,797 source digits: (images float32 (N, 8, 8) in [0, 1], labels int32 (N,))."""
    from sklearn.datasets import load_digits  # bundled data, read from the wheel

    digits = load_digits()
    return (digits.images / 16.0).astype("float32"), digits.target.astype("int32")


def split_sources(labels, test_fraction=0.3, seed=0):
    """Stratified split of source indices: (train indices, test indices), disjoint.

    Each class contributes round(test_fraction * its count) images to the
    test side; both index arrays are sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            "Invalid value received for argument `test_fraction`. Expected a "
            f"float strictly between 0 and 1. Received: test_fraction={test_fraction}"
        )
    rng = np.random.default_rng([seed, 7])
    labels = np.asarray(labels)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: int(round(test_fraction * len(members)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def place(image, top, left, canvas):
    """`image` (h, w) pasted on a zero (canvas, canvas) array at (top, left)."""
    out = np.zeros((canvas, canvas), image.dtype)
    out[top: top + image.shape[0], left: left + image.shape[1]] = image
    return out


def task_labels(left, right, tasks):
    """{task: int32 labels} for digit classes `left`, `right` (arrays)."""
    derived = {
        "left": left,
        "right": right,
        "sum": left + right,
        "larger": (left > right),
    }
    return {t: np.asarray(derived[t], "int32") for t in tasks}


def check_tasks(tasks):
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASK_CLASSES]
    if not tasks or unknown or len(set(tasks)) != len(tasks):
        raise ValueError(
            "Invalid value received for argument `tasks`. Expected distinct "
            f"names among {tuple(TASK_CLASSES)}. Received: tasks={tasks!r}"
        )
    return tasks


def multidigits_arrays(
    split="train",
    tasks=DIGITS_TASKS,
    num_examples=None,
    canvas=12,
    max_shift=1,
    test_fraction=0.3,
    split_seed=0,
    seed=0,
):
    """The composed canvases as numpy arrays, with where every pixel came from.

    Args: as `multidigits`.

    Returns:
        dict with "images" float32 (N, canvas, canvas, 1) in [0, 1],
        "labels" {task: int32 (N,)}, "left_source" and "right_source"
        int32 (N,) indices into `load_sources()`, "shifts" int32 (N, 4)
        (left digit's top and left offsets from the top-left corner, right
        digit's bottom and right offsets from the bottom-right corner) and
        "sources" (the source indices of the split).
    """
    _common.check_choice("split", split, ("train", "test"))
    tasks = check_tasks(tasks)
    far = int(canvas) - DIGIT
    if far < 0 or not 0 <= int(max_shift) <= far:
        raise ValueError(
            "Invalid values received for arguments `canvas` and `max_shift`. "
            f"Expected canvas >= {DIGIT} and 0 <= max_shift <= canvas - {DIGIT}. "
            f"Received: canvas={canvas}, max_shift={max_shift}"
        )
    if num_examples is not None and (
            isinstance(num_examples, bool) or not isinstance(num_examples, int)
            or num_examples < 1):
        raise ValueError(
            "Invalid value received for argument `num_examples`. Expected None "
            f"or an integer >= 1. Received: num_examples={num_examples}"
        )
    images, digits = load_sources()
    train_sources, test_sources = split_sources(digits, test_fraction, split_seed)
    sources = train_sources if split == "train" else test_sources
    n = num_examples or 4 * len(sources)
    rng = np.random.default_rng([seed, split_seed, 0 if split == "train" else 1])
    # Every source image is a left digit equally often (up to one), as in MultiMNIST.
    left = sources[rng.permutation(np.arange(n) % len(sources))]
    right = sources[rng.integers(0, len(sources), size=n)]
    shifts = rng.integers(0, int(max_shift) + 1, size=(n, 4)).astype("int32")
    out = np.empty((n, canvas, canvas), "float32")
    for k in range(n):
        a = place(images[left[k]], shifts[k, 0], shifts[k, 1], canvas)
        b = place(images[right[k]], far - shifts[k, 2], far - shifts[k, 3], canvas)
        out[k] = np.maximum(a, b)
    return {
        "images": out[..., None],
        "labels": task_labels(digits[left], digits[right], tasks),
        "left_source": left.astype("int32"),
        "right_source": right.astype("int32"),
        "shifts": shifts,
        "sources": sources,
    }


@gin.configurable
def multidigits(
    split="train",
    tasks=DIGITS_TASKS,
    num_examples=None,
    canvas=12,
    max_shift=1,
    test_fraction=0.3,
    split_seed=0,
    seed=0,
    batch_size=64,
    shuffle=None,
    drop_remainder=False,
    repeat=False,
):
    """MultiDigits as a tf.data pipeline of `(image, {task: label})`.

    Yields (batched along a leading axis when `batch_size` is set):
        image: float32 (canvas, canvas, 1) in [0, 1].
        "left", "right": int32 digit classes in [0, 10); "sum": int32 in
        [0, 19); "larger": int32 1 when the left digit is larger.

    Args:
        split: `"train"` or `"test"`. Defaults to `"train"`.
        tasks: which labels to yield, among `TASK_CLASSES`. Defaults to
            `("left", "right")`.
        num_examples: canvases to compose; defaults to 4 per source image of
            the split (5,032 train and 2,156 test canvases with the defaults).
        canvas: side of the square canvas. Defaults to `12` (8x8 digits,
            4 pixels apart before shifting: about half of each digit overlaps
            the other, as in MultiMNIST's 28-pixel digits on 36 pixels).
        max_shift: largest shift of each digit towards the centre, per axis.
            Defaults to `1`.
        test_fraction: fraction of each class's source images held out for
            the test split. Defaults to `0.3`.
        split_seed: seed of the source split; keep it fixed to compare runs
            on the same test images. Defaults to `0`.
        seed: seed of the pairing, shifts and shuffle order. Defaults to `0`.
        batch_size: Defaults to `64`.
        shuffle: reshuffle each epoch (the canvases stay fixed). Defaults to
            True on `"train"`.
        drop_remainder: Defaults to `False`.
        repeat: Defaults to `False`.

    Returns:
        A `tf.data.Dataset`.

    Example:

    ```python
    train = keras_mtl.data.multidigits("train", repeat=True)
    test = keras_mtl.data.multidigits("test", seed=1)
    ```

    Reference:
        Sener and Koltun, "Multi-Task Learning as Multi-Objective
        Optimization", NeurIPS 2018 (MultiMNIST); digits: Alpaydin and
        Kaynak, UCI "Optical Recognition of Handwritten Digits" (the
        `sklearn.datasets.load_digits` images).
    """
    _common.check_batch_size(batch_size)
    arrays = multidigits_arrays(
        split=split, tasks=tasks, num_examples=num_examples, canvas=canvas,
        max_shift=max_shift, test_fraction=test_fraction, split_seed=split_seed,
        seed=seed,
    )
    if shuffle is None:
        shuffle = split == "train"
    n = len(arrays["images"])
    ds = tf.data.Dataset.from_tensor_slices((arrays["images"], arrays["labels"]))
    ds = _common.shuffled(ds, shuffle, n, seed)
    return _common.finish(ds, batch_size, drop_remainder, repeat)


@gin.configurable
def multidigits_metrics(tasks=DIGITS_TASKS):
    """`{task: [SparseCategoricalAccuracy(name="accuracy")]}` for gin configs.

    The heads output logits and the labels are class indices; runs report
    `<task>_accuracy` (e.g. `left_accuracy` in `metrics.json`).
    """
    import keras

    return {
        t: [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        for t in check_tasks(tasks)
    }

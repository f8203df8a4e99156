"""MTFL (Zhang et al. 2014): 5 facial landmarks + gender, smiling, glasses, pose.

The release (`MTFL.zip`) holds `training.txt` (10,000 faces), `testing.txt`
(2,995 faces) and the image folders `lfw_5590/`, `net_7876/`, `AFLW/`. Each
annotation line is

    <image path> x1 x2 x3 x4 x5 y1 y2 y3 y4 y5 gender smile glasses pose

with Windows separators in the path (`lfw_5590\\Aaron_Eckhart_0001.jpg`),
landmarks in pixels (left eye, right eye, nose, left and right mouth
corners), gender 1 male / 2 female, smile 1 yes / 2 no, glasses 1 yes / 2 no,
and head pose 1..5 (left profile, left, frontal, right, right profile).
"""

import os

import gin
import numpy as np
import tensorflow as tf

from keras_mtl.data import _common, augment as augment_lib

MTFL_TASKS = ("landmarks", "gender", "smile", "glasses", "pose")
"""Task names; `landmarks` is 10 coordinates, the others are classifications."""

MTFL_NUM_CLASSES = {"gender": 2, "smile": 2, "glasses": 2, "pose": 5}

HOW_TO_OBTAIN = (
    "Download MTFL.zip from the project page of Zhang et al. 2014 "
    "(http://mmlab.ie.cuhk.edu.hk/projects/TCDCN.html), unzip it and pass the "
    "folder holding training.txt, testing.txt, lfw_5590/, net_7876/ and AFLW/ "
    "as `data_dir`."
)

_FILES = {"train": "training.txt", "test": "testing.txt"}
# Mirror image: the left eye becomes the right eye, the mouth corners swap.
_FLIP_ORDER = [1, 0, 2, 4, 3]
_FLIP_POSE = [4, 3, 2, 1, 0]


def parse_annotations(path, data_dir):
    """Reads an MTFL annotation file: (image paths, (N, 10) floats, (N, 4) ints)."""
    paths, landmarks, classes = [], [], []
    with open(path) as f:
        for number, line in enumerate(f):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 15:
                    raise ValueError(f"{len(fields)} fields, expected 15")
                points = [float(v) for v in fields[1:11]]
                labels = [int(v) for v in fields[11:15]]
                if not all(1 <= v <= 2 for v in labels[:3]) or not 1 <= labels[3] <= 5:
                    raise ValueError(f"class labels {labels} out of range")
            except ValueError as error:
                raise _common.missing(
                    "MTFL", path, HOW_TO_OBTAIN,
                    detail=f"line {number + 1} is not a valid annotation ({error})",
                ) from None
            paths.append(os.path.join(data_dir, *fields[0].replace("\\", "/").split("/")))
            landmarks.append(points)
            classes.append(labels)
    if not paths:
        raise _common.missing("MTFL", path, HOW_TO_OBTAIN, detail="it holds no annotations")
    return paths, np.asarray(landmarks, "float32"), np.asarray(classes, "int32")


def flip_landmarks(landmarks):
    """Mirrors normalised (x1..x5, y1..y5) landmarks left-right (x -> 1 - x)."""
    x = 1.0 - tf.gather(landmarks[:5], _FLIP_ORDER)
    y = tf.gather(landmarks[5:], _FLIP_ORDER)
    return tf.concat([x, y], 0)


def flip_pose(pose):
    """Left profile <-> right profile, left <-> right, frontal unchanged."""
    return tf.gather(tf.constant(_FLIP_POSE, pose.dtype), pose)


@gin.configurable
def mtfl(
    data_dir,
    split="train",
    tasks=MTFL_TASKS,
    image_size=(40, 40),
    grayscale=False,
    batch_size=32,
    shuffle=None,
    seed=0,
    augment=None,
    drop_remainder=False,
    repeat=False,
):
    """MTFL as a tf.data pipeline of `(image, {task: label})`.

    Yields (batched along a leading axis when `batch_size` is set):
        image: float32 (h, w, 3) (or (h, w, 1) if `grayscale`) in [0, 1],
            the whole face image resized to `image_size`.
        "landmarks": float32 (10,), (x1..x5, y1..y5) divided by the image
            width / height, so in [0, 1] (matches `KeypointError`'s default
            layout; eyes are keypoints 0 and 1).
        "gender": int32, 0 male / 1 female.
        "smile": int32, 1 smiling / 0 not.
        "glasses": int32, 1 wearing glasses / 0 not.
        "pose": int32 in [0, 5): left profile, left, frontal, right, right
            profile.

    Args:
        data_dir: the unzipped MTFL folder (see the module docstring).
        split: `"train"` (training.txt) or `"test"` (testing.txt). Defaults
            to `"train"`.
        tasks: a sequence of names from `MTFL_TASKS`. Defaults to all five.
        image_size: (height, width); GradNorm uses (40, 40) and (160, 160).
            Defaults to `(40, 40)`.
        grayscale: one channel, as Zhang et al. Defaults to False.
        batch_size: Defaults to 32.
        shuffle: Defaults to True on `"train"`.
        seed: seed of shuffling and augmentation. Defaults to 0.
        augment: None (random horizontal flips on `"train"`), a bool or
            `("flip",)`. A flip mirrors x, swaps the eyes and the mouth
            corners and mirrors the pose.
        drop_remainder: Defaults to False.
        repeat: Defaults to False.

    Returns:
        A `tf.data.Dataset`.

    Example:

    ```python
    ds = keras_mtl.data.mtfl("/data/MTFL", image_size=(160, 160))
    ```

    Reference:
        Zhang et al., "Facial Landmark Detection by Deep Multi-task
        Learning", ECCV 2014; Chen et al., "GradNorm", ICML 2018,
        supplementary 7.2.
    """
    _common.check_choice("split", split, tuple(_FILES))
    if isinstance(tasks, str):
        tasks = (tasks,)
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("Invalid value received for argument `tasks`. Expected at least one task. Received: tasks=()")
    for task in tasks:
        _common.check_choice("tasks", task, MTFL_TASKS)
    _common.check_batch_size(batch_size)
    image_size = _common.check_size("image_size", image_size)
    augment = augment_lib.parse_augment(augment, split)
    if "scale_crop" in augment:
        raise ValueError(
            "Invalid value received for argument `augment`. Expected None, a "
            f"bool or ('flip',) for MTFL. Received: augment={augment!r}"
        )
    if shuffle is None:
        shuffle = split == "train"

    _common.require_dir(data_dir, "MTFL", HOW_TO_OBTAIN)
    annotation = os.path.join(data_dir, _FILES[split])
    _common.require_file(annotation, "MTFL", HOW_TO_OBTAIN)
    paths, landmarks, classes = parse_annotations(annotation, data_dir)
    for path in paths:
        _common.require_file(path, "MTFL", HOW_TO_OBTAIN)

    # gender 1/2 -> 0/1; smile, glasses 1 (yes) / 2 (no) -> 1/0; pose 1..5 -> 0..4.
    classes = np.stack(
        [classes[:, 0] - 1, 2 - classes[:, 1], 2 - classes[:, 2], classes[:, 3] - 1], -1
    ).astype("int32")
    channels = 1 if grayscale else 3

    ds = tf.data.Dataset.from_tensor_slices((paths, landmarks, classes))
    ds = _common.shuffled(ds, shuffle, len(paths), seed)

    def load(path, points, labels):
        contents = _common.read_image_file(path, "MTFL")  # a corrupt file is named
        image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
        size = tf.cast(tf.shape(image)[:2], "float32")
        scale = tf.concat([tf.fill([5], size[1]), tf.fill([5], size[0])], 0)
        image = tf.image.resize(tf.cast(image, "float32") / 255.0, image_size)
        image.set_shape(image_size + (channels,))
        all_labels = {
            "landmarks": points / scale,
            "gender": labels[0],
            "smile": labels[1],
            "glasses": labels[2],
            "pose": labels[3],
        }
        return image, {task: all_labels[task] for task in tasks}

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if "flip" in augment:
        fns = {"landmarks": flip_landmarks, "pose": flip_pose}
        fns = {k: v for k, v in fns.items() if k in tasks}
        ds = _common.with_random_seeds(ds, seed).map(
            lambda example, s: augment_lib.random_horizontal_flip(*example, s, label_fns=fns),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return _common.finish(ds, batch_size, drop_remainder, repeat)

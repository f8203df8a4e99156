"""Augmentations for multi-task examples `(image, {task: label})`.

The same geometric transform is applied to the image and to every dense
label, with the label-specific corrections a transform needs:

- horizontal flip: dense maps are mirrored; surface normals also change the
  sign of their x component (the mirror image of a surface facing right faces
  left); keypoint / pose labels get a task-specific function (see
  `keras_mtl.data.mtfl`).
- random scale-crop (the NYUv2 / Cityscapes augmentation of Liu et al.'s
  MTAN pre-processing, used by Maximum Roaming): crop a 1/s window and resize
  it back; depth is divided by s (the scene looks s times closer).

Every random function takes a stateless-RNG `seed` (shape (2,)), so a
pipeline is deterministic given its seed (see `_common.with_random_seeds`).
"""

import tensorflow as tf


def _as_map(label):
    """(H, W) -> (H, W, 1) for image ops; returns (tensor, squeeze)."""
    if len(label.shape) == 2:
        return label[..., None], True
    return label, False


def _tensors(image, labels):
    return tf.convert_to_tensor(image), {k: tf.convert_to_tensor(v) for k, v in labels.items()}


def horizontal_flip(image, labels, spatial_keys=(), normal_keys=(), label_fns=None):
    """Mirrors an example left-right (deterministically).

    Args:
        image: (H, W, C) tensor.
        labels: dict {task: label}.
        spatial_keys: tasks whose labels are dense maps (H, W[, C]) to mirror.
        normal_keys: tasks whose labels are normal maps (H, W, 3): mirrored,
            then the x component is negated.
        label_fns: optional {task: fn(label) -> label} for labels that need
            their own rule (keypoints, head pose).

    Returns:
        The flipped `(image, labels)`.

    Example:

    >>> import numpy as np
    >>> n = np.zeros((1, 2, 3), "float32"); n[0, 0] = [1., 0., 0.]
    >>> _, out = horizontal_flip(np.zeros((1, 2, 3)), {"normal": n},
    ...                          normal_keys=("normal",))
    >>> out["normal"].numpy()[0, 1].tolist()
    [-1.0, 0.0, 0.0]
    """
    image, labels = _tensors(image, labels)
    image = tf.reverse(image, axis=[1])
    out = dict(labels)
    for key in spatial_keys:
        out[key] = tf.reverse(labels[key], axis=[1])
    for key in normal_keys:
        flipped = tf.reverse(labels[key], axis=[1])
        out[key] = flipped * tf.constant([-1.0, 1.0, 1.0], dtype=flipped.dtype)
    for key, fn in (label_fns or {}).items():
        out[key] = fn(labels[key])
    return image, out


def random_horizontal_flip(image, labels, seed, spatial_keys=(), normal_keys=(), label_fns=None):
    """`horizontal_flip` with probability 1/2, drawn from the stateless `seed`."""
    image, labels = _tensors(image, labels)
    flip = tf.random.stateless_uniform((), seed=seed) < 0.5
    flipped = horizontal_flip(image, labels, spatial_keys, normal_keys, label_fns)
    image = tf.where(flip, flipped[0], image)
    labels = {k: tf.where(flip, flipped[1][k], v) for k, v in labels.items()}
    return image, labels


def scale_crop(image, labels, scale, offset, spatial_keys=(), depth_keys=()):
    """Crops a (H/scale, W/scale) window at `offset` in [0, 1]^2 and resizes it back.

    The image is resized bilinearly, dense labels by nearest neighbour (no
    mixing of class ids, invalid depths or normals), and depth maps in
    `depth_keys` are divided by `scale`.

    Args:
        image: (H, W, C) tensor.
        labels: dict {task: label}.
        scale: zoom factor s >= 1 (float scalar).
        offset: (2,) relative position of the window's top-left corner.
        spatial_keys: tasks with dense (H, W[, C]) labels (including depth
            and normals).
        depth_keys: dense tasks whose values are depths.
    """
    image, labels = _tensors(image, labels)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    scale = tf.cast(scale, "float32")
    th = tf.cast(tf.cast(h, "float32") / scale, "int32")
    tw = tf.cast(tf.cast(w, "float32") / scale, "int32")
    i = tf.cast(tf.round(offset[0] * tf.cast(h - th, "float32")), "int32")
    j = tf.cast(tf.round(offset[1] * tf.cast(w - tw, "float32")), "int32")

    def crop(x, method):
        x, squeeze = _as_map(x)
        x = tf.image.resize(x[i : i + th, j : j + tw], (h, w), method=method)
        return x[..., 0] if squeeze else x

    image = tf.cast(crop(image, "bilinear"), image.dtype)
    out = dict(labels)
    for key in spatial_keys:
        out[key] = crop(labels[key], "nearest")
        if key in depth_keys:
            out[key] = out[key] / tf.cast(scale, out[key].dtype)
    return image, out


def random_scale_crop(image, labels, seed, scales=(1.0, 1.2, 1.5), spatial_keys=(), depth_keys=()):
    """`scale_crop` with s drawn uniformly from `scales` and a uniform offset."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    index = tf.random.stateless_uniform((), seed=seeds[0], maxval=len(scales), dtype="int32")
    scale = tf.gather(tf.constant(scales, "float32"), index)
    offset = tf.random.stateless_uniform((2,), seed=seeds[1])
    return scale_crop(image, labels, scale, offset, spatial_keys, depth_keys)


def resize_example(image, labels, image_size=None, label_size=None, spatial_keys=()):
    """Resizes the image (bilinear) and dense labels (nearest) to fixed sizes.

    Args:
        image_size: (height, width) of the input, or None to keep it.
        label_size: (height, width) of dense labels; defaults to `image_size`
            (GradNorm uses 320x320 inputs and 80x80 outputs).
    """
    image, labels = _tensors(image, labels)
    label_size = label_size or image_size
    if image_size is not None:
        image = tf.cast(tf.image.resize(image, image_size, method="bilinear"), image.dtype)
    if label_size is not None:
        labels = dict(labels)
        for key in spatial_keys:
            x, squeeze = _as_map(labels[key])
            x = tf.image.resize(x, label_size, method="nearest")
            labels[key] = x[..., 0] if squeeze else x
    return image, labels


AUGMENTATIONS = ("flip", "scale_crop")


def parse_augment(augment, split, default=("flip",)):
    """Normalises a reader's `augment` argument to a tuple of names.

    None means the paper's default on the training split and nothing on
    the others; True / False mean `default` / nothing; a sequence of names
    from `AUGMENTATIONS` is taken as is.
    """
    if augment is None:
        return tuple(default) if split == "train" else ()
    if augment is True:
        return tuple(default)
    if augment is False:
        return ()
    if isinstance(augment, str):
        augment = (augment,)
    augment = tuple(augment)
    for name in augment:
        if name not in AUGMENTATIONS:
            raise ValueError(
                "Invalid value received for argument `augment`. Expected None, "
                f"a bool or names from {AUGMENTATIONS}. Received: augment={augment!r}"
            )
    return augment

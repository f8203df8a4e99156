"""Writers of small fixture datasets in each reader's real on-disk format.

Each function writes a tiny, deterministic (given `seed`) copy of a dataset
into a directory, in exactly the layout the corresponding reader of
`keras_mtl.data` expects from the real release, and returns what it wrote
(arrays, labels, paths) so tests can compare a reader's output with it.
They serve the library's own tests, two-step smoke runs of the gin configs
(`train.train_data = @nyuv2()` with `nyuv2.data_dir` pointing at a fixture)
and users who want to check a pipeline before fetching the real data.

Example:

```python
from keras_mtl.data import nyuv2, testing
testing.write_nyuv2("/tmp/nyu_fixture", height=32, width=32)
ds = nyuv2("/tmp/nyu_fixture", batch_size=2)
```
"""

import os

import numpy as np

from keras_mtl.data.celeba import CELEBA_ATTRIBUTES
from keras_mtl.data.cityscapes import CITYSCAPES_CLASSES_7
from keras_mtl.data.nyuv2 import NYUV2_CLASSES


def _unit_normals(rng, shape):
    n = rng.normal(size=shape + (3,)).astype("float32")
    n[..., 2] = np.abs(n[..., 2]) + 0.1
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _write_npy_split(root, split, arrays):
    for folder, items in arrays.items():
        os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        for i, array in enumerate(items):
            np.save(os.path.join(root, split, folder, f"{i}.npy"), array)


def write_nyuv2(directory, num_train=4, num_val=2, height=12, width=16, seed=0):
    """Writes a NYUv2 fixture in the preprocessed `.npy` layout (MTAN).

    Per example: `image` float32 (H, W, 3) in [0, 1]; `label` float32 (H, W)
    with class ids 0..12 and -1 for unlabelled pixels; `depth` float32
    (H, W, 1) in [0.5, 10] with some 0 (missing) pixels; `normal` float32
    (H, W, 3) unit vectors with zero vectors where depth is missing.

    Returns:
        {"train": {"image": [...], "label": [...], "depth": [...],
        "normal": [...]}, "val": {...}}: the arrays written.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", num_train), ("val", num_val)):
        arrays = {"image": [], "label": [], "depth": [], "normal": []}
        for _ in range(count):
            arrays["image"].append(rng.uniform(size=(height, width, 3)).astype("float32"))
            label = rng.integers(-1, len(NYUV2_CLASSES), size=(height, width)).astype("float32")
            arrays["label"].append(label)
            depth = rng.uniform(0.5, 10.0, size=(height, width, 1)).astype("float32")
            missing = rng.uniform(size=(height, width)) < 0.1
            depth[missing] = 0.0
            arrays["depth"].append(depth)
            normal = _unit_normals(rng, (height, width))
            normal[missing] = 0.0
            arrays["normal"].append(normal)
        _write_npy_split(directory, split, arrays)
        written[split] = arrays
    return written


def write_cityscapes(directory, num_train=4, num_val=2, height=8, width=16, seed=0, with_19=True):
    """Writes a Cityscapes fixture in the preprocessed `.npy` layout (MTAN).

    Per example: `image` float32 (H, W, 3) in [0, 1]; `label_7` float32
    (H, W) in {-1, 0..6}; `label_19` float32 (H, W) in {-1, 0..18} (when
    `with_19`); `depth` float32 (H, W, 1) with some 0 (missing) pixels.

    Returns:
        {"train": {folder: [arrays]}, "val": {...}}.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", num_train), ("val", num_val)):
        arrays = {"image": [], "label_7": [], "depth": []}
        if with_19:
            arrays["label_19"] = []
        for _ in range(count):
            arrays["image"].append(rng.uniform(size=(height, width, 3)).astype("float32"))
            arrays["label_7"].append(
                rng.integers(-1, len(CITYSCAPES_CLASSES_7), size=(height, width)).astype("float32")
            )
            if with_19:
                arrays["label_19"].append(rng.integers(-1, 19, size=(height, width)).astype("float32"))
            depth = rng.uniform(0.01, 0.3, size=(height, width, 1)).astype("float32")
            depth[rng.uniform(size=(height, width)) < 0.1] = 0.0
            arrays["depth"].append(depth)
        _write_npy_split(directory, split, arrays)
        written[split] = arrays
    return written


def _jpeg(array):
    import tensorflow as tf

    return tf.io.encode_jpeg(tf.constant(array, "uint8"), quality=95).numpy()


def write_celeba(directory, num_train=4, num_val=2, num_test=2, image_shape=(218, 178), seed=0, layout="release"):
    """Writes a CelebA fixture, as the official release files or as a prepared tfds dir.

    Args:
        directory: where to write.
        num_train, num_val, num_test: images per official partition (0/1/2).
        image_shape: (height, width) of the aligned JPEGs (218x178 in the
            release; the tfds layout requires it).
        seed: seed of the random images and attributes.
        layout: `"release"` writes `list_attr_celeba.txt`,
            `list_eval_partition.txt` and `img_align_celeba/*.jpg`;
            `"tfds"` writes `celeb_a/2.1.0/` (TFRecords, dataset_info.json)
            with the features of tensorflow-datasets' `celeb_a` builder,
            through tfds' own writer.

    Returns:
        {"train": (names, attributes bool (N, 40)), "validation": ...,
        "test": ...} in partition-file order (tfds stores its records in its
        own hashed order, like the real prepared `celeb_a`).
    """
    if layout not in ("release", "tfds"):
        raise ValueError(
            "Invalid value received for argument `layout`. Expected 'release' or "
            f"'tfds'. Received: layout={layout!r}"
        )
    rng = np.random.default_rng(seed)
    splits = (("train", num_train), ("validation", num_val), ("test", num_test))
    examples = {}
    number = 1
    for split, count in splits:
        names, attributes, images = [], [], []
        for _ in range(count):
            names.append(f"{number:06d}.jpg")
            attributes.append(rng.uniform(size=40) < 0.3)
            images.append(rng.integers(0, 256, size=tuple(image_shape) + (3,), dtype="uint8"))
            number += 1
        examples[split] = (names, np.asarray(attributes, bool).reshape(-1, 40), images)

    if layout == "release":
        image_dir = os.path.join(directory, "img_align_celeba")
        os.makedirs(image_dir, exist_ok=True)
        attr_lines = [str(number - 1), " ".join(CELEBA_ATTRIBUTES)]
        partition_lines = []
        for split_id, (split, _) in enumerate(splits):
            names, attributes, images = examples[split]
            for name, attr, image in zip(names, attributes, images):
                with open(os.path.join(image_dir, name), "wb") as f:
                    f.write(_jpeg(image))
                values = " ".join(f"{v:2d}" for v in np.where(attr, 1, -1))
                attr_lines.append(f"{name} {values}")
                partition_lines.append(f"{name} {split_id}")
        with open(os.path.join(directory, "list_attr_celeba.txt"), "w") as f:
            f.write("\n".join(attr_lines) + "\n")
        with open(os.path.join(directory, "list_eval_partition.txt"), "w") as f:
            f.write("\n".join(partition_lines) + "\n")
    else:
        import tensorflow_datasets as tfds

        features = tfds.builder("celeb_a", data_dir=directory).info.features
        landmark_names = list(features["landmarks"].keys())

        def generate(split):
            names, attributes, images = examples[split]
            for index, (name, attr, image) in enumerate(zip(names, attributes, images)):
                yield name, {
                    "image": image,
                    "landmarks": {k: 0 for k in landmark_names},
                    "attributes": dict(zip(CELEBA_ATTRIBUTES, (bool(a) for a in attr))),
                    "identity": {"Identity_No": index},
                }

        tfds.dataset_builders.store_as_tfds_dataset(
            name="celeb_a", version="2.1.0", features=features,
            split_datasets={split: list(generate(split)) for split, _ in splits},
            data_dir=directory,
        )
    return {split: examples[split][:2] for split, _ in splits}


def write_mtfl(directory, num_train=4, num_test=2, seed=0):
    """Writes an MTFL fixture: training.txt, testing.txt and JPEGs.

    Images go to `lfw_5590/` (250x250, as LFW) and `net_7876/` (varied
    sizes), annotation lines use Windows separators like the release, and
    testing.txt lines start with a space, as in the release.

    Returns:
        {"train": [(relative path, landmarks (10,), classes (4,), (h, w))],
        "test": [...]}, classes in the file's 1-based coding.
    """
    rng = np.random.default_rng(seed)
    written = {}
    for split, count, file in (("train", num_train, "training.txt"), ("test", num_test, "testing.txt")):
        rows, lines = [], []
        for i in range(count):
            folder = "lfw_5590" if i % 2 == 0 else "net_7876"
            h, w = (250, 250) if folder == "lfw_5590" else (int(rng.integers(60, 120)), int(rng.integers(60, 120)))
            name = f"{split}_{i:04d}.jpg"
            os.makedirs(os.path.join(directory, folder), exist_ok=True)
            with open(os.path.join(directory, folder, name), "wb") as f:
                f.write(_jpeg(rng.integers(0, 256, size=(h, w, 3), dtype="uint8")))
            xs = np.sort(rng.uniform(0.2 * w, 0.8 * w, size=5))[[0, 4, 2, 1, 3]]
            ys = np.concatenate([rng.uniform(0.3 * h, 0.4 * h, 2), rng.uniform(0.5, 0.6, 1) * h, rng.uniform(0.7 * h, 0.8 * h, 2)])
            points = np.round(np.concatenate([xs, ys]) * 4) / 4
            classes = np.asarray([rng.integers(1, 3), rng.integers(1, 3), rng.integers(1, 3), rng.integers(1, 6)])
            rel = f"{folder}\\{name}"
            prefix = " " if split == "test" else ""
            lines.append(prefix + " ".join([rel] + [f"{v:.2f}" for v in points] + [str(int(c)) for c in classes]))
            rows.append((rel, points.astype("float32"), classes.astype("int32"), (h, w)))
        with open(os.path.join(directory, file), "w") as f:
            f.write("\n".join(lines) + "\n")
        written[split] = rows
    return written


def write_mnist_npz(path, num_train=20, num_test=10, seed=0):
    """Writes an MNIST `.npz` (keras layout: x_train, y_train, x_test, y_test).

    The digit images are synthetic: the image of class c is a solid 28x28
    block of value 20 * (c + 1), so a
    pixel of a composed MultiMNIST image tells which digit covers it.

    Returns:
        {"x_train", "y_train", "x_test", "y_test"}: the arrays written.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, 10, size=count).astype("uint8")
        arrays[f"x_{split}"] = np.broadcast_to((20 * (labels.astype("int32") + 1)).astype("uint8")[:, None, None], (count, 28, 28)).copy()
        arrays[f"y_{split}"] = labels
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)
    return arrays

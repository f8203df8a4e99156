"""Reader for the preprocessed `.npy` layout of NYUv2 and Cityscapes.

The layout (Liu, Johns and Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019, used by most MTL papers including Maximum Roaming and
IMTL) is one folder per split and per modality, one file per example:

    <data_dir>/train/image/0.npy   float32 (H, W, 3) in [0, 1]
    <data_dir>/train/label/0.npy   float (H, W), class id or -1 (unlabelled)
    <data_dir>/train/depth/0.npy   float32 (H, W, 1), 0 where missing
    <data_dir>/val/...

The example index i is the file stem; every modality folder of a split must
hold the same indices.
"""

import os

import numpy as np
import tensorflow as tf

from keras_mtl.data import _common, augment as augment_lib


def _indices(folder):
    stems = []
    for name in os.listdir(folder):
        stem, ext = os.path.splitext(name)
        if ext == ".npy" and stem.isdigit():
            stems.append(int(stem))
    return sorted(stems)


def scan(dataset, data_dir, split, folders, how_to_obtain):
    """Checks the layout; returns (indices, {folder: (shape, dtype, fortran, offsets)}).

    Every file header is read (cheap: memory-mapped), so a truncated or
    non-`.npy` file or a shape that differs from the first example's fails
    here, naming the file.
    """
    _common.require_dir(data_dir, dataset, how_to_obtain)
    split_dir = os.path.join(data_dir, split)
    _common.require_dir(split_dir, dataset, how_to_obtain)
    indices = None
    meta = {}
    for folder in folders:
        path = os.path.join(split_dir, folder)
        _common.require_dir(path, dataset, how_to_obtain)
        found = _indices(path)
        if not found:
            raise _common.missing(
                dataset, os.path.join(path, "0.npy"), how_to_obtain,
                detail="the folder holds no <index>.npy files",
            )
        if indices is None:
            indices = found
            first_folder = folder
        elif found != indices:
            lacking = sorted(set(indices) ^ set(found))[0]
            where = path if lacking in indices else os.path.join(split_dir, first_folder)
            raise _common.missing(
                dataset, os.path.join(where, f"{lacking}.npy"), how_to_obtain,
                detail=f"the folders {first_folder!r} and {folder!r} hold different examples",
            )
        meta[folder] = _scan_folder(dataset, path, found, how_to_obtain)
    return indices, meta


# tf.io.decode_raw's output types; a .npy of another dtype is rejected by scan.
_DECODABLE = {
    np.dtype(n) for n in (
        "float16", "float32", "float64", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "bool", "complex64", "complex128",
    )
}


def _scan_folder(dataset, path, found, how_to_obtain):
    """One modality folder: (shape, dtype, fortran_order, {index: data offset}).

    The `.npy` headers are parsed here, once, by NumPy in the calling thread.
    The tf.data map then reads the raw bytes after each header with TF ops:
    no Python runs in tf.data's threads. (Parsing headers there with
    `np.load` races with `ast` use elsewhere on CPython 3.11 before 3.11.8,
    gh-106905: "AST constructor recursion depth mismatch".)
    """
    shape = dtype = fortran = None
    offsets = {}
    for i in found:
        file = os.path.join(path, f"{i}.npy")
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            offset = int(array.offset)
        except Exception as error:  # noqa: BLE001 - any parse failure is corruption
            raise _common.missing(
                dataset, file, how_to_obtain,
                detail=f"it could not be read as a .npy array ({error})",
            ) from None
        if shape is None:
            shape, dtype, fortran = array.shape, array.dtype, bool(np.isfortran(array))
            if dtype.newbyteorder("=") not in _DECODABLE:
                raise _common.missing(
                    dataset, file, how_to_obtain,
                    detail=f"its dtype {dtype} is not one the reader decodes "
                    f"({', '.join(sorted(str(d) for d in _DECODABLE))})",
                )
        elif array.shape != shape:
            raise _common.missing(
                dataset, file, how_to_obtain,
                detail=f"its shape {array.shape} differs from the first file's {shape}",
            )
        elif array.dtype != dtype or bool(np.isfortran(array)) != fortran:
            raise _common.missing(
                dataset, file, how_to_obtain,
                detail=f"its dtype {array.dtype} (fortran order {np.isfortran(array)}) "
                f"differs from the first file's {dtype} (fortran order {fortran})",
            )
        offsets[i] = offset
        del array
    return shape, dtype, fortran, offsets


def load_fn(split_dir, folders, meta):
    """A tf.data map function: (index, {folder: data offset}) -> {folder: tensor}.

    Each file is read with `tf.io.read_file` and its data decoded with
    `tf.io.decode_raw` from the offset `scan` found (pure TF, parallel).
    """

    def fn(index, offsets):
        out = {}
        for folder in folders:
            shape, dtype, fortran, _ = meta[folder]
            native = dtype.newbyteorder("=")
            size = int(np.prod(shape, dtype="int64")) * native.itemsize
            path = tf.strings.join(
                [split_dir, folder, tf.strings.as_string(index) + ".npy"], separator=os.sep
            )
            data = tf.strings.substr(tf.io.read_file(path), offsets[folder], size)
            little = dtype.byteorder == "<" or (dtype.byteorder in "=|" and np.little_endian)
            array = tf.io.decode_raw(data, tf.as_dtype(native), little_endian=little)
            if fortran:
                array = tf.transpose(tf.reshape(array, shape[::-1]))
            else:
                array = tf.reshape(array, shape)
            out[folder] = array
        return out

    return fn


def indexed(indices, folders, meta):
    """The (index, {folder: offset}) elements a `load_fn` map reads."""
    offsets = {
        f: np.asarray([meta[f][3][i] for i in indices], "int64") for f in folders
    }
    return tf.data.Dataset.from_tensor_slices((np.asarray(indices, "int64"), offsets))


def to_image(array):
    """A stored image to float32 in [0, 1] (uint8 is rescaled)."""
    if array.dtype == tf.uint8:
        return tf.cast(array, "float32") / 255.0
    return tf.cast(array, "float32")


def to_class_map(array, num_classes):
    """A stored label map to int32 (H, W), -1 where unlabelled or out of range."""
    if array.shape.rank == 3:
        array = array[..., 0]
    labels = tf.cast(tf.round(tf.cast(array, "float32")), "int32")
    return tf.where((labels >= 0) & (labels < num_classes), labels, -1)


def to_dense(array):
    """A stored float map to float32 (H, W, C) (a channel is added to (H, W))."""
    array = tf.cast(array, "float32")
    return array[..., None] if array.shape.rank == 2 else array


def to_binary_mask(class_map, class_id):
    """float32 (H, W, 1): 1 where `class_map == class_id`, else 0."""
    return tf.cast(class_map == class_id, "float32")[..., None]


def pipeline(
    *, dataset, data_dir, split, folders, meta_indices, make_labels, spatial_keys,
    normal_keys, depth_keys, batch_size, shuffle, seed, augment, image_size,
    label_size, drop_remainder, repeat,
):
    """Builds the tf.data pipeline for one split of an `.npy`-layout dataset."""
    indices, meta = meta_indices
    split_dir = os.path.join(data_dir, split)
    ds = indexed(indices, folders, meta)
    ds = _common.shuffled(ds, shuffle, len(indices), seed)
    load = load_fn(split_dir, folders, meta)
    ds = ds.map(lambda i, o: make_labels(load(i, o)), num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        ds = _common.with_random_seeds(ds, seed)

        def _augment(example, seeds):
            image, labels = example
            flip_seed, crop_seed = tf.unstack(
                tf.random.experimental.stateless_split(seeds, 2)
            )
            if "scale_crop" in augment:
                image, labels = augment_lib.random_scale_crop(
                    image, labels, crop_seed, spatial_keys=spatial_keys,
                    depth_keys=depth_keys,
                )
            if "flip" in augment:
                image, labels = augment_lib.random_horizontal_flip(
                    image, labels, flip_seed,
                    spatial_keys=[k for k in spatial_keys if k not in normal_keys],
                    normal_keys=normal_keys,
                )
            return image, labels

        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    if image_size is not None or label_size is not None:
        ds = ds.map(
            lambda image, labels: augment_lib.resize_example(
                image, labels, image_size, label_size, spatial_keys
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return _common.finish(ds, batch_size, drop_remainder, repeat)

"""Pieces shared by the dataset readers: errors, seeds, batching."""

import os

import tensorflow as tf


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing or unreadable; the message says how to get it."""


def missing(dataset, expected, how_to_obtain, detail=None):
    """The error for a missing or corrupt file of `dataset`."""
    message = f"{dataset}: expected the file or folder {expected!r}"
    message += f", but {detail}." if detail else ", but it does not exist."
    message += f" {how_to_obtain} Nothing is downloaded at run time."
    return DatasetNotFoundError(message)


def require_dir(path, dataset, how_to_obtain):
    if not os.path.isdir(path):
        raise missing(dataset, path, how_to_obtain)


def require_file(path, dataset, how_to_obtain):
    if not os.path.isfile(path):
        raise missing(dataset, path, how_to_obtain)


def check_choice(argument, value, choices):
    if value not in choices:
        raise ValueError(
            f"Invalid value received for argument `{argument}`. Expected one of "
            f"{tuple(choices)}. Received: {argument}={value!r}"
        )


def check_size(argument, value):
    """None or a (height, width) pair of positive ints; an int means square."""
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(
            f"Invalid value received for argument `{argument}`. Expected None, "
            f"a positive int or a (height, width) pair of positive ints. "
            f"Received: {argument}={value!r}"
        )
    return value


def check_batch_size(batch_size):
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(
            "Invalid value received for argument `batch_size`. Expected None or "
            f"an integer >= 1. Received: batch_size={batch_size}"
        )


# Leading bytes of the formats `tf.io.decode_image` reads: JPEG, PNG, GIF, BMP,
# WebP (RIFF) and JPEG XL (bare codestream or ISO box container).
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"\xff\x0a",
    b"\x00\x00\x00\x0cJXL ",
)


def read_image_file(path, dataset):
    """The bytes of the image file `path`, checked before any decoder sees them.

    A corrupt file would otherwise stop iteration with a decoder error that
    names no file ("Unknown image file format", "jpeg::Uncompress failed").
    This raises `tf.errors.InvalidArgumentError` naming `path` when the file
    is empty, is no image format that `tf.io.decode_image` reads, or is cut
    short: a JPEG with no end-of-image marker (FF D9) after its last
    start-of-scan marker (FF DA, so an EXIF thumbnail's markers do not count)
    or a PNG with no IEND chunk after its last IDAT. Bytes after the end
    marker are accepted, as the decoders accept them. A file whose damage
    these checks cannot see (e.g. a PNG with a bad checksum) still fails in
    the decoder. Works inside `tf.data` maps (graph ops only).

    Args:
        path: scalar string tensor, the file name.
        dataset: the dataset's name for the message, e.g. `"MTFL"`.

    Returns:
        A scalar string tensor, the file's contents.
    """
    contents = tf.io.read_file(path)
    data = tf.io.decode_raw(contents, "uint8")
    known = tf.reduce_any(
        [tf.strings.substr(contents, 0, len(s)) == s for s in _IMAGE_SIGNATURES]
    )
    is_jpeg = tf.strings.substr(contents, 0, 3) == _IMAGE_SIGNATURES[0]
    is_png = tf.strings.substr(contents, 0, 4) == _IMAGE_SIGNATURES[1]
    complete = tf.logical_and(
        tf.logical_or(tf.logical_not(is_jpeg), _marker_after(data, b"\xff\xda", b"\xff\xd9")),
        tf.logical_or(tf.logical_not(is_png), _marker_after(data, b"IDAT", b"IEND")),
    )
    message = tf.strings.join([
        f"{dataset}: cannot decode the image file ", path, ": it is empty, "
        "not an image (JPEG, PNG, GIF, BMP, WebP, JPEG XL) or cut short.",
    ])
    check = tf.debugging.Assert(tf.logical_and(known, complete), [message])
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def _marker_after(data, last, needed):
    """Whether the byte string `needed` occurs after the last `last` in `data`."""
    width = len(needed)
    assert len(last) == width
    data = tf.concat([data, tf.zeros([width], "uint8")], 0)  # no marker holds 0
    count = tf.shape(data)[0] - width + 1

    def starts(pattern):
        return tf.reduce_all(
            tf.stack([data[i:i + count] == byte for i, byte in enumerate(pattern)]), 0
        )

    index = tf.range(count)
    after = tf.reduce_max(tf.where(starts(last), index, -1))
    return tf.reduce_any(tf.logical_and(starts(needed), index > after))


def with_random_seeds(ds, seed):
    """Zips a stateless-RNG seed (2,) onto each element.

    The seeds are a deterministic function of `seed`, and a new sequence is
    drawn on each pass over the dataset (each epoch), so augmentations differ
    between epochs but a run is reproducible.
    """
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def finish(ds, batch_size, drop_remainder, repeat):
    """Batches, optionally repeats, and prefetches."""
    if repeat:
        ds = ds.repeat()
    if batch_size is not None:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def shuffled(ds, shuffle, num_examples, seed):
    if shuffle:
        ds = ds.shuffle(max(int(num_examples), 1), seed=seed, reshuffle_each_iteration=True)
    return ds

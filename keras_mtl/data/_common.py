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

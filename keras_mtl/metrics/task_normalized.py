"""Task-normalised loss: sum_i L_i(t) / L_i(0), GradNorm's toy-problem score."""

import numpy as np


def task_normalized_loss(losses, initial_losses):
    """Sum over tasks of each loss divided by its initial value.

    Args:
        losses: per-task losses, a mapping {task: value} or an array whose
            last axis runs over tasks (shape (..., T): one row per step or
            epoch gives the whole curve).
        initial_losses: the losses L_i(0) at the start of training, in the
            same form (mapping with the same keys, or an array (T,)).

    Returns:
        A float, or an array (...) when `losses` has leading axes.

    Example:

    >>> task_normalized_loss({"a": 0.5, "b": 30.0}, {"a": 1.0, "b": 100.0})
    0.8

    Reference:
        Chen et al., "GradNorm", ICML 2018, Section 4 (task-normalised test
        loss, Figure 2).
    """
    if isinstance(losses, dict) != isinstance(initial_losses, dict):
        raise ValueError(
            "Expected `losses` and `initial_losses` to be both mappings or both "
            f"arrays. Received: types {type(losses).__name__} and "
            f"{type(initial_losses).__name__}"
        )
    if isinstance(losses, dict):
        if set(losses) != set(initial_losses):
            raise ValueError(
                "Expected `losses` and `initial_losses` to have the same tasks. "
                f"Received: {sorted(losses)} and {sorted(initial_losses)}"
            )
        keys = sorted(losses)
        losses = [losses[k] for k in keys]
        initial_losses = [initial_losses[k] for k in keys]
    losses = np.asarray(losses, dtype="float64")
    initial = np.asarray(initial_losses, dtype="float64")
    if losses.shape[-1:] != initial.shape:
        raise ValueError(
            "Expected `losses` with a last axis of one value per task, like "
            f"`initial_losses` (shape {initial.shape}). Received: shape {losses.shape}"
        )
    if np.any(initial == 0):
        raise ValueError(
            "Expected non-zero initial losses. Received: "
            f"initial_losses={initial.tolist()}"
        )
    total = np.sum(losses / initial, axis=-1)
    return float(total) if total.ndim == 0 else total


def task_normalized_loss_curve(history, tasks, prefix="val_", suffix="_loss", initial_losses=None):
    """The task-normalised loss of every epoch of a Keras `History`.

    Args:
        history: a `keras.callbacks.History` or its `.history` dict.
        tasks: task names; the per-task loss of task `t` is read from
            `history[prefix + t + suffix]`.
        prefix: key prefix. Defaults to `"val_"` (test-time loss, as GradNorm).
        suffix: key suffix. Defaults to `"_loss"`.
        initial_losses: L_i(0) as {task: value}; defaults to the first epoch.

    Returns:
        A float64 array (epochs,).

    Example:

    >>> h = {"val_a_loss": [2.0, 1.0], "val_b_loss": [10.0, 10.0]}
    >>> task_normalized_loss_curve(h, ["a", "b"]).tolist()
    [2.0, 1.5]
    """
    history = getattr(history, "history", history)
    missing = [prefix + t + suffix for t in tasks if prefix + t + suffix not in history]
    if missing:
        raise ValueError(
            f"Expected per-task loss keys {missing} in the history. "
            f"Received keys: {sorted(history)}"
        )
    curve = np.stack([np.asarray(history[prefix + t + suffix], "float64") for t in tasks], -1)
    if initial_losses is None:
        initial = curve[0]
    else:
        initial = np.asarray([initial_losses[t] for t in tasks], "float64")
    return task_normalized_loss(curve, initial)

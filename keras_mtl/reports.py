"""Plots (matplotlib) and markdown tables of multi-task runs."""

import os

import numpy as np


def markdown_table(header, rows):
    """A GitHub-flavoured markdown table from a header and rows of cells."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(
            f"{c:.4g}" if isinstance(c, (float, np.floating)) else str(c) for c in row) + " |")
    return "\n".join(lines)


def plot_weights_and_losses(path, runs, title):
    """Figure 2 of Chen et al. 2018: w_i(t) traces and task-normalised test loss.

    Args:
        path: PNG file to write.
        runs: dict `{method: {"weights": (steps, (n, T) array),
            "normalized": (steps, values)}}`.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weighted = [m for m in runs if np.ptp(runs[m]["weights"][1]) > 0]
    ncols = len(weighted) + 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.8), squeeze=False)
    axes = axes[0]
    for ax, method in zip(axes, weighted):
        steps, w = runs[method]["weights"]
        for i in range(w.shape[1]):
            ax.plot(steps, w[:, i], lw=1.2, label=f"w_{i}")
        ax.set_title(f"{method}: task weights $w_i(t)$")
        ax.set_xlabel("training step")
        ax.set_yscale("log")
        if w.shape[1] <= 4:
            ax.legend(fontsize=8)
    ax = axes[-1]
    for method, run in runs.items():
        steps, values = run["normalized"]
        ax.plot(steps, values, lw=1.5, label=method)
    ax.set_title("task-normalised test loss $\\sum_i L_i/L_i(0)$")
    ax.set_xlabel("training step")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

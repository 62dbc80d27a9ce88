"""Plots: the lecture's loss plot (log10 of the training loss averaged over fixed-size step buckets, plus
validation), and a sweep's validation loss against model size."""
import math

import numpy as np

POINTS = 200  # the lecture: 200,000 steps in buckets of 1000


def bucket_means(values, bucket):
    """Means over consecutive buckets of `bucket` values; a shorter last bucket is averaged over what it has."""
    values = np.asarray(values, dtype=np.float64)
    starts = np.arange(0, len(values), bucket)
    return starts, np.add.reduceat(values, starts) / np.diff(np.append(starts, len(values)))


def pyplot():
    """matplotlib.pyplot, drawing into files only, never a window (imported when a plot is first made)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig, ax, path, title):
    """Title, grid and legend on `ax`, then `fig` written to `path` as a PNG and closed."""
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    pyplot().close(fig)
    return path


def plot_losses(train_losses, val_points, path, title=""):
    """train_losses: the loss of every step; val_points: (step, loss) pairs. Writes a PNG to `path`."""
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    if len(train_losses):
        bucket = max(1, len(train_losses) // POINTS)
        starts, means = bucket_means(np.log10(np.asarray(train_losses, dtype=np.float64)), bucket)
        sizes = np.diff(np.append(starts, len(train_losses)))
        ax.plot(starts + sizes / 2, means, label=f"train (mean log10 loss over {bucket} steps)")
    if val_points:
        steps, losses = zip(*val_points)
        ax.plot(steps, [math.log10(v) for v in losses], "o-", markersize=3, label="validation (full split)")
    ax.set_xlabel("step")
    ax.set_ylabel("log10 loss")
    return save_plot(fig, ax, path, title)


def lowest_loss_frontier(trials):
    """[(parameters, loss)]: each trial that has a lower loss than every trial of its size or smaller."""
    frontier, best = [], math.inf
    for params, loss, *_ in sorted(trials, key=lambda t: (t[0], t[1])):
        if loss < best:
            best = loss
            frontier.append((params, loss))
    return frontier


def plot_loss_vs_params(trials, path, reference=None, title=""):
    """trials: (parameters, validation loss, arch) of each completed trial; reference: (label, loss), a
    horizontal line. The lowest loss at each size or smaller is drawn as a step line. Writes a PNG to `path`."""
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    for arch in sorted({arch for _, _, arch in trials}):
        params, losses = zip(*[(p, v) for p, v, a in trials if a == arch])
        ax.scatter(params, losses, s=18, label=f"{arch} arch")
    frontier = lowest_loss_frontier(trials)
    if frontier:
        ax.step(*zip(*frontier), where="post", color="black", linewidth=1, label="lowest loss at this size or smaller")
    if reference is not None:
        ax.axhline(reference[1], color="gray", linestyle="--", linewidth=1, label=reference[0])
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation loss (kept model)")
    return save_plot(fig, ax, path, title)

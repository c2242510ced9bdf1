"""Figures a run logs as artifacts."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend: no display needed, safe in worker processes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay the figure out, write it as a 110-dpi PNG (folders made as needed) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss, accuracy and learning rate per epoch, train and validation side by side."""
    plt = pyplot()

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes[:2], ("loss", "acc")):
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}/{metric}"
            if any(key in h for h in history):
                ax.plot(epochs, [h.get(key, float("nan")) for h in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    losses = [h[k] for h in history for k in ("train/loss", "val/loss") if k in h]
    if losses and min(losses) > 0:  # SimSiam's loss is a negative cosine similarity
        axes[0].set_yscale("log")
    axes[2].plot(epochs, [h["lr"] for h in history], color="tab:green")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate (end of epoch)")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)

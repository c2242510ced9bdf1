"""Figures of the diagnostics: depth profiles and loss along a line between two solutions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dlx.plots import pyplot as _pyplot
from dlx.plots import save_figure


def plot_depth_profiles(profiles: dict[str, dict[int, tuple[Sequence[float], Sequence[float]]]],
                        path: str | Path, title: str = "") -> Path:
    """Activation std and gradient norm against layer index, one line per (label, epoch).

    `profiles` maps a label (a run or a configuration) to {epoch: (act_std per layer, grad_norm per layer)};
    epoch 0 is the initialisation, drawn solid; the last epoch dashed."""
    plt = _pyplot()
    fig, (ax_a, ax_g) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, by_epoch) in enumerate(profiles.items()):
        if not by_epoch:
            continue
        color = colors[i % len(colors)]
        first, last = min(by_epoch), max(by_epoch)
        for epoch, style in ((first, "-"), (last, "--")) if last != first else ((first, "-"),):
            act, grad = by_epoch[epoch]
            name = f"{label}, {'init' if epoch == 0 else f'epoch {epoch}'}"
            ax_a.plot(range(1, len(act) + 1), act, style, color=color, marker="o", ms=3, label=name)
            ax_g.plot(range(1, len(grad) + 1), grad, style, color=color, marker="o", ms=3, label=name)
    for ax, what in ((ax_a, "activation std (layer output)"), (ax_g, "gradient norm (layer parameters)")):
        ax.set_yscale("log")
        ax.set_xlabel("layer (1 = first hidden; the head is the last gradient)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="both")
    ax_a.legend(fontsize=7, ncol=1 + len(profiles) // 8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_interpolation(alphas: Sequence[float], curves: dict[str, dict[str, tuple[list[float], list[float]]]],
                       path: str | Path, ends: tuple[str, str] = ("a", "b"), title: str = "") -> Path:
    """Loss (and accuracy) along w(alpha) = (1 - alpha) w_a + alpha w_b.

    `curves` maps a split name to {"loss" | "acc": (mean per alpha, half width per alpha)}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric in zip(axes, ("loss", "acc")):
        for split, per in curves.items():
            if metric not in per:
                continue
            mean, half = per[metric]
            line, = ax.plot(alphas, mean, "-" if split == "train" else "--", label=split)
            ax.fill_between(alphas, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                            color=line.get_color(), alpha=0.2)
        for x, name in zip((0.0, 1.0), ends):
            ax.axvline(x, color="grey", lw=0.8)
            ax.annotate(name, (x, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=8)
        ax.set_xlabel("alpha")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_yscale("log")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)

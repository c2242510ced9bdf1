"""A report's figures: learning curves per configuration (mean over seeds, band min-max) and the final
metrics against the swept factor (one point per seed, mean with CI error bars)."""

from __future__ import annotations

from pathlib import Path

from dlx.plots import pyplot as _pyplot
from dlx.plots import save_figure
from dlx.report.stats import Curve
from dlx.report.table import Row

_LR_LIKE = ("lr", "learning_rate", "weight_decay", "wd", "eps")


def numeric(values: list[str | None]) -> list[float] | None:
    """The values as floats when every one parses, else None (a categorical factor)."""
    try:
        return [float(v) for v in values]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def use_log_scale(key: str, values: list[float]) -> bool:
    """Log x when the factor is positive and lr-like spanning a decade, or anything spanning two."""
    if not values or min(values) <= 0:
        return False
    span = max(values) / min(values)
    lr_like = key.rsplit(".", 1)[-1].lower() in _LR_LIKE
    return span >= 100 or (lr_like and span >= 10)


def plot_curves(curves: dict[str, dict[str, Curve]], metrics: list[str], path: str | Path, title: str = "") -> Path:
    """One panel per metric; per configuration the mean over seeds at each epoch, and the band the seeds
    span (min to max). With 2-3 seeds a t interval is far wider than the curves it would shade, so the
    CI stays in the table, the final-metric plot and report.json."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        shown = [per[metric] for per in curves.values() if metric in per and per[metric].steps]
        for i, (label, per) in enumerate(curves.items()):
            c = per.get(metric)
            if c is None or not c.steps:
                continue
            color = f"C{i % 10}"
            ax.plot(c.steps, c.mean, color=color, label=f"{label} (n={max(c.n)})")
            if max(c.n) > 1:
                ax.fill_between(c.steps, c.lo, c.hi, color=color, alpha=0.2, linewidth=0)
        if shown and "loss" in metric:
            lo, hi = min(min(c.lo) for c in shown), max(max(c.hi) for c in shown)
            if lo > 0 and hi / lo >= 10:
                ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(curves) <= 12:
            ax.legend(fontsize=8)
    fig.suptitle(title or "mean over seeds; band: min to max over seeds")
    return save_figure(fig, path)


def plot_final(rows: list[Row], factor: str, metrics: list[str], path: str | Path, title: str = "") -> Path:
    """Final metric against the factor: seeds as dots, mean with 95% CI error bars; numeric factors on a
    numeric (log where it spans decades) axis, anything else as categories."""
    plt = _pyplot()
    xs = numeric([r.config.get(factor) for r in rows]) if factor else None
    categorical = xs is None
    if categorical:
        xs = list(range(len(rows)))
    width = min(12.0, max(5.0, 2.0 + 0.7 * len(rows)))
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4), squeeze=False)
    spread = 0.08 if categorical else 0.0
    for ax, metric in zip(axes[0], metrics):
        for x, row in zip(xs, rows):
            s = row.metrics[metric]
            if s.mean is None:
                continue
            k = len(s.values)
            offsets = [spread * (j - (k - 1) / 2) for j in range(k)]
            seed_x = [x + o for o in offsets] if categorical else [x] * k
            ax.scatter(seed_x, s.values, s=14, alpha=0.5, color="C0")
            ax.errorbar([x], [s.mean], yerr=[[s.half_width or 0.0]], fmt="o", color="C3" if row.best else "k",
                        capsize=4, markersize=6)
        if categorical:
            ax.set_xticks(xs, [r.label for r in rows], rotation=30 if len(rows) > 4 else 0, ha="right"
                          if len(rows) > 4 else "center")
        elif use_log_scale(factor, xs):
            ax.set_xscale("log")
        ax.set_xlabel(factor or "configuration")
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "dots: seeds; marker: mean with 95% CI (red: best)")
    return save_figure(fig, path)


def seeds_and_mean(ax, pts: list, color: str, label: str) -> None:
    """One line of a study figure: each seed's value as a faint dot at its x, the mean with its 95% CI as a line
    through the points; `pts` is [(x, Summary)], the legend shows the most seeds any point has."""
    for x, s in pts:
        ax.scatter([x] * len(s.values), s.values, s=12, alpha=0.4, color=color)
    ax.errorbar([x for x, _ in pts], [s.mean for _, s in pts], yerr=[s.half_width or 0.0 for _, s in pts],
                fmt="o-", color=color, capsize=4, label=f"{label} (n={max(s.n for _, s in pts)})")


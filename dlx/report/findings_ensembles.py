"""The ensembles study's finding and figure: for each seed, members 0..M-1 (M = 1, 2, 4, 8) averaged as an ensemble
(dlx.ensemble: their saved test-split probabilities) against the mean of the same members alone, on test loss
(NLL), accuracy and expected calibration error; the gain should be there at the largest M and flatten as M grows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlx.ensemble import ensemble_metrics, load_predictions, member_metrics
from dlx.report.findings import missing, number, register_study_plots, verdict
from dlx.report.stats import format_number as num
from dlx.report.stats import mean_ci, register_finding

SIZES = (1, 2, 4, 8)
METRICS = ("loss", "acc", "ece")


def members_by_seed(rows: Sequence, client=None) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """seed -> the (probs, y) of its members 0, 1, ... as far as they run unbroken (finished, predictions saved):
    read from each run's folder, or through `client` from the store's artifacts where that folder is gone."""
    found: dict[str, dict[int, tuple]] = {}
    for row in rows:
        for run in row.ok_runs:
            member = number(run.params.get("ensemble.member"))
            pred = load_predictions(run, client) if member is not None else None
            if pred is not None:
                found.setdefault(run.params.get("seed", "0"), {})[int(member)] = pred
    out = {}
    for seed, by_member in found.items():
        chain, m = [], 0
        while m in by_member:
            chain.append(by_member[m])
            m += 1
        if chain:
            out[seed] = chain
    return out


def by_size(seeds: dict[str, list[tuple]]) -> dict[int, dict[str, list[float]]]:
    """M -> {ensemble_<metric>: values over seeds, member_<metric>: the mean member's, over seeds} for each M of
    SIZES that every seed reaches."""
    out = {}
    reach = min((len(v) for v in seeds.values()), default=0)
    for m in (s for s in SIZES if s <= reach):
        cell: dict[str, list[float]] = {}
        for chain in seeds.values():
            probs, y = [p for p, _ in chain[:m]], chain[0][1]
            ens = ensemble_metrics(probs, y, prefix="")
            alone = [member_metrics(p, y) for p in probs]
            for name in METRICS:
                cell.setdefault(f"ensemble_{name}", []).append(ens[name])
                cell.setdefault(f"member_{name}", []).append(float(np.mean([a[name] for a in alone])))
        out[m] = cell
    return out


@register_finding("ensembles")
def ensembles_finding(rows, metric, direction, client=None) -> str:
    if (text := missing(rows, "ensembles")) is not None:
        return text
    table = by_size(members_by_seed(rows, client))
    if len(table) < 3:
        return ("finding: the ensembles study needs members 0..3 or more of each seed finished with predictions/"
                "test.npz (ensemble.member set on every run)")
    big = max(table)
    cell = table[big]
    n = len(cell["ensemble_loss"])
    parts = [f"M={big} over {n} seeds: " + ", ".join(
        f"test/{name} ensemble {num(mean_ci(cell[f'ensemble_{name}']).mean)} vs mean member "
        f"{num(mean_ci(cell[f'member_{name}']).mean)}" for name in METRICS)]
    parts.append("ensemble test/loss by M " + ", ".join(f"{m}: {num(mean_ci(c['ensemble_loss']).mean)}"
                                                         for m, c in table.items()))
    beats = all(e < m for e, m in zip(cell["ensemble_loss"], cell["member_loss"]))  # in every seed
    beats = beats and mean_ci(cell["ensemble_acc"]).mean > mean_ci(cell["member_acc"]).mean
    beats = beats and mean_ci(cell["ensemble_ece"]).mean < mean_ci(cell["member_ece"]).mean
    sizes = sorted(table)
    gains = [mean_ci(table[a]["ensemble_loss"]).mean - mean_ci(table[b]["ensemble_loss"]).mean
             for a, b in zip(sizes, sizes[1:])]  # the fall in loss at each doubling of M
    flattens = all(g > 0 for g in gains) and gains[-1] < gains[0]
    parts.append("loss gained at each doubling " + ", ".join(f"{a}->{b}: {num(g)}"
                                                            for (a, b), g in zip(zip(sizes, sizes[1:]), gains)))
    return ("finding: " + "; ".join(parts) + "; " +
            verdict(beats and flattens, "the ensemble beats its mean member on test loss, accuracy and ECE, with "
                                        "gains that shrink as M doubles"))


@register_study_plots("ensembles")
def ensembles_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    table = by_size(members_by_seed(report.rows, client))
    if not table:
        return [], ["ensemble_by_m.png: no member's predictions/test.npz was found"]
    from dlx.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8))
    sizes = sorted(table)
    for ax, name in zip(axes, METRICS):
        for i, (kind, label) in enumerate((("ensemble", "ensemble (averaged probabilities)"),
                                           ("member", "mean member"))):
            stats = [mean_ci(table[m][f"{kind}_{name}"]) for m in sizes]
            means = [s.mean for s in stats]
            err = [s.half_width or 0.0 for s in stats]
            ax.errorbar(sizes, means, yerr=err, fmt="o-" if kind == "ensemble" else "s--", color=f"C{i}",
                        capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(m) for m in sizes])
        ax.set_xlabel("members M")
        ax.set_title(f"test/{name}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("members 0..M-1 of each seed: mean ± 95% CI over seeds", fontsize=10)
    path = save_figure(fig, out / "ensemble_by_m.png")
    return [path], ["ensemble_by_m.png: test loss, accuracy and ECE of the ensemble of members 0..M-1 against the "
                    "mean of the same members alone, for M = " + ", ".join(map(str, sizes))]

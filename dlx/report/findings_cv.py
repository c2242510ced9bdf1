"""The cv study's finding and figure: for each K, the spread (sample std over the repeats) of the K-fold estimate
of validation accuracy (cv/val/acc_mean) against that of the single hold-out estimate its first fold gives
(cv/val/acc_holdout), beside the test accuracy both estimate and the cost of the K trainings (cv/seconds)."""

from __future__ import annotations

import statistics
from pathlib import Path

from dlx.report.findings import missing, number, register_study_plots, summary, values, verdict
from dlx.report.stats import format_number as num
from dlx.report.stats import register_finding

FACTOR = "cv.folds"
KFOLD, HOLDOUT, TEST, COST = "cv/val/acc_mean", "cv/val/acc_holdout", "cv/test/acc_mean", "cv/seconds"
MIN_REPEATS = 3  # a spread needs a few repeats to mean anything


def spreads(rows) -> list[tuple[int, int, float, float]]:
    """(K, repeats, std of the K-fold estimate, std of the hold-out estimate) per K with enough repeats, K rising."""
    out = []
    for row in rows:
        k = number(row.config.get(FACTOR))
        kfold, hold = values(row, KFOLD), values(row, HOLDOUT)
        n = min(len(kfold), len(hold))
        if k is not None and n >= MIN_REPEATS:
            out.append((int(k), n, statistics.stdev(kfold), statistics.stdev(hold)))
    return sorted(out)


@register_finding("cv")
def cv_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "cv")) is not None:
        return text
    found = spreads(rows)
    if not found:
        return (f"finding: the cv study needs {MIN_REPEATS}+ finished repeats per K with {KFOLD} and {HOLDOUT} "
                f"(a sweep with hydra.sweeper.objective=cv/val/acc_mean over {FACTOR} and cv.repeat)")
    parts, steadier = [], True
    by_k = {int(number(r.config.get(FACTOR))): r for r in rows if number(r.config.get(FACTOR)) is not None}
    for k, n, s_kfold, s_hold in found:
        row = by_k[k]
        cost = summary(row, COST).mean
        test = summary(row, TEST).mean
        parts.append(f"K={k} ({n} repeats): std of the K-fold estimate {num(s_kfold)} vs one hold-out fold "
                     f"{num(s_hold)} ({num(s_hold / s_kfold) if s_kfold > 0 else 'inf'}x), mean estimate "
                     f"{num(summary(row, KFOLD).mean)} against test {num(test)}"
                     + (f", {num(cost)} s per estimate" if cost is not None else ""))
        steadier = steadier and s_kfold < s_hold
    costs = [(k, summary(by_k[k], COST).mean) for k, *_ in found]
    if all(c is not None for _, c in costs) and len(costs) > 1:
        (k0, c0), (k1, c1) = costs[0], costs[-1]
        parts.append(f"cost K={k1} / K={k0}: {num(c1 / c0)}x (K ratio {num(k1 / k0)}x)")
    appeared = steadier and len(found) > 1
    return ("finding: " + "; ".join(parts) + "; " +
            verdict(appeared, "at every K the K-fold estimate varies less over repeats than one hold-out fold"))


@register_study_plots("cv")
def cv_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    found = spreads(report.rows)
    if not found:
        return [], []
    from dlx.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    ks = [k for k, *_ in found]
    ax.plot(ks, [s for _, _, s, _ in found], "o-", label="K-fold mean (cv/val/acc_mean)")
    ax.plot(ks, [h for _, _, _, h in found], "s--", label="one hold-out fold (cv/val/acc_holdout)")
    ax.set_xlabel("K (folds)")
    ax.set_ylabel("std over repeats of the estimate")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    by_k = {int(number(r.config.get(FACTOR))): r for r in report.rows if number(r.config.get(FACTOR)) is not None}
    for i, (name, marker) in enumerate(((KFOLD, "o"), (HOLDOUT, "s"), (TEST, "^"))):
        for j, k in enumerate(ks):
            vals = values(by_k[k], name)
            bx.scatter([j + (i - 1) * 0.22] * len(vals), vals, marker=marker, s=14, color=f"C{i}",
                       label=name if j == 0 else None)
    bx.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
    bx.set_ylabel("accuracy, one point per repeat")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.suptitle("estimates of accuracy over repeated random dealings of the folds", fontsize=10)
    path = save_figure(fig, out / "spread_by_k.png")
    return [path], ["spread_by_k.png: the std over repeats of the K-fold and of the one-fold estimate per K (left), "
                    "and every repeat's estimates beside the test accuracy of the same fold models (right)"]

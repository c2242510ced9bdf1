"""The simsiam study's finding and figures: SimSiam with and without its stop-gradient (Chen & He 2021), SimCLR
with and without it (Table 4 of the same paper: the negatives, not the stop-gradient, keep SimCLR from
collapsing) and a supervised encoder of the same kind as reference. The finding compares the collapse monitor
(ssl/output_std against its reference 1/sqrt(d), at the last epoch) and the representation (test/knn_acc and
probe/acc against chance, 1/num_classes); the figure draws the monitor and the k-NN accuracy epoch by epoch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dlx.report.findings import compare, missing, number, register_study_plots, show, summary, verdict
from dlx.report.stats import Summary, format_number, mean_ci, register_finding

OBJECTIVE, SWITCH = "objective", "ssl.stop_grad"
SIMSIAM, SIMCLR, SUPERVISED = "simsiam", "simclr", "supervised"
STD, REF = "ssl/output_std", "ssl/output_std_ref"
KNN, PROBE, VAL_KNN = "test/knn_acc", "probe/acc", "val/knn_acc"
# ssl/output_std as a share of 1/sqrt(d): below COLLAPSED the outputs have collapsed, above SPREAD they still
# spread over the sphere (Chen & He 2021, Fig. 2: ~1/sqrt(d) with the stop-gradient, 0 without)
COLLAPSED, SPREAD = 0.3, 0.8
# the k-NN accuracy "falls towards chance" below NEAR_CHANCE times chance, and stays "far above" it above FAR_ABOVE
# times (on ten classes: below 0.2, above 0.5)
NEAR_CHANCE, FAR_ABOVE = 2.0, 5.0


def objective_of(row_or_run) -> str:
    config = getattr(row_or_run, "config", None)
    return str(config.get(OBJECTIVE) if config is not None else row_or_run.value(OBJECTIVE))


def switch_of(value) -> bool | None:
    """ssl.stop_grad as logged ('True', 'true', '1') -> bool; None when absent."""
    if value is None:
        return None
    return str(value).strip().lower() in ("true", "1", "yes")


def arm(rows: Sequence, objective: str, stop_grad: bool):
    """The row of one objective with the switch on or off that has finished runs, or None."""
    return next((r for r in rows if objective_of(r) == objective and switch_of(r.config.get(SWITCH)) is stop_grad
                 and r.ok_runs), None)


def ratio(run) -> float | None:
    """The run's last ssl/output_std as a share of its reference 1/sqrt(d)."""
    std, ref = run.metrics.get(STD), run.metrics.get(REF)
    if std is None or not ref or math.isnan(std):
        return None
    return std / ref


def ratios(row) -> Summary:
    return mean_ci([v for v in (ratio(r) for r in row.ok_runs) if v is not None])


def supervised_runs(rows: Sequence) -> list:
    """The supervised runs, one per seed: supervised training ignores ssl.stop_grad, so a grid over the switch
    runs each seed twice with the same result, which must not count as two samples."""
    seen, out = set(), []
    for row in rows:
        if objective_of(row) != SUPERVISED:
            continue
        for run in row.ok_runs:
            seed = run.params.get("seed")
            if seed not in seen:
                seen.add(seed)
                out.append(run)
    return out


def chance_of(rows: Sequence) -> float | None:
    """1/num_classes from the runs' data.num_classes; None when none logged it."""
    classes = {number(r.params.get("data.num_classes")) for row in rows for r in row.ok_runs} - {None}
    return 1 / max(classes) if classes and max(classes) > 0 else None


def of_runs(runs: Sequence, metric: str) -> Summary:
    return mean_ci([r.metrics[metric] for r in runs if metric in r.metrics and not math.isnan(r.metrics[metric])])


def describe(name: str, on, off) -> str:
    """One objective's numbers with the switch on and off: output_std/ref, test/knn_acc, probe/acc."""
    def side(row) -> str:
        return (f"ssl/output_std over 1/sqrt(d) {show(ratios(row))}, {KNN} {show(summary(row, KNN))}, "
                f"{PROBE} {show(summary(row, PROBE))}")

    return f"{name} with stop-grad: {side(on)}; without: {side(off)}"


@register_finding("simsiam")
def simsiam_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "simsiam")) is not None:
        return text
    on, off = arm(rows, SIMSIAM, True), arm(rows, SIMSIAM, False)
    if on is None or off is None:
        return (f"finding: the simsiam study needs finished runs of objective=simsiam with {SWITCH}=true and "
                f"{SWITCH}=false")
    r_on, r_off = ratios(on), ratios(off)
    if r_on.mean is None or r_off.mean is None:
        return f"finding: the simsiam runs logged no {STD} and {REF} (the collapse monitor)"
    chance = chance_of(rows)
    parts = [describe("simsiam", on, off)]
    sig, test = compare(r_on.values, r_off.values)
    parts.append(f"output_std with vs without stop-grad: {test}")
    collapse = sig and r_off.mean < COLLAPSED and r_on.mean > SPREAD
    k_on, k_off = summary(on, KNN), summary(off, KNN)
    knn_falls = False
    if chance is None:
        parts.append("chance unknown: the runs logged no data.num_classes")
    elif k_on.mean is None or k_off.mean is None:
        parts.append(f"the simsiam runs logged no {KNN}")
    else:
        sig, test = compare(k_on.values, k_off.values)
        parts.append(f"chance {format_number(chance)}; {KNN} with vs without stop-grad: {test}")
        knn_falls = sig and k_off.mean < NEAR_CHANCE * chance and k_on.mean > FAR_ABOVE * chance
    verdicts = [verdict(collapse, f"output collapse: without the stop-gradient simsiam's ssl/output_std ends below "
                                  f"{COLLAPSED:g}x 1/sqrt(d), with it above {SPREAD:g}x, significantly apart"),
                verdict(knn_falls, f"k-NN fall: without the stop-gradient {KNN} ends below {NEAR_CHANCE:g}x chance, "
                                   f"with it above {FAR_ABOVE:g}x, significantly apart")]
    clr_on, clr_off = arm(rows, SIMCLR, True), arm(rows, SIMCLR, False)
    if clr_on is not None and clr_off is not None:
        parts.append(describe("simclr", clr_on, clr_off))
        spread = ratios(clr_off).mean
        verdicts.append(verdict(spread is not None and spread > SPREAD,
                                f"simclr without the stop-gradient keeps ssl/output_std above {SPREAD:g}x 1/sqrt(d)"))
    sup = supervised_runs(rows)
    if sup:
        parts.append(f"supervised (n={len(sup)}): {KNN} {show(of_runs(sup, KNN))}, {PROBE} "
                     f"{show(of_runs(sup, PROBE))}, test/acc {show(of_runs(sup, 'test/acc'))}")
    return "finding: " + "; ".join(parts) + "; " + "; ".join(verdicts)


# ---------------------------------------------------------------------------------------------- over epochs
def history_of(client, run, metric: str) -> dict[int, float]:
    from dlx.report.collect import histories

    return histories(client, [run.run_id], metric)[run.run_id]


def first_below(hist: dict[int, float], ref: float, share: float) -> int | None:
    """The first epoch whose value is below share x ref, or None."""
    return next((step for step, v in sorted(hist.items()) if v < share * ref), None)


def collapse_note(client, rows: Sequence) -> str | None:
    """How many epochs each SimSiam and SimCLR arm took to fall below COLLAPSED x the reference, seed by seed."""
    parts = []
    for name in (SIMSIAM, SIMCLR):
        for stop_grad in (False, True):
            row = arm(rows, name, stop_grad)
            if row is None:
                continue
            found = []
            for run in sorted(row.ok_runs, key=lambda r: number(r.params.get("seed")) or 0):
                ref = run.metrics.get(REF)
                if not ref:
                    continue
                epoch = first_below(history_of(client, run, STD), ref, COLLAPSED)
                found.append("never" if epoch is None else str(epoch))
            if found:
                hit = sum(f != "never" for f in found)
                parts.append(f"{name} {'with' if stop_grad else 'without'} stop-grad {'/'.join(found)} "
                             f"({hit}/{len(found)} runs)")
    if not parts:
        return None
    return (f"collapse onset: the epoch at which ssl/output_std first falls below {COLLAPSED:g}x 1/sqrt(d), seed by "
            "seed: " + ", ".join(parts))


def curves(client, runs: Sequence, metric: str) -> list[tuple[list[int], list[float]]]:
    out = []
    for run in runs:
        hist = history_of(client, run, metric)
        if hist:
            steps = sorted(hist)
            out.append((steps, [hist[s] for s in steps]))
    return out


def draw(ax, found: list[tuple[list[int], list[float]]], color: str, label: str) -> None:
    """Each seed thin, the mean over seeds (at the epochs every seed reached) thick."""
    for steps, vals in found:
        ax.plot(steps, vals, color=color, lw=0.8, alpha=0.4)
    common = sorted(set.intersection(*(set(s) for s, _ in found)))
    mean = [math.fsum(v[s.index(t)] for s, v in found) / len(found) for t in common]
    ax.plot(common, mean, color=color, lw=2.5, label=f"{label} (n={len(found)})")


def plot_over_epochs(client, rows: Sequence, path: Path) -> Path | None:
    """Top: ssl/output_std per epoch with and without the stop-gradient, one panel per method, the reference
    1/sqrt(d) dashed. Bottom: val/knn_acc per epoch, with the supervised encoder's and chance."""
    from dlx.plots import pyplot, save_figure

    methods = [m for m in (SIMSIAM, SIMCLR) if arm(rows, m, True) is not None or arm(rows, m, False) is not None]
    if not methods:
        return None
    chance, sup = chance_of(rows), supervised_runs(rows)
    sup_knn = curves(client, sup, VAL_KNN)
    plt = pyplot()
    fig, axes = plt.subplots(2, len(methods), figsize=(5.5 * len(methods), 7.5), squeeze=False)
    for col, name in enumerate(methods):
        top, bottom = axes[0][col], axes[1][col]
        refs = set()
        for stop_grad, color in ((True, "C0"), (False, "C3")):
            row = arm(rows, name, stop_grad)
            if row is None:
                continue
            label = f"stop-grad {'on' if stop_grad else 'off'}"
            refs |= {r.metrics[REF] for r in row.ok_runs if REF in r.metrics}
            if found := curves(client, row.ok_runs, STD):
                draw(top, found, color, label)
            if found := curves(client, row.ok_runs, VAL_KNN):
                draw(bottom, found, color, label)
        for ref in sorted(refs):
            top.axhline(ref, color="gray", ls="--", lw=1, label=f"1/sqrt(d) = {ref:.3f}")
            top.axhline(COLLAPSED * ref, color="gray", ls=":", lw=1, label=f"{COLLAPSED:g} x 1/sqrt(d)")
        top.set_ylim(0, 1.1 * max(refs, default=top.get_ylim()[1]))
        if sup_knn:
            draw(bottom, sup_knn, "C2", SUPERVISED)
        if chance is not None:
            bottom.axhline(chance, color="gray", ls=":", lw=1, label=f"chance {chance:g}")
        top.set_title(name)
        top.set_ylabel(STD)
        bottom.set_ylabel(VAL_KNN)
        bottom.set_ylim(0, 1.02)
        for ax in (top, bottom):
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("collapse monitor and k-NN accuracy per epoch: thin lines seeds, thick their mean", fontsize=10)
    return save_figure(fig, path)


@register_study_plots("simsiam")
def simsiam_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    png = plot_over_epochs(client, report.rows, out / "collapse.png")
    note = collapse_note(client, report.rows)
    if png is None:
        return [], ["collapse.png: no run of objective=simsiam or simclr finished"]
    return [png], [n for n in (note,) if n]

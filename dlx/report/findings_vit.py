"""The vit_vs_cnn study's finding and figures: test accuracy of a CNN and a ViT of similar size against the
size of the training set, the gap between them at the smallest and the largest size, and one ViT attention
map (drawn by diagnostics=sequence in the run, copied into the report)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dlx.report.collect import copy_first_artifact
from dlx.report.findings import compare, missing, number, register_study_plots, show, summary, verdict
from dlx.report.plots import seeds_and_mean
from dlx.report.stats import Summary, format_number, mean_ci, register_finding

MODEL, SIZE, METRIC = "model", "dataset.train_subset", "test/acc"
ATTENTION = "attention/cls_attention.png"  # what dlx.diagnostics.sequence logs for a ViT


def size_of(row) -> float:
    """The row's training-set size: dataset.train_subset, or for null (all of it) the data.n_train its runs
    logged; inf when they logged none, so that "all" still sorts last."""
    size = number(row.config.get(SIZE))
    if size is not None:
        return size
    logged = [number(r.params.get("data.n_train")) for r in row.ok_runs]
    return max((n for n in logged if n is not None), default=math.inf)


def size_label(size: float) -> str:
    return "all" if math.isinf(size) else f"{size:g}"


def models_of(rows: Sequence) -> tuple[str | None, str | None]:
    """(the convolutional model, the ViT) among the rows' models: cnn when swept, else the other non-vit one."""
    names = sorted({str(r.config.get(MODEL)) for r in rows if r.config.get(MODEL) is not None})
    vit = "vit" if "vit" in names else None
    conv = "cnn" if "cnn" in names else next((n for n in names if n != "vit"), None)
    return conv, vit


def by_size(rows: Sequence, model: str) -> dict[float, object]:
    return {size_of(r): r for r in rows if str(r.config.get(MODEL)) == model and r.ok_runs}


def paired_gaps(conv_row, vit_row) -> list[float]:
    """conv - vit test/acc seed by seed (a seed's two runs share their training subset and test split)."""
    def per_seed(row) -> dict[str, float]:
        return {r.params.get("seed"): r.metrics[METRIC] for r in row.ok_runs
                if METRIC in r.metrics and not math.isnan(r.metrics[METRIC])}

    a, b = per_seed(conv_row), per_seed(vit_row)
    return [a[s] - b[s] for s in sorted(set(a) & set(b), key=str)]


def sizes_in_both(rows: Sequence, conv: str, vit: str) -> list[float]:
    return sorted(set(by_size(rows, conv)) & set(by_size(rows, vit)))


@register_finding("vit_vs_cnn")
def vit_vs_cnn_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "vit_vs_cnn")) is not None:
        return text
    conv, vit = models_of(rows)
    if conv is None or vit is None:
        return "finding: the vit_vs_cnn study needs model=vit and a convolutional model (cnn) among its factors"
    sizes = sizes_in_both(rows, conv, vit)
    if not sizes:
        return f"finding: no training-set size has finished runs of both {conv} and {vit}"
    convs, vits = by_size(rows, conv), by_size(rows, vit)
    gaps = {s: mean_ci(paired_gaps(convs[s], vits[s])) for s in sizes}
    parts, wins = [], {}
    ends = [sizes[0], sizes[-1]] if len(sizes) > 1 else sizes
    for s in ends:
        c, v = summary(convs[s], METRIC), summary(vits[s], METRIC)
        sig, test = compare(c.values, v.values)
        wins[s] = sig and c.mean > v.mean
        parts.append(f"{METRIC} with {size_label(s)} training samples: {conv} {show(c)}, {vit} {show(v)}, "
                     f"gap {conv} - {vit} {show(gaps[s])} ({test})")
    curve = "/".join(format_number(gaps[s].mean) for s in sizes)
    parts.append(f"gap by training size {'/'.join(size_label(s) for s in sizes)}: {curve}")
    small, large = gaps[sizes[0]], gaps[sizes[-1]]
    shrinks = False
    if len(sizes) > 1 and small.mean is not None and large.mean is not None:
        sig, test = compare(small.values, large.values)
        shrinks = sig and large.mean < small.mean
        parts.append(f"gap at {size_label(sizes[0])} vs at {size_label(sizes[-1])}: {test}")
    return ("finding: " + "; ".join(parts) + "; "
            + verdict(wins[sizes[0]] and shrinks,
                      f"{conv} beats {vit} significantly at the smallest training set, and the gap is "
                      "significantly smaller at the largest"))


# ---------------------------------------------------------------------------------------------- figures
def plot_by_size(rows: Sequence, path: Path) -> Path | None:
    """test/acc against the training-set size per model: seeds as dots, mean with 95% CI error bars."""
    from dlx.plots import pyplot, save_figure

    conv, vit = models_of(rows)
    models = [m for m in (conv, vit) if m is not None]
    sizes = sorted({size_of(r) for r in rows if str(r.config.get(MODEL)) in models and r.ok_runs})
    if not models or not sizes:
        return None
    # "all" without a logged size goes one step past the largest known size
    known = [s for s in sizes if not math.isinf(s)]
    at = {s: (s if not math.isinf(s) else (max(known) * 2 if known else 1.0)) for s in sizes}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, model in enumerate(models):
        cells = sorted(by_size(rows, model).items())
        pts: list[tuple[float, Summary]] = [(at[s], summary(r, METRIC)) for s, r in cells]
        pts = [(x, s) for x, s in pts if s.mean is not None]
        if not pts:
            continue
        seeds_and_mean(ax, pts, f"C{i}", model)
    ax.set_xscale("log")
    ax.set_xticks([at[s] for s in sizes], [size_label(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training samples")
    ax.set_ylabel(f"final {METRIC}")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("dots: seeds; line: mean with 95% CI")
    return save_figure(fig, path)


def attention_map(client, rows: Sequence, out: Path) -> tuple[list[Path], list[str]]:
    """The class-token attention drawn in the ViT run of the largest training set with the lowest seed."""
    _, vit = models_of(rows)
    cells = by_size(rows, vit) if vit else {}
    if not cells:
        return [], []
    size = max(cells)
    png = out / "vit_attention.png"
    run = copy_first_artifact(client, cells[size].ok_runs, ATTENTION, png)
    if run is None:
        return [], ["vit_attention.png: no ViT run logged an attention map (diagnostics=sequence on?)"]
    return [png], [f"vit_attention.png: the class token's attention over the patch grid in the last block (mean "
                   f"over heads) of {vit} run {run.run_id} ({size_label(size)} training samples, seed "
                   f"{run.params.get('seed')}), on the first validation images"]


@register_study_plots("vit_vs_cnn")
def vit_vs_cnn_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    png = plot_by_size(report.rows, out / "test_acc_by_size.png")
    maps, notes = attention_map(client, report.rows, out)
    return ([png] if png else []) + maps, notes


"""The attention study's finding and figures: a seq2seq model's sequence and token accuracy against the
sequence length, without attention and with it (Bahdanau et al. 2015), and one attention map of a run with
attention (drawn by diagnostics=sequence in the run, copied into the report)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dlx.report.collect import copy_first_artifact
from dlx.report.findings import (
    compare,
    levels_of,
    missing,
    pick,
    register_study_plots,
    show,
    summary,
    verdict,
)
from dlx.report.plots import seeds_and_mean
from dlx.report.stats import Summary, format_number, register_finding

ATTENTION, LENGTH = "model.attention", "dataset.length"
NONE = "none"  # the level without attention, the baseline each attention level is compared with
SEQ, TOKEN = "test/seq_acc", "test/token_acc"
MAP = "attention/attention.png"  # what dlx.diagnostics.sequence logs for a seq2seq model with attention


def kinds_of(rows: Sequence) -> list[str]:
    """The attention levels with runs besides none, in the order they first appear."""
    seen = [str(r.config.get(ATTENTION)) for r in rows if r.config.get(ATTENTION) is not None and r.ok_runs]
    return [k for k in dict.fromkeys(seen) if k != NONE]


def cell(rows: Sequence, kind: str, length: float):
    return pick(rows, **{ATTENTION.replace(".", "__"): kind, LENGTH.replace(".", "__"): int(length)})


def curve(rows: Sequence, kind: str, lengths: Sequence[float], metric: str) -> list[Summary]:
    out = []
    for length in lengths:
        row = cell(rows, kind, length)
        out.append(summary(row, metric) if row is not None else Summary(None, None, None, 0))
    return out


def differs(a: Sequence[float], b: Sequence[float]) -> tuple[bool, str]:
    """compare(), except that two sides whose seeds all agree within each side but differ between the sides (every
    seed 1.0 at one length, 0.0 at another: a sequence accuracy can saturate) count as different: Welch's test is
    undefined there, the difference is not in doubt."""
    sig, test = compare(a, b)
    if "undefined" in test and len(a) > 1 and len(b) > 1 and len(set(a)) == 1 == len(set(b)) and a[0] != b[0]:
        return True, f"every seed {format_number(a[0])} against every seed {format_number(b[0])}"
    return sig, test


@register_finding("attention")
def attention_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "attention")) is not None:
        return text
    lengths = levels_of(rows, LENGTH)
    kinds = kinds_of(rows)
    if len(lengths) < 2 or not kinds or not any(str(r.config.get(ATTENTION)) == NONE for r in rows):
        return (f"finding: the attention study needs {ATTENTION}={NONE} and an attention (additive, dot) among its "
                f"factors, at two or more values of {LENGTH}")
    short, long = lengths[0], lengths[-1]
    at = "/".join(f"{n:g}" for n in lengths)
    parts = []
    for m in (SEQ, TOKEN):
        means = ", ".join(f"{k} " + "/".join(format_number(s.mean) for s in curve(rows, k, lengths, m))
                          for k in (NONE, *kinds))
        parts.append(f"{m} by length {at}: {means}")
    # without attention: the sequence accuracy falls from the shortest to the longest length
    base = curve(rows, NONE, (short, long), SEQ)
    falls, test = differs(base[0].values, base[1].values)
    falls &= None not in (base[0].mean, base[1].mean) and base[1].mean < base[0].mean
    parts.append(f"without attention {SEQ} {show(base[0])} at length {short:g} -> {show(base[1])} at length "
                 f"{long:g} ({test})")
    # with attention: far above none at the longest length, having lost less than half of what none lost
    holds = True
    for k in kinds:
        own = curve(rows, k, (short, long), SEQ)
        tokens = curve(rows, k, (long,), TOKEN)[0], curve(rows, NONE, (long,), TOKEN)[0]
        above, test = differs(own[1].values, base[1].values)
        above &= None not in (own[1].mean, base[1].mean) and own[1].mean > base[1].mean
        kept = (None not in (own[0].mean, own[1].mean, base[0].mean, base[1].mean)
                and own[0].mean - own[1].mean < (base[0].mean - base[1].mean) / 2)
        parts.append(f"at length {long:g} {k} {show(own[1])} vs {NONE} {show(base[1])} ({test}; {TOKEN} "
                     f"{show(tokens[0])} vs {show(tokens[1])}); {k} {short:g} -> {long:g}: {show(own[0])} -> "
                     f"{show(own[1])}")
        holds &= above and kept
    return ("finding: " + "; ".join(parts) + "; "
            + verdict(falls and holds, f"without attention {SEQ} falls significantly from the shortest to the "
                                       f"longest length; with attention it is significantly higher at the longest "
                                       f"and has lost less than half as much"))


# ---------------------------------------------------------------------------------------------- figures
def plot_by_length(rows: Sequence, path: Path) -> Path | None:
    """test/seq_acc and test/token_acc against the length per attention level: seeds as dots, mean with 95% CI."""
    from dlx.plots import pyplot, save_figure

    lengths = levels_of(rows, LENGTH)
    kinds = [k for k in (NONE, *kinds_of(rows)) if any(str(r.config.get(ATTENTION)) == k for r in rows)]
    if not lengths or not kinds:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m in zip(axes, (SEQ, TOKEN)):
        for i, k in enumerate(kinds):
            pts = [(n, s) for n, s in zip(lengths, curve(rows, k, lengths, m)) if s.mean is not None]
            if not pts:
                continue
            seeds_and_mean(ax, pts, f"C{i}", f"attention {k}")
        ax.set_xticks(lengths, [f"{n:g}" for n in lengths])
        ax.set_xlabel("sequence length")
        ax.set_ylabel(f"final {m}")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("reverse: dots are seeds; lines the mean with 95% CI")
    return save_figure(fig, path)


def attention_map(client, rows: Sequence, out: Path) -> tuple[list[Path], list[str]]:
    """The attention map drawn in the run with attention at the longest length with the lowest seed."""
    lengths, kinds = levels_of(rows, LENGTH), kinds_of(rows)
    row = cell(rows, kinds[0], lengths[-1]) if lengths and kinds else None
    if row is None:
        return [], []
    png = out / "attention_map.png"
    run = copy_first_artifact(client, row.ok_runs, MAP, png)
    if run is None:
        return [], ["attention_map.png: no run with attention logged an attention map (diagnostics=sequence on?)"]
    return [png], [f"attention_map.png: where each output step of greedy decoding reads the input (reverse: the "
                   f"anti-diagonal), {kinds[0]} attention, run {run.run_id} (length {lengths[-1]:g}, seed "
                   f"{run.params.get('seed')}), on the first validation samples"]


@register_study_plots("attention")
def attention_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    png = plot_by_length(report.rows, out / "accuracy_by_length.png")
    maps, notes = attention_map(client, report.rows, out)
    return ([png] if png else []) + maps, notes


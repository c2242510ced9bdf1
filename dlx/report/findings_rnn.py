"""The rnn study's finding and figures: on the adding problem at the longest length, the plain RNN's test MSE
against the LSTM's and the GRU's (Welch), beside the trivial MSE of predicting the mean, and the gradient
through time that explains it (bptt/first_last_*: ||dL/dh_0|| / ||dL/dh_{T-1}||); figures of test/mse and
test/solved against the length, and of ||dL/dh_t|| against t per model (diagnostics=sequence's histories)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from dlx.data.sequences import ADDING_TRIVIAL_MSE
from dlx.report.findings import compare, missing, number, register_study_plots, show, summary, verdict
from dlx.report.plots import seeds_and_mean
from dlx.report.stats import format_number, register_finding

MODEL, LENGTH = "model", "dataset.length"
PLAIN, GATED = "rnn", ("lstm", "gru")
# the plain RNN "stays near" the trivial MSE above this share of it; a gated net "solves" the task below
# the other (a tenth: far below, as every solved run of our pilots is, ~0.001)
NEAR_TRIVIAL, FAR_BELOW = 0.5, 0.1
# the gated nets carry the gradient through time: their final first/last ratio passes the RNN's this many times
GRADIENT_FACTOR = 100.0
CURVES = ("init", "final")  # bptt/grad_norm_<when>, bptt/first_last_<when> of dlx.diagnostics.sequence


def model_of(row) -> str:
    return str(row.config.get(MODEL))


def lengths_of(rows: Sequence) -> list[int]:
    return sorted({int(n) for n in (number(r.config.get(LENGTH)) for r in rows) if n is not None})


def cell(rows: Sequence, model: str, length: int):
    """The row of one model at one length with finished runs, or None."""
    return next((r for r in rows if model_of(r) == model and number(r.config.get(LENGTH)) == length and r.ok_runs),
                None)


def models_at(rows: Sequence, length: int) -> list[str]:
    """The study's models that finished at this length: rnn, lstm, gru first, then any other."""
    names = {model_of(r) for r in rows if number(r.config.get(LENGTH)) == length and r.ok_runs}
    known = [m for m in (PLAIN, *GATED) if m in names]
    return known + sorted(names - set(known))


def by_length(rows: Sequence, model: str, metric: str, lengths: Sequence[int]) -> str:
    found = [cell(rows, model, n) for n in lengths]
    return "/".join(format_number(summary(c, metric).mean) if c is not None else "-" for c in found)


def ratio_text(s) -> str:
    """A first/last ratio over seeds; a 0 in every seed is said to be float32's underflow, not a true zero."""
    return show(s) + (" (underflowed to 0 in every seed)" if s.values and not any(s.values) else "")


@register_finding("rnn")
def rnn_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "rnn")) is not None:
        return text
    lengths = lengths_of(rows)
    if not lengths:
        return "finding: the rnn study needs dataset.length among its factors"
    longest = lengths[-1]
    plain = cell(rows, PLAIN, longest)
    gated = [(m, c) for m in GATED if (c := cell(rows, m, longest)) is not None]
    if plain is None or not gated or summary(plain, "test/mse").mean is None:
        return (f"finding: at length {longest} the rnn study needs finished runs of model=rnn and of model=lstm or "
                f"model=gru with test/mse")
    rnn_mse = summary(plain, "test/mse")
    parts = [f"at length {longest}: test/mse rnn {show(rnn_mse)} (trivial {format_number(ADDING_TRIVIAL_MSE)})"]
    ok = rnn_mse.mean >= NEAR_TRIVIAL * ADDING_TRIVIAL_MSE
    for name, row in gated:
        s = summary(row, "test/mse")
        if s.mean is None:
            parts.append(f"{name} logged no test/mse")
            ok = False
            continue
        sig, test = compare(s.values, rnn_mse.values)
        parts.append(f"{name} {show(s)} ({test} against rnn)")
        ok &= sig and s.mean < FAR_BELOW * ADDING_TRIVIAL_MSE
    parts[-1] += "; test/solved " + ", ".join(f"{m} {show(summary(c, 'test/solved'))}"
                                              for m, c in [(PLAIN, plain), *gated])
    # the why: how much of the last step's gradient reaches the first step, on the initial and final weights
    ratios = {when: {m: summary(c, f"bptt/first_last_{when}") for m, c in [(PLAIN, plain), *gated]}
              for when in CURVES}
    if any(s.mean is None for s in ratios["final"].values()):
        parts.append("bptt/first_last_final was not logged by every model (diagnostics=sequence on?)")
        ok = False
    else:
        for when in CURVES:
            parts.append(f"||dL/dh_0|| / ||dL/dh_{longest - 1}|| {'at initialisation' if when == 'init' else 'on the final weights'}: "
                         + ", ".join(f"{m} {ratio_text(s)}" for m, s in ratios[when].items()))
        rnn_ratio = ratios["final"][PLAIN].mean
        ok &= all(ratios["final"][m].mean > GRADIENT_FACTOR * rnn_ratio for m, _ in gated)
    if len(lengths) > 1:
        parts.append(f"test/mse by length {'/'.join(map(str, lengths))}: "
                     + ", ".join(f"{m} {by_length(rows, m, 'test/mse', lengths)}" for m in models_at(rows, longest)))
    gated_names = " and ".join(m for m, _ in gated)
    return ("finding: " + "; ".join(parts) + "; "
            + verdict(ok, f"at the longest length the rnn stays above {NEAR_TRIVIAL:g}x the trivial MSE while "
                          f"{gated_names} fall below {FAR_BELOW:g}x it, significantly, and their final "
                          f"gradient ratio passes the rnn's {GRADIENT_FACTOR:g} times"))


# ---------------------------------------------------------------------------------------------- figures
def plot_by_length(rows: Sequence, path: Path) -> Path | None:
    """test/mse (log) and test/solved against the length per model: seeds as dots, mean with 95% CI."""
    from dlx.plots import pyplot, save_figure

    lengths = lengths_of(rows)
    models = models_at(rows, lengths[-1]) if lengths else []
    if not models:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("test/mse", "test/solved")):
        for i, model in enumerate(models):
            pts = [(n, summary(c, metric)) for n in lengths if (c := cell(rows, model, n)) is not None]
            pts = [(n, s) for n, s in pts if s.mean is not None]
            if not pts:
                continue
            seeds_and_mean(ax, pts, f"C{i}", model)
        if metric == "test/mse":
            ax.axhline(ADDING_TRIVIAL_MSE, color="gray", ls="--", lw=1, label="predicting the mean")
            ax.set_yscale("log")
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("the adding problem: dots are seeds; lines the mean with 95% CI", fontsize=10)
    return save_figure(fig, path)


def mean_history(client, runs, metric: str) -> tuple[list[float], int]:
    """The metric's history averaged over runs step by step (steps every run logged), and how many runs."""
    from dlx.report.collect import histories

    found = [h for h in histories(client, [r.run_id for r in runs], metric).values() if h]
    steps = sorted(set.intersection(*(set(h) for h in found))) if found else []
    return [math.fsum(h[t] for h in found) / len(found) for t in steps], len(found)


def plot_gradients(client, rows: Sequence, path: Path) -> tuple[Path | None, int]:
    """||dL/dh_t|| against t, one panel per length, one colour per model: the initial weights dotted, the final
    ones solid, each the mean over seeds; (the PNG or None when no run logged it, the panels drawn)."""
    from dlx.plots import pyplot, save_figure

    lengths = lengths_of(rows)
    curves = {}
    for n in lengths:
        for model in models_at(rows, n):
            for when in CURVES:
                mean, count = mean_history(client, cell(rows, model, n).ok_runs, f"bptt/grad_norm_{when}")
                if mean:
                    curves[n, model, when] = (mean, count)
    drawn = [n for n in lengths if any(k[0] == n for k in curves)]
    if not drawn:
        return None, 0
    plt = pyplot()
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.5 * len(drawn), 4), squeeze=False)
    for ax, n in zip(axes[0], drawn):
        for i, model in enumerate(models_at(rows, n)):
            for when in CURVES:
                if (n, model, when) in curves:
                    mean, count = curves[n, model, when]
                    ax.plot(range(len(mean)), mean, ":" if when == "init" else "-", color=f"C{i}",
                            label=f"{model} {when} (n={count})")
        ax.set_yscale("log")
        ax.set_title(f"T = {n}")
        ax.set_xlabel("step t")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("||dL/dh_t||, mean over seeds")
    fig.suptitle("gradient of the loss at the recurrent state of step t (the target is read after step T-1)",
                 fontsize=10)
    return save_figure(fig, path), len(drawn)


@register_study_plots("rnn")
def rnn_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    pngs, notes = [], []
    by_len = plot_by_length(report.rows, out / "mse_by_length.png")
    if by_len is not None:
        pngs.append(by_len)
    grads, panels = plot_gradients(client, report.rows, out / "grad_through_time.png")
    if grads is None:
        notes.append("grad_through_time.png: no run logged bptt/grad_norm_init (diagnostics=sequence on?)")
    else:
        pngs.append(grads)
        notes.append(f"grad_through_time.png: ||dL/dh_t|| of the recurrent layer against t at {panels} length(s), "
                     "on the initial (dotted) and final (solid) weights, mean over seeds; a step where every seed's "
                     "gradient underflowed to 0 is not drawn on the log axis")
    return pngs, notes


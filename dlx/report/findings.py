"""The effect checks of the ready-made studies (conf/study/): each states, in one line with its numbers,
whether the published effect appeared in this sweep's runs. Registered by study name, so `dlx report`
uses them for the sweep parent whose `dlx.study` tag names the study; other sweeps get the generic
best-against-worst finding. Extra figures a study needs (depth profiles, loss along a line between two
solutions) are registered here too."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from dlx.report.stats import (
    ALPHA,
    ByStudy,
    Summary,
    format_number,
    format_p,
    mean_ci,
    register_finding,
    welch_p,
)

PlotsFn = Callable[..., tuple[list[Path], list[str]]]
# figures (and lines of text) a study adds to its report: `fn(client, report, out) -> (png paths, notes)`
STUDY_PLOTS: ByStudy[PlotsFn] = ByStudy()
register_study_plots, get_study_plots = STUDY_PLOTS.register, STUDY_PLOTS.get


# ---------------------------------------------------------------------------------------------- helpers
def values(row, metric: str) -> list[float]:
    """The metric of each run of the row that finished ok (runs that never logged it are left out)."""
    return [r.metrics[metric] for r in row.ok_runs if metric in r.metrics and not math.isnan(r.metrics[metric])]


def summary(row, metric: str) -> Summary:
    return mean_ci(values(row, metric))


num = format_number  # the findings' numbers print as the tables' do


def show(s: Summary) -> str:
    if s.mean is None:
        return "-"
    return num(s.mean) + (f" ± {num(s.half_width)}" if s.half_width is not None else "")


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def levels_of(rows: Sequence, key: str) -> list[float]:
    """The numeric values `key` takes across the rows, in increasing order."""
    return sorted({number(r.config.get(key)) for r in rows} - {None})


def pick(rows: Sequence, **config) -> object | None:
    """The row whose config has every given value (keys with dots written with __)."""
    want = {k.replace("__", "."): str(v) for k, v in config.items()}
    for row in rows:
        if all(_same(row.config.get(k), v) for k, v in want.items()):
            return row
    return None


def _same(value, want: str) -> bool:
    """Equal as logged, or as numbers ('64' and '64.0')."""
    if str(value) == want:
        return True
    a, b = number(value), number(want)
    return a is not None and b is not None and a == b


def compare(a: Sequence[float], b: Sequence[float]) -> tuple[bool, str]:
    """(significant, 'Welch t-test p=...') for two samples."""
    p = welch_p(a, b)
    if p is None:
        return False, "Welch t-test undefined (n < 2 or no spread)"
    return p < ALPHA, f"Welch t-test {format_p(p)}"


def verdict(appeared: bool, expected: str) -> str:
    return f"expected effect ({expected}) {'APPEARED' if appeared else 'did NOT appear'}"


def missing(rows: Sequence, what: str) -> str | None:
    if not rows:
        return f"finding: no finished runs to compare on {what}"
    return None


# ---------------------------------------------------------------------------------------------- dropout
def trend(rows: Sequence, factor: str, metric: str) -> tuple[list[tuple[float, Summary]], bool]:
    """(level, summary) in increasing level order, and whether the mean falls from the first level to each other."""
    levels = sorted(((number(r.config.get(factor)), r) for r in rows if number(r.config.get(factor)) is not None),
                    key=lambda t: t[0])
    pts = [(lvl, s) for lvl, s in ((lvl, summary(r, metric)) for lvl, r in levels) if s.mean is not None]
    falls = len(pts) > 1 and all(s.mean < pts[0][1].mean for _, s in pts[1:])
    return pts, falls


@register_finding("dropout")
def dropout_finding(rows, metric, direction) -> str:
    factor = next(iter(rows[0].config), "regularization.dropout") if rows else ""
    if (text := missing(rows, "dropout")) is not None:
        return text
    parts, ok = [], True
    for m in ("gap/loss", "gap/acc"):
        pts, falls = trend(rows, factor, m)
        if len(pts) < 2:
            return f"finding: {m} was not logged by enough configurations (diagnostics.gap on?)"
        first, last = pts[0], pts[-1]
        sig, test = compare(first[1].values, last[1].values)
        curve = ", ".join(f"{lvl:g}: {format_number(s.mean)}" for lvl, s in pts)
        parts.append(f"{m} {show(first[1])} at dropout {first[0]:g} vs {show(last[1])} at dropout {last[0]:g} "
                     f"({test}; mean by dropout {curve})")
        if m == "gap/loss":
            ok = falls and sig and last[1].mean < first[1].mean
    return ("finding: " + "; ".join(parts) + "; "
            + verdict(ok, "every dropout > 0 has a smaller gap/loss than dropout 0, significantly so at the largest"))


# ---------------------------------------------------------------------------------------------- norm
def reached(row) -> tuple[int, int, Summary]:
    """(runs that reached the target, runs, epochs_to_target over those that did)."""
    ok = row.ok_runs
    hit = values(row, "epochs_to_target")
    return len(hit), len(ok), mean_ci(hit)


def _target(rows) -> str:
    for row in rows:
        for r in row.ok_runs:
            if r.params.get("diagnostics.target") not in (None, "None"):
                return f"{r.params.get('diagnostics.target_metric', 'val/acc')} >= {r.params['diagnostics.target']}"
    return "the target"


@register_finding("norm")
def norm_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "norm")) is not None:
        return text
    sizes = levels_of(rows, "trainer.batch_size")
    if not sizes:
        return "finding: the norm study needs trainer.batch_size among its factors"
    big, tiny = sizes[-1], sizes[0]
    target = _target(rows)
    # (a) at the large batch: normalised nets reach the target sooner than the plain one
    speed, normal_faster = [], True
    plain = pick(rows, model__norm="none", trainer__batch_size=int(big))
    plain_epochs = math.inf
    if plain is not None:
        n_hit, n, s = reached(plain)
        plain_epochs = s.mean if n_hit == n and n else math.inf
        speed.append(f"none {n_hit}/{n} runs" + (f" in {show(s)} epochs" if n_hit else ""))
    for norm in ("batch", "layer", "group", "instance"):
        row = pick(rows, model__norm=norm, trainer__batch_size=int(big))
        if row is None:
            continue
        n_hit, n, s = reached(row)
        speed.append(f"{norm} {n_hit}/{n} runs" + (f" in {show(s)} epochs" if n_hit else ""))
        normal_faster &= n_hit == n and n > 0 and s.mean < plain_epochs
    part_a = f"at batch {int(big)}, runs reaching {target}: " + ", ".join(speed)
    # (b) at the tiny batch: batch norm's test accuracy falls, layer norm's does not
    drops, part_b, bn_breaks = {}, "", False
    for norm in ("batch", "layer"):
        lo, hi = pick(rows, model__norm=norm, trainer__batch_size=int(tiny)), pick(rows, model__norm=norm,
                                                                                      trainer__batch_size=int(big))
        if lo is not None and hi is not None and values(lo, "test/acc") and values(hi, "test/acc"):
            drops[norm] = (summary(hi, "test/acc"), summary(lo, "test/acc"))
    if len(drops) == 2 and tiny != big:
        (bn_hi, bn_lo), (ln_hi, ln_lo) = drops["batch"], drops["layer"]
        sig, test = compare(bn_lo.values, ln_lo.values)
        bn_drop, ln_drop = bn_hi.mean - bn_lo.mean, ln_hi.mean - ln_lo.mean
        bn_breaks = sig and bn_lo.mean < ln_lo.mean and bn_drop > ln_drop
        part_b = (f"; test/acc from batch {int(big)} to batch {int(tiny)}: batch norm {show(bn_hi)} -> {show(bn_lo)}, "
                  f"layer norm {show(ln_hi)} -> {show(ln_lo)} (batch vs layer at batch {int(tiny)}: {test})")
    return ("finding: " + part_a + part_b + "; "
            + verdict(normal_faster and bn_breaks,
                      "normalised nets reach the target sooner than the plain one; at tiny batches batch norm "
                      "loses accuracy and layer norm does not"))


# ---------------------------------------------------------------------------------------------- init
@register_finding("init")
def init_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "init")) is not None:
        return text
    depths = levels_of(rows, "model.depth")
    if not depths:
        return "finding: the init study needs model.depth among its factors"
    deep = int(depths[-1])
    inits = {r.config.get("model.init") for r in rows}
    xavier = next((i for i in sorted(inits) if i and i.startswith("xavier")), None)
    he = next((i for i in sorted(inits) if i and i.startswith("he")), None)
    if xavier is None or he is None:
        return "finding: the init study needs a xavier and a he initialisation to compare"
    parts, ok = [], True
    for act in ("relu", "tanh"):
        cells = {i: pick(rows, model__init=i, model__activation=act, model__depth=deep) for i in (xavier, he)}
        if any(c is None for c in cells.values()):
            continue
        desc = []
        for name, row in cells.items():
            n_hit, n, s = reached(row)
            ratio = summary(row, "init/act_std_ratio")
            desc.append(f"{name} act_std last/first at init {show(ratio)}, test/acc {show(summary(row, 'test/acc'))}, "
                        f"{n_hit}/{n} runs reached {_target(rows)}" + (f" in {show(s)} epochs" if n_hit else ""))
        parts.append(f"{act} at depth {deep}: " + "; ".join(desc))
        if act == "relu":
            xs, hs = summary(cells[xavier], "init/act_std_ratio"), summary(cells[he], "init/act_std_ratio")
            xa, ha = summary(cells[xavier], "test/acc"), summary(cells[he], "test/acc")
            sig, test = compare(xa.values, ha.values)
            shrinks = xs.mean is not None and hs.mean is not None and xs.mean < 0.1 * hs.mean and hs.mean > 0.1
            ok = shrinks and sig and xa.mean < ha.mean
            parts[-1] += f" (test/acc xavier vs he: {test})"
    by_depth = []
    for i in (xavier, he):
        cells = [pick(rows, model__init=i, model__activation="relu", model__depth=int(d)) for d in depths]
        accs = [summary(c, "test/acc") if c is not None else mean_ci([]) for c in cells]
        by_depth.append(f"{i}-relu " + "/".join(format_number(s.mean) for s in accs))
    parts.append(f"relu test/acc at depth {'/'.join(str(int(d)) for d in depths)}: " + ", ".join(by_depth))
    return ("finding: " + "; ".join(parts) + "; "
            + verdict(ok, "with relu, xavier shrinks the activations layer by layer while he keeps their scale, "
                          "and the deepest xavier-relu net trains much worse"))


# ---------------------------------------------------------------------------------------------- batch size
@register_finding("batch_size")
def batch_size_finding(rows, metric, direction) -> str:
    if (text := missing(rows, "batch size")) is not None:
        return text
    factor = "trainer.batch_size"
    parts, ok = [], True
    eps = {r.params.get("diagnostics.sharpness.eps") for row in rows for r in row.ok_runs} - {None}
    for m in ("sharpness/hessian_top_eig", "sharpness/eps", "gap/acc", "gap/loss"):
        pts, _ = trend(rows, factor, m)
        if len(pts) < 2:
            if m.startswith("sharpness"):
                return f"finding: {m} was not logged by enough configurations (diagnostics=sharpness on?)"
            continue
        rises = all(b[1].mean > a[1].mean for a, b in zip(pts, pts[1:]))
        sig, test = compare(pts[0][1].values, pts[-1][1].values)
        curve = " < ".join if rises else " / ".join
        name = f"{m} (eps={', '.join(sorted(eps))})" if m == "sharpness/eps" and eps else m
        parts.append(f"{name} by batch {'/'.join(str(int(lvl)) for lvl, _ in pts)}: "
                     f"{curve([format_number(s.mean) for _, s in pts])} ({test} smallest vs largest)")
        if m == "sharpness/hessian_top_eig":
            ok &= rises and sig
        if m == "gap/acc":
            ok &= pts[-1][1].mean > pts[0][1].mean
    return ("finding: " + "; ".join(parts) + "; "
            + verdict(ok, "the Hessian's top eigenvalue grows with the batch size, significantly from the smallest "
                          "to the largest, and the largest batch has the larger accuracy gap"))


# ---------------------------------------------------------------------------------------------- figures
def _mean_profile(client, runs, depth: int) -> dict[int, tuple[list[float], list[float]]]:
    """{epoch: (mean act_std per layer, mean grad_norm per layer)} over runs, at initialisation and the last epoch."""
    from dlx.report.collect import histories

    ids = [r.run_id for r in runs]
    act = [histories(client, ids, f"act_std/layer_{k}") for k in range(depth)]
    grad = [histories(client, ids, f"grad_norm/layer_{k}") for k in range(depth + 1)]
    if not ids or not act or not act[0] or not any(act[0].values()):
        return {}
    last = min(max(h) for h in act[0].values() if h)
    return {epoch: (_mean_at(act, epoch), _mean_at(grad, epoch)) for epoch in sorted({0, last})}


def _mean_at(per_layer: list[dict[str, dict[int, float]]], epoch: int) -> list[float]:
    means = []
    for h in per_layer:
        vals = [v[epoch] for v in h.values() if epoch in v]
        means.append(sum(vals) / len(vals) if vals else math.nan)
    return means


@register_study_plots("init")
def init_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    from dlx.diagnostics.plots import plot_depth_profiles

    depths = levels_of(report.rows, "model.depth")
    if not depths:
        return [], []
    deep = int(depths[-1])
    profiles = {}
    for row in report.rows:
        if number(row.config.get("model.depth")) == deep and row.ok_runs:
            label = f"{row.config.get('model.init')}-{row.config.get('model.activation')}"
            profile = _mean_profile(client, row.ok_runs, deep)
            if profile:
                profiles[label] = profile
    if not profiles:
        return [], ["depth profiles: no run logged act_std/layer_<k> (diagnostics=layers on?)"]
    png = plot_depth_profiles(profiles, out / "depth_profiles.png",
                              title=f"depth {deep}: layer statistics at initialisation (solid) and at the end (dashed), "
                                    f"mean over seeds")
    return [png], []


def _checkpoint(client, run) -> Path | None:
    """The run's last.pt; None (the figure is skipped, the report goes on) when it has none."""
    from dlx.resume import last_checkpoint_of

    return last_checkpoint_of(client.get_run(run.run_id), client.tracking_uri)


ALPHAS = [i / 10 for i in range(-5, 16)]  # -0.5 .. 1.5: both solutions and a stretch beyond each


@register_study_plots("batch_size")
def batch_size_plots(client, report, out: Path) -> tuple[list[Path], list[str]]:
    """Train and test loss along the line from the smallest-batch to the largest-batch solution, seed by
    seed (the two runs of one seed share data and initialisation), mean and 95% CI over seeds."""
    import torch

    from dlx.build import build_data, build_loss, build_model
    from dlx.checkpoint import load_checkpoint
    from dlx.components import untrusted
    from dlx.diagnostics.interpolate import interpolate
    from dlx.diagnostics.plots import plot_interpolation

    rows = [r for r in report.rows if number(r.config.get("trainer.batch_size")) is not None and r.ok_runs]
    if len(rows) < 2:
        return [], []
    rows.sort(key=lambda r: number(r.config["trainer.batch_size"]))
    small, large = rows[0], rows[-1]
    pairs = []
    for a in small.ok_runs:
        b = next((r for r in large.ok_runs if r.params.get("seed") == a.params.get("seed")), None)
        if b is not None:
            pairs.append((a, b))
    curves: dict[str, dict[str, list[list[float]]]] = {"train": {"loss": [], "acc": []},
                                                        "test": {"loss": [], "acc": []}}
    for a, b in pairs:
        paths = _checkpoint(client, a), _checkpoint(client, b)
        if None in paths:
            continue
        ca, cb = (load_checkpoint(p) for p in paths)
        cfg = ca["config"]
        foreign = untrusted(cfg, {})  # a report never imports code a stored configuration names
        if foreign:
            return [], [f"loss along the line between solutions: skipped, the runs use code dlx does not ship "
                        f"({', '.join(foreign)})"]
        data = build_data(cfg, torch.device("cpu"))
        model = build_model(cfg, data)
        line = interpolate(model, ca["trainer"]["model"], cb["trainer"]["model"], build_loss(cfg)[1],
                           {"train": data.train.take(torch.arange(len(data.train))),
                            "test": data.test.take(torch.arange(len(data.test)))}, ALPHAS)
        for split in curves:
            for m in ("loss", "acc"):
                curves[split][m].append(line[split][m])
    if not curves["train"]["loss"]:
        return [], ["loss along the line between solutions: no checkpoints found (trainer.checkpoint.enabled?)"]
    summed = {split: {m: ([mean_ci(col).mean for col in zip(*per[m])],
                          [mean_ci(col).half_width or 0.0 for col in zip(*per[m])]) for m in per}
              for split, per in curves.items()}
    sb, lb = int(number(small.config["trainer.batch_size"])), int(number(large.config["trainer.batch_size"]))
    png = plot_interpolation(ALPHAS, summed, out / "interpolation.png", ends=(f"batch {sb}", f"batch {lb}"),
                             title=f"loss along (1 - alpha) w_batch{sb} + alpha w_batch{lb}, "
                                   f"{len(curves['train']['loss'])} seeds")
    train = summed["train"]["loss"][0]
    i0, i1 = ALPHAS.index(0.0), ALPHAS.index(1.0)
    step = 0.5  # how far past each solution the line is read
    j0, j1 = ALPHAS.index(-step), ALPHAS.index(1.0 + step)
    def g(x: float) -> str:  # losses near a minimum span decades: three significant digits
        return f"{x:.3g}"

    note = (f"train loss along the line (interpolation.png): {g(train[i0])} at the batch-{sb} solution and "
            f"{g(train[j0])} at alpha={-step} beyond it; {g(train[i1])} at the batch-{lb} solution and "
            f"{g(train[j1])} at alpha={1 + step} beyond it")
    return [png], [note]

"""Numbers behind a report: mean +- 95% CI over seeds, per-epoch curve averages, Welch's t-test, and the
one-line finding of a study. Pure functions of plain lists, so every figure a report prints is testable."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from dlx.tasks import maximised

CONFIDENCE = 0.95
ALPHA = 0.05  # a study's difference is called significant when Welch's p < ALPHA


@dataclass(frozen=True)
class Summary:
    """Seeds of one configuration collapsed: mean, CI half-width (None for n < 2), sample std (ddof=1)."""

    mean: float | None
    half_width: float | None
    std: float | None
    n: int
    values: tuple[float, ...] = ()


@dataclass
class Curve:
    """A per-epoch average over seeds: at each step the runs that reached it; band = mean +- half_width."""

    steps: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    half_width: list[float | None] = field(default_factory=list)
    lo: list[float] = field(default_factory=list)  # min over seeds
    hi: list[float] = field(default_factory=list)  # max over seeds
    n: list[int] = field(default_factory=list)


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student t quantile for n values (n-1 degrees of freedom): 4.3027 for n=3."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, n - 1))


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """half-width = t_{0.975, n-1} * s / sqrt(n); n=1 has no interval, n=0 no mean. NaNs are dropped."""
    vals = tuple(float(v) for v in values if not math.isnan(float(v)))
    n = len(vals)
    if n == 0:
        return Summary(None, None, None, 0, vals)
    mean = statistics.fmean(vals)
    if n == 1:
        return Summary(mean, None, None, 1, vals)
    s = statistics.stdev(vals)
    return Summary(mean, t_quantile(n, confidence) * s / math.sqrt(n), s, n, vals)


def direction(metric: str) -> str:
    """'max' for accuracy-like metrics, 'min' for losses and the rest (dlx.tasks.maximised)."""
    return "max" if maximised(metric) else "min"


def mean_curve(histories: Sequence[dict[int, float]], confidence: float = CONFIDENCE) -> Curve:
    """Average {step: value} histories step by step; a run stopped early simply stops contributing."""
    curve = Curve()
    for step in sorted({s for h in histories for s in h}):
        vals = [h[step] for h in histories if step in h and not math.isnan(h[step])]
        if not vals:
            continue
        summary = mean_ci(vals, confidence)
        curve.steps.append(step)
        curve.mean.append(summary.mean)
        curve.half_width.append(summary.half_width)
        curve.lo.append(min(vals))
        curve.hi.append(max(vals))
        curve.n.append(len(vals))
    return curve


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances); None when a side has fewer than 2 values or
    neither side varies (the test is undefined there)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return None
    from scipy.stats import ttest_ind

    p = float(ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return None if math.isnan(p) else p


def format_number(x: float | None) -> str:
    """Four decimals; three significant digits for values that would print as 0.0000 (a gradient ratio of
    2e-5) or that are large."""
    if x is None:
        return "-"
    if x != 0 and abs(x) < 5e-4:
        return f"{x:.2e}"
    return f"{x:.4f}" if abs(x) < 1e4 else f"{x:.4g}"


def format_summary(s: Summary, with_n: bool = False) -> str:
    """'0.9300 ± 0.0896' ('0.9300' for n=1, '-' for n=0); with_n adds ', n=3'."""
    if s.mean is None:
        return "-"
    text = format_number(s.mean) + (f" ± {format_number(s.half_width)}" if s.half_width is not None else "")
    return f"{text}, n={s.n}" if with_n else text


def format_p(p: float) -> str:
    return f"p={p:.3f}" if p >= 0.001 else f"p={p:.1e}"


def finding(rows: Sequence, metric: str, direction: str) -> str:
    """Best against worst configuration on `metric`, with Welch's t-test between them.

    `rows` need `.label` and `.metrics[metric]` (a Summary); configurations without a value are skipped.
    """
    scored = [r for r in rows if metric in r.metrics and r.metrics[metric].mean is not None]
    if not scored:
        return f"finding: no configuration has a {metric} value to compare"
    sign = 1 if direction == "max" else -1
    ranked = sorted(scored, key=lambda r: sign * r.metrics[metric].mean, reverse=True)
    best, worst = ranked[0], ranked[-1]
    b, w = best.metrics[metric], worst.metrics[metric]
    if len(ranked) == 1:
        return f"finding: only {best.label} has {metric} values ({format_summary(b, True)}); nothing to compare"
    text = (f"finding: {best.label} is best on {metric} ({format_summary(b, True)}); "
            f"{worst.label} is worst ({format_summary(w, True)}); ")
    p = welch_p(b.values, w.values)
    if p is None:
        why = "n < 2 on a side" if min(b.n, w.n) < 2 else "no spread over seeds on either side"
        return text + f"the difference is not significant (Welch t-test undefined: {why})"
    verdict = "significant" if p < ALPHA else "not significant"
    return text + f"the difference is {verdict} (Welch t-test {format_p(p)})"


# ---------------------------------------------------------------------------------------------- study hooks
Fn = TypeVar("Fn", bound=Callable)


class ByStudy(Generic[Fn]):
    """Functions a ready-made study adds to its report, by study name (the parent run's `dlx.study` tag):
    `@hooks.register("dropout")` on the function, `hooks.get(name)` for it or the fallback."""

    def __init__(self, fallback: Fn | None = None):
        self.fallback, self._by_name = fallback, {}

    def register(self, study: str) -> Callable[[Fn], Fn]:
        def deco(fn: Fn) -> Fn:
            self._by_name[study] = fn
            return fn

        return deco

    def get(self, study: str | None) -> Fn | None:
        return self._by_name.get(study or "", self.fallback)


FindingFn = Callable[..., str]
# a study's own effect check, `fn(rows, metric, direction) -> str`, given the MLflow client as `client=` too when it
# names that parameter (it reads the runs' artifacts); other sweeps get the best-vs-worst `finding`
FINDINGS: ByStudy[FindingFn] = ByStudy(fallback=finding)
register_finding, get_finding = FINDINGS.register, FINDINGS.get

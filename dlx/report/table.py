"""Runs -> rows: one row per configuration (the values of the `by` keys), seeds collapsed into mean +- CI.

Only runs that finished ok enter a mean; failed, pruned, killed (and still running) runs of the
configuration are counted in their own columns, never averaged in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dlx.report.collect import RunRecord
from dlx.report.stats import Curve, Summary, mean_ci

COUNTED = ("failed", "pruned", "killed")  # always shown, so a clean sweep says 0 rather than nothing


@dataclass
class Row:
    config: dict[str, str | None]
    label: str
    runs: list[RunRecord]
    metrics: dict[str, Summary]
    counts: dict[str, int]
    best: bool = False

    @property
    def ok_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.ok]

    @property
    def n(self) -> int:
        return len(self.ok_runs)


@dataclass
class Report:
    """Everything a report prints or writes, in one place for the table, markdown, CSV and JSON."""

    title: str
    description: str
    by: list[str]
    metrics: list[str]
    directions: dict[str, str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)  # study statement, expected effect, finding
    curves: dict[str, dict[str, Curve]] = field(default_factory=dict)  # label -> metric -> curve
    images: list[str] = field(default_factory=list)

    @property
    def count_columns(self) -> list[str]:
        extra = sorted({k for r in self.rows for k, v in r.counts.items() if v and k not in COUNTED})
        return [*COUNTED, *extra]

    @property
    def best(self) -> Row | None:
        return next((r for r in self.rows if r.best), None)


def _sort_key(value: str | None) -> tuple:
    """Numbers in numeric order, then words, then missing values."""
    if value is None:
        return (2, 0.0, "")
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def label_of(by: list[str], config: dict[str, str | None]) -> str:
    if not by:
        return "all runs"
    if len(by) == 1:
        return str(config[by[0]])
    return ", ".join(f"{k}={config[k]}" for k in by)


def build_rows(runs: list[RunRecord], by: list[str], metrics: list[str], order: Sequence[str] = ()) -> list[Row]:
    """Rows in the order of `order` (a study's levels, for one key), else numbers then words."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(tuple(run.value(k) for k in by), []).append(run)
    rank = {level: i for i, level in enumerate(order)}
    rows = []
    for key in sorted(groups, key=lambda t: (rank.get(t[0], len(rank)) if t else 0, *(_sort_key(v) for v in t))):
        members = groups[key]
        config = dict(zip(by, key))
        ok = [r for r in members if r.ok]
        summaries = {m: mean_ci([r.metrics[m] for r in ok if m in r.metrics]) for m in metrics}
        counts = {c: 0 for c in COUNTED}
        for r in members:
            if not r.ok:
                outcome = r.outcome if r.outcome != "ok" else "running"  # ok tag but not FINISHED yet
                counts[outcome] = counts.get(outcome, 0) + 1
        rows.append(Row(config, label_of(by, config), members, summaries, counts))
    return rows


def mark_best(rows: list[Row], metric: str, direction: str) -> Row | None:
    """Mark the row with the best mean of `metric` ('max' or 'min'); rows without a value never win."""
    scored = [r for r in rows if r.metrics[metric].mean is not None]
    if not scored:
        return None
    sign = 1 if direction == "max" else -1
    best = max(scored, key=lambda r: sign * r.metrics[metric].mean)
    for r in rows:
        r.best = r is best
    return best

"""What a sweep shows: one line per finished trial, and on a terminal a bar with the counts, the ETA
and the best objective so far."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrialRecord:
    number: int
    outcome: str  # ok, failed, pruned, interrupted
    params: dict[str, str] = field(default_factory=dict)
    value: float | None = None
    seconds: float | None = None
    run_id: str | None = None
    reason: str = ""
    log: str = ""
    code: int | None = None  # interrupted: 130 (Ctrl-C) or 143 (SIGTERM), the sweep's exit code


class SweepProgress:
    def __init__(self, *, total: int, done: int, objective: str, direction: str, tty: bool | None = None):
        self.total, self.done, self.objective = total, done, objective
        self.sign = 1 if direction == "maximize" else -1
        self.counts = {"ok": 0, "failed": 0, "pruned": 0}
        self.best: float | None = None
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.started = time.monotonic()
        self.bar = None

    def start(self, best: float | None = None) -> None:
        self.best = best
        if not self.tty:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[counts]}"), TextColumn("eta"), TimeRemainingColumn(),
                            TextColumn("{task.fields[best]}"), transient=False)
        self.bar.start()
        self.task = self.bar.add_task("sweep", total=self.total, completed=self.done, counts=self._counts(),
                                      best=self._best())

    def trial(self, record: TrialRecord) -> None:
        if record.outcome in self.counts:
            self.counts[record.outcome] += 1
            self.done += 1
        if record.outcome == "ok" and record.value is not None and (
                self.best is None or self.sign * (record.value - self.best) > 0):
            self.best = record.value
        line = self.line(record)
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
            self.bar.update(self.task, completed=self.done, counts=self._counts(), best=self._best())
        else:
            print(line, flush=True)

    def line(self, r: TrialRecord) -> str:
        """`trial 3/12 ok val/acc=0.9722 optimizer=adam seed=1 (8.1s) run <id>`"""
        parts = [f"trial {self.done}/{self.total}" if r.outcome != "interrupted" else "trial", r.outcome]
        if r.value is not None:
            parts.append(f"{self.objective}={r.value:.4f}")
        parts += [f"{k}={v}" for k, v in r.params.items()]
        if r.seconds is not None:
            parts.append(f"({r.seconds:.1f}s)")
        if r.run_id:
            parts.append(f"run {r.run_id}")
        parts.append(f"[#{r.number}]")
        if r.reason and r.outcome != "ok":
            parts.append(f"- {r.reason}")
        if r.log and r.outcome == "failed":
            parts.append(f"(log: {r.log})")
        return " ".join(parts)

    def _counts(self) -> str:
        c = self.counts
        return f"ok {c['ok']} failed {c['failed']} pruned {c['pruned']} left {max(0, self.total - self.done)}"

    def _best(self) -> str:
        return f"best {self.objective}={self.best:.4f}" if self.best is not None else ""

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def announce(study: str, method: str, *, left: int, total: int, objective: str, direction: str, batch_size: int,
             pruner: str, resumed: bool, parent_run_id: str | None) -> None:
    """The sweep's first line: what it runs and where it records it."""
    at_once = f", {batch_size} at once" if batch_size > 1 else ""
    pruned = f", pruner {pruner}" if pruner != "none" else ""
    again = f" (resumed: {total - left} done)" if resumed else ""
    parent = f"; parent run {parent_run_id}" if parent_run_id else ""
    print(f"sweep {study}: {method}, {left} of {total} trials to run{at_once}{again}, "
          f"objective {objective} ({direction}){pruned}{parent}", flush=True)


def report(study: str, counts: dict, *, left: int, best: dict | None, interrupted: int | None, objective: str,
           seconds: float, parent_run_id: str | None, sweep_dir: Path) -> None:
    """The sweep's last lines: the counts, the best trial, where the summary is, how to continue."""
    lines = [f"sweep {study}: {counts['ok']} ok, {counts['failed']} failed, "
             f"{counts['pruned']} pruned" + (f", {left} left" if left else "") + f" ({seconds:.1f}s)"]
    if best is not None:
        where = " ".join(f"{k}={v}" for k, v in best["params"].items())
        lines.append(f"best {objective}={best['value']:.4f}: trial {best['trial']} {where}"
                     + (f" run {best['run_id']}" if best.get("run_id") else ""))
    if parent_run_id is not None:
        lines.append(f"parent run {parent_run_id} (dlx report {parent_run_id})")
    lines.append(f"summary: {sweep_dir / 'summary.md'}")
    if interrupted or left:
        lines.append(f"continue with: dlx sweep --resume {study}")
    print("\n".join(lines), flush=True)

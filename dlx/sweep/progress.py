"""What a sweep shows: one line per finished trial, and on a terminal a bar with the counts, the ETA
and the best objective so far."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


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

"""The callbacks a run hangs on the training loop: metrics into MLflow, checkpoints to disk."""

from __future__ import annotations

import time
from pathlib import Path

from dlx.engine import Callback


class TrackingCallback(Callback):
    """Metrics into the tracker's buffer; the buffer goes to the writer thread once per epoch. (On resume the
    tracker leaves out the points its run already holds.)"""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_fit_start(self, trainer, state): ...

    def on_step(self, trainer, state): ...

    def on_step_log(self, trainer, state, metrics):
        self._log(metrics, state.step)

    def on_epoch_end(self, trainer, state, metrics):
        # epoch-level curves use the epoch as their step; lr keeps the optimizer-step axis of its
        # per-window points (the point at the epoch's end is added unless a window just logged it)
        self._log({k: v for k, v in metrics.items() if k != "lr"}, state.epoch)
        if state.step % trainer.opt.log_every_n_steps:
            self._log({"lr": metrics["lr"]}, state.step)
        self.tracker.flush()

    def _log(self, metrics: dict, step: int) -> None:
        if metrics:
            self.tracker.log_metrics(metrics, step=step)


class CheckpointCallback(Callback):
    """last.pt every `every` epochs (and at the end); best.pt whenever the monitored metric improves.

    Writes take at most `max_overhead` of the run's time: after a write that took s seconds the next one
    waits until s / max_overhead have passed. A checkpoint due before then is kept in memory (a copy of the
    state, ~0.5 ms for a digits MLP, against ~3-5 ms to serialize and write its 1 MB) and written at the next
    write, at the end, or by `flush` when the run stops on Ctrl-C, SIGTERM or an error; only a SIGKILL loses
    it. A digits MLP (20 ms epochs) then writes every few epochs instead of 50 files a second, and its
    epochs no longer start on a cache the write has emptied. Epochs of a second or more write every time."""

    def __init__(self, directory: Path, *, every: int, monitor: str, mode: str, config: dict, run_id,
                 max_overhead: float = 0.0):
        from dlx.engine import metric_mode

        self.directory, self.every, self.monitor = directory, every, monitor
        self.sign = 1 if metric_mode(monitor, mode) == "max" else -1
        self.config, self.run_id = config, run_id
        self.max_overhead = max_overhead
        self.best: float | None = None
        self.pending: dict[str, dict] = {}  # file name -> checkpoint not written yet
        self.next_write = 0.0  # time.monotonic() before which a due checkpoint waits in memory

    def on_fit_start(self, trainer, state):
        if state.history and self.monitor in state.history[0]:
            self.best = max(self.sign * h[self.monitor] for h in state.history) * self.sign

    def on_step(self, trainer, state): ...

    def on_step_log(self, trainer, state, metrics): ...

    def on_epoch_end(self, trainer, state, metrics):
        from dlx.checkpoint import make_checkpoint

        final = state.epoch >= trainer.opt.epochs or state.stopped_early
        value = metrics.get(self.monitor)
        improved = value is not None and (self.best is None or self.sign * (value - self.best) > 0)
        due = final or state.epoch % self.every == 0
        if not (improved or due):
            return
        if improved:
            self.best = value
        now = final or not self.max_overhead or time.monotonic() >= self.next_write
        ckpt = make_checkpoint(trainer, state, config=self.config, run_id=self.run_id, copy=not now)
        self.pending.update({name: ckpt for name, wanted in (("last.pt", due), ("best.pt", improved)) if wanted})
        if now:
            self.flush()

    def flush(self) -> None:
        """Write every checkpoint that waits in memory; a checkpoint due as last.pt and best.pt is written
        once (`save_checkpoint` links the second name)."""
        from dlx.checkpoint import save_checkpoint

        if not self.pending:
            return
        start = time.monotonic()
        while self.pending:  # a write cut short (SIGTERM) leaves its checkpoint pending for the next flush
            ckpt = next(iter(self.pending.values()))
            names = [name for name, c in self.pending.items() if c is ckpt]
            save_checkpoint(ckpt, *(self.directory / name for name in names))
            for name in names:
                del self.pending[name]
        end = time.monotonic()
        if self.max_overhead:
            self.next_write = end + (end - start) / self.max_overhead

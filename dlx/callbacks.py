"""The callbacks a run hangs on the training loop: metrics into MLflow, checkpoints to disk."""

from __future__ import annotations

from pathlib import Path


class TrackingCallback:
    """Metrics into the tracker's buffer; the buffer goes to the writer thread once per epoch."""

    def __init__(self, tracker):
        self.tracker = tracker

    def on_fit_start(self, trainer, state): ...

    def on_step(self, trainer, state): ...

    def on_step_log(self, trainer, state, metrics):
        self.tracker.log_metrics(metrics, step=state.step)

    def on_epoch_end(self, trainer, state, metrics):
        # epoch-level curves use the epoch as their step; lr keeps the optimizer-step axis of its
        # per-window points (the point at the epoch's end is added unless a window just logged it)
        self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "lr"}, step=state.epoch)
        if state.step % trainer.opt.log_every_n_steps:
            self.tracker.log_metrics({"lr": metrics["lr"]}, step=state.step)
        self.tracker.flush()


class CheckpointCallback:
    """last.pt every `every` epochs (and at the end); best.pt whenever the monitored metric improves."""

    def __init__(self, directory: Path, *, every: int, monitor: str, mode: str, config: dict, run_id):
        from dlx.engine import metric_mode

        self.directory, self.every, self.monitor = directory, every, monitor
        self.sign = 1 if metric_mode(monitor, mode) == "max" else -1
        self.config, self.run_id = config, run_id
        self.best: float | None = None
        self.last_saved_epoch = -1

    def on_fit_start(self, trainer, state):
        if state.history and self.monitor in state.history[0]:
            self.best = max(self.sign * h[self.monitor] for h in state.history) * self.sign

    def on_step(self, trainer, state): ...

    def on_step_log(self, trainer, state, metrics): ...

    def on_epoch_end(self, trainer, state, metrics):
        from dlx.checkpoint import make_checkpoint, save_checkpoint

        final = state.epoch >= trainer.opt.epochs or state.stopped_early
        value = metrics.get(self.monitor)
        improved = value is not None and (self.best is None or self.sign * (value - self.best) > 0)
        if not (improved or final or state.epoch % self.every == 0):
            return
        ckpt = make_checkpoint(trainer, state, config=self.config, run_id=self.run_id)
        paths = []
        if final or state.epoch % self.every == 0:
            paths.append(self.directory / "last.pt")
            self.last_saved_epoch = state.epoch
        if improved:
            self.best = value
            paths.append(self.directory / "best.pt")
        save_checkpoint(ckpt, *paths)  # serialized once for both files

"""What a run shows on the terminal: rich progress bars on a TTY, one plain line per epoch elsewhere."""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dlx.engine import Callback

log = logging.getLogger("dlx")


def progress_mode(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bar" if sys.stdout.isatty() else "plain"


def format_metrics(metrics: dict, keys=("train/loss", "train/acc", "val/loss", "val/acc")) -> str:
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


class PlainProgress(Callback):
    """One log line per epoch: readable in CI logs, files and pipes."""

    def on_epoch_end(self, trainer, state, metrics):
        log.info("epoch %d/%d  %s  lr %.3g  %.2fs", state.epoch, trainer.opt.epochs, format_metrics(metrics),
                 metrics["lr"], metrics["epoch_time"])


class BarProgress(PlainProgress):
    """An epoch bar and a step bar with ETA and live loss/accuracy; epoch lines scroll above them."""

    def __init__(self, console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.description:>6}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False,
        )
        self.epoch_task = self.step_task = None

    def on_fit_start(self, trainer, state):
        self.progress.start()
        # rich redirects sys.stdout so prints scroll above the bars; logging handlers still hold the
        # real stream, so point them at the redirect until the bars stop
        self._swapped = []
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (sys.__stdout__, sys.__stderr__):
                self._swapped.append((handler, handler.setStream(sys.stdout)))
        self.epoch_task = self.progress.add_task("epoch", total=trainer.opt.epochs, completed=state.epoch, info="")
        self.step_task = self.progress.add_task("step", total=trainer.steps_per_epoch, info="")

    def on_step(self, trainer, state):
        self.progress.update(self.step_task, advance=1)

    def on_step_log(self, trainer, state, metrics):
        info = f"loss {metrics['train/loss_step']:.4f}"
        if "train/acc_step" in metrics:  # a self-supervised step counts no hits
            info += f" acc {metrics['train/acc_step']:.4f}"
        self.progress.update(self.step_task, info=info)

    def on_epoch_end(self, trainer, state, metrics):
        super().on_epoch_end(trainer, state, metrics)
        self.progress.update(self.epoch_task, completed=state.epoch, info=format_metrics(metrics, ("val/acc",)))
        self.progress.reset(self.step_task, total=trainer.steps_per_epoch, info="")

    def close(self):
        self.progress.stop()
        for handler, stream in getattr(self, "_swapped", []):
            handler.setStream(stream)
        self._swapped = []


def create_progress(setting: str) -> Callback | None:
    mode = progress_mode(setting)
    if mode == "bar":
        return BarProgress()
    if mode == "plain":
        return PlainProgress()
    return None


def print_summary(*, metrics: dict, run_id: str | None, artifact_uri: str | None, ui_command: str | None,
                  status: str, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"dlx train: {status}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for k in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "epochs", "best_epoch",
              "gap/acc", "gap/loss", "epochs_to_target", "sharpness/hessian_top_eig", "sharpness/eps"):
        if k in metrics:
            v = metrics[k]
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    if run_id:
        table.add_row("run id", run_id)
    if artifact_uri:
        table.add_row("artifacts", artifact_uri)
    if ui_command:
        table.add_row("browse", ui_command)
    console.print(table)

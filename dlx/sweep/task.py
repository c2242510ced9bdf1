"""The task function of one sweep trial, shared by every launcher (in-process or a worker pool)."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import traceback

from omegaconf import DictConfig

log = logging.getLogger("dlx")


class SweepTask:
    """The task function `dlx sweep` hands Hydra, and what its CLI and sweeper exchange through it: the
    user's command line, tagged on every trial's run (the object travels to the pool's workers with it),
    and the sweep's outcome, which the sweeper fills in because Hydra drops the return value of sweep()."""

    def __init__(self, command: list[str], aggregate=None):
        self.command = list(command)
        self.outcome: dict = {}  # code, counts, left, study, parent_run_id, sweep_dir, best
        # (parent, children) -> (metrics, files) the parent logs at the end: dlx cv's and dlx ensemble's
        self.aggregate = aggregate

    def __call__(self, cfg: DictConfig) -> dict:
        return run_trial(cfg, command=self.command)


def run_trial(cfg: DictConfig, command: list[str] | None = None) -> dict:
    """Run one trial with `dlx.run.train` and return its final metrics.

    Every exception propagates (RunError, Pruned, anything else), so the launcher records the job as
    failed or pruned. Before it does, a failure's traceback goes to the trial's own log file and,
    when the trial has an MLflow run, into that run's logs/ artifact: the reason sits with the trial,
    not only in the sweep's output. With trainer.progress=none the run's closing table goes to the
    log too, so a sweep prints one line per trial.
    """
    from dlx.run import Pruned, train

    quiet = cfg.trainer.progress == "none"
    shown = io.StringIO()
    try:
        with contextlib.redirect_stdout(shown) if quiet else contextlib.nullcontext():
            if str(cfg.trial.objective).startswith("cv/") and cfg.cv.fold is None:
                # a sweep that chooses on the K-fold mean: this trial runs the folds
                from dlx.cv import cv_trial

                return cv_trial(cfg, command=command)
            return train(cfg, command=command)
    except Pruned as exc:
        log.info("trial pruned: %s", exc)
        raise
    except BaseException as exc:
        from dlx.sweep.hygiene import interrupt_code

        if interrupt_code(exc):  # Ctrl-C or SIGTERM of the sweep: the user's stop, not a failure to trace
            log.warning("trial interrupted: %s", str(exc).strip() or type(exc).__name__)
        elif getattr(exc, "exit_code", None) == 2:  # the user's mistake (dlx.run's RunError): its line says it all
            log.error("trial failed: %s", exc)
        else:
            log.error("trial failed: %s: %s\n%s", type(exc).__name__, exc, traceback.format_exc())
        _upload_logs(cfg)
        raise
    finally:
        if shown.getvalue().strip():
            log.info("%s", shown.getvalue().rstrip())
        # the trial's model, optimizer and data sit in reference cycles (callbacks point back at the
        # trainer): free their tensors now, not at some later full collection, or a process running
        # trial after trial grows by a few MB per trial
        gc.collect()


def _upload_logs(cfg: DictConfig) -> None:
    """Log the run dir's log files to the trial's MLflow run again: the run closed before the
    traceback was written. The run is found by the trial tag the sweeper sets."""
    from dlx.run import hydra_runtime
    from dlx.sweep.tracking import TRIAL_TAG, find_trial_run, trial_client

    try:
        if not cfg.tracking.enabled or TRIAL_TAG not in (cfg.tracking.tags or {}):
            return
        run_dir, _, _ = hydra_runtime()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.flush()
        logs = sorted(run_dir.glob("*.log"))
        client = trial_client(cfg)
        run = find_trial_run(client, cfg) if logs else None
        for f in logs if run is not None else []:
            client.log_artifact(run.info.run_id, str(f), "logs")
    except Exception as exc:  # noqa: BLE001 - the trial's own error matters more than its log upload
        log.warning("could not upload the trial log: %s", exc)

"""One training run from a composed config: build, track in MLflow, fit, test, close the run.

The run closes FINISHED on success, FAILED (with the error tagged) on an exception or a non-finite
loss, and KILLED on Ctrl-C or SIGTERM; every buffered metric is flushed and the last checkpoint kept
on each of those paths.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import dlx
from dlx.components import fill_extras
from dlx.compose import check_config
from dlx.config import ConfigError
from dlx.errors import Pruned, RunError, Terminated  # noqa: F401 - re-exported: dlx.run.RunError
from dlx.redact import command_line
from dlx.resume import prepare_resume, record_resumed
from dlx.store_check import probe as probe_store

log = logging.getLogger("dlx")

@contextmanager
def sigterm_as_interrupt():
    def handler(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def git_info(cwd: str | os.PathLike = ".") -> dict[str, str]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return {"mlflow.source.git.commit": sha.stdout.strip(), "dlx.git.dirty": str(bool(dirty.stdout.strip()))}
    except (OSError, subprocess.SubprocessError):
        return {}


def runtime_tags(device, command: list[str]) -> dict[str, str]:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "dlx.version": dlx.__version__,
        "dlx.pid": str(os.getpid()),  # which process trained the run: a sweep worker to inspect or kill
        "dlx.torch_version": torch.__version__,
        "dlx.python_version": platform.python_version(),
        "dlx.device": str(device),
        "dlx.device_name": name,
        "dlx.command": command_line(command),
        "mlflow.source.name": "dlx train",
        "mlflow.source.type": "LOCAL",
    }


def hydra_runtime() -> tuple[Path, list[str], dict[str, str]]:
    """(run dir, task overrides, chosen option per group) when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return Path("outputs/runs/direct"), [], {}
    hc = HydraConfig.get()
    choices = {k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None}
    return Path(hc.runtime.output_dir), list(hc.overrides.task), choices


# ---------------------------------------------------------------------------------------------- callbacks
# ---------------------------------------------------------------------------------------------- the job
def preflight(cfg: DictConfig) -> None:
    """The checks before any data loads: the configuration (resolved in place) and the store's address;
    RunError with exit code 2 for the first that fails."""
    try:
        check_config(cfg)
        probe_store(cfg.tracking)  # seconds, not minutes of retries, before any data loads
    except ConfigError as exc:
        raise RunError(str(exc), 2) from None


def train(cfg: DictConfig, command: list[str] | None = None, *, checked: bool = False) -> dict[str, Any]:
    """Run one training job; returns the final metrics. Raises RunError with the exit code on failure.
    `command` is what the user typed, e.g. ["dlx", "train", "model=cnn"], tagged on the run (default: sys.argv);
    `checked`: the caller ran preflight on this configuration already (dlx train does, before the run's folder
    exists)."""
    # as composed, before check_config resolves it in place: resume tells a value this command sets from
    # one that follows another key through an interpolation
    composed = OmegaConf.to_container(cfg)
    if checked:
        OmegaConf.resolve(cfg)
    else:
        preflight(cfg)
    run_dir, overrides, choices = hydra_runtime()
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    fill_extras(resolved)
    checkpoint = None
    if resolved["trainer"]["resume"]:  # the file, its run and its configuration checked, or exit 2
        resolved, checkpoint = prepare_resume(resolved, overrides, run_dir, composed)
    from dlx import distributed

    if distributed.wanted(resolved["trainer"]) and not distributed.joined():  # torchrun starts the ranks
        return distributed.launch(resolved, run_dir=run_dir, overrides=overrides, choices=choices,
                                  checkpoint=checkpoint, command=list(command or sys.argv))
    return _train(resolved, run_dir=run_dir, overrides=overrides, choices=choices, checkpoint=checkpoint,
                  command=list(command or sys.argv))


def _train(cfg: dict, *, run_dir: Path, overrides: list[str], choices: dict, checkpoint: dict | None,
           command: list[str]) -> dict:
    from dlx.build import build
    from dlx.data import DatasetError
    from dlx.distributed import attach

    try:
        built = build(cfg)
        attach(built.trainer)  # rank 0 of several (dlx.distributed); nothing in one process
    except (DatasetError, ValueError) as exc:  # bad combinations or components found while building: no run yet
        raise RunError(str(exc), 2) from None
    tracker = _open_tracker(cfg["tracking"], run_dir)
    with sigterm_as_interrupt():
        return _track(cfg, built, tracker, run_dir=run_dir, overrides=overrides, choices=choices,
                      checkpoint=checkpoint, command=command)


def _track(cfg, built, tracker, *, run_dir, overrides, choices, checkpoint, command) -> dict:
    from dlx.callbacks import CheckpointCallback, TrackingCallback
    from dlx.tracking import StoreUnavailable

    t, trainer = cfg["trainer"], built.trainer
    run_id, progress, checkpoints, final = None, None, None, None
    status, error = "FAILED", None
    try:
        run_id = _start_run(tracker, cfg, built, run_dir, overrides, choices, checkpoint, command)
        ckpt_dir = _checkpoint_dir(tracker, run_dir)
        if run_id:
            tracker.set_tags({"dlx.checkpoint_dir": str(ckpt_dir), "dlx.run_dir": str(run_dir.resolve())})
        callbacks = [TrackingCallback(tracker)]
        ck = t["checkpoint"]
        if ck["enabled"]:
            checkpoints = CheckpointCallback(ckpt_dir, every=ck["every_n_epochs"], monitor=ck["monitor"],
                                             mode=ck["mode"], config=cfg, run_id=run_id,
                                             max_overhead=ck["max_overhead"])
            callbacks.append(checkpoints)
        from dlx.console import create_progress

        progress = create_progress(t["progress"])
        if progress is not None:
            callbacks.append(progress)
        diagnostics = None
        if "diagnostics" in cfg:
            from dlx.diagnostics.callback import DiagnosticsCallback

            if DiagnosticsCallback.wanted(cfg["diagnostics"]):
                diagnostics = DiagnosticsCallback(cfg["diagnostics"], tracker, run_dir, seed=int(t["seed"]))
                callbacks.append(diagnostics)
        if cfg.get("trial", {}).get("study") and cfg["trial"].get("prune"):
            from dlx.pruning import PruningCallback

            callbacks.append(PruningCallback(**cfg["trial"]))
        trainer.callbacks = [*callbacks, *built.user_callbacks]
        state = None
        if checkpoint is not None:
            from dlx.checkpoint import restore

            state = restore(trainer, checkpoint)
        state = trainer.fit(state)
        if hasattr(progress, "close"):
            progress.close()
        final = _finish(trainer, state, tracker, run_dir, diagnostics)
        if cfg.get("ensemble", {}).get("member") is not None:  # what dlx ensemble averages (dlx.ensemble)
            from dlx.ensemble import save_predictions

            save_predictions(trainer, tracker, run_dir)
        status = "FINISHED"
        return final
    except Pruned as exc:
        status, error = "KILLED", f"pruned: {exc}"
        raise
    except StoreUnavailable as exc:  # the run could not start in the store: nothing to close there
        error = str(exc)
        raise RunError(f"error: {exc}", 1) from None
    except KeyboardInterrupt as exc:
        status, exit_code = "KILLED", 143 if isinstance(exc, Terminated) else 130
        error = "terminated by SIGTERM" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        raise RunError(f"run {status}: {error}; the last checkpoint is kept"
                       + (f"; continue with: dlx train trainer.resume={run_id}" if run_id else ""), exit_code) from None
    except Exception as exc:
        from dlx.engine import NonFiniteLoss

        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NonFiniteLoss):
            raise RunError(f"run FAILED: {exc}", 1) from None
        raise
    finally:
        if hasattr(progress, "close"):
            progress.close()
        _write_pending(checkpoints)
        _close(tracker, run_dir, status, error)
        if status == "FINISHED":  # only once the run is closed in the store: the summary says it is
            _print_summary(final, tracker, status)


def _write_pending(checkpoints) -> None:
    """A run that stops early (Ctrl-C, SIGTERM, an error, a pruner) keeps the checkpoint of its last
    finished epoch, even one that was waiting in memory; a failure to write it is logged, never raised
    over the error that stopped the run."""
    if checkpoints is None:
        return
    try:
        checkpoints.flush()
    except Exception as exc:  # noqa: BLE001
        log.error("could not write the last checkpoint: %s", exc)


def _open_tracker(tcfg: dict, run_dir: Path):
    from dlx.tracking import NullTracker, StoreUnavailable, Tracker

    if not tcfg["enabled"]:
        return NullTracker()
    try:  # the spool sits in the run's folder, beside its log
        return Tracker(uri=tcfg["uri"], experiment=tcfg["experiment"], artifact_location=tcfg["artifact_location"],
                       spool_dir=run_dir)
    except StoreUnavailable as exc:
        raise RunError(f"error: {exc}", 1) from None


def _start_run(tracker, cfg, built, run_dir, overrides, choices, checkpoint, command) -> str | None:
    from dlx.components import component_names
    from dlx.redact import redact
    from dlx.tracking import flatten

    if checkpoint is not None and checkpoint.get("run_id") and tracker.enabled:
        run_id = tracker.resume(checkpoint["run_id"], after_step=checkpoint["epoch"])
        tracker.set_tags({"dlx.resumed_from_epoch": str(checkpoint["epoch"]), "dlx.command": command_line(command)})
        record_resumed(tracker, cfg, checkpoint["config"], run_dir)
        return run_id
    names = component_names(cfg, choices)
    objective = str((cfg.get("objective") or {}).get("name", "supervised"))
    name = cfg["tracking"]["run_name"] or ("" if objective == "supervised" else f"{objective}-") + \
        f"{names['model']}-{names['optimizer']}-{names['dataset']}-s{cfg['trainer']['seed']}"
    tags = {**runtime_tags(built.device, command), **git_info(), **{f"dlx.choice.{g}": c for g, c in choices.items()},
            "dlx.overrides": " ".join(overrides), **resample_tags(cfg), **cfg["tracking"]["tags"]}  # secrets masked
    run_id = tracker.start(run_name=name, tags=tags, parent_run_id=cfg["tracking"].get("parent_run_id"))
    if run_id:
        params = {**flatten(cfg), **{f"{g}.name": n for g, n in names.items()}}
        params.update({"model.num_params": built.num_params, "data.n_train": len(built.data.train),
                       "data.n_val": len(built.data.val), "data.n_test": len(built.data.test),
                       "data.num_classes": built.data.num_classes})  # a report's chance level: 1/num_classes
        tracker.log_params(params)
        config_path = run_dir / "config.yaml"
        config_path.write_text(OmegaConf.to_yaml(OmegaConf.create(redact(cfg))))
        tracker.log_artifact(config_path)
        data_path = run_dir / "data.json"
        data_path.write_text(json.dumps(data_record(built.data)))
        tracker.log_artifact(data_path)
    log.info("run %s%s: %s params, %d train / %d val / %d test samples on %s", name,
             f" ({run_id})" if run_id else "", f"{built.num_params:,}", len(built.data.train),
             len(built.data.val), len(built.data.test), built.device)
    return run_id


def resample_tags(cfg: dict) -> dict[str, str]:
    """cv.fold and cv.repeat of a cross-validation fold, ensemble.member of an ensemble member: how dlx cv and
    dlx ensemble find their runs again."""
    cv, ens = cfg.get("cv") or {}, cfg.get("ensemble") or {}
    tags = {"cv.fold": str(cv["fold"]), "cv.repeat": str(cv.get("repeat", 0))} if cv.get("fold") is not None else {}
    if ens.get("member") is not None:
        tags["ensemble.member"] = str(ens["member"])
    return tags


def data_record(data) -> dict:
    """What a model needs to know about its data, beside the config: enough to rebuild it from a checkpoint and to
    turn token ids into text (`dlx sample`)."""
    task = data.task
    return {"name": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
            "target": task.target.value, "vocab": task.vocab, "target_len": task.target_len,
            "tokens": None if task.tokens is None else list(task.tokens)}


def _checkpoint_dir(tracker, run_dir: Path) -> Path:
    """Inside the run's artifact directory when the artifact store is local: checkpoints are then
    logged the moment they are written and survive a SIGKILL; else in the run dir, uploaded at the end."""
    local = tracker.local_artifact_dir() if tracker.enabled else None
    return (local / "checkpoints") if local is not None else (run_dir / "checkpoints")


def _finish(trainer, state, tracker, run_dir: Path, diagnostics=None) -> dict:
    from dlx.plots import plot_learning_curves

    final = dict(state.history[-1]) if state.history else {}
    restored = trainer.restore_best()
    test = trainer.evaluate(trainer.data.test)
    summary = {f"test/{k}": v for k, v in test.items()}  # loss, acc and the task's own (dlx.tasks)
    if trainer.represent is not None:  # a linear probe on the frozen representation (dlx.ssl.represent)
        summary.update(trainer.represent.probe(trainer))
    final.update({**summary, "epochs": state.epoch})
    if trainer.early_stopping is not None and trainer.early_stopping.best is not None:
        summary["best_epoch"] = trainer.early_stopping.best_epoch
        final["best_epoch"] = trainer.early_stopping.best_epoch
    if diagnostics is not None:  # on the weights the test split saw
        summary.update(diagnostics.finish(trainer, test))
        final.update({k: v for k, v in summary.items() if k.startswith(("gap/", "final/", "sharpness/"))})
        if diagnostics.reached is not None:
            final["epochs_to_target"] = diagnostics.reached
    tracker.log_metrics(summary, step=state.epoch)
    if restored:
        tracker.set_tags({"dlx.test_on": f"best weights of epoch {trainer.early_stopping.best_epoch}"})
    if state.stopped_early:
        tracker.set_tags({"dlx.stopped_early": f"epoch {state.epoch}"})
    if state.history and tracker.enabled:
        png = plot_learning_curves(state.history, run_dir / "learning_curves.png")
        tracker.log_artifact(png, "plots")
    return final


def _close(tracker, run_dir: Path, status: str, error: str | None) -> None:
    """Tag the outcome, upload what is not in the store yet, drain the metrics, and set the run's final status.

    When the store does not take it all within the patience, the rest is in the run's spool: that is the error
    of the run (exit 1), unless another error already ends it, whose exit code then stands."""
    from dlx.tracking import StoreUnavailable

    if not tracker.enabled or tracker.run_id is None:
        return
    in_flight = sys.exc_info()[1]  # called from a finally: the exception that is ending the run, if any
    try:
        try:
            outcome = {"FINISHED": "ok", "FAILED": "failed"}.get(
                status, "pruned" if error and error.startswith("pruned") else "killed")
            tracker.set_tags({"dlx.outcome": outcome})
            ckpt_dir = run_dir / "checkpoints"
            if ckpt_dir.is_dir():  # remote artifact store: checkpoints were written locally
                for f in sorted(ckpt_dir.glob("*.pt")):
                    tracker.log_artifact(f, "checkpoints")
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.FileHandler):
                    handler.flush()
            for logfile in run_dir.glob("*.log"):
                tracker.log_artifact(logfile, "logs")
        finally:
            tracker.end(status, error)
    except StoreUnavailable as exc:
        if in_flight is None:
            raise RunError(f"error: {exc}", 1) from None
        print(f"dlx: error: {exc}", file=sys.stderr)


def _print_summary(final: dict, tracker, status: str) -> None:
    from dlx.console import print_summary

    ui = None
    if tracker.enabled:
        ui = "dlx ui" if tracker.uri.startswith("sqlite:///") else f"open {tracker.uri}"
    print_summary(metrics=final, run_id=tracker.run_id, status=status, ui_command=ui,
                  artifact_uri=tracker.artifact_uri if tracker.enabled else None)



"""k-fold cross-validation of one configuration: its fold runs' metrics as one estimate (mean, 95% CI over
the folds, spread, and the single hold-out fold 0 would give), for the parent of `dlx cv` and for each trial of a
sweep that chooses on the K-fold mean (hydra.sweeper.objective=cv/val/acc_mean). Only validation metrics may
choose; the test split stays the final estimate (its fold means are logged beside, never an objective)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("dlx")

PREFIX = "cv/"
AGGREGATED = ("val/", "test/")  # the final metrics of a fold run that are summarised across folds
FOLD_TAG, REPEAT_TAG = "cv.fold", "cv.repeat"


def cv_metrics(folds: Sequence[dict[str, float]], holdout: dict[str, float] | None) -> dict[str, float]:
    """cv/<metric>_mean, _ci95 (Student t over the fold values, dlx.report.stats.mean_ci), _std and _holdout
    for each val/ and test/ metric, and cv/folds. `holdout`: the metrics of fold 0 of repeat 0, the estimate one
    hold-out split gives; None when that fold has none (it failed), so _holdout is never another fold's value."""
    from dlx.report.stats import mean_ci

    names = sorted({k for f in folds for k in f if k.startswith(AGGREGATED)})
    out: dict[str, float] = {f"{PREFIX}folds": float(len(folds))}
    for name in names:
        vals = [float(f[name]) for f in folds if isinstance(f.get(name), (int, float))]
        s = mean_ci(vals)
        if s.mean is None:
            continue
        out[f"{PREFIX}{name}_mean"] = s.mean
        if s.half_width is not None:
            out[f"{PREFIX}{name}_ci95"] = s.half_width
            out[f"{PREFIX}{name}_std"] = s.std
        if holdout is not None and isinstance(holdout.get(name), (int, float)):
            out[f"{PREFIX}{name}_holdout"] = float(holdout[name])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def sweep_folds(objective: str, cfg) -> list[str]:
    """For the checks of a sweep that chooses on a K-fold mean: the override that composes each combination as
    one of its trials' folds, so what a fold refuses is refused before anything runs; else nothing. A cv.fold of
    the user's is refused: such a trial would be a plain run with no K-fold mean to report."""
    from omegaconf import OmegaConf

    from dlx.config import ConfigError

    if not objective.startswith(PREFIX):
        return []
    fold = OmegaConf.select(cfg, "cv.fold")
    if fold is not None:
        raise ConfigError(f"cv.fold={fold}: with hydra.sweeper.objective={objective} each trial runs all its "
                          f"cv.folds folds itself: leave cv.fold unset")
    return ["cv.fold=0"]


def fold_of(run) -> tuple[int, int] | None:
    tags = run.data.tags
    fold, repeat = tags.get(FOLD_TAG), tags.get(REPEAT_TAG, "0")
    return (int(repeat), int(fold)) if fold is not None and fold.isdigit() and repeat.isdigit() else None


def aggregate(parent, runs: dict[int, Any]) -> tuple[dict[str, float], list]:
    """`dlx cv`'s parent metrics from its finished fold runs, in (repeat, fold) order."""
    done = sorted((r for r in runs.values() if r.info.status == "FINISHED" and fold_of(r) is not None), key=fold_of)
    first = next((r.data.metrics for r in done if fold_of(r) == (0, 0)), None)
    return (cv_metrics([r.data.metrics for r in done], first) if done else {}), []


def cv_trial(cfg, command: list[str] | None = None) -> dict[str, float]:
    """One trial of a sweep whose objective is a K-fold mean: cv.folds runs of the trial's configuration (fold k
    validating), nested under the trial's own run, which carries the trial tag and the cv/ metrics. Runs the folds
    one after the other in the trial's process; returns the cv/ metrics (the sweeper reads its objective there)."""
    import time

    from omegaconf import open_dict

    from dlx.run import train
    from dlx.sweep.tracking import TRIAL_TAG

    folds, start = int(cfg.cv.folds), time.monotonic()
    tracker = _trial_run(cfg, command)
    status, done = "FAILED", []
    try:
        for k in range(folds):
            fold = copy.deepcopy(cfg)
            with open_dict(fold):
                fold.cv.fold = k
                fold.trial.objective = "val/acc"  # the fold is a plain run; the trial owns the cv objective
                fold.tracking.tags = {k2: v for k2, v in (cfg.tracking.tags or {}).items() if k2 != TRIAL_TAG}
                if tracker.run_id:
                    fold.tracking.parent_run_id = tracker.run_id
            done.append(train(fold, command=command))
            log.info("fold %d/%d: %s", k + 1, folds, {m: v for m, v in done[-1].items() if m.startswith("val/")})
        out = {**cv_metrics(done, done[0]), f"{PREFIX}seconds": time.monotonic() - start}  # the K runs' cost, together
        tracker.log_metrics(out, step=0)
        status = "FINISHED"
        return out
    except BaseException as exc:
        from dlx.sweep.hygiene import interrupt_code

        # Ctrl-C or SIGTERM: between folds it arrives as the interrupt, inside one as the RunError(130 or 143)
        # dlx.run raises once it has closed the fold's run KILLED; either way it propagates for the sweep to stop
        if interrupt_code(exc):
            status = "KILLED"
        raise
    finally:
        tracker.set_tags({"dlx.outcome": {"FINISHED": "ok", "KILLED": "killed"}.get(status, "failed")})
        tracker.end(status)


def _trial_run(cfg, command):
    """The trial's own run (nested under the sweep's parent, tagged like any trial), or a NullTracker."""
    from omegaconf import OmegaConf

    from dlx.redact import command_line
    from dlx.run import git_info, hydra_runtime
    from dlx.tracking import NullTracker, Tracker, flatten

    if not cfg.tracking.enabled:
        return NullTracker()
    run_dir = hydra_runtime()[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(uri=cfg.tracking.uri, experiment=cfg.tracking.experiment,
                      artifact_location=cfg.tracking.artifact_location, spool_dir=run_dir)
    tags = {**(cfg.tracking.tags or {}), "dlx.cv.folds": str(cfg.cv.folds), "dlx.command": command_line(command or []),
            "mlflow.source.name": "dlx sweep", "mlflow.source.type": "LOCAL", **git_info()}
    tracker.start(run_name=f"cv{cfg.cv.folds}-s{cfg.seed}", tags=tags, parent_run_id=cfg.tracking.parent_run_id)
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    plain.pop("hydra", None)
    tracker.log_params(flatten(plain))
    return tracker

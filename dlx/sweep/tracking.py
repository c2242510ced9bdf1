"""A sweep in MLflow: one parent run holding the definition and the summary, its trials nested under it.

The store and experiment are created before the first trial starts, so trials starting at once in
several processes never race to create them. Each trial's run carries the tag `trial=<number>` (the
Optuna trial number), which is how the sweeper finds it again, in any process and after a crash.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dlx.tracking import tag_value

TRIAL_TAG = "trial"

log = logging.getLogger(__name__)


def store_of(tracking: DictConfig | dict) -> tuple[str, str | None]:
    from dlx.tracking import resolve_uri

    return resolve_uri(tracking["uri"], tracking["artifact_location"])


def trial_client(cfg: DictConfig):
    from dlx.store import open_client  # the schema check under the store's lock

    return open_client(store_of(cfg.tracking)[0])


def find_trial_run(client, cfg: DictConfig):
    """The MLflow run of the trial `cfg` configures (None if it never started one)."""
    parent = cfg.tracking.get("parent_run_id")
    number = cfg.tracking.tags.get(TRIAL_TAG)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None or number is None:
        return None
    where = f"tags.`{TRIAL_TAG}` = '{number}'" + (f" and tags.`mlflow.parentRunId` = '{parent}'" if parent else "")
    runs = client.search_runs([exp.experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def check_parent(tracking: DictConfig, run_id: Any, study: str) -> None:
    """A resumed sweep reopens the parent run its study storage names, sets it RUNNING and finally
    finishes it: refuse a run that is not this sweep's parent (another run or a trial of the store, a
    deleted one), so a stale or edited storage cannot take over someone else's run."""
    from mlflow.exceptions import MlflowException

    from dlx.config import ConfigError
    from dlx.store import open_client

    uri = store_of(tracking)[0]
    run = None
    if isinstance(run_id, str):
        try:
            run = open_client(uri).get_run(run_id)
        except MlflowException:
            pass
    tags = run.data.tags if run is not None else {}
    if run is None or run.info.lifecycle_stage != "active" or tags.get("dlx.sweep.study") != study \
            or "mlflow.parentRunId" in tags:
        raise ConfigError(f"--resume {study}: the parent run {run_id} named in the study storage is not this "
                          f"sweep's parent run in {uri}")


class ParentRun:
    """The sweep's parent run: created (or reopened on resume) before any trial starts. It is a run like
    any other (dlx.tracking.Tracker: secrets masked, MLflow's limits kept, a spool when the store fails);
    what it adds is finding its trials and closing the runs they left open."""

    def __init__(self, tracker):
        self.tracker, self.client, self.experiment_id = tracker, tracker.client, tracker.experiment_id
        self.run_id: str = tracker.run_id

    @classmethod
    def open(cls, tracking: DictConfig, *, run_id: str | None, name: str, tags: dict[str, str],
             params: dict[str, Any], spool_dir: Path | None = None) -> ParentRun | None:
        if not tracking.enabled:
            return None
        from dlx.tracking import Tracker

        tracker = Tracker(uri=tracking.uri, experiment=tracking.experiment,
                          artifact_location=tracking.artifact_location, spool_dir=spool_dir)
        if run_id:  # resume: the same parent, running again
            tracker.resume(run_id)
            resumes = int(tracker.client.get_run(run_id).data.tags.get("dlx.sweep.resumed", "0")) + 1
            tracker.set_tags({"dlx.sweep.resumed": resumes})
            return cls(tracker)
        tracker.start(run_name=name, tags={})
        tracker.set_tags(tags)  # after the start: set_tags keeps a long command line within MLflow's limit
        tracker.log_params(params)
        return cls(tracker)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.tracker.set_tags(tags)

    def _patiently(self, what: str, call, default):
        """call() with the run's patience; a store that stays away gives `default` and a warning: the sweep
        goes on (its trials keep their own spools) rather than ending on a server that is restarting."""
        from dlx.tracking import patiently, transient

        try:
            return patiently(call, self.tracker.patience)
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning("the tracking store did not answer within %g s to %s (%s)", self.tracker.patience, what,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            return default

    def children(self) -> dict[int, Any]:
        """Trial number -> its run (the latest, should a number appear twice); {} when the store stays away."""
        return self._patiently("list the sweep's runs", self._children, {})

    def _children(self) -> dict[int, Any]:
        out: dict[int, Any] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}'",
                                           order_by=["attributes.start_time ASC"], max_results=1000,
                                           page_token=token)
            for run in page:
                number = run.data.tags.get(TRIAL_TAG)
                if number is not None and number.isdigit():
                    out[int(number)] = run
            token = page.token
            if not token:
                return out

    def child(self, number: int):
        """The run of trial `number` (the latest, should the number appear twice), or None (also when the store
        stays away)."""
        return self._patiently(f"find trial {number}'s run", lambda: self._child(number), None)

    def _child(self, number: int):
        runs = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}' "
                                                             f"and tags.`{TRIAL_TAG}` = '{number}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def close_dangling(self, run, reason: str, status: str = "FAILED") -> None:
        """A trial whose process ended without closing its run: close it with the reason."""
        from mlflow.entities import RunTag

        outcome = "killed" if status == "KILLED" else "failed"
        tags = [RunTag("dlx.error", tag_value(reason)), RunTag("dlx.outcome", outcome)]
        self._patiently(f"close run {run.info.run_id}", lambda: (
            self.client.log_batch(run.info.run_id, tags=tags),
            self.client.set_terminated(run.info.run_id, status=status)), None)

    def finish(self, *, rows: list[dict], columns: list[str], counts: dict[str, int], best: dict | None,
               objective: str, status: str, sweep_dir: Path, extra: dict[str, float] | None = None,
               files: list[Path] = ()) -> None:
        metrics = {f"sweep/{k}": float(v) for k, v in counts.items()}
        metrics.update(extra or {})  # dlx cv's and dlx ensemble's summaries of the children
        if best is not None:
            metrics[f"best/{objective}"] = float(best["value"])
            for key in ("test/acc", "test/loss"):
                if isinstance(best.get(key), float) and math.isfinite(best[key]):
                    metrics[f"best/{key}"] = best[key]
            self.set_tags({"dlx.best.trial": best["trial"], "dlx.best.run_id": best.get("run_id") or "",
                           "dlx.best.overrides": " ".join(best["overrides"]),
                           **{f"dlx.best.{k}": v for k, v in best["params"].items()}})
        self.tracker.log_metrics(metrics, step=0)
        for path in write_summary(rows, columns, sweep_dir):
            self.tracker.log_artifact(path, "sweep")
        for path in files:
            self.tracker.log_artifact(path, path.parent.name)
        multirun = sweep_dir / "multirun.yaml"
        if multirun.is_file():
            self.tracker.log_artifact(multirun, "sweep")
        self.tracker.end(status)


def write_summary(rows: list[dict], columns: list[str], sweep_dir: Path) -> list[Path]:
    """summary.csv and summary.md in the sweep dir: one row per trial."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c)) for c in columns})
    csv_path = sweep_dir / "summary.csv"
    csv_path.write_text(buf.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    md_path = sweep_dir / "summary.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)

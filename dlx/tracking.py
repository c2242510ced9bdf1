"""MLflow run lifecycle: the store, flattened params, tags, buffered metrics and artifacts.

Metric points are buffered in memory and handed, at least once per epoch and on every exit path, to
the writer of dlx.metric_writer (a forked process on Linux, else a thread), which calls `log_batch` off
the training loop's GIL and never drops a point it was handed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

log = logging.getLogger(__name__)

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
MAX_PARAM_LENGTH = 6000


def default_store(root: str | os.PathLike = "outputs") -> tuple[str, str]:
    """(tracking URI, artifact root) of the embedded store: SQLite and files under outputs/."""
    root = Path(root).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def resolve_uri(uri: str | None, artifact_location: str | None = None) -> tuple[str, str | None]:
    """The tracking URI to use and where a new experiment should keep artifacts."""
    if uri:
        return uri, artifact_location
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], artifact_location
    default_uri, default_artifacts = default_store()
    return default_uri, artifact_location or default_artifacts


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def local_path(uri: str) -> Path | None:
    """The directory of a file: artifact URI, or None for remote stores."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" :
        return Path(uri)
    return None


def open_store(uri: str, experiment: str, artifact_location: str | None = None):
    """Create the store's schema and the experiment if needed; returns (client, experiment_id).

    Several processes may race to create the same experiment: the loser reads the winner's.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # after the import: mlflow sets its own loggers up when imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = f"{artifact_location.rstrip('/')}/{experiment}" if artifact_location else None
        try:
            return client, client.create_experiment(experiment, artifact_location=location)
        except MlflowException:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return client, exp.experiment_id


class Tracker:
    """One MLflow run. Use `start` (new run) or `resume` (existing run), then `end`."""

    enabled = True

    def __init__(self, *, uri: str | None = None, experiment: str = "dlx", artifact_location: str | None = None):
        self.uri, self.artifact_location = resolve_uri(uri, artifact_location)
        self.client, self.experiment_id = open_store(self.uri, experiment, self.artifact_location)
        self.run_id: str | None = None
        self._buffer: list = []
        self._writer = None  # dlx.metric_writer's, once a run is attached

    def start(self, *, run_name: str | None, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self._attach(run.info.run_id)
        return self.run_id

    def resume(self, run_id: str) -> str:
        self.client.update_run(run_id, status="RUNNING")
        self._attach(run_id)
        return run_id

    def _attach(self, run_id: str) -> None:
        self.run_id = run_id
        from dlx.metric_writer import make_writer

        self._writer = make_writer(self.client, self.uri, run_id)

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def local_artifact_dir(self) -> Path | None:
        return local_path(self.artifact_uri)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer the points as (key, value, timestamp ms, step); they reach the store at the next `flush`."""
        now = int(time.time() * 1000)
        self._buffer.extend((k, float(v), now, step) for k, v in metrics.items())

    def flush(self, wait: bool = False) -> None:
        """Hand the buffer to the writer; with wait=True return once it is in the store."""
        if self._writer is None:
            return
        if self._buffer:
            self._writer.put(self._buffer)
            self._buffer = []
        if wait:
            self._writer.sync()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Drain every buffered point, tag the error if any, then close the run with `status`."""
        if self._writer is None:
            return
        self.flush()
        self._writer.close()
        if error:
            self.set_tags({"dlx.error": error})
        if self._writer.error is not None:
            self.set_tags({"dlx.metric_write_error": str(self._writer.error)})
        self.client.set_terminated(self.run_id, status=status)
        self._writer = None


class NullTracker:
    """Tracking off: the same interface, nothing written."""

    enabled = False
    run_id = None
    uri = None

    def start(self, **_: Any) -> None:
        return None

    def resume(self, run_id: str) -> None:
        return None

    def local_artifact_dir(self) -> None:
        return None

    def log_params(self, params: dict) -> None: ...

    def set_tags(self, tags: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int) -> None: ...

    def flush(self, wait: bool = False) -> None: ...

    def log_artifact(self, path, artifact_path=None) -> None: ...

    def end(self, status: str = "FINISHED", error: str | None = None) -> None: ...


def _param_value(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s if len(s) <= MAX_PARAM_LENGTH else s[: MAX_PARAM_LENGTH - 3] + "..."

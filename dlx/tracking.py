"""MLflow run lifecycle: the store, flattened params, tags, buffered metrics and artifacts.

Metric points are buffered in memory and handed, at least once per epoch and on every exit path, to the
writer of dlx.metric_writer, which journals them in the run's spool (dlx.spool) and writes them to the store.
Every call to the store waits out a store that is busy or down for up to the patience (DLX_STORE_PATIENCE,
STORE_PATIENCE_S by default); after that the run goes on and what the store did not take stays in the
spool. The writer's thread keeps trying the store meanwhile: when it answers again (a server restarted
mid-run) the rest of the run goes to it, what was deferred first; the store gets one more patience at the
end of the run, and what it still did not take is replayed the next time dlx opens that store or by `dlx sync`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's own HTTP retries (7 with backoff, 120 s timeout) kept a run whose server died waiting for minutes
# in each call; dlx retries with its own patience instead, and spools what the server does not take
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

from dlx.errors import StoreUnavailable
from dlx.store import open_client

log = logging.getLogger(__name__)
# urllib3 says each refused connection to a server that is down (a line every few seconds while the writer's
# thread tries it); dlx says once that the store is away and once that it is back
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

MAX_PARAMS_PER_BATCH = 100  # MLflow's log_batch limits
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
STORE_PATIENCE_S = 60.0  # how long a busy or unreachable store is waited for: a 40 s lock is waited out
PATIENCE_ENV = "DLX_STORE_PATIENCE"
# MLflow's error codes for a store that may answer later (a locked SQLite file, a server that is down)
TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"}


def store_patience() -> float:
    value = os.environ.get(PATIENCE_ENV)
    if value is None:
        return STORE_PATIENCE_S
    try:
        return max(0.0, float(value))
    except ValueError:
        raise StoreUnavailable(f"{PATIENCE_ENV}={value!r} is not valid: allowed a number of seconds "
                               f"(default {STORE_PATIENCE_S:g})") from None


def transient(exc: BaseException) -> bool:
    """Whether a failed store call may succeed later; anything else is a mistake to report, not retry."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code in TRANSIENT_CODES
    # a full disk, a read-only file system, a dropped connection; a missing file is a mistake, not a fault
    return isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, IsADirectoryError,
                                                             NotADirectoryError))


def patiently(call, patience: float):
    """call(), retried with backoff while it fails transiently, until `patience` seconds have passed."""
    deadline, delay = time.monotonic() + patience, 0.2
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 5.0)


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
    """Create the store's schema and the experiment if needed, and replay the spools of runs that could not
    reach this store before; returns (client, experiment_id).

    Several processes may race to create the same experiment: the loser reads the winner's.
    """
    from mlflow.exceptions import MlflowException

    from dlx.spool import replay_pending
    from dlx.store_check import safe_dirname

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = f"{artifact_location.rstrip('/')}/{safe_dirname(experiment)}" if artifact_location else None
        try:
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        except MlflowException:
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                raise
    if exp is not None:
        experiment_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    replay_pending(uri, client)
    return client, experiment_id


class Tracker:
    """One MLflow run. Use `start` (new run) or `resume` (existing run), then `end`.

    The run's spool lives in `spool_dir` (the run's folder); what the store does not take within the
    patience is kept there, and `end` raises StoreUnavailable saying so."""

    enabled = True

    def __init__(self, *, uri: str | None = None, experiment: str = "dlx", artifact_location: str | None = None,
                 spool_dir: str | os.PathLike | None = None):
        self.uri, self.artifact_location = resolve_uri(uri, artifact_location)
        self.patience = store_patience()
        self.client, self.experiment_id = self._patiently(
            "open the store", lambda: open_store(self.uri, experiment, self.artifact_location))
        self.spool_dir = Path(spool_dir) if spool_dir is not None else Path("outputs") / "spool"
        self.run_id: str | None = None
        self._artifact_uri: str | None = None
        self._buffer: list = []
        self._held: set[tuple[str, int]] = set()  # (metric, step) a resumed run holds past its checkpoint
        self._writer = None  # dlx.metric_writer's, once a run is attached
        self._spool = None
        self.down: BaseException | None = None  # what the store answered when it ran out of patience
        self._deferred: list = []  # the calls the store did not take while down, in order (also in the spool)

    def start(self, *, run_name: str | None, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        from dlx.redact import redact, redact_text

        tags = redact(dict(tags))
        run_name = redact_text(run_name) if run_name else run_name
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        run = self._patiently("create the run", lambda: self.client.create_run(
            self.experiment_id, run_name=run_name, tags=tags))
        self._attach(run.info.run_id, run.info.artifact_uri)
        return self.run_id

    def resume(self, run_id: str, after_step: int = 0) -> str:
        """Reopen `run_id` to continue from a checkpoint taken at `after_step`. The steps after it are trained
        again, and the store may already hold their points (a SIGTERM flushes the epoch it cuts; after a
        SIGKILL the checkpoint can be epochs behind the curves): MLflow keeps every point it is sent, so a
        (metric, step) the run already has past the checkpoint is not logged again, whoever logs it."""
        self._patiently("reopen the run", lambda: self.client.update_run(run_id, status="RUNNING"))
        run = self._patiently("reopen the run", lambda: self.client.get_run(run_id))
        self._held = self._patiently("read the run's curves", lambda: {
            (key, m.step) for key in run.data.metrics
            for m in self.client.get_metric_history(run_id, key) if m.step > after_step})
        self._attach(run_id, run.info.artifact_uri)
        return run_id

    def _patiently(self, what: str, call):
        """Before the run has a spool: a store that stays unavailable ends the command (StoreUnavailable)."""
        try:
            return patiently(call, self.patience)
        except Exception as exc:
            if not transient(exc):
                raise
            raise StoreUnavailable(f"could not {what} in the tracking store {self.uri} within {self.patience:g} s "
                                   f"({_first_line(exc)}); nothing was written") from None

    def _attach(self, run_id: str, artifact_uri: str) -> None:
        from dlx.metric_writer import MetricWriter
        from dlx.spool import SUFFIX, Spool

        self.run_id, self._artifact_uri = run_id, artifact_uri
        self._spool = Spool(self.spool_dir / f"metrics-{run_id}{SUFFIX}", self.uri, run_id)
        self._writer = MetricWriter(self.client, run_id, self._spool)

    @property
    def artifact_uri(self) -> str:
        return self._artifact_uri

    @property
    def spool_path(self) -> Path | None:
        return self._spool.path if self._spool is not None else None

    def local_artifact_dir(self) -> Path | None:
        return local_path(self.artifact_uri)

    def _attempt(self, call) -> bool:
        """call() with patience; on a store that stays unavailable mark it down and return False (the caller
        spools what it had); while down, calls go to the spool without waiting, until the store answers the
        writer's thread again (`_recover`)."""
        if self.down is not None and not self._recover():
            return False
        try:
            patiently(call, self.patience)
            return True
        except Exception as exc:
            if not transient(exc):
                raise
            self.down = exc
            if self._writer is not None:
                self._writer.pause()
            log.error("the tracking store did not answer within %g s (%s); run %s goes on, keeping what the store "
                      "does not take in %s, and sends it when the store answers again", self.patience,
                      str(exc).splitlines()[0][:300], self.run_id, self.spool_path)
            return False

    def _send(self, kind: str, payload, call) -> None:
        """call() to the store; what it does not take is recorded in the spool and sent once it is back."""
        if not self._attempt(call):
            self._spool.record(kind, payload)
            self._deferred.append(call)

    def _recover(self) -> bool:
        """Whether a store given up on answers again (the writer's thread wrote to it); if so, send what was
        deferred meanwhile, in order, and note in the spool that it is in the store."""
        if self._writer is None or self._writer.paused:
            return False
        self.down = None
        deferred, self._deferred = self._deferred, []
        for i, call in enumerate(deferred):
            if not self._attempt(call):  # down again: the rest waits for the next time
                self._deferred = deferred[i:]
                return False
        if deferred:
            self._spool.record("c", len(deferred))
            log.warning("the tracking store answers again: %d deferred calls of run %s sent", len(deferred),
                        self.run_id)
        return True

    def _last_chance(self) -> None:
        """A store given up on gets one more patience before the run ends: a server restarted meanwhile."""
        def probe():
            self._writer.sync_once()
            self.client.get_run(self.run_id)  # an answer, even with no point pending

        try:
            patiently(probe, self.patience)
        except Exception as exc:  # noqa: BLE001 - not back (or not usable): the run ends with the spool
            self.down = exc
            return
        self._writer.unpause()

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params, secrets masked (dlx.redact): this and set_tags are where anything of the run's
        configuration or command line reaches the store."""
        from mlflow.entities import Param

        from dlx.redact import redact

        values = {k: param_value(v) for k, v in redact(dict(params)).items()}
        items = [Param(k, v) for k, v in values.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[start:start + MAX_PARAMS_PER_BATCH]
            self._send("p", {p.key: p.value for p in chunk},
                       lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        from dlx.redact import redact

        values = {k: tag_value(v) for k, v in redact(dict(tags)).items()}
        items = [RunTag(k, v) for k, v in values.items()]
        self._send("t", values, lambda: self.client.log_batch(self.run_id, tags=items))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffer the points as (key, value, timestamp ms, step); they reach the store at the next `flush`."""
        now = int(time.time() * 1000)
        self._buffer.extend((k, float(v), now, step) for k, v in metrics.items() if (k, step) not in self._held)

    def flush(self, wait: bool = False) -> None:
        """Hand the buffer to the writer (journaled at once); with wait=True return once it is in the store,
        or once the store has run out of patience."""
        if self._writer is None:
            return
        if self._buffer:
            self._writer.put(self._buffer)
            self._buffer = []
        if self.down is not None:
            self._recover()
        if wait:
            self._attempt(self._writer.sync_once)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = str(Path(path).resolve())
        self._send("f", [path, artifact_path], lambda: self.client.log_artifact(self.run_id, path, artifact_path))

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Drain every buffered point, tag the error if any, then close the run with `status`. When the store
        does not take all of it within the patience, keep the rest in the spool and raise StoreUnavailable."""
        if self._writer is None:
            return
        if self.down is not None:
            self._last_chance()
        self.flush(wait=True)
        if error:
            self.set_tags({"dlx.error": error})
        if not self._attempt(lambda: self.client.set_terminated(self.run_id, status=status)):
            self._spool.record("s", status)
        writer, spool = self._writer, self._spool
        writer.close()
        self._writer = None
        if self.down is None:
            spool.close(keep=False)
            return
        spool.close(keep=True)
        raise StoreUnavailable(
            f"the tracking store {self.uri} did not answer within {self.patience:g} s "
            f"({_first_line(self.down)}): the run's {len(writer.pending)} metric points and its status "
            f"{status} are kept in {spool.path}; dlx sync replays them")


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def tag_value(v: Any) -> str:
    return str(v)[:MAX_TAG_LENGTH]


def param_value(v: Any) -> str:
    s = "null" if v is None else str(v)
    return s if len(s) <= MAX_PARAM_LENGTH else s[: MAX_PARAM_LENGTH - 3] + "..."

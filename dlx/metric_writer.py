"""Where a run's metric points go after `Tracker.flush`: a writer that calls MLflow's `log_batch`.

One `log_batch` to SQLite is ~10 ms of Python in SQLAlchemy, as long as a whole epoch of a small model;
in a thread of the training process it would hold the GIL the training loop needs. So on Linux the
writer is a child process forked when the run starts (it inherits the imported MLflow and starts at
once), and the training process only pickles a list of (key, value, timestamp, step) tuples into a
pipe. The child writes what arrives within WRITE_INTERVAL_S in one `log_batch`, at once when asked to
sync or close, and acknowledges what it wrote. It drains everything it was sent on every exit path:
at `close`, and also when the training process dies (SIGKILL, out of memory), since the end of the pipe
tells it to write what it holds and stop. Should the child die, the training process writes what was
not acknowledged itself. Elsewhere (no fork), or with DLX_METRIC_WRITER=thread, the writer is a thread.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
WRITE_INTERVAL_S = 0.5  # the writer process writes at most this often, and at once on sync and close


def _write(client, run_id: str, metrics: list) -> BaseException | None:
    """log_batch in MLflow-sized chunks, a few retries each (a busy SQLite file, a restarting server);
    returns the last error when a chunk could not be written."""
    from mlflow.entities import Metric

    error = None
    points = [m if isinstance(m, Metric) else Metric(*m) for m in metrics]
    for start in range(0, len(points), MAX_METRICS_PER_BATCH):
        chunk = points[start:start + MAX_METRICS_PER_BATCH]
        for attempt in range(5):
            try:
                client.log_batch(run_id, metrics=chunk)
                break
            except Exception as exc:  # noqa: BLE001 - any failure is retried, then reported
                if attempt == 4:
                    error = exc
                    log.error("could not write %d metric points to MLflow: %s", len(chunk), exc)
                time.sleep(0.2 * 2**attempt)
    return error


class _Writer(threading.Thread):
    """Writes queued metric batches in order, in a thread; `sync` waits until everything queued is written."""

    def __init__(self, client, run_id: str):
        super().__init__(name="dlx-mlflow-writer", daemon=True)
        self.client, self.run_id = client, run_id
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                self.error = _write(self.client, self.run_id, item) or self.error
            finally:
                self.queue.task_done()

    def put(self, metrics: list) -> None:
        self.queue.put(metrics)

    def sync(self) -> None:
        done = threading.Event()
        self.queue.put(done)
        done.wait()

    def close(self) -> None:
        self.queue.put(None)
        self.join()


class _ProcessWriter:
    """Writes metric batches in a forked child process, in order; `sync` waits until all sent is written.

    The child answers for each batch it tried; until then this process keeps the points, and it writes those
    the child could not write itself at the next sync or close. The child exits when told to, or when its
    pipe closes, after writing everything it received. Should it die, the points it did not answer for, and
    all later ones, go to the store from this process instead: slower, never lost (MLflow ignores a point
    written twice).
    """

    def __init__(self, client, uri: str, run_id: str):
        from multiprocessing.connection import Pipe

        self.client, self.run_id = client, run_id
        self.error: BaseException | None = None
        self._unacked: list = []  # sent, not yet answered for, oldest first
        self._failed: list = []  # answered for as not written: this process writes them at the next sync
        self._conn, child = Pipe()
        # Ctrl-C and a sweep's SIGTERM reach the whole process group: the child ignores them (the training
        # process handles them, then tells the child to finish), and must not receive one before it can
        blocked = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            # os.fork rather than multiprocessing.Process: multiprocessing joins its children when this
            # process exits, which would wait forever on a child that stops when this process's pipe closes
            self.pid = os.fork()
            if self.pid == 0:  # the child: write, then leave without running anything of the parent's
                code = 1
                try:
                    for sig in blocked:
                        signal.signal(sig, signal.SIG_IGN)
                    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                    # the training process's objects, its uncollected garbage included, are never
                    # collected here: their finalizers would close files that are not this process's
                    gc.freeze()
                    self._conn.close()
                    _forget_inherited_connections()  # first: their objects close their own files
                    _release_inherited_fds(keep={child.fileno()})
                    _writer_process(child, uri, run_id)
                    code = 0
                finally:
                    os._exit(code)
        finally:
            if self.pid:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        child.close()
        self._alive = True

    def put(self, points: list) -> None:
        if self._alive:
            try:
                self._drain_acks()
                self._conn.send(("points", points))
                self._unacked.extend(points)
                return
            except (OSError, EOFError, ValueError):
                self._lost("sending points")
        self.error = _write(self.client, self.run_id, points) or self.error

    def _drain_acks(self, until_reply: bool = False):
        """Read the child's messages: ("written", (count, ok)) for each batch it tried, oldest first, and,
        with until_reply, up to its ("reply", error) to a sync or close, which is returned."""
        while until_reply or self._conn.poll():
            kind, payload = self._conn.recv()
            if kind == "written":
                count, ok = payload
                if not ok:
                    self._failed.extend(self._unacked[:count])
                del self._unacked[:count]
            elif kind == "reply":
                return payload
        return None

    def _request(self, what: str) -> None:
        if not self._alive:
            return
        try:
            self._conn.send((what, None))
            error = self._drain_acks(until_reply=True)
        except (OSError, EOFError, ValueError):
            self._lost(f"waiting for {what}")
            return
        if self._failed:  # the child could not write them (after its retries): try from this process
            log.warning("the MLflow writer process could not write %d metric points (%s); writing them from the "
                        "training process", len(self._failed), error)
            failed, self._failed = self._failed, []
            if _write(self.client, self.run_id, failed) is None:
                return
        if error:
            self.error = RuntimeError(error)

    def sync(self) -> None:
        self._request("sync")

    def close(self) -> None:
        self._request("close")
        if self._alive:
            self._alive = False
            self._conn.close()
            if self._reap(timeout=60) is None:
                os.kill(self.pid, signal.SIGKILL)
                self._reap(timeout=None)

    def _reap(self, timeout: float | None) -> int | None:
        """The child's exit status once it has ended (waiting at most `timeout` s), else None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            except ChildProcessError:  # already reaped
                return 0
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def _lost(self, doing: str) -> None:
        self._alive = False
        self._conn.close()
        code = self._reap(timeout=5)
        log.warning("the MLflow writer process ended (exit code %s) while %s; metrics are now written by the "
                    "training process", code, doing)
        if self._failed or self._unacked:
            self.error = _write(self.client, self.run_id, self._failed + self._unacked) or self.error
            self._failed, self._unacked = [], []


def _writer_process(conn, uri: str, run_id: str) -> None:
    """The writer child: receive ("points", [...]), ("sync", None) and ("close", None) until the pipe ends;
    answer ("written", (count, ok)) after each attempt to write a batch and ("reply", error or None) to sync
    and close."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    error, pending, last = None, [], 0.0
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):  # the training process is gone: write what it sent, then stop
            kind, payload = "gone", None
        if kind == "points":
            pending.extend(payload)
            # one log_batch for all that arrives within WRITE_INTERVAL_S: the points are safe here already
            # (this process outlives the trainer), and each write is ~10 ms of CPU the trainer may feel
            wait = WRITE_INTERVAL_S - (time.monotonic() - last)
            if conn.poll(max(0.0, wait)):
                continue
        if pending:
            failure = _write(client, run_id, pending)
            error = failure or error
            _answer(conn, "written", (len(pending), failure is None))
            pending, last = [], time.monotonic()
        if kind in ("sync", "close"):
            _answer(conn, "reply", f"{type(error).__name__}: {error}" if error else None)
        if kind in ("close", "gone"):
            return


def _release_inherited_fds(keep: set[int]) -> None:
    """Let go of what the child inherited and does not use: a sweep worker's pipes to the sweep (whose end
    tells the sweep that the worker died), its database connections. Each such descriptor is pointed at
    /dev/null rather than closed: Python objects of the training process still own those numbers, and a
    number closed here would be handed to the child's own SQLite file, which the finalizer of an inherited
    file object (a matplotlib font, say) would then close under it ("disk I/O error", metrics lost). Kept:
    stdio, `keep`, and the files of the logging handlers, so that the child can still report a failed write."""
    keep = set(keep) | {0, 1, 2}
    for logger in [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "stream", None)
            try:
                keep.add(stream.fileno())
            except (AttributeError, OSError, ValueError):
                pass
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in fds:
            if fd not in keep and fd != null:
                try:
                    os.dup2(null, fd, inheritable=False)
                except OSError:  # the listing's own descriptor, gone by now
                    pass
    finally:
        os.close(null)


def _answer(conn, kind: str, payload) -> None:
    try:
        conn.send((kind, payload))
    except OSError:  # nobody listens any more
        pass


def _forget_inherited_connections() -> None:
    """A forked child must not use its parent's pooled database or HTTP connections: drop the pools (without
    closing the parent's sockets) so that the child opens its own."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for engine in list(getattr(SqlAlchemyStore, "_engine_map", {}).values()):
            engine.dispose(close=False)
    except Exception:  # noqa: BLE001 - nothing to drop
        pass
    try:
        from mlflow.utils import request_utils

        request_utils._cached_get_request_session.cache_clear()
    except Exception:  # noqa: BLE001
        pass


def make_writer(client, uri: str, run_id: str):
    if sys.platform == "linux" and os.environ.get("DLX_METRIC_WRITER", "process") == "process":
        return _ProcessWriter(client, uri, run_id)
    return _Writer(client, run_id)

"""Where a run's metric points go after `Tracker.flush`: first the run's spool, then the store.

Each batch is journaled in the spool (dlx.spool: one append, ~21 us for 12 points, and it survives a SIGKILL),
then written by the training process itself in one `log_batch`, at most every WRITE_INTERVAL_S, and at once
when the run syncs or closes. One `log_batch` to SQLite is ~10 ms of Python; once a second that is ~1% of
the run. The write runs in a thread of the training process: a store that is locked or slow (MLflow waits up
to 20 s on a locked SQLite file) then waits there, and the GIL is free while it waits. Nothing is forked from
a process that torch, MLflow or a sweep worker made multi-threaded, and no MLflow internals are touched. What was written is acknowledged in the spool; what a failing store did not take stays there, is
written by this thread once the store answers again (a server restarted mid-run), or else replayed later
(dlx.spool.replay).
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
WRITE_INTERVAL_S = 1.0  # points reach the store at most this often while training, and at once on sync/close
MAX_BACKOFF_S = 60.0  # after a failed write the next try waits 2, 4, ... up to this many seconds
# once the run has given up on the store (`pause`) the thread still tries every this many seconds, quietly, so a
# server that comes back mid-run gets the rest of the run: a refused connection costs milliseconds, a hung
# server MLflow's HTTP timeout, in this thread
PROBE_INTERVAL_S = 5.0


def write_points(client, run_id: str, points: list, *, dedupe: bool = False) -> int:
    """log_batch the (key, value, timestamp, step) points in MLflow-sized chunks; returns how many were sent.
    With `dedupe`, points the run already holds are left out: a write that failed on the client's side (a
    timeout, a kill) may have reached the store, and a point must never be in a run twice."""
    from mlflow.entities import Metric

    points = [tuple(p) for p in points]
    if dedupe and points:
        held = set()
        for key in {p[0] for p in points}:
            held.update((m.key, m.value, m.timestamp, m.step) for m in client.get_metric_history(run_id, key))
        points = [p for p in dict.fromkeys(points) if (p[0], float(p[1]), int(p[2]), int(p[3])) not in held]
    metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in points]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
    return len(metrics)


class MetricWriter:
    """Journals each batch in the spool at once, in the caller's thread; a daemon thread writes what is
    pending to the store at most every interval, and `sync_once` writes it now in the caller's thread."""

    def __init__(self, client, run_id: str, spool, interval: float = WRITE_INTERVAL_S):
        self.client, self.run_id, self.spool, self.interval = client, run_id, spool, interval
        self.pending: list = []  # journaled, not yet in the store, oldest first
        self.pending_seq = 0  # the spool's number of the newest batch in `pending`
        self.error: BaseException | None = None  # the last failed write, until one succeeds
        self.paused = False  # the run gave up on the store: journal, and try quietly every PROBE_INTERVAL_S
        self._doubtful = False  # a failed write may have reached the store: dedupe the next one
        self._next_write = 0.0
        self._backoff = 0.0
        self._writing = False  # one write at a time, in whichever thread
        self._stopped = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="dlx-metric-writer", daemon=True)
        self._thread.start()

    def put(self, points: list) -> None:
        seq = self.spool.append_metrics(points)
        with self._cond:
            self.pending.extend(points)
            self.pending_seq = seq
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    wait = self._next_write - time.monotonic()
                    if self.pending and not self._writing and wait <= 0:
                        break
                    self._cond.wait(timeout=wait if self.pending and wait > 0 else None)
                if self._stopped:
                    return
            self.write()

    def write(self, quiet: bool = False) -> bool:
        """One attempt to write everything pending; True when nothing is pending any more."""
        with self._cond:
            while self._writing:
                self._cond.wait()
            if not self.pending:
                return True
            self._writing = True
            batch, seq, dedupe = list(self.pending), self.pending_seq, self._doubtful
        ok = False
        try:
            write_points(self.client, self.run_id, batch, dedupe=dedupe)
            self.spool.ack(seq)
            ok = True
        except Exception as exc:  # noqa: BLE001 - the store failed: the points stay journaled and pending
            error = exc
        with self._cond:
            self._writing = False
            if ok:
                del self.pending[:len(batch)]
                self.error, self._doubtful, self._backoff = None, False, 0.0
                self._next_write = time.monotonic() + self.interval
                if self.paused:
                    self.paused = False
                    log.warning("the tracking store answers again: %d metric points of run %s written",
                                len(batch), self.run_id)
            elif self.paused:
                self.error, self._doubtful = error, True
                self._next_write = time.monotonic() + PROBE_INTERVAL_S
            else:
                self.error, self._doubtful = error, True
                self._backoff = min(max(2 * self._backoff, 2.0), MAX_BACKOFF_S)
                self._next_write = time.monotonic() + self._backoff
                if not quiet:
                    log.warning("could not write %d metric points to the tracking store (next try in %.0f s): %s",
                                len(batch), self._backoff, _short(error))
            self._cond.notify_all()
            return ok and not self.pending

    def sync_once(self) -> None:
        """Write everything pending now; raises the store's error (the tracker retries with patience). A write
        of the thread that was under way and failed counts as this call's first try: each try on a locked
        SQLite file takes MLflow's 20 s."""
        with self._cond:
            waited = self._writing
            while self._writing:
                self._cond.wait()
            if waited and self.error is not None:
                raise self.error
        while not self.write(quiet=True):
            if self.error is not None:
                raise self.error

    def pause(self) -> None:
        """The run gave up on the store: from now on try it only every PROBE_INTERVAL_S, quietly."""
        with self._cond:
            self.paused = True
            self._next_write = time.monotonic() + PROBE_INTERVAL_S
            self._cond.notify_all()

    def unpause(self) -> None:
        with self._cond:
            self.paused = False
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the thread (after the write it may be doing); what is pending stays journaled."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"

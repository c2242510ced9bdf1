"""A pool of long-lived worker processes that run sweep trials (the trial hygiene it shares with the
in-process launcher is in dlx.sweep.hygiene).

Each worker (dlx.sweep.worker; dlx.sweep.start says how it starts) has torch, MLflow and dlx imported
once and then runs trials one after another, so a trial costs its training and nothing else. Parent and worker speak over two pipes
(multiprocessing Connections: length-prefixed pickles); the worker's stdout and stderr are the sweep's.

A worker that dies (SIGKILL, the out-of-memory killer, os._exit) fails only the trial it was running:
the parent sees the end of its pipe, records that trial as FAILED with the reason, closes the trial's
MLflow run if it was left RUNNING, starts a replacement and carries on. joblib's loky pool, which
hydra-joblib-launcher uses, instead aborts the whole sweep with TerminatedWorkerError.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dlx.errors import RunError
from dlx.sweep.start import WorkerStarter, worker_threads

log = logging.getLogger("dlx.sweep.launcher")

STARTUP_FAILURES = 3  # workers that die before they are ready, in a row, before the sweep gives up


class WorkerDied(RunError):
    """The worker process running a trial ended before the trial did; `exit_code` is its exit status as
    a shell reports it (128 + N when signal N ended it), so one that died of SIGTERM or SIGINT counts
    as interrupted, like a trial that handled the signal (dlx.sweep.hygiene.interrupt_code)."""


class WorkerStartError(RuntimeError):
    """Worker processes keep dying before they can run a trial."""


# ---------------------------------------------------------------------------------------------- dead workers
def failed_return(sweep_config: DictConfig, error: BaseException) -> JobReturn:
    """The JobReturn of a trial that never reported back, shaped like the one run_job makes."""
    output_dir = trial_dir(sweep_config)
    config = copy.deepcopy(sweep_config)
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = str(output_dir)
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    ret = JobReturn(overrides=list(OmegaConf.to_container(config.hydra.overrides.task)), cfg=task_cfg,
                    hydra_cfg=OmegaConf.masked_copy(config, ["hydra"]), working_dir=os.getcwd(),
                    task_name=str(config.hydra.job.name), status=JobStatus.FAILED)
    ret.return_value = error
    return ret


def trial_dir(sweep_config: DictConfig) -> Path:
    """The trial's output directory, as Hydra's run_job computes it: sweep dir / subdir."""
    return Path(os.path.abspath(os.path.join(str(sweep_config.hydra.sweep.dir), str(sweep_config.hydra.sweep.subdir))))


def close_orphan_run(sweep_config: DictConfig, reason: str) -> None:
    """Mark FAILED the trial's MLflow run that its dead worker left RUNNING; dlx.run tags each run with
    its run directory (dlx.run_dir), which is unique to the trial."""
    try:
        tracking = OmegaConf.to_container(sweep_config.tracking, resolve=True) if "tracking" in sweep_config else None
        if not tracking or not tracking.get("enabled"):
            return
        from dlx.tracking import open_store, resolve_uri

        uri, artifacts = resolve_uri(tracking["uri"], tracking.get("artifact_location"))
        client, experiment_id = open_store(uri, tracking["experiment"], artifacts)
        run_dir = str(trial_dir(sweep_config).resolve()).replace("'", "\\'")
        runs = client.search_runs([experiment_id], filter_string=f"tags.`dlx.run_dir` = '{run_dir}' "
                                                                 "and attributes.status = 'RUNNING'")
        for run in runs:
            client.set_tag(run.info.run_id, "dlx.error", reason)
            client.set_tag(run.info.run_id, "dlx.outcome", "failed")
            client.set_terminated(run.info.run_id, status="FAILED")
            log.info("closed run %s of the dead worker as FAILED", run.info.run_id)
    except Exception as exc:  # noqa: BLE001 - the sweep goes on; the sweeper may still close the run
        log.warning("could not close the MLflow run of the dead worker's trial: %s", exc)


def exit_status(returncode: int | None) -> int:
    """A Popen returncode (-N: signal N) as a shell's exit status; 1 when unknown."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode


def death_reason(returncode: int | None, pid: int, idx: int | None) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        how = f"died with signal {name}"
        if name == "SIGKILL":
            how += " (kill -9 or the out-of-memory killer)"
    else:
        how = f"exited with code {returncode}"
    where = f" while running trial {idx}" if idx is not None else " before running a trial"
    return f"worker process {pid if pid is not None else '(never started)'} {how}{where}"


# ---------------------------------------------------------------------------------------------- the pool
class _Worker:
    def __init__(self, pool: WorkerPool):
        self.proc, self.send_conn, self.recv_conn = pool.starter.start()
        # the worker reads its set-up once it has its imports (a forked one: once the zygote has them),
        # and the set-up is larger than a pipe holds: a thread hands it over, so that neither the pool
        # nor the next worker's start waits for it
        blobs = [pickle.dumps(list(sys.path)), pool.state, pool.payload]  # sys.path first: unpickling needs it
        threading.Thread(target=self._send_setup, args=(blobs, pool.threads), daemon=True).start()
        self.ready, self.started = False, time.monotonic()
        self.job: tuple[int, list[str]] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid  # a forked worker's: None until the zygote has forked it

    def _send_setup(self, blobs: list[bytes], threads: int) -> None:
        pid = self.proc.forked_pid() if hasattr(self.proc, "forked_pid") else self.proc.pid
        if pid is None:  # the zygote was stopped before it forked this one: nothing to set up
            return
        log.info("worker %d starting, torch threads: %d", pid, threads)
        try:
            for blob in blobs:
                self.send_conn.send_bytes(blob)
        except OSError:  # the worker died first: the pool sees the end of its pipe
            pass

    def submit(self, job: tuple[int, list[str]]) -> bool:
        """Hand the worker a trial; False when the worker is already gone (its pipe is closed)."""
        try:
            self.send_conn.send(job)
        except OSError:
            return False
        self.job = job
        return True

    def close_pipes(self) -> None:
        for conn in (self.send_conn, self.recv_conn):
            try:
                conn.close()
            except OSError:
                pass


class WorkerPool:
    """n long-lived worker processes; `run` spreads a batch of trials over them.

    A trial travels as (job number, overrides): each worker composes its trials' configs itself with
    Hydra's config loader, as hydra-joblib-launcher does: composed in the parent, the configs were
    serial work the workers waited for.
    `compose(idx, overrides)` makes the same sweep config in the parent, needed only when a worker dies.
    """

    def __init__(self, n: int, *, hydra_context, task_function, config: DictConfig, compose,
                 threads: int | None = None, shutdown_grace_s: float = 30.0):
        try:
            import cloudpickle as pickler  # task functions may be closures (an app's @hydra.main body)
        except ImportError:  # pragma: no cover - MLflow depends on cloudpickle
            pickler = pickle
        self.n = n
        self.threads = worker_threads(n, threads)
        self.shutdown_grace_s, self.compose = shutdown_grace_s, compose
        # Hydra's singletons (ConfigStore, JobRuntime, ...) travel apart and are installed first: installing
        # them rescans the plugins, which re-executes their modules and so redefines their config
        # dataclasses; the config loaded after that refers to the classes pickle will find again
        self.state = pickler.dumps(Singleton.get_state())  # OmegaConf's resolvers are closures
        # resolve the sweep dir once here: its ${now:...} is cached in the config and travels with it,
        # so every worker puts its trials under the same sweep dir instead of its own time stamp
        str(config.hydra.sweep.dir)
        self.payload = pickler.dumps({"hydra_context": hydra_context, "task_function": task_function,
                                      "config": config, "threads": self.threads})
        self.workers: list[_Worker] = []
        self.starter = WorkerStarter(self.threads)
        self.closed = False
        atexit.register(self.close)

    def start(self) -> None:
        """Start the n workers now (they import torch and MLflow in the background)."""
        while len(self.workers) < self.n:
            self._start()

    def _start(self) -> _Worker:
        worker = _Worker(self)
        self.workers.append(worker)
        return worker

    def run(self, jobs: list[tuple[int, list[str]]]) -> list[JobReturn]:
        """Run every job; returns their JobReturns in the order of `jobs`."""
        queue, results = deque(jobs), {}
        self.stream(lambda: queue.popleft() if queue else None, results.__setitem__)
        return [results[idx] for idx, _ in jobs]

    def stream(self, next_job: Callable[[], tuple[int, list[str]] | None],
               on_done: Callable[[int, JobReturn], None]) -> None:
        """Hand each worker that is ready and idle the job `next_job()` gives, and give each JobReturn to
        `on_done(job number, JobReturn)` as it arrives; return once `next_job()` said None and every
        job handed out has come back. No worker waits for another's trial to end."""
        self.start()
        startup_failures, exhausted, unsent = 0, False, deque()
        while True:
            for worker in self.workers:
                if worker.ready and worker.job is None and not exhausted:
                    job = unsent.popleft() if unsent else next_job()
                    if job is None:
                        exhausted = True
                    elif not worker.submit(job):  # it is gone: wait() shows the end of its pipe
                        unsent.appendleft(job)
            if exhausted and not unsent and all(w.job is None for w in self.workers):
                return
            for conn in wait([w.recv_conn for w in self.workers]):
                worker = next(w for w in self.workers if w.recv_conn is conn)
                try:
                    message = pickle.loads(conn.recv_bytes())  # cloudpickle's output (dlx.sweep.worker._tell_parent)
                except (EOFError, OSError):
                    startup_failures = startup_failures + 1 if not worker.ready and worker.job is None else 0
                    failed: dict[int, JobReturn] = {}
                    self._replace(worker, failed)
                    for idx, ret in failed.items():
                        on_done(idx, ret)
                    if startup_failures >= STARTUP_FAILURES:
                        raise WorkerStartError(f"{startup_failures} worker processes in a row died before they "
                                               "were ready; their errors are printed above") from None
                    continue
                kind = message[0]
                if kind == "ready":
                    worker.ready, startup_failures = True, 0
                    log.info("worker %s ready after %.1f s", worker.pid, time.monotonic() - worker.started)
                elif kind == "started":
                    log.info("trial %d running in pid %d", message[1], message[2])
                elif kind == "done":
                    worker.job = None
                    on_done(message[1], message[2])

    def _replace(self, worker: _Worker, results: dict) -> None:
        """`worker` is gone: fail its trial, close its MLflow run, start another in its place."""
        worker.close_pipes()
        self.workers.remove(worker)
        try:
            returncode = worker.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the pipe broke but the process lingers: make sure it is gone
            worker.proc.kill()
            returncode = worker.proc.wait()
        idx = worker.job[0] if worker.job is not None else None
        reason = death_reason(returncode, worker.pid, idx)
        log.error("%s", reason)
        if worker.job is not None:
            try:
                sweep_config = self.compose(*worker.job)
            except Exception:  # noqa: BLE001 - the trial still fails with its reason, without a config
                results[idx] = JobReturn(overrides=worker.job[1], status=JobStatus.FAILED)
                results[idx].return_value = WorkerDied(reason, exit_status(returncode))
            else:
                close_orphan_run(sweep_config, reason)
                results[idx] = failed_return(sweep_config, WorkerDied(reason, exit_status(returncode)))
        if not self.closed:
            self._start()

    def close(self) -> None:
        """Ask idle workers to exit and wait for them; workers still busy are terminated."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            try:
                if not worker.ready:  # still importing torch (a replacement, say): nothing to wait for
                    worker.proc.kill()
                elif worker.job is None:
                    worker.send_conn.send(None)
                else:
                    worker.proc.send_signal(signal.SIGTERM)
                worker.send_conn.close()
            except OSError:
                pass
        self._stop_all(grace_s=self.shutdown_grace_s)

    def terminate(self) -> None:
        """Ctrl-C or SIGTERM of the sweep: SIGTERM each worker (dlx.run closes its trial's run KILLED),
        wait up to shutdown_grace_s, then SIGKILL what is left."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            if worker.proc.poll() is None:
                log.warning("stopping worker %s%s", worker.pid,
                            f" (trial {worker.job[0]})" if worker.job is not None else "")
                worker.proc.send_signal(signal.SIGTERM)
            worker.send_conn.close()  # no next trial: the worker leaves once its trial is closed
        self._stop_all(grace_s=self.shutdown_grace_s)

    def _stop_all(self, grace_s: float) -> None:
        self.starter.stop_starting()
        start = time.monotonic()
        deadline = start + grace_s
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop within %.0f s: killing it", worker.pid, grace_s)
                worker.proc.kill()
                worker.proc.wait()
            worker.close_pipes()
        log.info("%d worker(s) stopped in %.1f s", len(self.workers), time.monotonic() - start)
        self.workers.clear()
        self.starter.close()
        atexit.unregister(self.close)

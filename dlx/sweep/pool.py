"""A pool of long-lived worker processes that run sweep trials (the trial hygiene it shares with the
in-process launcher is in dlx.sweep.hygiene).

Each worker (dlx.sweep.worker) is a multiprocessing.Process forked from the forkserver (dlx.sweep.start),
which imported torch, MLflow and dlx once; it runs trials one after another, so a trial costs its training
and nothing else. Parent and worker speak over two pipes (multiprocessing Connections: length-prefixed
pickles); the worker's stdout and stderr are the sweep's.

A worker that dies (SIGKILL, the out-of-memory killer, os._exit) fails only the trial it was running:
the parent sees its Process's sentinel (or the end of its pipe), records that trial as FAILED with the reason, closes the trial's
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
from dlx.sweep.devices import trial_devices, visible_devices
from dlx.sweep.start import context, worker_env, worker_threads
from dlx.sweep.worker import serve

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
    """A Process's exitcode (-N: signal N) as a shell's exit status; 1 when unknown."""
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode


def death_reason(returncode: int | None, pid: int | None, idx: int | None) -> str:
    if pid is None:
        return "a worker process could not be started (its error is printed above)"
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        how = f"died with signal {name}"
        if name == "SIGKILL":
            how += " (kill -9 or the out-of-memory killer)"
    else:
        how = f"exited with code {returncode}"
    where = f" while running trial {idx}" if idx is not None else " before running a trial"
    return f"worker process {pid} {how}{where}"


# ---------------------------------------------------------------------------------------------- the pool
class _Worker:
    """One worker: a multiprocessing.Process (dlx.sweep.start says where from) and its two pipes.

    Process.start() waits until the forkserver has its imports, and its set-up (larger than a pipe
    holds) travels with the Process's arguments: a thread starts it, so that neither the pool nor the
    next worker's start waits, and the sweep goes on setting itself up meanwhile."""

    def __init__(self, pool: WorkerPool, slot: int):
        self.slot = slot  # its place in the pool, which a replacement takes over: its CUDA devices
        inbox, self.send_conn = pool.context.Pipe(duplex=False)
        self.recv_conn, outbox = pool.context.Pipe(duplex=False)
        gpus = pool.gpus_of(slot)
        tag = None if gpus is None else ",".join(gpus) or "none"
        # sys.path first: unpickling the rest needs it
        setup = [pickle.dumps(list(sys.path)), pool.state, pool.payload]
        self.proc = pool.context.Process(target=serve, name=f"dlx-sweep-worker-{slot}",
                                         args=(inbox, outbox, worker_env(pool.threads, gpus), setup, tag))
        self.lock = threading.Lock()
        self.started = self.cancelled = self.ready = self.orphaned = False
        self.since = time.monotonic()
        self.job: tuple[int, list[str]] | None = None
        threading.Thread(target=self._start, args=((inbox, outbox), pool.threads, tag), daemon=True).start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid  # None until started

    def _start(self, child_ends: tuple, threads: int, gpus: str | None) -> None:
        try:
            with _STARTING:  # one at a time: multiprocessing's bookkeeping of children is not for threads
                self.proc.start()
        except Exception as exc:  # noqa: BLE001 - the pool sees the end of the pipe and starts another
            log.error("could not start a worker process: %s: %s", type(exc).__name__, exc)
        finally:  # this process's copies: the end of the pipe then shows the end of the worker
            for conn in child_ends:
                conn.close()
        with self.lock:
            self.started = self.proc.pid is not None
            if self.started and self.cancelled:  # the pool stopped while this one was being forked
                self.proc.kill()
        if self.started:
            log.info("worker %d starting, torch threads: %d%s", self.proc.pid, threads,
                     f", CUDA devices: {gpus}" if gpus is not None else "")

    def sentinels(self) -> list:
        return [self.recv_conn] + ([self.proc.sentinel] if self.started and not self.orphaned else [])

    def exited(self) -> bool:
        """Whether the process has ended. A forkserver that died (the out-of-memory killer) reports each
        of its workers as ended (exit code 255) while they still run: such a worker's end is then
        seen through its pipe alone."""
        if not self.started or self.orphaned or self.proc.exitcode is None:
            return False
        try:
            os.kill(self.proc.pid, 0)
        except ProcessLookupError:
            return True
        self.orphaned = True
        log.warning("the forkserver died; worker %d goes on without it", self.proc.pid)
        return False

    def submit(self, job: tuple[int, list[str]]) -> bool:
        """Hand the worker a trial; False when the worker is already gone (its pipe is closed)."""
        try:
            self.send_conn.send(job)
        except OSError:
            return False
        self.job = job
        return True

    def stop(self, sig: signal.Signals | None) -> bool:
        """Stop it with SIGTERM or SIGKILL (None: ask an idle one to leave); False when it was not started
        yet: once forked it finds its inbox closed and leaves (and _start kills it): nothing to wait for."""
        with self.lock:
            self.cancelled = True
            started = self.started
        try:
            if started and self.proc.exitcode is None:
                if sig is None:
                    self.send_conn.send(None)
                elif sig == signal.SIGKILL:
                    self.proc.kill()
                else:
                    self.proc.terminate()
            self.send_conn.close()
        except OSError:
            pass
        return started

    def close_pipes(self) -> None:
        for conn in (self.send_conn, self.recv_conn):
            try:
                conn.close()
            except OSError:
                pass


_STARTING = threading.Lock()


class WorkerPool:
    """n long-lived worker processes; `run` spreads a batch of trials over them.

    A trial travels as (job number, overrides): each worker composes its trials' configs itself with
    Hydra's config loader, as hydra-joblib-launcher does: composed in the parent, the configs were
    serial work the workers waited for.
    `compose(idx, overrides)` makes the same sweep config in the parent, needed only when a worker dies.
    `gpus_per_trial`: CUDA devices per worker (dlx.sweep.devices.trial_devices).
    """

    def __init__(self, n: int, *, hydra_context, task_function, config: DictConfig, compose,
                 threads: int | None = None, shutdown_grace_s: float = 30.0, gpus_per_trial: int | None = None):
        try:
            import cloudpickle as pickler  # task functions may be closures (an app's @hydra.main body)
        except ImportError:  # pragma: no cover - MLflow depends on cloudpickle
            pickler = pickle
        self.n = n
        self.threads = worker_threads(n, threads)
        self.shutdown_grace_s, self.compose = shutdown_grace_s, compose
        self.devices, self.gpus_per_trial = visible_devices(), gpus_per_trial
        self.gpus_of(0)  # a gpus_per_trial the devices cannot give fails here, before any worker starts
        # Hydra's singletons (ConfigStore, JobRuntime, ...) travel apart and are installed first: installing
        # them rescans the plugins, which re-executes their modules and so redefines their config
        # dataclasses; the config loaded after that refers to the classes pickle will find again
        self.state = pickler.dumps(Singleton.get_state())  # OmegaConf's resolvers are closures
        # resolve the sweep dir once here: its ${now:...} is cached in the config and travels with it,
        # so every worker puts its trials under the same sweep dir instead of its own time stamp
        str(config.hydra.sweep.dir)
        self.payload = pickler.dumps({"hydra_context": hydra_context, "task_function": task_function,
                                      "config": config, "threads": self.threads})
        self.context = context()
        self.workers: list[_Worker] = []
        self.closed = False
        atexit.register(self.close)

    def gpus_of(self, slot: int) -> list[str] | None:
        return trial_devices(self.devices, slot, self.gpus_per_trial)

    def start(self) -> None:
        """Start the n workers now (from the forkserver, which may still be importing torch and MLflow)."""
        taken = {w.slot for w in self.workers}
        for slot in range(self.n):
            if slot not in taken:
                self.workers.append(_Worker(self, slot))

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
            ready = set(wait([s for w in self.workers for s in w.sentinels()]))
            for worker in [w for w in self.workers if ready.intersection(w.sentinels())]:
                dead = False
                # its messages first: a worker may have sent "done" just before it ended
                while not dead and worker.recv_conn.poll():
                    try:
                        message = pickle.loads(worker.recv_conn.recv_bytes())  # cloudpickle's (worker._tell_parent)
                    except (EOFError, OSError):
                        dead = True
                    else:
                        startup_failures = self._note(worker, message, on_done, startup_failures)
                if dead or worker.exited():
                    startup_failures = startup_failures + 1 if not worker.ready and worker.job is None else 0
                    failed: dict[int, JobReturn] = {}
                    self._replace(worker, failed)
                    for idx, ret in failed.items():
                        on_done(idx, ret)
                    if startup_failures >= STARTUP_FAILURES:
                        raise WorkerStartError(f"{startup_failures} worker processes in a row died before they "
                                               "were ready; their errors are printed above") from None

    def _note(self, worker: _Worker, message: tuple, on_done, startup_failures: int) -> int:
        kind = message[0]
        if kind == "ready":
            worker.ready, startup_failures = True, 0
            log.info("worker %s ready after %.1f s", worker.pid, time.monotonic() - worker.since)
        elif kind == "started":
            log.info("trial %d running in pid %d", message[1], message[2])
        elif kind == "done":
            worker.job = None
            on_done(message[1], message[2])
        return startup_failures

    def _replace(self, worker: _Worker, results: dict) -> None:
        """`worker` is gone: fail its trial, close its MLflow run, start another in its place."""
        worker.close_pipes()
        self.workers.remove(worker)
        returncode = None
        if worker.started:
            worker.proc.join(timeout=10)
            if worker.proc.exitcode is None:  # the pipe broke but the process lingers: make sure it is gone
                worker.proc.kill()
                worker.proc.join()
            returncode = worker.proc.exitcode
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
            self.workers.append(_Worker(self, worker.slot))

    def close(self) -> None:
        """Ask idle workers to exit and wait for them; workers still busy are terminated, workers still
        setting up are killed."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            if not worker.ready:
                worker.stop(signal.SIGKILL)
            else:
                worker.stop(None if worker.job is None else signal.SIGTERM)
        self._stop_all(grace_s=self.shutdown_grace_s)

    def terminate(self) -> None:
        """Ctrl-C or SIGTERM of the sweep: SIGTERM each worker (dlx.run closes its trial's run KILLED),
        wait up to shutdown_grace_s, then SIGKILL what is left."""
        if self.closed:
            return
        self.closed = True
        for worker in self.workers:
            if worker.started and worker.proc.exitcode is None:
                log.warning("stopping worker %s%s", worker.pid,
                            f" (trial {worker.job[0]})" if worker.job is not None else "")
            worker.stop(signal.SIGTERM)  # and no next trial: it leaves once its trial is closed
        self._stop_all(grace_s=self.shutdown_grace_s)

    def _stop_all(self, grace_s: float) -> None:
        start = time.monotonic()
        deadline = start + grace_s
        for worker in self.workers:
            if worker.started:  # one not forked yet is not waited for (the forkserver may be importing)
                worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
                if worker.proc.exitcode is None:
                    log.warning("worker %s did not stop within %.0f s: killing it", worker.pid, grace_s)
                    worker.proc.kill()
                    worker.proc.join()
            worker.close_pipes()
        log.info("%d worker(s) stopped in %.1f s", len(self.workers), time.monotonic() - start)
        self.workers.clear()
        atexit.unregister(self.close)

"""`hydra/launcher=dlx_local`: sweep trials on this machine, one after another in this process
(n_jobs=1) or on a pool of long-lived worker processes (n_jobs>1).

Hydra imports every module under hydra_plugins on each start, `dlx train` included: this one only
imports Hydra. The worker pool starts when the sweeper sets the launcher up, so the workers import
torch while the sweep prepares its study and parent run; in-process trials import torch themselves.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module before it is
in sys.modules, where dataclasses cannot resolve string annotations.
"""

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class DlxLocalLauncherConf:
    _target_: str = "hydra_plugins.dlx_launcher.dlx_launcher.DlxLocalLauncher"
    # 1: trials run one after another in this process; N > 1: a pool of N worker processes, each
    # importing torch and MLflow once; -1: one worker per usable CPU core
    n_jobs: int = 1
    # torch threads of each trial; null: usable cores // n_jobs with workers (so they do not oversubscribe
    # the CPU), torch's own default (one per core) in this process. Small models often train faster on 1.
    torch_threads: Optional[int] = None  # noqa: UP045 - OmegaConf reads typing.Optional
    # after Ctrl-C or SIGTERM, seconds the workers get to close their MLflow runs before SIGKILL
    shutdown_grace_s: float = 30.0
    # CUDA devices of each worker (n_jobs > 1), handed out round-robin over the visible ones and set as
    # its CUDA_VISIBLE_DEVICES; null: one each where there are CUDA devices (workers share them when
    # there are fewer devices than workers), or as many as the trials' trainer.devices (dlx sweep's checks
    # set it); 0: none, trials train on the CPU
    gpus_per_trial: Optional[int] = None  # noqa: UP045 - OmegaConf reads typing.Optional


ConfigStore.instance().store(group="hydra/launcher", name="dlx_local", node=DlxLocalLauncherConf, provider="dlx")


class DlxLocalLauncher(Launcher):
    def __init__(self, n_jobs: int = 1, torch_threads: int | None = None, shutdown_grace_s: float = 30.0,
                 gpus_per_trial: int | None = None):
        from dlx.sweep.start import pool_size

        self.n_jobs = pool_size(n_jobs)
        self.torch_threads = torch_threads
        self.shutdown_grace_s = shutdown_grace_s
        self.gpus_per_trial = gpus_per_trial
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.pool: Any = None  # dlx.sweep.pool.WorkerPool, started by setup when n_jobs > 1

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        if self.n_jobs > 1:
            # workers import torch while the sweeper prepares the study and the parent run
            self._pool()

    def _pool(self):
        from dlx.sweep.pool import WorkerPool

        if self.pool is None or self.pool.closed:
            self.pool = WorkerPool(self.n_jobs, hydra_context=self.hydra_context, task_function=self.task_function,
                                   config=self.config, compose=self._sweep_config,
                                   threads=self.torch_threads, shutdown_grace_s=self.shutdown_grace_s,
                                   gpus_per_trial=self.gpus_per_trial)
            self.pool.start()
        return self.pool

    def _prepare(self) -> None:
        """What Hydra's launchers do before the first job: its resolvers, its own logging, the sweep dir."""
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dlx.run import sigterm_as_interrupt
        from dlx.sweep.hygiene import interrupt_from

        self._prepare()
        mode = "in this process" if self.n_jobs == 1 else f"on {self.n_jobs} worker processes"
        log.info("Launching %d trials %s", len(job_overrides), mode)
        jobs = []
        for offset, overrides in enumerate(job_overrides):
            jobs.append((initial_job_idx + offset, list(overrides)))
            log.info("\t#%d : %s", initial_job_idx + offset, " ".join(filter_overrides(overrides)))
        with sigterm_as_interrupt():  # a terminated sweep stops its workers and closes its runs as Ctrl-C does
            if self.n_jobs == 1:
                return self._launch_here(jobs, interrupt_from)
            return self._launch_pool(jobs)

    def launch_stream(self, next_job: Callable[[], tuple[int, list[str]] | None],
                      on_done: Callable[[int, JobReturn], None]) -> None:
        """On the worker pool (n_jobs > 1): hand out the trials `next_job()` gives one at a time, as
        workers free up, and pass each JobReturn to `on_done` as it arrives (dlx.sweep.pool.stream). A
        sweeper that can ask for trials one by one uses this instead of `launch`, so that no worker
        idles while the others finish their part of a batch."""
        from dlx.run import sigterm_as_interrupt

        self._prepare()
        log.info("Launching trials on %d worker processes as they free up", self.n_jobs)

        def logged():
            job = next_job()
            if job is not None:
                log.info("\t#%d : %s", job[0], " ".join(filter_overrides(job[1])))
            return job

        with sigterm_as_interrupt():
            pool = self._pool()
            try:
                pool.stream(logged, on_done)
            except BaseException:
                pool.terminate()
                raise

    def _sweep_config(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        from dlx.sweep.hygiene import compose_trial

        return compose_trial(self.hydra_context.config_loader, self.config, idx, list(overrides))

    def _launch_here(self, jobs, interrupt_from) -> list[JobReturn]:
        """Like Hydra's BasicLauncher, plus per-trial isolation of torch's global switches; a trial
        that ended because of Ctrl-C or SIGTERM stops the sweep instead of going on to the next."""
        from dlx.sweep.hygiene import isolated_trial, traced
        from dlx.sweep.worker import ready_once

        ready_once()  # the imports, out of the garbage collector's way (dlx.sweep.worker.freeze_heap)
        returns = []
        for idx, overrides in jobs:
            sweep_config = self._sweep_config(idx, overrides)
            log.info("trial %d running in pid %d", idx, os.getpid())
            with isolated_trial(self.torch_threads):
                ret = run_job(hydra_context=self.hydra_context, task_function=traced(self.task_function, idx),
                              config=sweep_config, job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            returns.append(ret)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            interrupt = interrupt_from(ret)
            if interrupt is not None:
                raise interrupt
        return returns

    def _launch_pool(self, jobs) -> list[JobReturn]:
        pool = self._pool()
        try:
            return pool.run(jobs)
        except BaseException:
            self.pool.terminate()
            raise

    def close(self) -> None:
        """Stop the worker pool (it also stops by itself when this process exits)."""
        if self.pool is not None:
            self.pool.close()

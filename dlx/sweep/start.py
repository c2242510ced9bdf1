"""How the pool's worker processes start: multiprocessing's forkserver.

The forkserver is a fresh interpreter that imports dlx.sweep.preload (torch, MLflow, dlx: warm_up) once
and then forks one worker per Process.start(), so a pool of n workers pays those imports (seconds of CPU)
once instead of n times, and a replacement for a dead worker is ready at once. It forks from a single
thread (dlx.sweep.preload keeps the libraries that start threads at import from doing so) and never
initialises CUDA, so each worker can, on the devices the pool gives it (dlx.sweep.devices).
With DLX_WORKER_START=spawn, or where there is no forkserver, each worker is a fresh interpreter that
imports everything itself.

`dlx sweep` starts the forkserver before it checks every trial (prespawn): its imports overlap them.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os

PRELOAD = ["dlx.sweep.preload"]


def pool_size(n_jobs: int) -> int:
    """hydra.launcher.n_jobs as processes: as given, or one per usable core for a value below 1 (-1)."""
    return n_jobs if n_jobs > 0 else len(os.sched_getaffinity(0))


def worker_threads(n: int, threads: int | None = None) -> int:
    """torch threads of each of n workers: as asked, else the usable cores shared out."""
    return threads or max(1, len(os.sched_getaffinity(0)) // n)


def start_method() -> str:
    if os.environ.get("DLX_WORKER_START") == "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "forkserver"


def context():
    """The multiprocessing context the pool's Process objects come from."""
    ctx = multiprocessing.get_context(start_method())
    if ctx.get_start_method() == "forkserver":
        # read when the server starts; a server already running (started by a DataLoader of this
        # process, say) serves too, its workers then import what they need themselves
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def worker_env(threads: int, gpus: list[str] | None = None) -> dict[str, str]:
    """The environment of a worker: the sweep's, with its share of the cores and its CUDA devices."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)  # read by torch when the worker's trial first uses CUDA
    return env


def prespawn() -> None:
    """Start the forkserver now; its imports run while this process goes on (Process.start waits for
    them). It stops by itself once this process and every worker forked from it have ended."""
    if start_method() == "forkserver":
        context()
        multiprocessing.forkserver.ensure_running()

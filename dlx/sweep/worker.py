"""One worker of dlx.sweep.pool: the target of a multiprocessing.Process, forked from the forkserver
that imported torch, MLflow and dlx once (dlx.sweep.start, dlx.sweep.preload).

It runs the trials the parent sends (job number and overrides), one after another: it composes the
trial's config with Hydra's config loader and runs it through Hydra's run_job, which sets HydraConfig to
that config, makes the output directory sweep dir/subdir and sends job logging to the trial's own log
file. Messages to the parent: ("ready", pid), ("started", idx, pid), ("done", idx, JobReturn).
"""

from __future__ import annotations

import functools
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path


def _watch_parent() -> None:
    """The sweep died without stopping us (SIGKILL): end the trial the way SIGTERM does, so dlx.run
    closes its MLflow run KILLED and the worker returns through its normal exit. A worker still alive a
    minute later is wedged (no exit hook of it would run either), and is killed as an orphan would be.
    The parent process's sentinel (multiprocessing) is the sweep's, whichever process forked this one."""
    wait([multiprocessing.parent_process().sentinel])
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)


def warm_up() -> None:
    """Import what every trial needs now, once, while the sweep is still being set up, instead of in
    the worker's first trial, which was slower than the next by torch._dynamo (imported by the first
    optimizer), matplotlib (and its first figure) and MLflow's SQL store (bench/README.md has the
    figures). Starts no thread and leaves CUDA alone: the forkserver forks its workers after this."""
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # pulls in torch._dynamo
    try:
        import mlflow  # noqa: F401
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        import dlx.build  # noqa: F401
        import dlx.engine  # noqa: F401
        import dlx.run  # noqa: F401
        import dlx.tracking  # noqa: F401
        from dlx.plots import plot_learning_curves
    except ImportError:  # a task function that is not dlx's still runs
        return
    with tempfile.TemporaryDirectory() as tmp:  # matplotlib's import and font set-up
        plot_learning_curves([{"epoch": 1, "train/loss": 1.0, "train/acc": 0.5, "lr": 0.1}], Path(tmp) / "warm.png")


@functools.cache
def ready_once() -> None:
    """warm_up and freeze_heap, once per process: what the in-process launcher does before its first trial,
    and the forkserver before it forks the first worker (dlx.sweep.preload)."""
    warm_up()
    freeze_heap()


def freeze_heap() -> None:
    """Hide what is alive now (the imported modules of torch, MLflow, matplotlib, ...: millions of
    objects that live as long as the process) from the cyclic garbage collector. Every trial ends with
    full collections that free its model and data at once; over that heap they are slow, and in a
    forked worker they also write into every inherited page, which un-shares it from the forkserver (the
    use the gc.freeze documentation describes)."""
    gc.collect()
    gc.freeze()


def run_trial(idx: int, overrides: list[str], init: dict):
    from hydra.core.utils import JobReturn, JobStatus, run_job

    from dlx.sweep.hygiene import compose_trial, isolated_trial, job_error, portable_exception, traced

    hydra_context, task_function = init["hydra_context"], init["task_function"]
    try:
        sweep_config = compose_trial(hydra_context.config_loader, init["config"], idx, overrides)
    except Exception as exc:  # noqa: BLE001 - a trial whose overrides do not compose fails alone
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
        ret.return_value = portable_exception(exc)
        return ret
    if init.get("gpus") is not None and "tracking" in sweep_config:  # which devices the trial trained on
        from omegaconf import open_dict

        with open_dict(sweep_config):
            sweep_config.tracking.tags["gpus"] = init["gpus"]
    with isolated_trial():
        ret = run_job(hydra_context=hydra_context, task_function=traced(task_function, idx), config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if ret.status == JobStatus.FAILED:
        ret.return_value = portable_exception(job_error(ret))
    return ret


def serve(inbox: Connection, outbox: Connection, env: dict[str, str], setup: list[bytes],
          gpus: str | None = None) -> None:
    """The target of a worker's multiprocessing.Process: take the sweep's environment, read the set-up,
    then run trials until the sweep says stop or goes away. `gpus`: the CUDA devices the pool gave this
    worker (in env's CUDA_VISIBLE_DEVICES), tagged on each trial's run."""
    try:  # a session of its own: Ctrl-C at the terminal reaches only the sweep, which then stops each
        os.setsid()  # worker with one SIGTERM (two signals could interrupt a run while it is being closed)
    except OSError:
        pass
    os.environ.clear()
    os.environ.update(env)
    ready_once()  # done in the forkserver already; a spawned worker imports here
    threading.Thread(target=_watch_parent, name="dlx-parent-watch", daemon=True).start()
    path, state, payload = setup
    sys.path[:] = pickle.loads(path)

    from hydra.core.singleton import Singleton
    from hydra.core.utils import setup_globals

    Singleton.set_state(pickle.loads(state))  # see WorkerPool: before the config is loaded
    init = pickle.loads(payload)  # cloudpickle's output loads with plain pickle
    init["gpus"] = gpus
    setup_globals()
    import torch

    torch.set_num_threads(init["threads"])  # the pool's share of the cores
    if not _tell_parent(outbox, ("ready", os.getpid())):
        return _leave()
    while True:
        try:
            job = inbox.recv()
        except (EOFError, OSError, KeyboardInterrupt):  # the sweep is gone or stops us while idle
            return _leave()
        if job is None:
            return _leave()
        idx, overrides = job
        if not _tell_parent(outbox, ("started", idx, os.getpid())):
            return _leave()
        ret = run_trial(idx, overrides, init)
        try:
            sent = _tell_parent(outbox, ("done", idx, ret))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable return value
            from hydra.core.utils import JobStatus

            ret.status, ret.return_value = JobStatus.FAILED, RuntimeError(
                f"the trial's result cannot be sent back from its worker: {type(exc).__name__}: {exc}")
            sent = _tell_parent(outbox, ("done", idx, ret))
        if not sent:
            return _leave()


def _tell_parent(outbox: Connection, message: tuple) -> bool:
    """Send to the sweep; False when it is gone (SIGKILL) and there is nobody to tell: the trial's run
    is closed in the store, and a resumed sweep reads its outcome there.

    With cloudpickle, as the pool sends the task function: a JobReturn holds the trial's config, whose
    schema classes are made at run time (dlx.options.schema) and which plain pickle cannot find by name."""
    import cloudpickle

    blob = cloudpickle.dumps(message)
    try:
        outbox.send_bytes(blob)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def _leave() -> None:
    """Every trial's run is closed here: flush the logs and return from the Process's target, after
    which multiprocessing ends a forked worker without tearing the interpreter down (the sweep would
    otherwise wait for the slow teardown of torch's and MLflow's modules)."""
    logging.shutdown()

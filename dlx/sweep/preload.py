"""What the forkserver of a sweep's worker pool imports before it forks the first worker
(multiprocessing's set_forkserver_preload, dlx.sweep.start): torch, MLflow and dlx, warmed up
(dlx.sweep.worker.warm_up), with the imported heap frozen out of the garbage collector.

A fork copies only the forking thread, and a lock another thread held would stay locked in the child:
the libraries that start threads when imported are kept from doing so here. OpenBLAS (numpy) starts one
per core unless told otherwise; pyarrow (through MLflow's pandas) starts jemalloc's background thread.
Each worker sets torch's own threads itself. The threads this process has after the imports are
checked, and a warning names them.
"""

import os
import sys
import threading
import traceback
from pathlib import Path

SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "JE_ARROW_MALLOC_CONF": "background_thread:false"}


def threads_of_this_process() -> list[str]:
    """The names of this process's threads (the kernel's: those that C libraries start, too)."""
    try:
        return [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: what Python knows of
        return [t.name for t in threading.enumerate()]


def preload() -> None:
    os.environ.update(SINGLE_THREADED)  # before numpy and pyarrow are loaded
    try:
        from dlx.sweep.worker import ready_once

        ready_once()
    except Exception:  # noqa: BLE001 - the server must live on: each worker then imports what it needs
        print("dlx: the sweep's forkserver could not import what its workers need; each imports it itself:",
              file=sys.stderr)
        traceback.print_exc()
    threads = threads_of_this_process()
    if len(threads) > 1:
        print(f"dlx: warning: the sweep's forkserver has {len(threads)} threads ({', '.join(threads)}) after its "
              "imports; a worker forked from it may hang: DLX_WORKER_START=spawn starts each worker as a "
              "process of its own", file=sys.stderr)


preload()

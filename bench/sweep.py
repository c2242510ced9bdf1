"""Wall time of one 12-trial digits sweep, run by the real `dlx sweep` twice: trials one after another
in the sweep's own process (hydra/launcher=dlx_local, n_jobs=1) and on two worker processes (n_jobs=2).

    python bench/sweep.py [--epochs 20] [--repeats 3] [--target 1.6] [--sequential-threads N] [--keep]

Each sweep runs as a subprocess in its own temporary directory (its own MLflow store), so both pay
the same start-up: Python, Hydra, the parent run. The ratio is sequential / parallel wall time; on
2 cores two single-threaded workers should approach 2x. Besides the wall times it prints when the
first and the last trial started, read from the sweep's log lines. The pair is measured --repeats
times, one mode right after the other, and the verdict is on the median of the pairs' ratios: on a
shared host the same sequential sweep took 20-29 s from one minute to the next.

Measurements and their history: bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

GRID = ["optimizer=sgd,adam,momentum", "model.width=64,256", "seed=0,1"]  # 3 x 2 x 2 = 12 trials
N_TRIALS = 12
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def sweep(n_jobs: int, epochs: int, workdir: Path, threads: int | None) -> tuple[float, datetime, str]:
    """(wall s, launch time, output) of one `dlx sweep`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DLX_"))}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"})
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the sweep's own process
    cmd = [sys.executable, "-m", "dlx", "sweep", *GRID, f"trainer.epochs={epochs}", "trainer.progress=none",
           "hydra/launcher=dlx_local", f"hydra.launcher.n_jobs={n_jobs}"]
    launched, start = datetime.now(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"bench: `{' '.join(cmd[2:])}` exited {proc.returncode}\n{output[-4000:]}")
    return wall, launched, output


def finished_trials(workdir: Path) -> int:
    """Trial runs the sweep left FINISHED in its store: every trial must have run, in both modes."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="attributes.status = 'FINISHED'")
    return sum(1 for r in runs if "mlflow.parentRunId" in r.data.tags)


def timeline(output: str, launched: datetime) -> str:
    """When, after `dlx sweep` was started, the first and the last trial began."""
    starts = [datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for line in output.splitlines()
              if (m := STAMP.match(line)) and re.search(r"trial \d+ running in pid", line)]
    if not starts:
        return "no trial start lines in the output"
    pids = set(re.findall(r"trial \d+ running in pid (\d+)", output))
    return (f"trials start at {(starts[0] - launched).total_seconds():.1f} s and last start at "
            f"{(starts[-1] - launched).total_seconds():.1f} s; {len(pids)} process(es) ran trials")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="trainer.epochs of each trial (default: 20)")
    p.add_argument("--repeats", type=int, default=3, help="sequential/parallel pairs to measure (default: 3)")
    p.add_argument("--target", type=float, default=1.6, help="the median ratio to reach (default: 1.6)")
    p.add_argument("--sequential-threads", type=int, default=None,
                   help="torch threads of the in-process sweep (default: torch's own, one per core)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    a = p.parse_args()

    cores = len(os.sched_getaffinity(0))
    threads = a.sequential_threads or "torch's default"
    print(f"sweep: {' '.join(GRID)} ({N_TRIALS} trials), digits, trainer.epochs={a.epochs}; {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}; in-process torch threads: {threads}", flush=True)
    ratios = []
    for repeat in range(a.repeats):
        walls = {}
        for n_jobs in (1, 2):
            workdir = Path(tempfile.mkdtemp(prefix=f"dlx-bench-sweep-n{n_jobs}-"))
            wall, launched, output = sweep(n_jobs, a.epochs, workdir, a.sequential_threads if n_jobs == 1 else None)
            done = finished_trials(workdir)
            label = "sequential, in-process (n_jobs=1)" if n_jobs == 1 else "two worker processes (n_jobs=2)"
            print(f"  {label:35s} {wall:6.1f} s  {done}/{N_TRIALS} trials FINISHED; "
                  f"{timeline(output, launched)}", flush=True)
            if done != N_TRIALS:
                print(output[-4000:])
                return 1
            walls[n_jobs] = wall
            if not a.keep:
                import shutil

                shutil.rmtree(workdir, ignore_errors=True)
        ratios.append(walls[1] / walls[2])
        print(f"pair {repeat + 1}/{a.repeats}: ratio sequential/parallel {ratios[-1]:.2f}x", flush=True)
    median = statistics.median(ratios)
    verdict = "PASS" if median >= a.target else "FAIL"
    print(f"ratio sequential/parallel: median {median:.2f}x over {len(ratios)} pairs "
          f"({', '.join(f'{r:.2f}' for r in ratios)}; n={N_TRIALS} trials each; target >= {a.target}x)  {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

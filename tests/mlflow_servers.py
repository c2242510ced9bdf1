"""Real tracking servers for tests: `dlx server` on a free port of 127.0.0.1, and a throwaway PostgreSQL cluster
to serve as its database. Each server runs in a process group of its own, so stopping it stops its workers."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from glob import glob
from pathlib import Path

import pytest
from conftest import dlx_env

# the metrics a run logs once per epoch (step = epoch): every one of them must be in the store for every epoch
EPOCH_KEYS = ("epoch", "epoch_time", "samples_per_sec", "train/loss", "train/acc", "val/loss", "val/acc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dlx server --port PORT ARGS` started in `cwd`, once /health answers; `uri` is what it printed to log to."""

    def __init__(self, cwd: Path, port: int, *args: str, timeout: float = 180):
        self.cwd, self.port, self.args, self.timeout = Path(cwd), port, args, timeout
        self.log = self.cwd / f"server-{port}.log"
        self.start()

    def start(self) -> None:
        """Start the server (again: same port, same store), once it answers."""
        cwd, port, args, timeout = self.cwd, self.port, self.args, self.timeout
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "dlx", "server", "--port", str(port), *args],
                                         cwd=cwd, env=dlx_env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dlx server exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            self.stop()
            raise AssertionError(f"the server did not answer within {timeout} s:\n{self.output()[-3000:]}")
        line = next(ln for ln in self.output().splitlines() if "tracking=server tracking.uri=" in ln)
        self.uri = line.split("tracking.uri=", 1)[1].strip()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s; returns once the port is free again."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_alive(self.proc.pid):
            self.proc.poll()
            time.sleep(0.2)
        if _group_alive(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def points(client, run_id: str, keys) -> Counter:
    """(key, step) -> how many points the store holds."""
    return Counter((m.key, m.step) for k in keys for m in client.get_metric_history(run_id, k))


def assert_complete(client, run, epochs: int) -> None:
    """A finished run of `epochs` with every per-epoch point once, its step curves without a gap or a double,
    its params and its artifacts (config, checkpoints, plots, log) in the store."""
    run_id = run.info.run_id
    assert run.info.status == "FINISHED", (run.info.run_name, run.info.status, run.data.tags.get("dlx.error"))
    held = points(client, run_id, EPOCH_KEYS)
    assert held == Counter({(k, e): 1 for k in EPOCH_KEYS for e in range(1, epochs + 1)}), held
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss_step")]
    every = int(run.data.params["trainer.log_every_n_steps"])
    assert steps and sorted(steps) == list(range(every, max(steps) + 1, every))
    assert {"test/acc", "test/loss"} <= set(run.data.metrics)
    assert run.data.params["trainer.epochs"] == str(epochs) and len(run.data.params) > 50
    files = {f.path for f in client.list_artifacts(run_id)}
    for folder in ("checkpoints", "plots", "logs"):
        files |= {f.path for f in client.list_artifacts(run_id, folder)}
    assert {"config.yaml", "checkpoints/last.pt", "checkpoints/best.pt", "plots/learning_curves.png",
            "logs/train.log"} <= files, files


# ---------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL cluster cannot be made here, or None."""
    from importlib.util import find_spec

    if not (_pg_bin("initdb") and _pg_bin("pg_ctl")):
        return "PostgreSQL is not installed (no initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin)"
    if find_spec("psycopg") is None:
        return "the PostgreSQL driver is not installed (pip install 'psycopg[binary]', in the dev extra)"
    if os.geteuid() == 0 and not _unprivileged_user():
        return "running as root and no unprivileged user (postgres or nobody) to run PostgreSQL as"
    return None


def _unprivileged_user():
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class Postgres:
    """A throwaway cluster in a temporary folder on 127.0.0.1:port, trusting local connections; initdb and
    pg_ctl refuse root, so as root it runs as an unprivileged user."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="dlx-pg-"))
        self.port = free_port()
        self.user = _unprivileged_user() if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        data = self.dir / "data"
        self._run(_pg_bin("initdb"), "-D", str(data), "-U", "dlx", "--auth=trust", "-E", "UTF8")
        self._run(_pg_bin("pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "60", "-o",
                  f"-k {self.dir} -p {self.port} -h 127.0.0.1 -c max_connections=200", "start")
        self.uri = f"postgresql://dlx@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd: str) -> None:
        kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, timeout=120, **kwargs)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}: {done.stdout}{done.stderr}")

    def stop(self) -> None:
        try:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres():
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    cluster = Postgres()
    try:
        yield cluster
    finally:
        cluster.stop()

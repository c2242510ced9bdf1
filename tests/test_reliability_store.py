"""Faults of the tracking store, injected into real `dlx train` processes on a real SQLite store: several
processes creating a new store at once, a store that stays locked past the run's patience, a lock that the
run must wait out, a SIGKILL. Invariants: every run ends with a true status or its spool says why; no
journaled metric point is lost or written twice; the store stays usable; one error line, never a traceback.

The faults are a second process holding `BEGIN EXCLUSIVE` on the SQLite file (chmod does not stop root, which
these tests may run as). MLflow waits 20 s on a locked SQLite file before a call fails, so a lock meant to
outlast the patience outlasts 20 s, and one meant to be waited out lasts longer than 20 s too."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from conftest import QUICK, all_runs, client_for, dlx_env, read_until, run_dlx

from dlx import spool

EPOCHS = 100  # a few seconds of training on digits: long enough to take a lock while it trains


def start_train(workdir: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlx", "train", *QUICK, *args], cwd=workdir,
                            env=dlx_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)




class Lock(threading.Thread):
    """Holds an EXCLUSIVE lock on the SQLite file from `start()` until `release` is set or `seconds` pass."""

    def __init__(self, db: Path, seconds: float = 600):
        super().__init__(daemon=True)
        self.db, self.seconds = db, seconds
        self.taken, self.release = threading.Event(), threading.Event()

    def run(self):
        con = sqlite3.connect(self.db, timeout=60, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        self.taken.set()
        self.release.wait(self.seconds)
        con.rollback()
        con.close()


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def points(client, run_id: str, keys) -> Counter:
    return Counter((m.key, m.step, m.value, m.timestamp) for k in keys for m in client.get_metric_history(run_id, k))


@pytest.mark.parametrize("n", [2, 4, pytest.param(8, marks=pytest.mark.slow)])
def test_processes_that_create_a_new_store_at_once_all_finish(n, workdir):
    procs = [start_train(workdir, "trainer.epochs=1", f"tracking.run_name=p{i}") for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    runs = all_runs(workdir)
    assert sorted(r.info.run_name for r in runs) == [f"p{i}" for i in range(n)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    db = sqlite3.connect(workdir / "outputs" / "mlflow.db")
    assert not db.execute("SELECT name FROM sqlite_master WHERE name LIKE '\\_alembic\\_tmp%' ESCAPE '\\'").fetchall()
    assert run_dlx(["runs"], workdir, check=True).returncode == 0


def test_a_store_locked_past_the_patience_leaves_a_spool_that_dlx_sync_replays(workdir):
    proc = start_train(workdir, f"trainer.epochs={EPOCHS}", DLX_STORE_PATIENCE="1")
    read_until(proc, f"epoch 1/{EPOCHS}")
    lock = Lock(workdir / "outputs" / "mlflow.db")
    lock.start()
    assert lock.taken.wait(60)
    out, err = finish(proc)
    lock.release.set()
    lock.join()
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if line.startswith("dlx: error:")]
    assert len(errors) == 1 and "dlx sync replays them" in errors[0], err[-3000:]
    spools = list((workdir / "outputs").rglob(f"*{spool.SUFFIX}"))
    assert len(spools) == 1 and str(spools[0]) in errors[0]
    run_id = spool.read(spools[0])["run_id"]
    client = client_for(workdir)
    assert client.get_run(run_id).info.status == "RUNNING"  # the store never heard the end

    synced = run_dlx(["sync", str(spools[0].parent)], workdir)
    assert synced.returncode == 0, synced.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dlx.outcome"] == "ok"
    held = points(client, run_id, ["epoch", "val/acc", "train/loss_step", "test/acc"])
    assert max(held.values()) == 1  # nothing twice
    assert sorted(step for key, step, _, _ in held if key == "epoch") == list(range(1, EPOCHS + 1))
    assert any(key == "test/acc" for key, *_ in held)
    assert not spools[0].exists() and spool.pending(f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}") == []


def test_a_lock_across_the_end_of_the_run_is_waited_out(workdir):
    proc = start_train(workdir, f"trainer.epochs={EPOCHS}", DLX_STORE_PATIENCE="120")
    read_until(proc, f"epoch 1/{EPOCHS}")
    lock = Lock(workdir / "outputs" / "mlflow.db", seconds=22)  # longer than MLflow's own 20 s wait
    lock.start()
    assert lock.taken.wait(60)
    out, err = finish(proc)
    lock.join()
    assert proc.returncode == 0, err[-3000:]
    assert "dlx train: FINISHED" in out and "Traceback" not in err
    (run,) = all_runs(workdir)
    assert run.info.status == "FINISHED" and "dlx.error" not in run.data.tags
    held = points(client_for(workdir), run.info.run_id, ["epoch"])
    assert sorted(step for _, step, _, _ in held) == list(range(1, EPOCHS + 1))
    assert not list((workdir / "outputs").rglob(f"*{spool.SUFFIX}"))


def test_the_points_of_a_sigkilled_run_are_recovered_by_dlx_sync(workdir):
    proc = start_train(workdir, f"trainer.epochs={EPOCHS * 10}")
    read_until(proc, f"epoch 20/{EPOCHS * 10}")
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    (path,) = (workdir / "outputs").rglob(f"*{spool.SUFFIX}")
    journaled = Counter()
    for line in path.read_text().splitlines():
        if line.startswith('{"m"'):
            import json

            journaled.update(tuple(p) for p in json.loads(line)["m"])
    run_id = spool.read(path)["run_id"]
    synced = run_dlx(["sync", str(path)], workdir)
    assert synced.returncode == 0, synced.stderr
    client = client_for(workdir)
    held = points(client, run_id, {key for key, *_ in journaled})
    expected = Counter((k, step, v, ts) for k, v, ts, step in journaled)
    assert expected and all(held[p] == 1 for p in expected), "a journaled point is missing or doubled"
    assert max(held.values()) == 1
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: resumable, not closed
    assert not path.exists() and os.listdir(path.parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(workdir: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port with its own SQLite store in workdir, once it answers."""
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{workdir / 'server.db'}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=workdir, env=dlx_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise AssertionError("the MLflow server did not start")


@pytest.mark.slow
def test_a_server_that_dies_mid_run_costs_seconds_and_loses_no_point(workdir):
    """MLflow's own retries kept each call to a dead server waiting for minutes."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"

    server = serve(workdir, port)
    proc = start_train(workdir, f"trainer.epochs={EPOCHS * 3}", f"tracking.uri={uri}", DLX_STORE_PATIENCE="5")
    try:
        read_until(proc, f"epoch 3/{EPOCHS * 3}")
    finally:
        server.terminate()
        server.wait(30)
    killed = time.monotonic()
    out, err = finish(proc, timeout=120)
    assert proc.returncode == 1 and time.monotonic() - killed < 60, err[-3000:]
    assert "Traceback" not in err and "dlx sync replays them" in err
    server = serve(workdir, port)
    try:
        synced = run_dlx(["sync", "--uri", uri], workdir)
        assert synced.returncode == 0, synced.stderr
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("dlx").experiment_id])
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert sorted(steps) == list(range(1, EPOCHS * 3 + 1))
    finally:
        server.terminate()
        server.wait(30)

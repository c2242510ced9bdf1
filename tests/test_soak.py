"""The fault soak (--runslow): the faults of tests/test_reliability_*.py repeated at random points, on real
`dlx train` / `dlx sweep` processes and a real SQLite store or MLflow server. Each round checks the invariants:
no run left RUNNING except after a SIGKILL (and that one resumes), every journaled metric point in the store
exactly once, the store usable afterwards, the documented exit codes, no traceback. At the end it prints the
table: fault, runs tried, survived, points lost.

DLX_SOAK_ROUNDS (default 2) sets how often each randomized fault is repeated; DLX_SOAK_SEED fixes the draw."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import QUICK, all_runs, client_for, dlx_env, read_until, run_dlx
from test_reliability_store import Lock, finish, free_port, serve, start_train

from dlx import spool

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("DLX_SOAK_ROUNDS", "2"))
RNG = random.Random(int(os.environ.get("DLX_SOAK_SEED", str(time.time_ns()))))
EPOCHS = 40  # digits MLP: ~0.1 s an epoch, a few seconds of training to hit at random
EPOCH_KEYS = ("epoch", "train/loss", "val/acc")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
EXIT = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 143, "SIGINT": 130}

# fault -> [runs tried, survived, points lost]
LEDGER: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])


@pytest.fixture(scope="module", autouse=True)
def fault_table(request):
    yield
    rows = [f"| {fault} | {tried} | {survived} | {lost} |" for fault, (tried, survived, lost) in LEDGER.items()]
    text = "\n".join(["", "| fault | runs tried | survived | points lost |", "|---|---|---|---|", *rows])
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # the table is the soak's result: shown even without -s
        print(text, flush=True)


def record(fault: str, survived: bool, lost: int = 0) -> None:
    row = LEDGER[fault]
    row[0] += 1
    row[1] += int(survived and lost == 0)
    row[2] += lost


def no_traceback(*texts: str) -> bool:
    return all("Traceback" not in t for t in texts)


def epoch_points(client, run_id: str) -> Counter:
    return Counter((m.key, m.step) for k in EPOCH_KEYS for m in client.get_metric_history(run_id, k))


def missing_and_doubled(held: Counter, epochs: int) -> tuple[int, int]:
    """Points of epochs 1..epochs absent from the store, and points held more than once."""
    expected = {(k, e) for k in EPOCH_KEYS for e in range(1, epochs + 1)}
    return len(expected - set(held)), sum(n - 1 for n in held.values() if n > 1)


def journaled(path: Path) -> Counter:
    """Every metric point a spool holds, as (key, step, value, timestamp)."""
    out = Counter()
    for line in path.read_text().splitlines():
        if line.startswith('{"m"'):
            out.update((k, step, v, ts) for k, v, ts, step in json.loads(line)["m"])
    return out


def held_exactly_once(client, run_id: str, points: Counter) -> int:
    """How many of `points` the store does not hold exactly once."""
    keys = {k for k, *_ in points}
    held = Counter((m.key, m.step, m.value, m.timestamp) for k in keys for m in client.get_metric_history(run_id, k))
    return sum(1 for p in points if held[p] != 1)


# ---------------------------------------------------------------------------------------------- processes
@pytest.mark.parametrize("n", [2, 4, 8])
def test_n_processes_on_a_fresh_store(n, tmp_path: Path):
    procs = [start_train(tmp_path, "trainer.epochs=2", f"tracking.run_name=p{i}") for i in range(n)]
    results = [finish(p, timeout=600) for p in procs]
    ok = all(p.returncode == 0 for p in procs) and no_traceback(*(e for _, e in results))
    runs = all_runs(tmp_path)
    client = client_for(tmp_path)
    lost = sum(missing_and_doubled(epoch_points(client, r.info.run_id), 2)[0] for r in runs) + 2 * 3 * (n - len(runs))
    usable = run_dlx(["runs"], tmp_path).returncode == 0
    ok = ok and usable and len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}
    record(f"{n} processes at once on a new store", ok, lost)
    assert ok and lost == 0, [e[-2000:] for _, e in results]


# ---------------------------------------------------------------------------------------------- signals
@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_at_a_random_epoch_then_resume(name, tmp_path: Path):
    for round_ in range(ROUNDS):
        work = tmp_path / f"r{round_}"
        work.mkdir()
        at = RNG.randint(2, EPOCHS - 5)
        proc = start_train(work, "trainer.deterministic=true", f"trainer.epochs={EPOCHS}")
        read_until(proc, f"epoch {at}/{EPOCHS}")
        time.sleep(RNG.uniform(0, 0.1))  # somewhere inside the next epoch
        proc.send_signal(SIGNALS[name])
        out, err = finish(proc)
        (run,) = all_runs(work)
        client = client_for(work)
        expected_status = "RUNNING" if name == "SIGKILL" else "KILLED"
        ok = proc.returncode == EXIT[name] and run.info.status == expected_status and no_traceback(out, err)
        lost = 0
        spools = list((work / "outputs").rglob(f"*{spool.SUFFIX}"))
        if name == "SIGKILL" and spools:  # what the killed process journaled must reach the store, once
            points = journaled(spools[0])
            ok = ok and run_dlx(["sync", str(spools[0])], work).returncode == 0
            lost += held_exactly_once(client, run.info.run_id, points)
        _, doubled_before = missing_and_doubled(epoch_points(client, run.info.run_id), at)
        resumed = run_dlx(["train", f"trainer.resume={run.info.run_id}", "trainer.progress=plain"], work)
        run = client.get_run(run.info.run_id)
        missing, doubled = missing_and_doubled(epoch_points(client, run.info.run_id), EPOCHS)
        ok = (ok and resumed.returncode == 0 and run.info.status == "FINISHED" and doubled == doubled_before == 0
              and no_traceback(resumed.stdout, resumed.stderr))
        lost += missing
        record(f"{name} of a run at a random epoch, then resume", ok, lost)
        assert ok and lost == 0, (name, at, proc.returncode, err[-2000:], resumed.stderr[-2000:])


SWEEP = ["seed=0,1,2,3", "trainer=quick", "trainer.progress=none", "model.width=32", "trainer.epochs=1000",
         "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"]


@pytest.mark.parametrize("name", list(SIGNALS))
def test_a_signal_to_a_sweep_then_resume(name, tmp_path: Path):
    for round_ in range(ROUNDS):
        work = tmp_path / f"r{round_}"
        work.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "dlx", "sweep", *SWEEP], cwd=work, env=dlx_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        read_until(proc, "running in pid", timeout=300)
        time.sleep(RNG.uniform(0, 15))  # from the first trials' start to the middle of the last ones
        assert proc.poll() is None, "the sweep ended before the fault: make its trials longer"
        proc.send_signal(SIGNALS[name])
        out, err = finish(proc, timeout=300)
        if name == "SIGKILL":  # the workers notice their parent is gone and end their trials KILLED
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and any(
                    r.info.status == "RUNNING" and "mlflow.parentRunId" in r.data.tags for r in all_runs(work)):
                time.sleep(1)
        resumed = run_dlx(["sweep", "--resume"], work, timeout=600)
        runs = all_runs(work)
        client = client_for(work)
        trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        finished = [r for r in trials if r.info.status == "FINISHED"]
        lost = sum(missing_and_doubled(epoch_points(client, r.info.run_id), int(r.data.params["trainer.epochs"]))[0]
                   for r in finished)
        checks = {
            "exit code of the stopped sweep": proc.returncode == EXIT[name],
            "no traceback": no_traceback(out, err, resumed.stdout, resumed.stderr),
            "resume exits 0": resumed.returncode == 0,
            "no point twice": sum(missing_and_doubled(epoch_points(client, r.info.run_id), 0)[1] for r in trials) == 0,
            "no run left RUNNING": not [r.info.run_name for r in runs if r.info.status == "RUNNING"],
            "each seed finished once": sorted(r.data.params["seed"] for r in finished) == ["0", "1", "2", "3"],
        }
        record(f"{name} of a 4-trial sweep on 2 workers, then --resume", all(checks.values()), lost)
        failed = [k for k, v in checks.items() if not v]
        assert not failed and lost == 0, (name, failed, lost, proc.returncode, err[-1500:], resumed.stderr[-1500:],
                                          [(r.data.tags.get("trial"), r.data.params.get("seed"), r.info.status)
                                           for r in trials])


# ---------------------------------------------------------------------------------------------- the store
def test_a_store_locked_for_a_random_while(tmp_path: Path):
    """Shorter than the patience: waited out, FINISHED. Longer: exit 1, a spool that dlx sync replays."""
    for round_, outlasts in enumerate([False, True] * ROUNDS):
        work = tmp_path / f"r{round_}"
        work.mkdir()
        patience = 5 if outlasts else 120
        proc = start_train(work, "trainer.epochs=400", DLX_STORE_PATIENCE=str(patience))
        read_until(proc, f"epoch {RNG.randint(1, 20)}/400")
        # MLflow itself waits 20 s on a locked SQLite file: a lock meant to be waited out lasts longer
        lock = Lock(work / "outputs" / "mlflow.db", seconds=600 if outlasts else RNG.uniform(21, 30))
        lock.start()
        assert lock.taken.wait(60)
        out, err = finish(proc, timeout=400)
        lock.release.set()
        lock.join()
        (run,) = all_runs(work)
        client = client_for(work)
        ok, lost = no_traceback(out, err), 0
        if outlasts:
            spools = list((work / "outputs").rglob(f"*{spool.SUFFIX}"))
            ok = ok and proc.returncode == 1 and len(spools) == 1
            if spools:
                points = journaled(spools[0])
                ok = ok and run_dlx(["sync", str(spools[0])], work).returncode == 0
                lost += held_exactly_once(client, run.info.run_id, points)
        else:
            ok = ok and proc.returncode == 0
        run = client.get_run(run.info.run_id)
        missing, doubled = missing_and_doubled(epoch_points(client, run.info.run_id), 400)
        ok = ok and run.info.status == "FINISHED" and doubled == 0
        record(f"store locked {'past' if outlasts else 'within'} the patience", ok, lost + missing)
        assert ok and lost + missing == 0, (outlasts, proc.returncode, err[-2000:])


def _mount_tmpfs(size: str) -> Path | None:
    where = Path(tempfile.mkdtemp(prefix="dlx-full-"))
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return where if made.returncode == 0 else None


def test_a_full_filesystem_under_the_store(tmp_path: Path):
    for round_ in range(ROUNDS):
        where = _mount_tmpfs("4m")  # a filesystem of its own per round: a store needs room again for dlx sync
        if where is None:
            pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
        try:
            uri = f"sqlite:///{where / 'mlflow.db'}"
            work = tmp_path / f"r{round_}"
            work.mkdir()
            proc = start_train(work, "trainer.epochs=400", f"tracking.uri={uri}", DLX_STORE_PATIENCE="3")
            read_until(proc, f"epoch {RNG.randint(1, 20)}/400")
            filler = where / "filler"
            with open(filler, "wb") as f:  # fill every byte that is left
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
            out, err = finish(proc, timeout=400)
            filler.unlink()
            spools = list(work.rglob(f"*{spool.SUFFIX}"))
            ok = no_traceback(out, err) and proc.returncode in (0, 1) and (proc.returncode == 0 or len(spools) == 1)
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            lost = 0
            if spools:
                points = journaled(spools[0])
                ok = ok and run_dlx(["sync", "--uri", uri, str(spools[0])], work).returncode == 0
            (run,) = client.search_runs([client.get_experiment_by_name("dlx").experiment_id])
            if spools:
                lost += held_exactly_once(client, run.info.run_id, points)
            missing, doubled = missing_and_doubled(epoch_points(client, run.info.run_id), 400)
            ok = ok and client.get_run(run.info.run_id).info.status == "FINISHED" and doubled == 0
            record("filesystem of the store full mid-run", ok, lost + missing)
            assert ok and lost + missing == 0, (proc.returncode, err[-2000:])
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_server_down_at_start_and_mid_run(tmp_path: Path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    down = run_dlx(["train", *QUICK, f"tracking.uri={uri}"], tmp_path, timeout=120)
    ok = (down.returncode == 2 and time.monotonic() - began < 30 and "tracking.uri" in down.stderr
          and no_traceback(down.stderr) and not (tmp_path / "outputs" / "mlflow.db").exists())
    record("server down at start", ok)
    assert ok, down.stderr

    for round_ in range(ROUNDS):
        work = tmp_path / f"r{round_}"
        work.mkdir()
        server = serve(work, port)
        proc = start_train(work, "trainer.epochs=400", f"tracking.uri={uri}", DLX_STORE_PATIENCE="5")
        try:
            read_until(proc, f"epoch {RNG.randint(1, 20)}/400")
        finally:
            server.terminate()
            server.wait(30)
        out, err = finish(proc, timeout=300)
        spools = list(work.rglob(f"*{spool.SUFFIX}"))
        ok = no_traceback(out, err) and proc.returncode == 1 and len(spools) == 1
        points = journaled(spools[0]) if spools else Counter()
        server = serve(work, port)
        try:
            ok = ok and run_dlx(["sync", "--uri", uri], work).returncode == 0
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            (run,) = client.search_runs([client.get_experiment_by_name("dlx").experiment_id])
            lost = held_exactly_once(client, run.info.run_id, points)
            missing, doubled = missing_and_doubled(epoch_points(client, run.info.run_id), 400)
            ok = ok and client.get_run(run.info.run_id).info.status == "FINISHED" and doubled == 0
        finally:
            server.terminate()
            server.wait(30)
        record("server down mid-run", ok, lost + missing)
        assert ok and lost + missing == 0, err[-2000:]


def test_the_store_holds_no_half_made_schema(tmp_path: Path):
    """After every fault above the store's schema is whole: a check of the store left by N processes."""
    procs = [start_train(tmp_path, "trainer.epochs=1", f"tracking.run_name=p{i}") for i in range(4)]
    for p in procs:
        finish(p, timeout=600)
    db = sqlite3.connect(tmp_path / "outputs" / "mlflow.db")
    leftovers = db.execute("SELECT name FROM sqlite_master WHERE name LIKE '\\_alembic\\_tmp%' ESCAPE '\\'").fetchall()
    record("schema left half-made", not leftovers)
    assert not leftovers

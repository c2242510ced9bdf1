"""The metric writer against a real SQLite MLflow store: every point logged arrives once, in order and with its
step; a flush with wait makes them readable at once; no process is forked; a training process killed with
SIGKILL leaves its points in its spool, and the next process that opens the store replays them, each once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from dlx import spool
from dlx.metric_writer import write_points
from dlx.tracking import Tracker


def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri()


def history(client, run_id, key):
    return sorted((int(m.step), m.value) for m in client.get_metric_history(run_id, key))


def children() -> set[int]:
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
        return {int(p) for p in f.read().split()}


def test_every_point_arrives_once_with_its_step_and_nothing_is_forked(tmp_path):
    uri, artifacts = store(tmp_path)
    before = children() if os.path.isdir("/proc") else set()
    tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts, spool_dir=tmp_path / "run")
    run_id = tracker.start(run_name="r", tags={})
    for step in range(1, 1201):  # more than one log_batch holds (1000 points)
        tracker.log_metrics({"a": step * 0.5, "b": -step}, step=step)
        if step % 100 == 0:
            tracker.flush()
    tracker.flush(wait=True)
    client = tracker.client
    assert len(history(client, run_id, "a")) == 1200  # readable as soon as flush(wait=True) returns
    if os.path.isdir("/proc"):
        assert children() == before  # no writer process
    tracker.log_metrics({"a": 9.0}, step=2000)
    spool_path = tracker.spool_path
    assert spool_path.is_file() and spool_path.parent == (tmp_path / "run").resolve()
    tracker.end("FINISHED")
    assert history(client, run_id, "a") == [(s, s * 0.5) for s in range(1, 1201)] + [(2000, 9.0)]
    assert history(client, run_id, "b")[-1] == (1200, -1200.0)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not spool_path.exists() and spool.pending(uri) == []  # a clean close leaves no spool


def test_points_flushed_before_a_sigkill_are_replayed_by_the_next_open(tmp_path):
    uri, artifacts = store(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        from dlx.tracking import Tracker
        t = Tracker(uri={uri!r}, experiment="t", artifact_location={artifacts!r}, spool_dir={str(tmp_path)!r})
        run_id = t.start(run_name="killed", tags={{}})
        print(run_id, t.spool_path, flush=True)
        for step in range(1, 301):
            t.log_metrics({{"loss": 1.0 / step}}, step=step)
            if step % 50 == 0:
                t.flush()  # handed over, not waited for
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_id, path = proc.stdout.split()
    assert spool.pending(uri) == [spool.Path(path)]
    tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts, spool_dir=tmp_path)  # replays
    assert history(tracker.client, run_id, "loss") == [(s, 1.0 / s) for s in range(1, 301)]
    assert not os.path.exists(path) and spool.pending(uri) == []
    assert tracker.client.get_run(run_id).info.status == "RUNNING"  # killed: left for resume, not closed


def test_replay_never_writes_a_point_twice(tmp_path):
    """A batch can reach the store just before its acknowledgement line is cut off by a kill."""
    uri, artifacts = store(tmp_path)
    tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts, spool_dir=tmp_path)
    run_id = tracker.start(run_name="r", tags={})
    points = [("x", float(s), 1000 + s, s) for s in range(5)]
    write_points(tracker.client, run_id, points[:3])  # in the store, not acknowledged in the spool
    path = tmp_path / "lost-ack.spool"
    path.write_text("\n".join(json.dumps(r) for r in [{"h": {"uri": uri, "run_id": run_id}},
                                                       {"m": [list(p) for p in points], "n": 1},
                                                       {"t": {"k": "v"}}, {"s": "FINISHED"}]) + "\n")
    content = spool.replay(path, tracker.client)
    assert content["written"] == 2
    history_x = tracker.client.get_metric_history(run_id, "x")
    assert sorted((m.step, m.value, m.timestamp) for m in history_x) == [(s, float(s), 1000 + s) for s in range(5)]
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["k"] == "v"
    assert not path.exists()
    tracker.end("FINISHED")


def test_a_migration_cut_short_is_repaired_under_the_lock(tmp_path):
    """alembic's batch mode copies a table into _alembic_tmp_<name>, drops the table and renames the copy; a
    process stopped between the two left the store without `tags` (MLflow then made an empty one and the
    runs' tags were gone) or with a stray copy beside it."""
    import sqlite3

    from dlx.tracking import open_store

    uri, artifacts = store(tmp_path)
    client, exp = open_store(uri, "t", artifacts)
    run_id = client.create_run(exp, tags={"kept": "yes"}).info.run_id
    db = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    db.execute("ALTER TABLE tags RENAME TO _alembic_tmp_tags")  # dropped, the copy not yet renamed back
    db.execute("CREATE TABLE _alembic_tmp_params AS SELECT * FROM params")  # a stray partial copy
    db.close()
    script = f"from dlx.tracking import open_store; c, _ = open_store({uri!r}, 't'); print(c.get_run({run_id!r}).data.tags['kept'])"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "yes", proc.stderr[-2000:]
    names = {r[0] for r in sqlite3.connect(tmp_path / "mlflow.db").execute("SELECT name FROM sqlite_master")}
    assert not {n for n in names if n.startswith("_alembic_tmp_")}

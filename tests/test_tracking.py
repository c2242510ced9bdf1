"""The metric writer against a real SQLite MLflow store: every point logged arrives, in order and with its
step, whether the writer is a forked process (the default on Linux) or a thread; a flush with wait makes
them readable at once; a training process killed with SIGKILL still gets every flushed point written; and
when the writer process dies, the points go to the store from the training process instead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dlx.metric_writer import _ProcessWriter
from dlx.tracking import Tracker


def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri()


def history(client, run_id, key):
    return sorted((int(m.step), m.value) for m in client.get_metric_history(run_id, key))


def reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0) and not os.path.exists(f"/proc/{pid}")
    except ChildProcessError:
        return True


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_every_point_arrives_with_its_step(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("DLX_METRIC_WRITER", kind)
    uri, artifacts = store(tmp_path)
    tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts)
    run_id = tracker.start(run_name="r", tags={})
    assert isinstance(tracker._writer, _ProcessWriter) == (kind == "process" and sys.platform == "linux")
    for step in range(1, 1201):  # more than one log_batch holds (1000 points)
        tracker.log_metrics({"a": step * 0.5, "b": -step}, step=step)
        if step % 100 == 0:
            tracker.flush()
    tracker.flush(wait=True)
    client = tracker.client
    assert len(history(client, run_id, "a")) == 1200  # readable as soon as flush(wait=True) returns
    tracker.log_metrics({"a": 9.0}, step=2000)
    writer = tracker._writer
    tracker.end("FINISHED")
    assert history(client, run_id, "a") == [(s, s * 0.5) for s in range(1, 1201)] + [(2000, 9.0)]
    assert history(client, run_id, "b")[-1] == (1200, -1200.0)
    assert client.get_run(run_id).info.status == "FINISHED"
    if kind == "process" and sys.platform == "linux":
        assert reaped(writer.pid)


@pytest.mark.skipif(sys.platform != "linux", reason="the writer is a process on Linux only")
def test_points_flushed_before_a_sigkill_are_written(tmp_path):
    uri, artifacts = store(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        from dlx.tracking import Tracker
        t = Tracker(uri={uri!r}, experiment="t", artifact_location={artifacts!r})
        run_id = t.start(run_name="killed", tags={{}})
        print(run_id, t._writer.pid, flush=True)
        for step in range(1, 301):
            t.log_metrics({{"loss": 1.0 / step}}, step=step)
        t.flush()  # handed over, not waited for
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DLX_METRIC_WRITER": "process"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_id, writer_pid = proc.stdout.split()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + 60
    while len(history(client, run_id, "loss")) < 300 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert history(client, run_id, "loss") == [(s, 1.0 / s) for s in range(1, 301)]
    while os.path.exists(f"/proc/{writer_pid}") and time.monotonic() < deadline:
        time.sleep(0.1)  # the orphaned writer stops once it has written everything
    assert not os.path.exists(f"/proc/{writer_pid}")


@pytest.mark.skipif(sys.platform != "linux", reason="the writer is a process on Linux only")
def test_writer_survives_group_signals_and_its_death_loses_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DLX_METRIC_WRITER", "process")
    uri, artifacts = store(tmp_path)
    tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts)
    run_id = tracker.start(run_name="r", tags={})
    pid = tracker._writer.pid
    for sig in (signal.SIGINT, signal.SIGTERM):  # what Ctrl-C or a sweep's stop sends the whole group
        os.kill(pid, sig)
    tracker.log_metrics({"x": 1.0}, step=1)
    tracker.flush(wait=True)
    assert history(tracker.client, run_id, "x") == [(1, 1.0)]
    os.kill(pid, signal.SIGKILL)  # the writer dies: the next points take the slow path, none is lost
    time.sleep(0.2)
    for step in (2, 3):
        tracker.log_metrics({"x": float(step)}, step=step)
        tracker.flush()
    tracker.end("FINISHED")
    assert history(tracker.client, run_id, "x") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert "writer process ended" in caplog.text
    assert reaped(pid)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_writer_process_holds_none_of_the_parents_other_files(tmp_path, monkeypatch):
    """A sweep worker's pipe to the sweep must close when the worker dies: its writer child keeps only its
    own pipe, stdio and the log files."""
    monkeypatch.setenv("DLX_METRIC_WRITER", "process")
    read, write = os.pipe()
    try:
        uri, artifacts = store(tmp_path)
        tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts)
        tracker.start(run_name="r", tags={})
        tracker.flush(wait=True)  # the child is past its start-up
        child_fds = {os.readlink(f"/proc/{tracker._writer.pid}/fd/{fd}")
                     for fd in os.listdir(f"/proc/{tracker._writer.pid}/fd")}
        mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in (read, write)}
        assert not mine & child_fds, child_fds
        tracker.end("FINISHED")
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_writer_process_never_reuses_a_descriptor_number_of_the_parent(tmp_path, monkeypatch):
    """Objects inherited from the training process (a cached font, a file in uncollected garbage) still own
    their descriptor numbers in the child; were a number closed and handed to the child's SQLite file, their
    finalizer would close the store under the writer ("disk I/O error", metrics lost)."""
    monkeypatch.setenv("DLX_METRIC_WRITER", "process")
    held = [open(tmp_path / f"held{i}", "w") for i in range(4)]  # noqa: SIM115 - open while the child forks
    try:
        uri, artifacts = store(tmp_path)
        tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts)
        run_id = tracker.start(run_name="r", tags={})
        tracker.log_metrics({"x": 1.0}, step=1)
        tracker.flush(wait=True)  # the child has opened the store
        pid = tracker._writer.pid
        child = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        store_fds = {fd for fd, target in child.items() if target.endswith("mlflow.db")}
        assert store_fds and not store_fds & {f.fileno() for f in held}, store_fds
        assert all(child[f.fileno()] == os.devnull for f in held)  # occupied, and by nothing of the parent's
        tracker.end("FINISHED")
        assert history(tracker.client, run_id, "x") == [(1, 1.0)]
    finally:
        for f in held:
            f.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the writer is a process on Linux only")
def test_points_the_writer_process_could_not_write_are_written_by_the_trainer(tmp_path, monkeypatch, caplog):
    import dlx.metric_writer as mw

    monkeypatch.setenv("DLX_METRIC_WRITER", "process")
    trainer_pid, write = os.getpid(), mw._write

    def failing_in_the_child(client, run_id, metrics):
        return write(client, run_id, metrics) if os.getpid() == trainer_pid else RuntimeError("store unreachable")

    monkeypatch.setattr(mw, "_write", failing_in_the_child)
    uri, artifacts = store(tmp_path)
    tracker = Tracker(uri=uri, experiment="t", artifact_location=artifacts)
    run_id = tracker.start(run_name="r", tags={})
    for step in (1, 2, 3):
        tracker.log_metrics({"x": float(step)}, step=step)
        tracker.flush()
    tracker.flush(wait=True)
    assert history(tracker.client, run_id, "x") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    tracker.log_metrics({"x": 4.0}, step=4)
    tracker.end("FINISHED")
    assert history(tracker.client, run_id, "x") == [(s, float(s)) for s in (1, 2, 3, 4)]
    assert "could not write" in caplog.text and "writing them from the training process" in caplog.text
    assert "dlx.metric_write_error" not in tracker.client.get_run(run_id).data.tags

"""A team's tracking server: `dlx server` starts a real `mlflow server` (database backend, proxied artifacts) on
127.0.0.1, and `dlx train` and a parallel `dlx sweep` log to it over HTTP with nothing lost; a server stopped
and restarted mid-run costs no point. PostgreSQL as the backend: tests/test_server_postgres.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import QUICK, dlx_env, read_until, run_cli_batch, run_dlx
from mlflow_servers import EPOCH_KEYS, Server, assert_complete, free_port, points

from dlx import spool

EPOCHS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `dlx server` with its default SQLite store under outputs/server, shared by this module's tests."""
    home = tmp_path_factory.mktemp("server")
    srv = Server(home, free_port())
    yield srv
    srv.stop()


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    (tmp_path / "a_file").write_text("")
    cases = [["server", "--port", "0"], ["server", "--port", "http"], ["server", "--workers", "0"],
             ["server", "--host", "0.0.0.0"], ["server", "--host", "myhost"],
             ["server", "--backend-store-uri", "http://127.0.0.1:5000"],
             ["server", "--backend-store-uri", "sqlite://relative.db"],
             ["server", "--backend-store-uri", "postgresql+nosuchdriver://u@127.0.0.1/db"],
             ["server", "--backend-store-uri", f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db"],
             ["server", "--backend-store-uri", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"],
             ["server", "--artifacts-destination", str(tmp_path / "a_file")],
             ["server", "--port", str(taken.getsockname()[1])]]
    try:
        results = run_cli_batch(cases, tmp_path)
    finally:
        taken.close()
    keys = ["--port", "argument --port", "--workers", "--host", "--host", "--backend-store-uri", "--backend-store-uri",
            "--backend-store-uri", "--backend-store-uri", "--backend-store-uri", "--artifacts-destination", "--port"]
    for args, key in zip(cases, keys):
        code, err, left = results[json.dumps(args)]
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"dlx: error: {key}"), (args, err)
        assert "hunter2" not in err and not left, (args, err, left)  # the password masked, nothing created
    assert "does not answer" in results[json.dumps(cases[8])][1]
    assert "in use" in results[json.dumps(cases[-1])][1]


def test_a_non_loopback_host_needs_expose_and_warns(tmp_path):
    from dlx.config import ConfigError
    from dlx.runs import exposure_warning
    from dlx.server import client_address, server_command

    with pytest.raises(ConfigError, match="--expose"):
        server_command(backend_store_uri=None, artifacts_destination=None, host="0.0.0.0", port=free_port())
    cmd = server_command(backend_store_uri=f"sqlite:///{tmp_path / 's.db'}", artifacts_destination=str(tmp_path),
                         host="0.0.0.0", port=free_port(), expose=True, allowed_hosts="mlflow.lab")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == tmp_path.as_uri()
    assert cmd[cmd.index("--allowed-hosts") + 1] == "mlflow.lab"
    assert "WITHOUT a login" in exposure_warning("0.0.0.0", 5000, auth=False, prog="dlx server")
    assert client_address("0.0.0.0", 5000) == f"http://{socket.gethostname()}:5000"
    assert client_address("::1", 5000) == "http://[::1]:5000"


def test_tracking_server_defaults_to_where_dlx_server_serves(monkeypatch):
    from dlx.compose import compose
    from dlx.server import DEFAULT_PORT, client_address

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compose(["tracking=server"]).tracking.uri == client_address("127.0.0.1", DEFAULT_PORT)


def test_train_and_a_parallel_sweep_log_everything_to_the_server(server, tmp_path):
    uri = server.uri
    assert uri == f"http://127.0.0.1:{server.port}"
    train = run_dlx(["train", *QUICK, f"trainer.epochs={EPOCHS}", "tracking=server", f"tracking.uri={uri}"], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    c = client(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("dlx").experiment_id])
    assert_complete(c, run, EPOCHS)
    per_epoch = {k for k in run.data.metrics
                 if [m.step for m in c.get_metric_history(run.info.run_id, k)] == list(range(1, EPOCHS + 1))}
    assert per_epoch == set(EPOCH_KEYS)  # what assert_complete holds complete is what the run logs per epoch
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: the client needs only the address
    stored = server.cwd / "outputs" / "server" / "mlartifacts"
    assert list(stored.rglob("learning_curves.png")) and not (tmp_path / "outputs" / "mlartifacts").exists()

    sweep = run_dlx(["sweep", *QUICK, f"trainer.epochs={EPOCHS}", "seed=0,1,2,3", "hydra/launcher=dlx_local",
                     "hydra.launcher.n_jobs=4", "tracking=server", f"tracking.uri={uri}",
                     "tracking.experiment=team-sweep"], tmp_path, timeout=400)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    runs = c.search_runs([c.get_experiment_by_name("team-sweep").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(runs) == 5
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1", "2", "3"]
    for child in children:
        assert_complete(c, child, EPOCHS)
    assert not list(tmp_path.rglob(f"*{spool.SUFFIX}"))


@pytest.mark.slow  # ~70 s: three server starts and a 200-epoch run; the test below holds the same in-process
def test_a_server_restarted_mid_run_loses_no_point(tmp_path):
    """The server stops after a few epochs and comes back on the same port and store: the run trains on, keeps
    what the server cannot take, and sends it once it answers again (its writer retries while training; the
    end waits for the store up to the patience)."""
    home, port = tmp_path / "server", free_port()
    home.mkdir()
    srv = Server(home, port)
    epochs = 200
    proc = subprocess.Popen([sys.executable, "-m", "dlx", "train", *QUICK, f"trainer.epochs={epochs}",
                             "tracking=server", f"tracking.uri={srv.uri}"], cwd=tmp_path,
                            env=dlx_env(DLX_STORE_PATIENCE="120"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        read_until(proc, f"epoch 3/{epochs}", lines, timeout=300)
        srv.stop()
        read_until(proc, "could not write", lines, timeout=300)  # the run saw the server go, and trains on
        srv = Server(home, port)
        out, _ = proc.communicate(timeout=600)
        text = "".join(lines) + out
        assert proc.returncode == 0 and "Traceback" not in text, text[-3000:]
        c = client(srv.uri)
        (run,) = c.search_runs([c.get_experiment_by_name("dlx").experiment_id])
        assert_complete(c, run, epochs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        srv.stop()
    assert not list(tmp_path.rglob(f"*{spool.SUFFIX}"))




def test_a_run_that_gave_up_on_the_server_sends_everything_when_it_is_back(server, tmp_path, monkeypatch):
    """The run has given up on the server (a call waited out its patience), then the server comes back while
    the run goes on: the points, tags and artifacts of the gap reach it, in order, and the run ends FINISHED
    with no spool left."""
    from dlx.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLX_STORE_PATIENCE", "1")
    srv = server
    try:
        tracker = Tracker(uri=srv.uri, experiment="gap", spool_dir=tmp_path / "run")
        run_id = tracker.start(run_name="gap", tags={})
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.flush(wait=True)
        srv.stop()
        tracker.set_tags({"during": "gap"})  # waits out the patience, then gives up on the store
        assert tracker.down is not None
        from dlx.sweep.tracking import ParentRun

        parent = ParentRun(tracker)  # a sweep asks for its trials' runs: it goes on without them, no traceback
        assert parent.child(0) is None and parent.children() == {}
        note = tmp_path / "note.txt"
        note.write_text("written while the server was down")
        tracker.log_artifact(note, "notes")
        tracker.log_params({"p": 1})
        for step in range(2, 6):
            tracker.log_metrics({"loss": float(step)}, step=step)
            tracker.flush()
        assert spool.read(tracker.spool_path)["tags"] == {"during": "gap"}
        srv.start()  # the same port and store
        deadline = time.monotonic() + 60
        while tracker._writer.paused and time.monotonic() < deadline:  # the writer's thread tries every few s
            time.sleep(0.5)
        tracker.flush()  # the run notices the store is back and sends what it deferred
        assert tracker.down is None
        assert spool.read(tracker.spool_path)["tags"] == {}  # in the store: a later replay would not repeat it
        tracker.log_metrics({"loss": 6.0}, step=6)
        tracker.end("FINISHED")
        c = client(srv.uri)
        run = c.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["during"] == "gap" and run.data.params["p"] == "1"
        assert points(c, run_id, ["loss"]) == {("loss", s): 1 for s in range(1, 7)}
        assert [f.path for f in c.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
        assert not list(tmp_path.rglob(f"*{spool.SUFFIX}"))
    finally:
        if srv.proc.poll() is not None:  # the module's server serves the tests after this one
            srv.start()


@pytest.mark.slow  # ~40 s: the server stops and starts again
def test_the_end_of_a_run_that_gave_up_waits_for_the_server_once_more(server, tmp_path, monkeypatch):
    """A run that gave up on the server mid-run and ends while it restarts: the end waits up to the patience
    again, and everything reaches the server (no spool, FINISHED)."""
    import threading

    from dlx.tracking import Tracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLX_STORE_PATIENCE", "1")
    try:
        tracker = Tracker(uri=server.uri, experiment="end", spool_dir=tmp_path / "run")
        run_id = tracker.start(run_name="end", tags={})
        server.stop()
        tracker.log_params({"p": 1})  # waits out the patience, then gives up on the store
        tracker.log_metrics({"loss": 1.0}, step=1)
        assert tracker.down is not None
        tracker.patience = 180.0  # what DLX_STORE_PATIENCE=180 gives: long enough for the restart
        restart = threading.Thread(target=server.start)
        restart.start()
        tracker.end("FINISHED")
        restart.join()
        c = client(server.uri)
        run = c.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["p"] == "1"
        assert points(c, run_id, ["loss"]) == {("loss", 1): 1}
        assert not list(tmp_path.rglob(f"*{spool.SUFFIX}"))
    finally:
        if server.proc.poll() is not None:
            server.start()

"""`dlx runs` and `dlx ui` on the store of a real quick training: the table shows the run as MLflow
recorded it, and the UI serves that store on 127.0.0.1 through MLflow's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import QUICK, all_runs, client_for, dlx_env, run_dlx, store_uri

WIDE = dlx_env(COLUMNS="400")  # room for every column: the cells are compared whole


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    """A workdir holding one FINISHED quick run in its default store; returns (workdir, run)."""
    workdir = tmp_path_factory.mktemp("runs-ui") / "work"
    workdir.mkdir()
    run_dlx(["train", *QUICK], workdir, check=True)
    runs = all_runs(workdir)
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return workdir, runs[0]


def table_rows(stdout: str) -> list[dict[str, str]]:
    """The rows of a rich table as {header: cell}."""
    header = next((line for line in stdout.splitlines() if line.startswith("┃")), None)
    assert header is not None, f"no table header in\n{stdout}"
    columns = [c.strip() for c in header.strip("┃").split("┃")]
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            assert len(cells) == len(columns), line
            rows.append(dict(zip(columns, cells)))
    return rows


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]


# ---------------------------------------------------------------- dlx runs

def test_runs_lists_the_finished_run(trained):
    workdir, run = trained
    proc = run_dlx(["runs"], workdir, timeout=120, env=WIDE)
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert store_uri(workdir) in proc.stdout, "the table should name the store it reads"
    rows = table_rows(proc.stdout)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["run id"] == run.info.run_id
    assert run.info.run_name and row["name"] == run.info.run_name
    assert row["experiment"] == "dlx"
    assert row["status"] == "FINISHED" == run.info.status
    assert row["model"] == "mlp" == run.data.params["model.name"]
    assert row["dataset"] == "digits"
    assert row["trainer.epochs"] == "2"
    assert row["test/acc"] == f"{run.data.metrics['test/acc']:.4f}"
    assert row["val/acc"] == f"{run.data.metrics['val/acc']:.4f}"


def test_runs_of_one_experiment_newest_first_and_limit(trained, tmp_path):
    workdir, first = trained
    copy = tmp_path / "work"
    shutil.copytree(workdir / "outputs", copy / "outputs", ignore=shutil.ignore_patterns("runs"))
    client = client_for(copy)  # a second, later run written straight to the store
    second = client.create_run(first.info.experiment_id, run_name="second",
                               start_time=first.info.start_time + 1000)
    client.log_param(second.info.run_id, "optimizer.name", "sgd")
    client.set_terminated(second.info.run_id)
    proc = run_dlx(["runs", "--experiment", "dlx"], copy, timeout=120, env=WIDE)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert [r["name"] for r in rows] == ["second", first.info.run_name]
    assert rows[1]["run id"] == first.info.run_id
    assert rows[0]["optimizer"] == "sgd"
    limited = run_dlx(["runs", "--limit", "1"], copy, timeout=120, env=WIDE)
    assert limited.returncode == 0, limited.stderr
    assert [r["name"] for r in table_rows(limited.stdout)] == ["second"]


def test_runs_of_another_experiment_are_not_listed(trained, tmp_path):
    workdir, run = trained
    copy = tmp_path / "work"
    shutil.copytree(workdir / "outputs", copy / "outputs", ignore=shutil.ignore_patterns("runs"))
    other = run_dlx(["runs", "--experiment", "nope"], copy, timeout=120, env=WIDE)
    no_traceback(other)
    assert run.info.run_id not in other.stdout, "a run of another experiment was listed"


def test_runs_unknown_experiment_is_an_error_and_writes_nothing(trained, tmp_path):
    workdir, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(workdir / "outputs", copy / "outputs", ignore=shutil.ignore_patterns("runs"))
    proc = run_dlx(["runs", "--experiment", "nope"], copy, timeout=120, env=WIDE)
    no_traceback(proc)
    names = {e.name for e in client_for(copy).search_experiments()}
    assert "nope" not in names, "listing runs created an experiment"
    assert proc.returncode == 1
    assert "nope" in proc.stderr and "dlx" in proc.stderr, "the message should name the valid experiments"


def test_runs_piped_output_keeps_names_whole(trained):
    workdir, run = trained
    proc = run_dlx(["runs"], workdir, timeout=120)  # no COLUMNS: what `dlx runs | grep` sees
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert run.info.run_name in proc.stdout


def test_runs_without_a_store_exits_cleanly(workdir):
    proc = run_dlx(["runs"], workdir, timeout=120, env=WIDE)
    no_traceback(proc)
    assert proc.returncode in (0, 1), proc.stderr
    assert store_uri(workdir) in proc.stdout + proc.stderr, "the output should name the store it looked in"
    if (workdir / "outputs" / "mlflow.db").exists():  # the store is created empty, as a training would
        assert all_runs(workdir) == []
        if "┃" in proc.stdout:
            assert table_rows(proc.stdout) == []


# ---------------------------------------------------------------- dlx ui

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict | None = None, timeout: float = 10):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200
        return json.loads(response.read().decode())


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dlx ui exited with {proc.returncode}\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"dlx ui did not answer {url} within {timeout:.0f} s\n{log.read_text()[-4000:]}")


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on port."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def stop_group(proc: subprocess.Popen) -> None:
    """Terminate the server's whole process group (mlflow ui, its workers), then make sure."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=20)


def test_ui_command_line(tmp_path):
    from dlx.runs import ui_command

    uri = store_uri(tmp_path)
    cmd = ui_command(uri=uri, host="127.0.0.1", port=5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_ui_serves_the_store_on_loopback(trained, tmp_path):
    workdir, run = trained
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    with log.open("w") as sink:
        # one server worker, not MLflow's default four: the UI is up in seconds on a small machine
        proc = subprocess.Popen([sys.executable, "-m", "dlx", "ui", "--port", str(port)], cwd=workdir,
                                env=dlx_env(), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_until_healthy(f"{base}/health", proc, log, timeout=120)
        first_line = log.read_text().splitlines()[0]
        assert first_line.startswith(f"MLflow UI at {base}"), first_line

        # dlx execs into `mlflow ui`: the process's own command line is what dlx built
        cmdline_file = Path(f"/proc/{proc.pid}/cmdline")
        if cmdline_file.exists():
            argv = cmdline_file.read_bytes().decode().split("\0")
            assert "mlflow" in argv and "ui" in argv, argv
            assert argv[argv.index("--host") + 1] == "127.0.0.1", argv
            assert argv[argv.index("--backend-store-uri") + 1] == store_uri(workdir), argv
        addresses = listening_addresses(port)
        if Path("/proc/net/tcp").exists():
            assert addresses, f"nothing listens on port {port}"
            assert set(addresses) == {"0100007F"}, f"bound beyond 127.0.0.1: {addresses}"

        experiments = http_json(f"{base}/api/2.0/mlflow/experiments/search?max_results=100")["experiments"]
        by_name = {e["name"]: e for e in experiments}
        assert "dlx" in by_name, sorted(by_name)
        dlx_exp = by_name["dlx"]
        assert dlx_exp["experiment_id"] == run.info.experiment_id
        assert dlx_exp["artifact_location"].startswith((workdir / "outputs" / "mlartifacts").as_uri())

        found = http_json(f"{base}/api/2.0/mlflow/runs/search",
                          {"experiment_ids": [dlx_exp["experiment_id"]], "max_results": 10})
        ids = [r["info"]["run_id"] for r in found.get("runs", [])]
        assert ids == [run.info.run_id]
        info = found["runs"][0]["info"]
        assert info["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in found["runs"][0]["data"]["metrics"]}
        assert metrics["test/acc"] == pytest.approx(run.data.metrics["test/acc"])
    finally:
        stop_group(proc)
    assert proc.returncode is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # nothing of the server's group is left
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("processes of dlx ui outlived the test")

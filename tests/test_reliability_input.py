"""Hostile input to the store, its names and the UI: refused in seconds with one line, or made harmless.

A store that cannot be used (a dead server, an address MLflow does not open, a directory that cannot be
made, an experiment name MLflow refuses) exits 2 naming the key before any data loads or any run exists;
an experiment name never writes outside the artifact root; no secret reaches params, tags or the logged
config; `dlx ui` serves beyond this machine only when asked to, with a warning.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import QUICK, all_runs, client_for, dlx_env, run_dlx

from dlx.config import ConfigError
from dlx.redact import MASK, command_line, is_secret_key, redact, redact_text
from dlx.store_check import MAX_EXPERIMENT_NAME, probe, safe_dirname


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_refused(proc: subprocess.CompletedProcess, key: str, elapsed: float, workdir: Path) -> str:
    """Exit 2, one line naming `key`, no traceback, no store and no run; returns the line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 2 and lines[0].startswith("dlx: error:"), proc.stderr  # the error, and its one problem
    line = next((ln for ln in lines if key in ln), None)
    assert line is not None, f"no line names {key}: {proc.stderr}"
    assert elapsed < 20, f"took {elapsed:.0f} s"
    assert not (workdir / "outputs" / "mlflow.db").exists() and all_runs(workdir) == []
    assert "epoch" not in proc.stdout, "training started"
    return line


BAD_STORES = [
    ("tracking.uri=ftp://x", "tracking.uri", "sqlite:///PATH"),
    ("tracking.uri=foo.db", "tracking.uri", "sqlite:///foo.db"),
    ("tracking.uri=sqlite:////proc/nope/x.db", "tracking.uri", "/proc"),
    ("tracking.experiment=", "tracking.experiment", f"1 to {MAX_EXPERIMENT_NAME}"),
    ("tracking.experiment=" + "x" * 1000, "tracking.experiment", f"1 to {MAX_EXPERIMENT_NAME}"),
]


@pytest.mark.parametrize(("override", "key", "says"), BAD_STORES, ids=[c[0][:40] for c in BAD_STORES])
def test_unusable_store_is_refused_before_any_data(override, key, says, workdir):
    start = time.monotonic()
    proc = run_dlx(["train", *QUICK, override], workdir, timeout=120)
    line = assert_refused(proc, key, time.monotonic() - start, workdir)
    assert says in line, line
    assert not (workdir / "foo.db").exists() and not (workdir / "mlruns").exists()


def test_a_malformed_store_patience_is_refused_before_any_data(workdir):
    start = time.monotonic()
    proc = run_dlx(["train", *QUICK], workdir, timeout=120, env=dlx_env(DLX_STORE_PATIENCE="soon"))
    line = assert_refused(proc, "DLX_STORE_PATIENCE", time.monotonic() - start, workdir)
    assert "a number of seconds" in line, line
    assert not (workdir / "outputs").exists()  # refused before Hydra made the run's folder, let alone the data


def test_dead_server_is_refused_in_seconds(workdir):
    """Today: 251 s of MLflow's retries, then a 117-line traceback, after the data loaded."""
    start = time.monotonic()
    proc = run_dlx(["train", *QUICK, f"tracking.uri=http://127.0.0.1:{closed_port()}"], workdir, timeout=60)
    line = assert_refused(proc, "tracking.uri", time.monotonic() - start, workdir)
    assert "no MLflow server answers" in line, line


def test_dead_server_stops_a_sweep_before_its_trials(workdir):
    start = time.monotonic()
    proc = run_dlx(["sweep", *QUICK, "seed=0,1", f"tracking.uri=http://127.0.0.1:{closed_port()}"], workdir,
                   timeout=60)
    assert_refused(proc, "tracking.uri", time.monotonic() - start, workdir)
    assert not list(workdir.glob("outputs/**/optuna.db")), "the sweep started"


def test_silent_server_costs_the_probe_timeout_only():
    """A server that accepts the connection and never answers: MLflow would wait out its retries."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(ConfigError, match="tracking.uri=.*no answer within 0.5 s"):
            probe({"enabled": True, "uri": uri, "artifact_location": None}, timeout=0.5)
        assert time.monotonic() - start < 3


def test_any_http_answer_counts_as_reachable():
    """A server that wants a login (basic-auth) or lives under a path prefix still answers."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Unauthorized(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the name http.server calls
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        probe({"enabled": True, "uri": f"http://user:pw@127.0.0.1:{server.server_port}/prefix",
               "artifact_location": None})
    finally:
        server.shutdown()
        server.server_close()


def test_an_address_from_the_environment_is_named_as_such(monkeypatch):
    from dlx.store_check import problems

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://u:secret-pw@x")
    (problem,) = problems({"enabled": True, "uri": None, "artifact_location": None, "experiment": "dlx"})
    assert problem.startswith("tracking.uri (from $MLFLOW_TRACKING_URI)='ftp://u:***@x'"), problem
    assert problems({"enabled": False, "uri": "ftp://x", "artifact_location": None, "experiment": ""}) == []


def test_experiment_name_limit_is_mlflows():
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    assert MAX_EXPERIMENT_NAME == MAX_EXPERIMENT_NAME_LENGTH


# ------------------------------------------------------------------ experiment names and the artifact root
@pytest.mark.parametrize("name", ["../../escaped", "exp/with slash?#%&"])
def test_experiment_name_stays_inside_the_artifact_root(name, workdir):
    proc = run_dlx(["train", *QUICK, "trainer.epochs=1", f"tracking.experiment='{name}'"], workdir, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outside = [p for p in workdir.rglob("*") if workdir / "outputs" not in (p, *p.parents)]
    assert outside == [], f"written outside outputs/: {outside}"
    assert not (workdir.parent / "escaped").exists()
    client = client_for(workdir)
    exp = client.get_experiment_by_name(name)
    assert exp is not None, "the experiment keeps the name the user gave"
    (run,) = client.search_runs([exp.experiment_id])
    root = (workdir / "outputs" / "mlartifacts").resolve()
    assert exp.artifact_location.startswith(root.as_uri() + "/") and "?" not in exp.artifact_location
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert root in artifacts.resolve().parents
    assert (artifacts / "config.yaml").is_file()
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_safe_dirname_keeps_plain_names_and_separates_the_rest():
    assert safe_dirname("dlx") == "dlx" and safe_dirname("my-exp_2.1") == "my-exp_2.1"
    names = ["..", ".", "../x", "..%2Fx", "a/b", "a?b", "a b", "/abs", "~", "x" * 600, "é", "a..b", ".hidden"]
    dirs = [safe_dirname(n) for n in names]
    assert len(set(dirs)) == len(names), dirs
    for d in dirs:
        assert d not in (".", "..") and "/" not in d and "%" not in d and not d.startswith(".") and len(d) <= 80, d


# -------------------------------------------------------------------------------------------- secrets
def test_no_secret_reaches_params_tags_or_the_logged_config(workdir):
    token, password, tag, tail = "tok-env-5f3a9c", "pw-uri-77d1e2", "tok-cli-a81b44", "tail-9d2c61"
    env = dlx_env(MY_SECRET_TOKEN=token)
    proc = run_dlx(["train", *QUICK, "trainer.epochs=1", "+tracking.tags.note=${oc.env:MY_SECRET_TOKEN}",
                    f"+tracking.tags.db='postgresql://ann:{password}@db.example/x'",
                    f"+tracking.tags.api_token='{tag} {tail}'"], workdir, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = all_runs(workdir)
    params, tags = run.data.params, run.data.tags
    assert params["tracking.tags.note"] == MASK and tags["note"] == MASK
    assert tags["db"] == f"postgresql://ann:{MASK}@db.example/x" == params["tracking.tags.db"]
    assert tags["api_token"] == MASK and params["tracking.tags.api_token"] == MASK
    assert "+tracking.tags.api_token=***" in tags["dlx.command"] and "dlx.overrides" in tags
    client = client_for(workdir)
    config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(workdir.parent))).read_text()
    assert "ann:***@db.example" in config
    logged = [*params.values(), *tags.values(), config]
    for secret in (token, password, tag, tail):  # a value with a space is masked whole in dlx.command too
        leaks = [v for v in logged if secret in v]
        assert leaks == [], f"{secret} was logged: {leaks}"


def test_the_sweep_parent_run_logs_no_secret(tmp_path):
    from omegaconf import OmegaConf

    from dlx.sweep.tracking import ParentRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = OmegaConf.create({"enabled": True, "uri": uri, "artifact_location": (tmp_path / "art").as_uri(),
                                 "experiment": "dlx"})
    command = "dlx sweep seed=0,1 +tracking.tags.api_token=tok-7c1d90 tracking.uri=http://ann:pw-3e5f@h:5000"
    parent = ParentRun.open(tracking, run_id=None, name="sweep", tags={"dlx.command": command},
                            params={"sweep.db_password": "pw-in-param", "sweep.seed": 0}, spool_dir=tmp_path)
    parent.set_tags({"dlx.best.overrides": "seed=1 +tracking.tags.api_token=tok-7c1d90"})
    run = parent.client.get_run(parent.run_id)
    logged = [*run.data.tags.values(), *run.data.params.values()]
    assert not [v for v in logged if "tok-7c1d90" in v or "pw-3e5f" in v or "pw-in-param" in v], logged
    assert run.data.params["sweep.seed"] == "0" and "ann:***@h:5000" in run.data.tags["dlx.command"]


@pytest.mark.parametrize("key", ["password", "db.passwd", "tracking.tags.api_token", "x.API-KEY", "aws_secret_access_key",
                                 "client_secret", "credentials", "ssh.private_key", "GITHUB_TOKEN"])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_tokens", "eos_token_id", "tokenizer", "seed", "optimizer.lr", "keyword"])
def test_ordinary_keys(key):
    assert not is_secret_key(key)


def test_redact_masks_uri_passwords_assignments_and_environment_secrets(monkeypatch):
    monkeypatch.setenv("SERVICE_TOKEN", "env-value-123")
    monkeypatch.setenv("LOG_LEVEL_TOKEN", "1")  # too short to search for
    line = ("dlx train tracking.uri=https://u:p4ss@h:8443/m +tracking.tags.api_key=k9 seed=1 "
            "+tracking.tags.x=env-value-123")
    assert redact_text(line) == ("dlx train tracking.uri=https://u:***@h:8443/m +tracking.tags.api_key=*** seed=1 "
                                 "+tracking.tags.x=***")
    tree = {"a": {"token": 5, "uri": "mysql://root:r00t@h/db", "list": ["http://x:y@z", 1]}, "seed": 1}
    assert redact(tree) == {"a": {"token": MASK, "uri": "mysql://root:***@h/db", "list": ["http://x:***@z", 1]},
                            "seed": 1}
    assert redact_text("http://host:5000/path and user@host") == "http://host:5000/path and user@host"


def test_a_command_line_is_masked_word_by_word():
    args = ["dlx", "train", "+tracking.tags.api_token='two words'", "tracking.uri=http://u:pw@h", "seed=1"]
    assert command_line(args) == "dlx train +tracking.tags.api_token=*** tracking.uri=http://u:***@h seed=1"


# -------------------------------------------------------------------------------------------- dlx ui
def test_ui_beyond_loopback_needs_expose(workdir):
    proc = subprocess.Popen([sys.executable, "-m", "dlx", "ui", "--host", "0.0.0.0", "--port", str(closed_port())],
                            cwd=workdir, env=dlx_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it is serving the store to the network
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("dlx ui --host 0.0.0.0 started a server without --expose")
    assert proc.returncode == 2, err
    assert err.startswith("dlx: error: --host 0.0.0.0") and "--expose" in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "MLflow UI at" not in out


def test_ui_command_exposed_with_auth_and_allowed_hosts(tmp_path):
    from dlx.runs import exposure_warning, ui_command

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert ui_command(uri=uri, host=host, port=5000)[-2:] != ["--app-name", "basic-auth"]
        assert exposure_warning(host, 5000, auth=False) is None
    with pytest.raises(ConfigError, match="--host 192.168.1.5: .*--expose"):
        ui_command(uri=uri, host="192.168.1.5", port=5000)
    with pytest.raises(ConfigError, match="--host myhost"):
        ui_command(uri=uri, host="myhost", port=5000)  # a name may resolve to any interface
    cmd = ui_command(uri=uri, host="0.0.0.0", port=5000, expose=True, allowed_hosts="mlflow.lab,10.0.0.7:5000")
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--allowed-hosts") + 1] == "mlflow.lab,10.0.0.7:5000"
    assert "--app-name" not in cmd
    assert "WITHOUT a login" in exposure_warning("0.0.0.0", 5000, auth=False)
    assert "basic-auth" in exposure_warning("0.0.0.0", 5000, auth=True)
    if find_spec("flask_wtf") is None:  # MLflow's basic-auth app imports it
        with pytest.raises(ConfigError, match="--auth: .*Flask-WTF.*mlflow\\[auth\\]"):
            ui_command(uri=uri, host="0.0.0.0", port=5000, expose=True, auth=True)
    else:
        cmd = ui_command(uri=uri, host="0.0.0.0", port=5000, expose=True, auth=True)
        assert cmd[cmd.index("--app-name") + 1] == "basic-auth"


def test_a_pickled_config_is_not_loaded(workdir):
    """Hydra's --experimental-rerun unpickles a file, and a pickle can run code: a tampered run folder."""
    marker = workdir / "MARKER"
    pickled = workdir / "config.pickle"
    pickled.write_bytes(pickle.dumps(_Opener(str(marker))))
    proc = run_dlx(["train", f"--experimental-rerun={pickled}"], workdir, timeout=120)
    assert proc.returncode == 2 and "--experimental-rerun" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


class _Opener:
    """Unpickling it creates a file: what a pickle planted in a run folder could do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))

"""Shared test helpers: run the real `dlx` CLI in a temporary working directory and read its
embedded MLflow store (outputs/mlflow.db there) back with MlflowClient."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# small and fast: the suite runs on 2 CPU cores
QUICK = ["trainer.epochs=2", "model.width=32", "trainer.progress=plain"]


def dlx_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DLX_"))}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run_dlx(args: list[str], cwd: Path, *, timeout: float = 240, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """`python -m dlx ARGS` in cwd; returns the completed process (text stdout/stderr)."""
    proc = subprocess.run([sys.executable, "-m", "dlx", *args], cwd=cwd, env=env or dlx_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlx {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# Each case runs dlx's command line (dlx.cli.main, as the `dlx` program does) in a folder of its own, with
# copies of `files`; the cases share one process, so torch, Hydra and MLflow are imported once for all.
_BATCH = """
import contextlib, io, json, os, shutil, sys, traceback
from dlx.cli import main
out, top = {}, os.getcwd()
cases, files = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for i, args in enumerate(cases):
    here = os.path.join(top, f"case{i}")
    os.makedirs(here)
    for f in files:
        shutil.copy(f, here)
    os.chdir(here)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except BaseException:
            traceback.print_exc()
            code = -1
    os.chdir(top)
    left = sorted(os.path.relpath(os.path.join(d, f), here) for d, _, fs in os.walk(here) for f in fs)
    out[json.dumps(args)] = [code, err.getvalue(), left]
print("RESULTS " + json.dumps(out))
"""


def run_cli_batch(cases: list[list[str]], cwd: Path, files: list[Path] = ()) -> dict[str, list]:
    """json.dumps(args) -> [exit code, stderr, files left in its folder] for each `dlx ARGS` case, run by
    dlx's own main() in one process, each case in a fresh folder under cwd holding copies of `files`."""
    import json

    proc = subprocess.run([sys.executable, "-c", _BATCH, json.dumps(cases), json.dumps([str(f) for f in files])],
                          cwd=cwd, env=dlx_env(), capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("RESULTS "))


def read_until(proc: subprocess.Popen, pattern, lines: list[str] | None = None, timeout: float = 180):
    """Read a process's stdout line by line (kept in `lines`) until one holds `pattern`, a string or a compiled
    regular expression; returns that line, or the match. Fails with the output seen when the process ends or
    the time runs out first."""
    lines = [] if lines is None else lines
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = pattern.search(line) if isinstance(pattern, re.Pattern) else (pattern in line and line)
        if found:
            return found
    shown = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    raise AssertionError(f"no line with {shown!r} (ended or {timeout:g} s passed):\n{''.join(lines)[-4000:]}")


def store_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'outputs' / 'mlflow.db'}"


def client_for(workdir: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store_uri(workdir))


def all_runs(workdir: Path):
    """Every run in the workdir's default store ([] when the store does not exist)."""
    if not (workdir / "outputs" / "mlflow.db").exists():
        return []
    client = client_for(workdir)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids) if ids else []


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory for one CLI run (its outputs/ holds the MLflow store)."""
    d = tmp_path / "work"
    d.mkdir()
    return d


def pytest_configure(config):
    """Under pytest-xdist each worker takes one core's share: torch's own threads in the worker would
    otherwise double the two cores' load."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run with --runslow; tests marked cuda (`pytest -m cuda` selects them) need a GPU."""
    if not config.getoption("--runslow"):
        skip = pytest.mark.skip(reason="slow: opt in with --runslow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    cuda = [item for item in items if "cuda" in item.keywords]
    if cuda:  # torch is imported only when a CUDA test was collected
        import torch

        if not torch.cuda.is_available():
            for item in cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))

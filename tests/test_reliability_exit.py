"""Every `dlx` command leaves promptly after its work, whatever threads its libraries left running, and the
exit still runs what the interpreter's exit runs (atexit handlers, stream flushes) with the right code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK, all_runs, dlx_env, run_dlx

# A library that keeps a concurrent.futures pool (torch.compile's compile workers do) leaves non-daemon worker
# threads that stop only in threading's own exit hook; joining threads before that hook waits forever.
LEFT_BEHIND = """
import atexit, sys
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(max_workers=2)
pool.submit(sum, [1, 2]).result()
marker = sys.argv[1]
atexit.register(lambda: open(marker, "w").write("exit hooks ran"))
sys.argv = ["dlx", *sys.argv[2:]]
from dlx.cli import entry
entry()
"""


@pytest.mark.parametrize("args, code", [(["--version"], 0), (["nosuchcommand"], 2)])
def test_exit_is_prompt_with_a_library_thread_pool(tmp_path: Path, args: list[str], code: int):
    marker = tmp_path / "atexit.txt"
    proc = subprocess.run([sys.executable, "-c", LEFT_BEHIND, str(marker), *args], env=dlx_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert marker.read_text() == "exit hooks ran"


def test_train_exit_code_and_flushed_output(workdir: Path):
    """The summary printed last reaches a pipe, and a finished run exits 0."""
    proc = run_dlx(["train", *QUICK, "trainer.epochs=1"], workdir, timeout=120)
    assert proc.returncode == 0, proc.stderr
    run = all_runs(workdir)[0]
    assert run.info.status == "FINISHED" and run.info.run_id in proc.stdout


@pytest.mark.slow  # inductor compiles C++ for the CPU: tens of seconds
def test_compiled_train_exits_after_finishing(workdir: Path):
    proc = subprocess.run([sys.executable, "-m", "dlx", "train", *QUICK, "trainer.epochs=1", "trainer.compile=true"],
                          cwd=workdir, env=dlx_env(), capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all_runs(workdir)[0].info.status == "FINISHED"

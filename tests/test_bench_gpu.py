"""bench/gpu.py runs end to end on the CPU at tiny sizes (the GPU figures come from a GPU machine; bench/README.md)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO, dlx_env

RATIO = r"\d+\.\d{3} \(per repeat \d+\.\d{3}\)"


def test_quick_run_on_cpu_prints_the_ratios(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--quick", "--device", "cpu"],
                          cwd=tmp_path, env=dlx_env(), capture_output=True, text=True, timeout=180)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(rf"^ratio dlx/hand {RATIO}  target <= 1\.02 (PASS|FAIL)$", out, re.M), out
    # Lightning is optional: its ratio, or one line saying why the column is missing
    lightning = re.search(rf"^ratio lightning/hand {RATIO}$", out, re.M)
    skipped = re.search(r"^lightning: not installed .*column skipped$", out, re.M)
    assert bool(lightning) != bool(skipped), out
    if lightning:
        assert re.search(r"^dlx ahead of lightning: (yes|no) \(dlx/lightning \d+\.\d{3}\)$", out, re.M), out
    assert list(tmp_path.iterdir()) == []  # every run kept its files in the script's temporary folder


def test_lightning_batches_cover_every_sample_once_per_pass():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from gpu import DeviceBatches
    finally:
        sys.path.remove(str(REPO / "bench"))
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    shuffled = DeviceBatches(x, y, batch_size=4, shuffle=True)
    assert len(shuffled) == 3
    passes = [torch.cat([yb for _, yb in shuffled]) for _ in range(2)]
    assert all(sorted(p.tolist()) == list(range(10)) for p in passes)
    assert [len(yb) for _, yb in shuffled] == [4, 4, 2]
    in_order = torch.cat([xb[:, 0] for xb, _ in DeviceBatches(x, y, batch_size=4, shuffle=False)])
    assert in_order.tolist() == x[:, 0].tolist()


SCRIPT = REPO / "bench" / "device_check.sh"
# the script's steps in order, read from its `step NAME ...` lines; the compile step runs only with time left
# and never in a dry run
STEPS = [name for name in dict.fromkeys(line.split()[1] for line in SCRIPT.read_text().splitlines()
                                        if line.strip().startswith("step ")) if name != "gpu.py-comp"]


def run_check(tmp_path, **env):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env=dlx_env(OUT=str(out), PYTHON=sys.executable, DEVICE="cpu", QUICK="1", **env))
    summary = proc.stdout.rpartition("=== summary")[2].splitlines()[1:]
    return proc, summary, out


def test_device_check_skips_what_its_budget_cannot_hold_and_says_so(tmp_path):
    proc, summary, out = run_check(tmp_path, BUDGET="10")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a check that did not run is no pass
    assert [line.split()[0] for line in summary] == STEPS, proc.stdout
    assert all("skipped: the 10s budget is spent" in line for line in summary), proc.stdout
    assert (out / "log").read_text() == proc.stdout


@pytest.mark.slow  # every step at tiny sizes on the CPU: a few minutes on 2 cores
def test_device_check_dry_run_on_cpu(tmp_path):
    proc, summary, out = run_check(tmp_path, BUDGET="1200")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [line.split()[:3] for line in summary] == [[s, "exit", "0"] for s in STEPS], proc.stdout
    assert re.search(rf"^ratio dlx/hand {RATIO}", (out / "gpu.txt").read_text(), re.M)
    assert (out / "sweep.txt").exists()

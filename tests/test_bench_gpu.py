"""bench/gpu.py runs end to end on the CPU at tiny sizes (the GPU figures come from a GPU machine; bench/README.md)."""

from __future__ import annotations

import re
import subprocess
import sys

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

"""Checkpoint files: written once, linked under a second name, replaced atomically."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from dlx.checkpoint import load_checkpoint, save_checkpoint
from dlx.engine import on_cpu


def test_one_serialization_two_names_then_independent_files(tmp_path: Path):
    weights = torch.arange(6.0).reshape(2, 3)
    last, best = tmp_path / "ck" / "last.pt", tmp_path / "ck" / "best.pt"
    assert save_checkpoint({"epoch": 1, "w": weights}, last, best) == [last, best]
    assert os.path.samefile(last, best)  # the bytes were written once
    assert load_checkpoint(best)["epoch"] == 1
    weights += 1  # the next epoch's weights: best.pt must keep epoch 1's
    save_checkpoint({"epoch": 2, "w": weights}, last)
    assert not os.path.samefile(last, best)
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(best)["epoch"] == 1
    torch.testing.assert_close(load_checkpoint(best)["w"], torch.arange(6.0).reshape(2, 3))
    torch.testing.assert_close(load_checkpoint(last)["w"], weights)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["best.pt", "last.pt"]  # no temporary left


def test_a_failed_save_keeps_the_previous_file(tmp_path: Path):
    last = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, last)
    with pytest.raises(TypeError, match="pickle"):
        save_checkpoint({"epoch": 2, "bad": threading.Lock()}, last)  # a lock cannot be pickled
    assert load_checkpoint(last) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_second_name_on_another_filesystem_is_copied(tmp_path: Path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second filesystem")
    other = shm / f"dlx-test-{os.getpid()}" / "best.pt"
    try:
        save_checkpoint({"epoch": 3}, tmp_path / "last.pt", other)
        assert load_checkpoint(other) == {"epoch": 3} == load_checkpoint(tmp_path / "last.pt")
    finally:
        other.unlink(missing_ok=True)
        other.parent.rmdir()


def test_on_cpu_shares_cpu_tensors_and_copies_the_rest():
    t = torch.zeros(3, requires_grad=True)
    state = {"a": t, "b": [t, 1], "c": (2.0, {"d": "x"})}
    moved = on_cpu(state)
    assert moved["a"].data_ptr() == t.data_ptr() and not moved["a"].requires_grad
    assert moved["b"][1] == 1 and moved["c"] == (2.0, {"d": "x"}) and moved["c"][1] is not state["c"][1]

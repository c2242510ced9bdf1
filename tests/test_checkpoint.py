"""Checkpoint files: written once, linked under a second name, replaced atomically; within a budget of the
run's time, with what waits in memory written at the end or when the run stops."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dlx.build import build
from dlx.callbacks import CheckpointCallback
from dlx.checkpoint import CheckpointError, load_checkpoint, on_cpu, read_checkpoint, save_checkpoint
from dlx.compose import compose
from dlx.engine import Callback


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
    snapshot = on_cpu(state, copy=True)
    assert snapshot["a"].data_ptr() != t.data_ptr() and torch.equal(snapshot["a"], t)


class Spy(Callback):
    """After the checkpoint callback: what last.pt and best.pt hold at each epoch end, and the weights."""

    def __init__(self, directory: Path):
        self.directory, self.seen, self.weights = directory, [], {}

    def on_epoch_end(self, trainer, state, metrics):
        epochs = {name: load_checkpoint(self.directory / name)["epoch"] if (self.directory / name).exists() else None
                  for name in ("last.pt", "best.pt")}
        self.seen.append((state.epoch, epochs["last.pt"], epochs["best.pt"]))
        self.weights[state.epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def fit_with_checkpoints(tmp_path: Path, max_overhead: float, epochs: int = 6, stop_at: int | None = None):
    cfg = OmegaConf.to_container(compose(["tracking=off", "trainer.progress=none", "model.width=16",
                                          f"trainer.epochs={epochs}"]), resolve=True, enum_to_str=True)
    built = build(cfg)
    checkpoints = CheckpointCallback(tmp_path, every=1, monitor="val/loss", mode="min", config=cfg, run_id=None,
                                     max_overhead=max_overhead)
    spy = Spy(tmp_path)

    class Stop(Callback):
        def on_epoch_end(self, trainer, state, metrics):
            if state.epoch == stop_at:
                raise KeyboardInterrupt

    built.trainer.callbacks = [checkpoints, spy, Stop()]
    try:
        state = built.trainer.fit()
    except KeyboardInterrupt:
        state = None
    return checkpoints, spy, state


def test_without_a_budget_every_epoch_is_written_at_its_end(tmp_path: Path):
    _, spy, state = fit_with_checkpoints(tmp_path, max_overhead=0.0)
    assert [(e, last) for e, last, _ in spy.seen] == [(e, e) for e in range(1, 7)]
    best_epoch = min(range(1, 7), key=lambda e: (state.history[e - 1]["val/loss"], e))
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == best_epoch


def test_checkpoints_due_within_the_budget_wait_in_memory_and_the_last_epoch_is_written(tmp_path: Path):
    checkpoints, spy, state = fit_with_checkpoints(tmp_path, max_overhead=1e-9)  # after the first write: wait
    assert [last for _, last, _ in spy.seen] == [1, 1, 1, 1, 1, 6]
    assert checkpoints.pending == {}
    best_epoch = min(range(1, 7), key=lambda e: (state.history[e - 1]["val/loss"], e))
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == best_epoch  # the waiting copy, not the weights of a later epoch
    for key, value in spy.weights[best_epoch].items():
        torch.testing.assert_close(best["trainer"]["model"][key], value, rtol=0, atol=0)
    last = load_checkpoint(tmp_path / "last.pt")
    assert [h["epoch"] for h in last["history"]] == list(range(1, 7))


def test_a_stopped_run_writes_the_checkpoint_that_waited(tmp_path: Path):
    checkpoints, spy, _ = fit_with_checkpoints(tmp_path, max_overhead=1e-9, epochs=50, stop_at=3)
    assert [last for _, last, _ in spy.seen] == [1, 1, 1]
    checkpoints.flush()  # what a run does on Ctrl-C, SIGTERM or an error
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 3 and [h["epoch"] for h in last["history"]] == [1, 2, 3]
    for key, value in spy.weights[3].items():
        torch.testing.assert_close(last["trainer"]["model"][key], value, rtol=0, atol=0)


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c.pop("config"), "it lacks config"),
    (lambda c: c.update(epoch="2"), "its epoch is a str, not int"),
    (lambda c: c.update(stopped_early=0), "its stopped_early is a int, not bool"),
    (lambda c: c.update(run_id=7), "its run_id is a int, not str or None"),
    (lambda c: c.update(format=99), "its format is 99; this dlx reads format 1"),
    (lambda c: c.update(step=0), "cannot both be true"),
    (lambda c: c["trainer"].pop("optimizer"), "its trainer state lacks optimizer"),
    (lambda c: c.update(history=[1.0]), "history is not a list of per-epoch metrics"),
])
def test_read_checkpoint_accepts_what_a_run_wrote_and_names_what_is_wrong_with_anything_else(tmp_path: Path, edit,
                                                                                            reason):
    fit_with_checkpoints(tmp_path, max_overhead=0.0, epochs=1)
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["trainer"]["epochs"] == 1
    edit(ckpt)
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=re.escape(reason)):
        read_checkpoint(tmp_path / "edited.pt")

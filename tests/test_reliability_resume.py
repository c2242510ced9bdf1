"""Resume trusts nothing it reads back and accepts the command the run started with.

Real `python -m dlx train` subprocesses on a temporary SQLite store: a file that is not a dlx checkpoint, a
checkpoint of another store or with another run's id, a stored configuration that a new run would refuse,
and a finished run are each refused with one line and exit 2, leaving every run as it was; a resume that
trains longer records the new trainer.epochs; a kill and a resume log no (metric, step) twice; repeating the
original overrides resumes, a real change is refused with the keys that differ.
"""

from __future__ import annotations

import datetime
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import all_runs, client_for, run_dlx
from omegaconf import OmegaConf
from test_train_e2e import sigkill_at

from dlx.compose import compose
from dlx.config import ConfigError
from dlx.resume import interpolated, resumed_config

TINY = ["trainer.deterministic=true", "model.width=32", "trainer.progress=plain", "trainer.epochs=2"]


def finished_run(workdir: Path, *extra: str):
    run_dlx(["train", *TINY, *extra], workdir, check=True)
    runs = sorted(all_runs(workdir), key=lambda r: r.info.start_time)
    assert runs[-1].info.status == "FINISHED"
    return runs[-1]


def last_pt(run) -> Path:
    return Path(run.data.tags["dlx.checkpoint_dir"]) / "last.pt"


def steps(workdir: Path, run_id: str, key: str = "val/acc") -> list[int]:
    return sorted(m.step for m in client_for(workdir).get_metric_history(run_id, key))


def assert_user_error(proc, *needles: str) -> str:
    """Exit 2 and one line `dlx: error: ...` on stderr naming each needle; no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dlx: error: trainer.resume="), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def unchanged(workdir: Path, run, epochs: int = 2) -> None:
    now = client_for(workdir).get_run(run.info.run_id)
    assert now.info.status == run.info.status and now.info.end_time == run.info.end_time
    assert steps(workdir, run.info.run_id) == list(range(1, epochs + 1))
    assert len(client_for(workdir).get_metric_history(run.info.run_id, "test/acc")) == 1


# ---------------------------------------------------------------------------------------------- the file
def _garbage(path: Path) -> None:
    path.write_bytes(b"these bytes are no checkpoint\n")


def _weights_only(path: Path) -> None:  # a model's state_dict: the usual wrong .pt
    torch.save({"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)}, path)


def _an_object(path: Path) -> None:  # torch.load(weights_only=True) must refuse it, never build it
    torch.save({"config": {}, "when": datetime.date(2026, 1, 1)}, path)


@pytest.mark.parametrize("write", [_garbage, _weights_only, _an_object], ids=["garbage", "state_dict", "object"])
def test_a_file_that_is_not_a_dlx_checkpoint_is_refused(workdir: Path, write):
    path = workdir / "model.pt"
    write(path)
    proc = run_dlx(["train", "trainer.progress=plain", f"trainer.resume={path}"], workdir)
    assert_user_error(proc, "is not a dlx checkpoint")
    assert all_runs(workdir) == []


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A store with two FINISHED runs, which the tests that only read them share (each checks it left
    them as they were)."""
    workdir = tmp_path_factory.mktemp("two-runs")
    return workdir, finished_run(workdir), finished_run(workdir, "seed=1")


def test_a_checkpoint_of_another_store_is_refused(two_runs, workdir: Path):
    first, run, _ = two_runs
    proc = run_dlx(["train", "trainer.progress=plain", "trainer.epochs=3", f"trainer.resume={last_pt(run)}"], workdir)
    assert_user_error(proc, run.info.run_id, "not in the store", "tracking.uri")
    assert all_runs(workdir) == []
    unchanged(first, run)


def test_an_edited_run_id_cannot_resume_into_another_run(two_runs):
    workdir, mine, other = two_runs
    original = last_pt(mine).read_bytes()
    ckpt = torch.load(last_pt(mine), weights_only=True)
    ckpt["run_id"] = other.info.run_id  # the file stays where its own run wrote it
    try:
        torch.save(ckpt, last_pt(mine))
        by_path = run_dlx(["train", "trainer.epochs=3", f"trainer.resume={last_pt(mine)}"], workdir)
        assert_user_error(by_path, other.info.run_id, "edited run id")
        by_id = run_dlx(["train", "trainer.epochs=3", f"trainer.resume={mine.info.run_id}"], workdir)
        assert_user_error(by_id, other.info.run_id, "edited run id")
    finally:
        last_pt(mine).write_bytes(original)
    # an unedited copy outside the run's folders is refused too: the run id is all it has to show
    copy = workdir / "copied.pt"
    copy.write_bytes(original)
    by_copy = run_dlx(["train", "trainer.epochs=3", f"trainer.resume={copy}"], workdir)
    assert_user_error(by_copy, f"trainer.resume={mine.info.run_id}")
    for run in (mine, other):
        unchanged(workdir, run)
    assert len(all_runs(workdir)) == 2


def test_the_stored_configuration_is_checked_like_a_new_runs(two_runs, tmp_path: Path):
    workdir, run, _ = two_runs
    edits = [("trainer.checkpoint.every_n_epochs", 0, "trainer.checkpoint.every_n_epochs=0 is out of range"),
             ("model.evil", 1, "model.evil"),
             ("model.width", "wide", "model.width"),
             ("optimizer._target_", "os.system", "names code that this command does not: optimizer._target_=os.system"),
             ("tracking.run_name", "${oc.env:HOME}", "tracking.run_name=${oc.env:HOME} is an interpolation")]
    for key, value, needle in edits:
        ckpt = torch.load(last_pt(run), weights_only=True)
        node = OmegaConf.create(ckpt["config"])
        OmegaConf.update(node, key, value, force_add=True)
        ckpt["config"] = OmegaConf.to_container(node)
        edited = tmp_path / f"{key}.pt"  # the configuration is checked before the file's place
        torch.save(ckpt, edited)
        proc = run_dlx(["train", "trainer.epochs=3", f"trainer.resume={edited}"], workdir)
        assert_user_error(proc, needle)
    unchanged(workdir, run)


def test_a_finished_run_is_not_reopened_without_more_epochs_and_none_trains_backwards(two_runs):
    workdir, run, _ = two_runs
    again = run_dlx(["train", "trainer.progress=plain", f"trainer.resume={run.info.run_id}"], workdir)
    assert_user_error(again, "is FINISHED", "trainer.epochs=N with N > 2")
    backwards = run_dlx(["train", "tracking=off", "trainer.epochs=1", f"trainer.resume={last_pt(run)}"], workdir)
    assert_user_error(backwards, "at epoch 2, past trainer.epochs=1")
    unchanged(workdir, run)


# ---------------------------------------------------------------------------------------------- the run
def test_training_a_finished_run_longer_records_the_new_epochs(workdir: Path):
    run = finished_run(workdir)
    run_dlx(["train", "trainer.progress=plain", "trainer.epochs=3", f"trainer.resume={run.info.run_id}"], workdir,
            check=True)
    client = client_for(workdir)
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and steps(workdir, run.info.run_id) == [1, 2, 3]
    # MLflow params are write-once: the first value stays, the tag and config.yaml say what it trained with
    assert after.data.params["trainer.epochs"] == "2"
    assert after.data.tags["dlx.param.trainer.epochs"] == "3"
    config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(workdir))).read_text()
    assert OmegaConf.create(config).trainer.epochs == 3
    assert len(all_runs(workdir)) == 1


def test_no_point_is_logged_twice_after_a_kill_and_a_resume(workdir: Path):
    # after its first write last.pt waits in memory (a budget of 1e-9 of the run): a SIGKILL at epoch 4
    # leaves the checkpoint of epoch 1 and the curves of epochs 1..4, which the resume replays
    # the layer diagnostics log per-epoch points of their own, through the tracker rather than the loop's callback
    args = ["train", *TINY, "trainer.epochs=6", "trainer.log_every_n_steps=5", "trainer.checkpoint.max_overhead=1e-9",
            "diagnostics=layers"]
    sigkill_at(args, workdir, "epoch 4/6")
    (run,) = all_runs(workdir)
    assert torch.load(last_pt(run), weights_only=True)["epoch"] < 4

    run_dlx(["train", "trainer.progress=plain", f"trainer.resume={run.info.run_id}"], workdir, check=True)
    client = client_for(workdir)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    n_steps = 6 * -(-int(run.data.params["data.n_train"]) // 64)
    for key in run.data.metrics:
        history = client.get_metric_history(run.info.run_id, key)
        twice = [s for s, n in Counter(m.step for m in history).items() if n > 1]
        assert not twice, f"{key} logged twice at steps {twice}"
    assert steps(workdir, run.info.run_id) == [1, 2, 3, 4, 5, 6]
    assert steps(workdir, run.info.run_id, "act_std/layer_1") == [0, 1, 2, 3, 4, 5, 6]
    assert steps(workdir, run.info.run_id, "train/loss_step") == list(range(5, n_steps + 1, 5))


# ---------------------------------------------------------------------------------------------- the command
def test_repeating_the_original_command_resumes_and_a_real_change_is_refused(workdir: Path):
    original = [*TINY, "optimizer=momentum", "seed=5", "regularization=dropout"]
    run = finished_run(workdir, *original[len(TINY):])
    resume = f"trainer.resume={run.info.run_id}"

    lr = run_dlx(["train", *original, "optimizer.lr=0.5", "trainer.epochs=3", resume], workdir)
    assert_user_error(lr, "optimizer.lr=0.5 (optimizer.lr: 0.05 -> 0.5)")
    group = run_dlx(["train", *original, "optimizer=adam", "trainer.epochs=3", resume], workdir)
    assert_user_error(group, "optimizer._target_: torch.optim.SGD -> torch.optim.Adam")
    unchanged(workdir, run)

    run_dlx(["train", *original, "trainer.epochs=3", resume], workdir, check=True)
    assert steps(workdir, run.info.run_id) == [1, 2, 3]
    assert len(all_runs(workdir)) == 1


def resume_with(saved: dict, overrides: list[str]) -> dict:
    """resumed_config as `dlx train OVERRIDES trainer.resume=...` calls it for the run that saved `saved`."""
    cfg = compose(["tracking=off", *overrides], check=False)
    composed = OmegaConf.to_container(cfg)
    current = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return resumed_config(saved, current, overrides, follows=interpolated(composed))


def test_what_a_resumed_run_keeps_takes_and_refuses():
    original = ["model=cnn", "model.width=8", "trainer.epochs=4", "regularization=[l2,dropout]"]
    saved = OmegaConf.to_container(compose(["tracking=off", *original]), resolve=True, enum_to_str=True)
    cfg = resume_with(saved, [*original, "trainer.epochs=9", "trainer.device=cpu"])
    assert cfg["trainer"]["epochs"] == 9 and cfg["trainer"]["device"] == "cpu"
    assert {k: v for k, v in cfg.items() if k != "trainer"} == {k: v for k, v in saved.items() if k != "trainer"}
    # keys this command does not name keep their saved values, whatever its defaults say
    assert resume_with(saved, ["trainer.epochs=9"])["model"] == saved["model"]
    # a group names every key below it: trainer=quick may change epochs, not checkpoint.enabled
    with pytest.raises(ConfigError, match=r"trainer=quick \(trainer.checkpoint.enabled: True -> False\)$"):
        resume_with(saved, ["trainer=quick"])
    # model=cnn alone means cnn's default width; its dropout follows regularization.dropout, not named here
    with pytest.raises(ConfigError, match=r"model=cnn \(model.width: 8 -> 32\)$"):
        resume_with(saved, ["model=cnn"])

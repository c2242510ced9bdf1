"""`dlx train` end to end: a real subprocess, a real SQLite MLflow store, read back with MlflowClient."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUICK, all_runs, client_for, dlx_env, read_until, run_dlx

DETERMINISTIC = ["trainer.deterministic=true", "model.width=32", "trainer.progress=plain"]


def only_run(workdir: Path):
    runs = all_runs(workdir)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def artifact_paths(client, run_id: str, path: str = "") -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_train_records_params_tags_metrics_artifacts(workdir: Path):
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    (workdir / "notes.txt").write_text("x")
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init", "--allow-empty"],
                   cwd=workdir, check=True)
    args = ["train", *QUICK, "trainer.epochs=3", "trainer.log_every_n_steps=5", "model.norm=batch"]
    proc = run_dlx(args, workdir, check=True)
    run = only_run(workdir)
    client = client_for(workdir)
    assert run.info.status == "FINISHED"
    assert run.info.run_id in proc.stdout  # the summary names the run

    p = run.data.params
    assert p["model.name"] == "mlp" and p["model.norm"] == "batch" and p["model.width"] == "32"
    assert p["optimizer.name"] == "adam" and float(p["optimizer.lr"]) == 1e-3
    assert p["optimizer.betas"] == "[0.9, 0.999]" and p["trainer.epochs"] == "3"
    assert p["regularization.early_stopping.patience"] == "5"  # nested keys are flattened
    assert int(p["model.num_params"]) > 1000

    t = run.data.tags
    assert t["dlx.choice.model"] == "mlp" and t["dlx.choice.optimizer"] == "adam"
    assert "model.norm=batch" in t["dlx.overrides"] and "dlx train" in t["dlx.command"]
    assert t["dlx.torch_version"] == torch.__version__ and t["dlx.python_version"].startswith("3.")
    assert len(t["mlflow.source.git.commit"]) == 40 and t["dlx.git.dirty"] == "False"
    assert t["mlflow.runName"] == "mlp-adam-digits-s0"

    n_train = int(p["data.n_train"])
    steps_per_epoch = math.ceil(n_train / 64)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "epoch_time", "samples_per_sec"):
        assert [s for s, _ in history(client, run.info.run_id, key)] == [1, 2, 3], key
    step_points = history(client, run.info.run_id, "train/loss_step")
    assert [s for s, _ in step_points] == list(range(5, 3 * steps_per_epoch + 1, 5))  # not one point lost
    lr_steps = [s for s, _ in history(client, run.info.run_id, "lr")]  # per window, plus each epoch's end
    expected_lr = sorted({s for s, _ in step_points} | {e * steps_per_epoch for e in (1, 2, 3)})
    assert lr_steps == expected_lr
    assert len(history(client, run.info.run_id, "test/acc")) == 1
    assert run.data.metrics["test/acc"] > 0.5

    files = artifact_paths(client, run.info.run_id)
    assert {"config.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "plots/learning_curves.png"} <= files
    assert any(f.startswith("logs/") and f.endswith(".log") for f in files)
    local = Path(client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(workdir)))
    ckpt = torch.load(local, weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["step"] == 3 * steps_per_epoch and ckpt["run_id"] == run.info.run_id
    assert ckpt["config"]["model"]["norm"] == "batch"
    config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(workdir))).read_text()
    assert "norm: batch" in config and "${" not in config  # resolved


def test_tracking_off_writes_no_store(workdir: Path):
    proc = run_dlx(["train", *QUICK, "tracking=off"], workdir, check=True)
    assert not (workdir / "outputs" / "mlflow.db").exists()
    assert "test/acc" in proc.stdout
    assert list((workdir / "outputs" / "runs").glob("*/*/checkpoints/last.pt"))


def final_metrics(workdir: Path) -> dict[str, float]:
    return dict(only_run(workdir).data.metrics)


def test_same_seed_is_identical_and_another_seed_differs(tmp_path: Path):
    results, procs = [], []
    for i, seed in enumerate((0, 0, 1)):  # three runs at once, each in its own directory and store
        wd = tmp_path / f"w{i}"
        wd.mkdir()
        procs.append((wd, start_dlx(["train", *DETERMINISTIC, "trainer.epochs=2", f"seed={seed}"], wd)))
    for _, proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
    for wd, _ in procs:
        client = client_for(wd)
        run = only_run(wd)
        results.append({k: history(client, run.info.run_id, k) for k in ("train/loss_step", "val/loss", "test/acc")})
    assert results[0] == results[1]
    assert results[0]["train/loss_step"] != results[2]["train/loss_step"]




def start_dlx(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dlx", *args], cwd=cwd, env=dlx_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sigkill_at(args: list[str], cwd: Path, line: str) -> subprocess.Popen:
    """Start `dlx ARGS`, SIGKILL it once it prints `line`, and return the ended process."""
    proc = start_dlx(args, cwd)
    try:
        read_until(proc, line)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    return proc


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path):
    args = ["train", *DETERMINISTIC, "trainer.epochs=5", "regularization=dropout", "augmentation=noise"]
    straight = tmp_path / "straight"
    straight.mkdir()
    run_dlx(args, straight, check=True)
    expected = final_metrics(straight)

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = sigkill_at(args, killed, "epoch 2/5")
    assert proc.returncode == -signal.SIGKILL
    run = only_run(killed)
    assert run.info.status == "RUNNING"  # SIGKILL gives no chance to close the run
    assert "test/acc" not in run.data.metrics

    resumed = run_dlx(["train", f"trainer.resume={run.info.run_id}", "trainer.progress=plain"], killed, check=True)
    assert "resuming from" in resumed.stdout + resumed.stderr
    run = only_run(killed)  # the same MLflow run, not a new one
    assert run.info.status == "FINISHED"
    got = run.data.metrics
    for key in ("test/acc", "test/loss", "val/loss", "val/acc", "train/loss"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_resume_from_checkpoint_path_extends_epochs_but_keeps_the_configuration(workdir: Path):
    run_dlx(["train", *QUICK], workdir, check=True)
    run = only_run(workdir)
    ckpt = Path(run.data.tags["dlx.checkpoint_dir"]) / "last.pt"
    assert ckpt.is_file()

    refused = run_dlx(["train", f"trainer.resume={run.info.run_id}", "optimizer=sgd"], workdir)
    assert refused.returncode == 2
    assert "optimizer=sgd" in refused.stderr and "trainer.epochs" in refused.stderr

    run_dlx(["train", f"trainer.resume={ckpt}", "trainer.epochs=3", "trainer.progress=plain"], workdir, check=True)
    client = client_for(workdir)
    run = only_run(workdir)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client, run.info.run_id, "val/acc")] == [1, 2, 3]
    assert run.data.params["trainer.epochs"] == "2"  # MLflow params are write-once: the first value stays
    assert run.data.tags["dlx.param.trainer.epochs"] == "3"  # and the tag says what the run trained with
    assert run.data.tags["dlx.resumed_from_epoch"] == "2"


def test_sigterm_marks_run_killed_and_keeps_last_checkpoint(workdir: Path):
    # a budget that keeps every checkpoint after the first in memory: the one of epoch 2 or later is
    # written by the KILLED path
    proc = start_dlx(["train", *DETERMINISTIC, "trainer.epochs=200", "trainer.checkpoint.max_overhead=1e-9"],
                     workdir)
    try:
        read_until(proc, "epoch 2/200")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert "KILLED" in out and "trainer.resume=" in out
    run = only_run(workdir)
    assert run.info.status == "KILLED"
    assert "SIGTERM" in run.data.tags["dlx.error"]
    ckpt = torch.load(Path(run.data.tags["dlx.checkpoint_dir"]) / "last.pt", weights_only=True)
    assert ckpt["epoch"] >= 2
    assert len(client_for(workdir).get_metric_history(run.info.run_id, "val/acc")) >= 2

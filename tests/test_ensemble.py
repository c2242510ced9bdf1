"""Ensembles: the bootstrap resample, the members' seeds, the ensemble's metrics (accuracy, NLL, ECE, vote) on known
probabilities, and `dlx ensemble` for real: the parent's metrics against a recomputation from its members' saved
predictions, and `--resume <parent> ensemble.members=M` adding members."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICK, all_runs, client_for, run_cli_batch, run_dlx, store_uri

from dlx.compose import compose
from dlx.data.resample import Resample, bootstrap, member_seed
from dlx.data.splits import plan_splits
from dlx.ensemble import PREDICTIONS, ece, ensemble_metrics, nll, vote_accuracy
from dlx.report.stats import mean_ci


# ---------------------------------------------------------------------------------------------- resampling
def test_bootstrap_draws_with_replacement_from_the_training_split_only():
    y = np.repeat(np.arange(3), 50)
    plain = plan_splits(y, carve_test=True, carve_val=True, val_fraction=0.2, split_seed=0, train_subset=None, name="t")
    draws = []
    for member in range(3):
        plan = plan_splits(y, carve_test=True, carve_val=True, val_fraction=0.2, split_seed=0, train_subset=None,
                           name="t", resample=Resample(member=member, bootstrap=True))
        assert np.array_equal(plan["test"], plain["test"]) and np.array_equal(plan["val"], plain["val"])
        assert len(plan["train"]) == len(plain["train"]) and set(plan["train"]) <= set(plain["train"])
        assert len(set(plan["train"].tolist())) < len(plan["train"])  # some samples twice, some left out
        draws.append(plan["train"])
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])
    again = bootstrap(plain["train"], member=1, split_seed=0)
    assert np.array_equal(again, draws[1])
    assert not np.array_equal(again, bootstrap(plain["train"], member=1, split_seed=0, seed=1))  # another seed


def test_without_bootstrap_a_member_trains_on_the_whole_split_with_a_seed_of_its_own():
    cfg = {"ensemble": {"member": 2, "bootstrap": False}, "cv": {"fold": None}, "trainer": {"seed": 0}}
    assert Resample.of(cfg) is None  # nothing to resample: the usual splits
    seeds = {member_seed(s, m) for s in range(3) for m in range(8)}
    assert len(seeds) == 24 and member_seed(5, None) == 5


def test_a_member_cannot_be_negative():
    with pytest.raises(Exception, match="ensemble.member=-1"):
        compose(["ensemble.member=-1"])


# ---------------------------------------------------------------------------------------------- metrics
def test_ece_of_known_probabilities():
    y = np.array([0, 0, 0, 0])
    sure_and_right = np.array([[1.0, 0.0]] * 4)
    assert ece(sure_and_right, y) == 0.0
    # confidence 0.8 on class 0 everywhere, right on 2 of 4: |0.5 - 0.8| in the one bin holding them all
    probs = np.array([[0.8, 0.2]] * 4)
    assert ece(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.3)
    # two bins: 0.95 right twice (gap 0.05), 0.6 right once of twice (gap 0.1): 0.5 * 0.05 + 0.5 * 0.1
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    assert ece(probs, np.array([0, 0, 0, 0])) == pytest.approx(0.075)


def test_the_ensemble_averages_probabilities_and_votes():
    y = np.array([0, 1, 2])
    a = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    b = np.array([[0.5, 0.4, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3]])
    c = np.array([[0.2, 0.7, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    out = ensemble_metrics([a, b, c], y, prefix="")
    mean = (a + b + c) / 3
    assert out["acc"] == pytest.approx(np.mean(mean.argmax(1) == y))
    assert out["loss"] == pytest.approx(-np.mean(np.log(mean[np.arange(3), y])))
    assert out["ece"] == pytest.approx(ece(mean, y))
    # votes: sample 0 -> 0, 0, 1 (class 0); sample 1 -> 0, 1, 1 (class 1); sample 2 -> 2, 1, 1 (class 1)
    assert vote_accuracy([a, b, c], y) == pytest.approx(2 / 3) == out["vote_acc"]
    one = ensemble_metrics([a], y, prefix="")  # one member is itself
    assert one["loss"] == pytest.approx(nll(a, y)) and one["acc"] == pytest.approx(2 / 3)  # a misses sample 1


# ---------------------------------------------------------------------------------------------- for real
def children(client, parent_id: str) -> list:
    exp = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def predictions(client, run, tmp_path):
    with np.load(client.download_artifacts(run.info.run_id, PREDICTIONS, str(tmp_path))) as f:
        return f["probs"], f["y"]


def check_parent(client, parent_id, tmp_path, members: int) -> None:
    runs = sorted(children(client, parent_id), key=lambda r: int(r.data.tags["ensemble.member"]))
    assert [r.data.tags["ensemble.member"] for r in runs] == [str(m) for m in range(members)]
    loaded = [predictions(client, r, tmp_path / r.info.run_id) for r in runs]
    y = loaded[0][1]
    for run, (probs, labels) in zip(runs, loaded):  # what each member saved is what it was measured on
        assert np.array_equal(labels, y)
        assert run.data.metrics["test/acc"] == pytest.approx(np.mean(probs.argmax(1) == labels))
    want = ensemble_metrics([p for p, _ in loaded], y)
    metrics = client.get_run(parent_id).data.metrics
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6), key
    accs = mean_ci([r.data.metrics["test/acc"] for r in runs])
    assert metrics["members/test/acc_mean"] == pytest.approx(accs.mean)
    assert metrics["members/test/acc_ci95"] == pytest.approx(accs.half_width)
    assert metrics["ensemble/members"] == members


def test_dlx_ensemble_evaluates_the_averaged_members_and_resume_adds_members(workdir, tmp_path, capsys):
    base = [*QUICK, "trainer.epochs=3", "trainer.progress=none", "diagnostics=none", "trainer.checkpoint.enabled=false",
            "dataset.train_subset=300", "hydra.launcher.n_jobs=2"]
    proc = run_dlx(["ensemble", *base, "ensemble.members=2"], workdir, check=True)
    parent_id = next(ln for ln in proc.stdout.splitlines() if ln.startswith("parent run ")).split()[2]
    client = client_for(workdir)
    check_parent(client, parent_id, tmp_path / "first", members=2)
    runs = children(client, parent_id)
    assert {r.data.params["data.n_train"] for r in runs} == {"300"}  # a resample as large as the split
    assert runs[0].data.metrics["train/loss"] != runs[1].data.metrics["train/loss"]
    fewer = run_dlx(["ensemble", "--resume", parent_id, "ensemble.members=1"], workdir)
    assert fewer.returncode == 2 and "ensemble.members=1" in fewer.stderr and len(children(client, parent_id)) == 2
    more = run_dlx(["ensemble", "--resume", parent_id, "ensemble.members=3", "hydra.launcher.n_jobs=2"], workdir,
                   check=True)
    assert "1 of 3 trials to run" in more.stdout
    check_parent(client, parent_id, tmp_path / "more", members=3)
    from dlx.report.cli import report_main  # in this process: the ensemble ran in its own

    assert report_main([parent_id, "--no-log", "--uri", store_uri(workdir), "--out", str(tmp_path / "rep")]) == 0
    acc = client.get_run(parent_id).data.metrics["ensemble/test/acc"]
    assert f"ensemble of 3 members (averaged probabilities, parent ensemble/*): test/acc {acc:.4f}" in \
        capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- refused
def test_members_without_class_probabilities_are_refused_before_anything_trains(tmp_path):
    """A self-supervised objective, or a built-in dataset without class labels, leaves the ensemble nothing to
    average: dlx ensemble and the ensembles study say so while composing, and write nothing."""
    cases = [["ensemble", "objective=simsiam", "model=mlp", *QUICK, "ensemble.members=1"],
             ["ensemble", "dataset=adding", "model=lstm", "loss=mse", "trainer.epochs=1", "ensemble.members=1"],
             ["study", "ensembles", "objective=simclr", "dataset=digits", "seed=0", "ensemble.member=range(0,2)",
              "trainer.epochs=1"]]
    out = run_cli_batch(cases, tmp_path)
    allowed = {"objective=simsiam": "objective=supervised", "dataset=adding": "dataset=cifar10, csv, digits",
               "objective=simclr": "objective=supervised"}
    for case, (key, what) in zip(cases, allowed.items()):
        code, err, left = out[json.dumps(case)]
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, (case, err)
        assert lines[0].startswith(f"dlx: error: {key}: an ensemble averages its members' test-split class "
                                   "probabilities") and f"allowed {what}" in lines[0], (case, err)
        assert left == [], (case, left)


TARGETS = '''
import numpy as np
from dlx.data import Source

def sums(n: int = 200):
    """A user's data whose targets are real numbers, known only once it has loaded."""
    x = np.random.default_rng(0).random((n, 6)).astype("float32")
    return Source(train=(x, x.sum(axis=1)), num_classes=1, target="value", tolerance=0.1, name="sums")
'''


def test_a_users_data_without_class_labels_fails_each_member_before_it_trains(workdir):
    (workdir / "toysums.py").write_text(TARGETS, encoding="utf-8")
    proc = run_dlx(["ensemble", "dataset._target_=toysums.sums", "loss=mse", "trainer.epochs=1", "model.width=8",
                    "ensemble.members=1", "hydra.launcher.n_jobs=1"], workdir)
    failed = [line for line in proc.stdout.splitlines() if line.startswith("trial ")]
    assert proc.returncode == 1 and len(failed) == 1, proc.stdout + proc.stderr
    assert "RunError: dataset: an ensemble averages its members' test-split class probabilities, and dataset sums " \
           "has value targets" in failed[0] and "Traceback" not in proc.stdout + proc.stderr
    runs = all_runs(workdir)
    assert [r.data.tags.get("ensemble.member") for r in runs if "train/loss" in r.data.metrics] == [], runs


# ---------------------------------------------------------------------------------------------- the study's report
def test_the_ensembles_report_reads_the_members_predictions_from_the_store(workdir, tmp_path, capsys):
    """The run folders are gone (another machine's, or removed): the finding and figure read each member's
    predictions/test.npz from the store's artifacts."""
    proc = run_dlx(["study", "ensembles", "dataset=digits", "seed=0", "ensemble.member=range(0,4)",
                    "ensemble.members=4", "dataset.train_subset=100", "trainer.epochs=1", "model.width=8",
                    "model.depth=1", "hydra.launcher.n_jobs=2"], workdir, check=True, timeout=400)
    parent_id = next(ln for ln in proc.stdout.splitlines() if ln.startswith("parent run ")).split()[2]
    client = client_for(workdir)
    folders = {Path(r.data.tags["dlx.run_dir"]) for r in children(client, parent_id)}
    assert len(folders) == 4 and all((f / PREDICTIONS).is_file() for f in folders)
    for folder in folders:
        shutil.rmtree(folder)
    from dlx.report.cli import report_main  # in this process: the study ran in its own

    capsys.readouterr()
    assert report_main([parent_id, "--no-log", "--format", "json", "--uri", store_uri(workdir),
                        "--out", str(tmp_path / "rep")]) == 0
    notes = " ".join(json.loads(capsys.readouterr().out)["notes"])
    assert "finding: M=4 over 1 seeds: test/loss ensemble" in notes, notes
    assert (tmp_path / "rep" / "ensemble_by_m.png").is_file()

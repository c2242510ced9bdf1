"""k-fold cross-validation: the folds (stratified, disjoint, covering, the test split untouched), the cv config
checks, `dlx cv` for real (parent metrics against a recomputation from its fold runs, resume, bad input) and a
sweep that chooses on the K-fold mean (hydra.sweeper.objective=cv/val/acc_mean)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import QUICK, client_for, dlx_env, read_until, run_cli_batch, run_dlx, store_uri

from dlx.compose import compose
from dlx.config import ConfigError
from dlx.cv import aggregate, cv_metrics
from dlx.data.resample import Resample, problems, stratified_folds
from dlx.data.splits import build_splits, plan_splits
from dlx.report.stats import mean_ci

CHEAP = ["trainer.progress=none", "diagnostics=none", "trainer.checkpoint.enabled=false"]
# a character model on a small corpus (corpus() writes it)
TEXT = ["dataset=text", "dataset.path=corpus.txt", "dataset.context=16", "model=lstm", "model.hidden=8"]


def corpus(folder):
    path = folder / "corpus.txt"
    path.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    return path

LABELS = np.repeat(np.arange(4), [30, 21, 12, 7])  # unbalanced classes, 70 samples


# ---------------------------------------------------------------------------------------------- the folds
@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_folds_are_disjoint_cover_every_sample_and_keep_each_class_share(k):
    folds = stratified_folds(LABELS, k, seed=(0, 2, 0))
    everything = np.concatenate(folds)
    assert len(everything) == len(LABELS) == len(set(everything.tolist()))  # disjoint and covering
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for cls, count in zip(*np.unique(LABELS, return_counts=True)):
        per_fold = [int((LABELS[f] == cls).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == count, (cls, per_fold)


def test_a_repeat_deals_the_folds_again_and_the_same_repeat_deals_them_alike():
    a, b = stratified_folds(LABELS, 5, (0, 2, 0)), stratified_folds(LABELS, 5, (0, 2, 1))
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))
    assert all(np.array_equal(x, y) for x, y in zip(a, stratified_folds(LABELS, 5, (0, 2, 0))))


def test_a_fold_validates_on_its_fold_and_never_moves_the_test_split():
    y = np.repeat(np.arange(3), 40)
    plain = plan_splits(y, carve_test=True, carve_val=True, val_fraction=0.1, split_seed=0, train_subset=None, name="t")
    vals = []
    for fold in range(4):
        plan = plan_splits(y, carve_test=True, carve_val=True, val_fraction=0.1, split_seed=0, train_subset=None,
                           name="t", resample=Resample(fold=fold, folds=4, repeat=1))
        assert np.array_equal(plan["test"], plain["test"])  # untouched by the folds
        assert not set(plan["val"]) & set(plan["train"]) and not set(plan["val"]) & set(plan["test"])
        assert sorted([*plan["val"], *plan["train"]]) == sorted(set(range(len(y))) - set(plan["test"]))
        assert np.bincount(y[plan["val"]]).tolist() == [8, 8, 8]  # 96 non-test samples: a quarter of each class
        vals.append(set(plan["val"].tolist()))
    assert set().union(*vals) == set(range(len(y))) - set(plain["test"]) and sum(map(len, vals)) == 96


def test_a_given_validation_split_joins_the_folds():
    x = np.arange(60, dtype=np.float32).reshape(60, 1)
    y = np.tile([0, 1], 30)
    seen = set()
    for fold in range(5):
        splits = build_splits(name="t", x_train=x[:40], y_train=y[:40], x_val=x[40:50], y_val=y[40:50],
                              x_test=x[50:], y_test=y[50:], num_classes=2, val_fraction=0.1, split_seed=0,
                              train_subset=None, normalize=False, resample=Resample(fold=fold, folds=5))
        assert len(splits.val) == 10 and len(splits.train) == 40
        assert splits.x_test.flatten().tolist() == list(range(50, 60))
        seen |= set(splits.x_val.flatten().tolist())
    assert seen == set(range(50))  # the given val samples are dealt into the folds with the rest


@pytest.mark.parametrize(("override", "key"), [
    (["cv.folds=1"], "cv.folds=1"), (["cv.repeats=0"], "cv.repeats=0"), (["cv.fold=3", "cv.folds=3"], "cv.fold=3"),
    (["cv.repeat=2", "cv.repeats=2"], "cv.repeat=2"), (["cv.fold=-1"], "cv.fold=-1")])
def test_the_cv_section_refuses_values_out_of_range(override, key):
    with pytest.raises(ConfigError, match=key.replace("-", "\\-")):
        compose(override)


def test_cv_metrics_are_the_mean_ci_spread_and_first_fold_of_the_fold_values():
    folds = [{"val/acc": a, "val/loss": 1 - a, "train/loss": 9.0} for a in (0.8, 0.9, 0.7)]
    out = cv_metrics(folds, folds[0])
    s = mean_ci([0.8, 0.9, 0.7])
    assert out["cv/val/acc_mean"] == pytest.approx(s.mean) and out["cv/val/acc_ci95"] == pytest.approx(s.half_width)
    assert out["cv/val/acc_std"] == pytest.approx(s.std) and out["cv/val/acc_holdout"] == 0.8
    assert out["cv/folds"] == 3 and not any(k.startswith("cv/train/") for k in out)


def test_the_holdout_is_fold_0_of_repeat_0_or_nothing(tmp_path):
    """What the report calls "fold 0 alone": never the first fold that happened to finish."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("cv")
    runs = {}
    for number, (repeat, fold, acc, status) in enumerate([(0, 0, 0.5, "FAILED"), (0, 1, 0.7, "FINISHED"),
                                                           (1, 0, 0.9, "FINISHED"), (1, 1, 0.8, "FINISHED")]):
        run = client.create_run(exp, tags={"cv.fold": str(fold), "cv.repeat": str(repeat)})
        client.log_metric(run.info.run_id, "val/acc", acc)
        client.set_terminated(run.info.run_id, status)
        runs[number] = client.get_run(run.info.run_id)
    metrics, _ = aggregate(None, runs)
    assert metrics["cv/val/acc_mean"] == pytest.approx(0.8) and "cv/val/acc_holdout" not in metrics
    client.log_metric(runs[0].info.run_id, "val/acc", 0.6)
    client.set_terminated(runs[0].info.run_id, "FINISHED")
    runs[0] = client.get_run(runs[0].info.run_id)
    metrics, _ = aggregate(None, {n: runs[n] for n in (3, 2, 1, 0)})
    assert metrics["cv/val/acc_holdout"] == pytest.approx(0.6)


def test_overlapping_text_windows_cannot_be_dealt_into_folds():
    """A validation fold's windows would lie mostly inside the training windows of the other folds."""
    cfg = {"cv": {"fold": 0, "folds": 2}, "dataset": {"context": 16, "stride": 4}}
    (found,) = problems(cfg)
    assert found.startswith("dataset.stride=4 with dataset.context=16") and "dataset.stride >= dataset.context" in found
    assert problems({**cfg, "cv": {"fold": None, "folds": 2}}) == []  # the plain split's parts never overlap
    for stride in (16, 20, None):
        assert problems({**cfg, "dataset": {"context": 16, "stride": stride}}) == []


# ---------------------------------------------------------------------------------------------- for real
def children(client, parent_id: str) -> list:
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parent_of(proc) -> str:
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("parent run "))
    return line.split()[2]


def test_dlx_cv_nests_one_run_per_fold_and_the_parent_summarises_them(workdir):
    proc = run_dlx(["cv", *QUICK, *CHEAP, "cv.folds=3", "hydra.launcher.n_jobs=2"], workdir,
                   check=True)
    client = client_for(workdir)
    parent_id = parent_of(proc)
    runs = children(client, parent_id)
    assert sorted(r.data.tags["cv.fold"] for r in runs) == ["0", "1", "2"]
    assert {r.data.tags["cv.repeat"] for r in runs} == {"0"} and all(r.info.status == "FINISHED" for r in runs)
    n_val = [int(r.data.params["data.n_val"]) for r in runs]
    n_test = {r.data.params["data.n_test"] for r in runs}
    assert len(n_test) == 1 and max(n_val) - min(n_val) <= 1  # a third of the non-test samples each
    assert sum(n_val) + int(n_test.pop()) == 1797  # every digit is in one fold or the test split
    metrics = client.get_run(parent_id).data.metrics
    by_fold = sorted(runs, key=lambda r: int(r.data.tags["cv.fold"]))
    for name in ("val/acc", "val/loss"):
        s = mean_ci([r.data.metrics[name] for r in by_fold])
        assert metrics[f"cv/{name}_mean"] == pytest.approx(s.mean)
        assert metrics[f"cv/{name}_ci95"] == pytest.approx(s.half_width)
        assert metrics[f"cv/{name}_holdout"] == pytest.approx(by_fold[0].data.metrics[name])
    assert metrics["cv/folds"] == 3
    report = run_dlx(["report", parent_id, "--no-log"], workdir, check=True)
    assert f"val/acc {metrics['cv/val/acc_mean']:.4f} ± {metrics['cv/val/acc_ci95']:.4f}" in report.stdout
    again = run_dlx(["cv", "--resume", parent_id], workdir, check=True)  # nothing left to run: the same summary
    assert "0 of 3 trials to run" in again.stdout and len(children(client, parent_id)) == 3
    assert client.get_run(parent_id).data.metrics["cv/val/acc_mean"] == pytest.approx(metrics["cv/val/acc_mean"])
    other = run_dlx(["ensemble", "--resume", parent_id], workdir)  # a parent of another kind is refused
    assert other.returncode == 2 and other.stderr == f"dlx: error: --resume {parent_id}: not a dlx ensemble (its " \
        "overrides sweep no ensemble.member); resume it with the command that started it (dlx sweep, dlx cv or " \
        "dlx ensemble --resume)\n", other.stderr
    assert len(children(client, parent_id)) == 3


def test_bad_input_exits_2_before_any_run(workdir):
    cases = [["cv", "cv.folds=1"], ["cv", "model.width=16,32"], ["cv", "cv.fold=1"], ["cv", "tracking=off"],
             ["cv", "--resume"], ["cv", "hydra.sweeper.objective=val/loss"], ["cv", "cv.repeats=x"],
             ["ensemble", "ensemble.members=0"], ["ensemble", "ensemble.member=2"],
             ["sweep", "model.width=16,32", "hydra.sweeper.objective=cv/test/acc_mean"],
             ["sweep", "model.width=16,32", "hydra.sweeper.objective=cv/val/acc_mean", "hydra.sweeper.pruner=median"],
             ["sweep", "model.width=16,32", "hydra.sweeper.objective=cv/val/accuracy"],
             # a trial with a fold of its own would be a plain run with no K-fold mean to report
             ["sweep", "model.width=8,16", "hydra.sweeper.objective=cv/val/acc_mean", "cv.fold=1"],
             # overlapping windows of a text cannot be dealt into folds: dlx cv, a fold run, a K-fold sweep
             ["cv", *TEXT, "dataset.stride=4"], ["train", *TEXT, "dataset.stride=4", "cv.fold=0"],
             ["sweep", *TEXT, "dataset.stride=4,16", "hydra.sweeper.objective=cv/val/loss_mean"],
             ["cv", "--resume", "0" * 32], ["ensemble", "--resume", "f" * 32]]
    keys = ["cv.folds", "model.width", "cv.fold", "tracking", "--resume", "hydra.sweeper.objective", "cv.repeats",
            "ensemble.members", "ensemble.member", "hydra.sweeper.objective", "hydra.sweeper.pruner",
            "hydra.sweeper.objective", "cv.fold=1", "dataset.stride=4", "dataset.stride=4", "dataset.stride=4",
            "--resume", "--resume"]
    results = run_cli_batch(cases, workdir, files=[corpus(workdir)])
    for args, key in zip(cases, keys):
        code, err, left = results[json.dumps(args)]
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("dlx: error:")]
        assert code == 2 and lines and key in err, (args, err)  # one line, or a sweep's list of problems
        assert "Traceback" not in err and not any(f.endswith("mlflow.db") for f in left), (args, left)
        if "--resume" in args[1:] or "dataset.stride=4" in args:
            assert err.count("\n") == 1 and left == ["corpus.txt"], (args, err, left)  # nothing written


def test_a_sweep_can_choose_on_the_k_fold_mean(workdir, capsys):
    proc = run_dlx(["sweep", *QUICK, *CHEAP, "model.width=8,32", "cv.folds=2",
                    "hydra.sweeper.objective=cv/val/acc_mean", "hydra.launcher.n_jobs=2"], workdir, check=True)
    client = client_for(workdir)
    trials = children(client, parent_of(proc))
    assert len(trials) == 2
    means = {}
    for trial in trials:
        folds = children(client, trial.info.run_id)
        assert sorted(f.data.tags["cv.fold"] for f in folds) == ["0", "1"]
        assert all("trial" not in f.data.tags for f in folds)  # only the trial's own run is the sweep's trial
        want = mean_ci([f.data.metrics["val/acc"] for f in folds]).mean
        assert trial.data.metrics["cv/val/acc_mean"] == pytest.approx(want)
        means[trial.data.params["model.width"]] = want
    best = max(means, key=means.get)
    assert f"best cv/val/acc_mean={means[best]:.4f}: trial" in proc.stdout and f"model.width={best}" in proc.stdout
    from dlx.report.cli import report_main  # in this process: the sweep ran in its own

    assert report_main([parent_of(proc), "--no-log", "--uri", store_uri(workdir), "--out", str(workdir / "rep")]) == 0
    assert "best on cv/val/acc_mean (max)" in capsys.readouterr().out  # the trials' objective is the report's column
    other = run_dlx(["cv", "--resume", parent_of(proc)], workdir)  # a sweep's parent is no dlx cv's
    assert other.returncode == 2 and "not a dlx cv (its overrides sweep no cv.fold)" in other.stderr, other.stderr
    assert len(children(client, parent_of(proc))) == 2


def test_a_stopped_k_fold_sweep_closes_the_trial_run_killed(workdir):
    """SIGTERM inside a fold: the fold's run and the trial's own run end KILLED (to be run again on resume), not
    FAILED, and the sweep stops with the signal's exit code."""
    args = ["sweep", "model.width=8,16", "cv.folds=2", "hydra.sweeper.objective=cv/val/acc_mean",
            "hydra.launcher.n_jobs=1", "trainer.progress=plain", "trainer.epochs=400", *CHEAP[1:]]
    proc = subprocess.Popen([sys.executable, "-m", "dlx", *args], cwd=workdir, env=dlx_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        read_until(proc, "epoch 2/400", lines)  # the first fold of the first trial is training
        proc.send_signal(signal.SIGTERM)
        out = "".join(lines) + proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    client = client_for(workdir)
    (trial,) = children(client, parent_of(subprocess.CompletedProcess(args, 143, out)))
    (fold,) = children(client, trial.info.run_id)
    assert (trial.info.status, trial.data.tags["dlx.outcome"]) == ("KILLED", "killed"), out
    assert (fold.info.status, fold.data.tags["cv.fold"]) == ("KILLED", "0")
    assert re.search(r"sweep \S+: 0 ok, 0 failed, 0 pruned, 2 left", out), out

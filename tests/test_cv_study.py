"""The cv and ensembles studies (conf/study/cv.yaml, ensembles.yaml): their presets, the findings `dlx report`
states for them on runs with known values (effect present and absent), and a tiny real run of each through
`dlx study` and `dlx report`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, run_dlx
from omegaconf import OmegaConf

import dlx.report.findings_cv  # noqa: F401 - registers the studies' findings and figures
import dlx.report.findings_ensembles  # noqa: F401
from dlx.compose import compose
from dlx.ensemble import PREDICTIONS, ensemble_metrics, member_metrics
from dlx.report.collect import RunRecord
from dlx.report.stats import get_finding
from dlx.report.table import build_rows


@pytest.mark.parametrize("name", ["cv", "ensembles"])
def test_preset_composes_sweeps_keys_of_the_config_and_has_three_seeds(name):
    preset = OmegaConf.load(REPO / "conf" / "study" / f"{name}.yaml")
    cfg = compose([f"+study={name}"])
    assert cfg.study.name == name and cfg.study.statement and cfg.study.expected
    swept = dict(preset.hydra.sweeper.params)
    for key in [*cfg.study.factor.split(","), *swept]:
        assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", key
    assert get_finding(name).__module__ == f"dlx.report.findings_{name}"
    if name == "ensembles":
        assert len(str(swept["seed"]).split(",")) >= 3 and swept["ensemble.member"] == "range(0,8)"
        assert cfg.ensemble.members == 8 and cfg.ensemble.bootstrap
    else:  # each repeat its own seed and dealing of the folds
        assert cfg.cv.repeats >= 3 and swept["cv.repeat"] == f"range(0,{cfg.cv.repeats})"
        assert OmegaConf.to_container(preset)["seed"] == "${cv.repeat}" and set(str(swept["cv.folds"]).split(",")) == {"2", "5", "10"}
        assert preset.hydra.sweeper.objective == "cv/val/acc_mean"


# ---------------------------------------------------------------------------------------------- cv finding
def record(i: int, params: dict, metrics: dict, tags: dict | None = None) -> RunRecord:
    return RunRecord(f"{i:032x}", f"r{i}", "FINISHED", {k: str(v) for k, v in params.items()},
                     {"dlx.outcome": "ok", **(tags or {})}, dict(metrics))


def cv_rows(kfold_spread: float, holdout_spread: float):
    runs, i = [], 0
    for k in (2, 5, 10):
        for r, d in enumerate((-1.0, 0.0, 1.0, 0.5)):
            i += 1
            runs.append(record(i, {"cv.folds": k, "cv.repeat": r, "seed": r},
                               {"cv/val/acc_mean": 0.9 + d * kfold_spread, "cv/val/acc_holdout": 0.9 + d * holdout_spread,
                                "cv/test/acc_mean": 0.91, "cv/seconds": 1.0 * k}))
    return build_rows(runs, ["cv.folds"], ["cv/val/acc_mean", "cv/val/acc_holdout"])


def test_cv_finding_appears_when_the_k_fold_estimate_is_steadier():
    text = get_finding("cv")(cv_rows(0.005, 0.02), "cv/val/acc_mean", "max")
    std_k, std_h = np.std([-1.0, 0.0, 1.0, 0.5], ddof=1) * 0.005, np.std([-1.0, 0.0, 1.0, 0.5], ddof=1) * 0.02
    assert f"K=2 (4 repeats): std of the K-fold estimate {std_k:.4f} vs one hold-out fold {std_h:.4f}" in text
    assert "cost K=10 / K=2: 5.0000x" in text
    assert "APPEARED" in text and "NOT" not in text


def test_cv_finding_does_not_appear_when_the_hold_out_is_as_steady():
    assert "did NOT appear" in get_finding("cv")(cv_rows(0.02, 0.01), "cv/val/acc_mean", "max")
    assert "needs 3+ finished repeats" in get_finding("cv")(cv_rows(0.02, 0.01)[:0] or
                                                          build_rows([record(1, {"cv.folds": 2}, {})], ["cv.folds"],
                                                                     ["cv/val/acc_mean"]), "x", "max")


# ---------------------------------------------------------------------------------------------- ensembles finding
def ensemble_rows(tmp_path, independent: bool):
    """Three seeds of eight members on 400 samples of 3 classes: each member's probabilities are the true class's
    signal plus its own noise (independent) or the same noise for all (no diversity to average)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    runs, i = [], 0
    for seed in range(3):
        shared = rng.normal(0, 1.5, (400, 3))
        for member in range(8):
            logits = 3 * (1.2 * np.eye(3)[y] + (rng.normal(0, 1.5, (400, 3)) if independent else shared))  # overconfident
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            i += 1
            folder = tmp_path / f"run{i}"
            (folder / PREDICTIONS).parent.mkdir(parents=True)
            np.savez(folder / PREDICTIONS, probs=probs.astype(np.float32), y=y)
            runs.append(record(i, {"ensemble.member": member, "seed": seed}, member_metrics(probs, y) |
                               {"test/loss": 1.0}, {"dlx.run_dir": str(folder)}))
    return build_rows(runs, ["ensemble.member"], ["test/loss"]), runs


def test_ensembles_finding_appears_when_averaging_diverse_members_pays(tmp_path):
    rows, runs = ensemble_rows(tmp_path, independent=True)
    text = get_finding("ensembles")(rows, "test/loss", "min")
    seed0 = [np.load(r.tags["dlx.run_dir"] + "/" + PREDICTIONS) for r in runs[:8]]
    want = ensemble_metrics([f["probs"] for f in seed0], seed0[0]["y"], prefix="")
    assert "M=8 over 3 seeds: test/loss ensemble" in text and "ensemble test/loss by M 1: " in text
    assert want["loss"] < np.mean([member_metrics(f["probs"], f["y"])["loss"] for f in seed0])
    assert "APPEARED" in text and "NOT" not in text


def test_ensembles_finding_does_not_appear_when_members_agree(tmp_path):
    rows, _ = ensemble_rows(tmp_path, independent=False)
    assert "did NOT appear" in get_finding("ensembles")(rows, "test/loss", "min")
    assert "needs members 0..3" in get_finding("ensembles")(rows[:2], "test/loss", "min")


# ---------------------------------------------------------------------------------------------- for real
def run_study(workdir, *args: str) -> str:
    proc = run_dlx(["study", *args], workdir, check=True, timeout=400)
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith("parent run ")).split()[2]


@pytest.mark.slow  # ~25 s on an idle 2-core machine; the nested sweep itself runs in test_cv.py
def test_cv_study_runs_small_and_reports_its_finding(workdir):
    parent = run_study(workdir, "cv", "cv.repeats=3", "cv.repeat=range(0,3)", "cv.folds=2,3", "trainer.epochs=2",
                       "model.width=16")
    out = run_dlx(["report", parent, "--format", "json", "--out", str(workdir / "rep")], workdir, check=True)
    data = json.loads(out.stdout)
    notes = " ".join(data["notes"])
    assert "K=2 (3 repeats): std of the K-fold estimate" in notes and "K=3 (3 repeats)" in notes
    assert (workdir / "rep" / "spread_by_k.png").is_file()


@pytest.mark.slow  # ~20 s on an idle 2-core machine; dlx ensemble itself runs in test_ensemble.py
def test_ensembles_study_runs_small_and_reports_its_finding(workdir):
    parent = run_study(workdir, "ensembles", "dataset=digits", "seed=0", "ensemble.member=range(0,4)",
                       "ensemble.members=4", "dataset.train_subset=200", "trainer.epochs=2", "model.width=16")
    out = run_dlx(["report", parent, "--format", "json", "--out", str(workdir / "rep")], workdir, check=True)
    notes = " ".join(json.loads(out.stdout)["notes"])
    assert "M=4 over 1 seeds" in notes and "loss gained at each doubling 1->2: " in notes
    assert (workdir / "rep" / "ensemble_by_m.png").is_file()

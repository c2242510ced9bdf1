"""The vit_vs_cnn study: its preset, its finding on runs with known values (effect present and absent), its
figure of test accuracy against the training-set size, and one tiny real run through `dlx study` and
`dlx report` that draws the figure and copies a ViT's attention map into the report."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, client_for, run_dlx, store_uri
from omegaconf import OmegaConf

import dlx.report.findings_vit  # noqa: F401 - registers the study's finding and figures
from dlx.compose import compose
from dlx.report.collect import RunRecord
from dlx.report.stats import get_finding, mean_ci
from dlx.report.table import build_rows

NAME = "vit_vs_cnn"
BY = ["model", "dataset.train_subset"]


# ---------------------------------------------------------------------------------------------- preset
def test_preset_composes_sweeps_keys_of_the_config_and_compares_nets_of_similar_size():
    from dlx.models import CNN
    from dlx.models.vit import ViT

    preset = OmegaConf.load(REPO / "conf" / "study" / f"{NAME}.yaml")
    cfg = compose([f"+study={NAME}"])
    assert cfg.study.name == NAME and cfg.study.statement and cfg.study.expected
    swept = dict(preset.hydra.sweeper.params)
    assert len(str(swept["seed"]).split(",")) >= 3
    assert set(str(swept["model"]).split(",")) == {"cnn", "vit"}
    assert "null" in str(swept["dataset.train_subset"]).split(",")  # the whole training set is one level
    for key in [*cfg.study.factor.split(","), *swept]:
        assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", key
    assert get_finding(NAME).__module__ == "dlx.report.findings_vit"
    # "of similar size": the two nets the study compares, with their defaults on 8x8 digits, within 10%
    sizes = [sum(p.numel() for p in net(input_shape=(1, 8, 8), num_classes=10).parameters()) for net in (CNN, ViT)]
    assert abs(sizes[0] - sizes[1]) / max(sizes) < 0.1, sizes


# ---------------------------------------------------------------------------------------------- finding
def record(i: int, params: dict, metrics: dict) -> RunRecord:
    return RunRecord(f"{i:032x}", f"r{i}", "FINISHED", {k: str(v) for k, v in params.items()},
                     {"dlx.outcome": "ok"}, dict(metrics))


def study_rows(acc: dict[tuple[str, str], list[float]]):
    """Rows of (model, train_subset) cells from test/acc per seed; 'null' cells logged 1294 training samples."""
    runs, i = [], 0
    for (model, size), per_seed in acc.items():
        for seed, a in enumerate(per_seed):
            i += 1
            n_train = 1294 if size == "null" else size
            runs.append(record(i, {"model": model, "dataset.train_subset": size, "seed": seed, "data.n_train": n_train},
                               {"test/acc": a}))
    return build_rows(runs, BY, ["test/acc"])


CNN_ACC = {("cnn", "100"): [0.93, 0.94, 0.95], ("cnn", "300"): [0.96, 0.96, 0.97], ("cnn", "null"): [0.99, 0.99, 0.98]}


def test_finding_states_the_gap_at_the_smallest_and_largest_size():
    rows = study_rows({**CNN_ACC, ("vit", "100"): [0.70, 0.72, 0.71], ("vit", "300"): [0.85, 0.87, 0.86],
                       ("vit", "null"): [0.96, 0.95, 0.96]})
    text = get_finding(NAME)(rows, "test/acc", "max")
    gap = mean_ci([0.93 - 0.70, 0.94 - 0.72, 0.95 - 0.71])
    assert "test/acc with 100 training samples: cnn 0.9400 ± " in text and "vit 0.7100 ± " in text
    assert f"gap cnn - vit 0.2300 ± {gap.half_width:.4f} (Welch t-test p=" in text
    assert "test/acc with 1294 training samples: cnn 0.9867 ± " in text
    assert "gap by training size 100/300/1294: 0.2300/0.1033/0.0300" in text
    assert "gap at 100 vs at 1294: Welch t-test p=" in text
    assert "APPEARED" in text and "NOT" not in text


@pytest.mark.parametrize("case", ["gap does not shrink", "vit wins when small", "one seed"])
def test_finding_says_when_the_effect_is_missing(case):
    vit = {("vit", "100"): [0.70, 0.72, 0.71], ("vit", "null"): [0.76, 0.74, 0.75]}  # the gap grows
    cnn = CNN_ACC
    if case == "vit wins when small":
        vit = {("vit", "100"): [0.97, 0.98, 0.96], ("vit", "null"): [0.99, 0.99, 0.98]}
    if case == "one seed":  # an effect in the means, but nothing to test it with
        cnn = {k: v[:1] for k, v in CNN_ACC.items()}
        vit = {("vit", "100"): [0.70], ("vit", "null"): [0.96]}
    text = get_finding(NAME)(study_rows({**cnn, **vit}), "test/acc", "max")
    assert "did NOT appear" in text


def test_finding_needs_both_models():
    text = get_finding(NAME)(study_rows(CNN_ACC), "test/acc", "max")
    assert text.startswith("finding: the vit_vs_cnn study needs model=vit")


def test_figure_draws_test_acc_against_the_training_size(tmp_path):
    from dlx.report.findings_vit import plot_by_size

    rows = study_rows({**CNN_ACC, ("vit", "100"): [0.70, 0.72, 0.71], ("vit", "null"): [0.96, 0.95, 0.96]})
    png = plot_by_size(rows, tmp_path / "by_size.png")
    assert png is not None and png.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------- for real
def test_study_report_draws_the_sizes_and_a_vit_attention_map(workdir, capsys):
    from dlx.report.cli import report_main

    proc = run_dlx(["study", NAME, "trainer.epochs=1", "dataset.train_subset=100", "seed=0",
                    "hydra.launcher.n_jobs=1"], workdir, check=True)
    parent = proc.stdout.split("dlx report ")[1].split(")")[0].strip()
    capsys.readouterr()
    assert report_main([parent, "--format", "json", "--uri", store_uri(workdir), "--out", str(workdir / "rep")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"test_acc_by_size.png", "vit_attention.png"} <= set(data["images"])
    assert (workdir / "rep" / "vit_attention.png").stat().st_size > 10_000
    assert "report/vit_attention.png" in {a.path for a in client_for(workdir).list_artifacts(parent, "report")}
    finding = next(n for n in data["notes"] if n.startswith("finding"))
    assert "test/acc with 100 training samples: cnn" in finding and "expected effect" in finding

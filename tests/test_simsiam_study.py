"""The simsiam study (conf/study/simsiam.yaml): its preset, the finding `dlx report` states for it on runs with
known values (each part of the effect present and absent), and a tiny real run through `dlx study` and
`dlx report` that draws the collapse monitor over epochs and counts the epochs to collapse."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO, run_dlx, store_uri
from omegaconf import OmegaConf

import dlx.report.findings_simsiam  # noqa: F401 - registers the study's finding and figures
from dlx.compose import compose
from dlx.report.collect import RunRecord
from dlx.report.findings import show
from dlx.report.stats import get_finding, mean_ci
from dlx.report.table import build_rows

NAME = "simsiam"
BY = ["objective", "ssl.stop_grad"]
METRICS = ["test/knn_acc", "probe/acc", "ssl/output_std"]
REF = 0.125  # 1/sqrt(64)


# ---------------------------------------------------------------------------------------------- preset
def test_preset_composes_and_sweeps_both_switch_settings_of_three_objectives():
    preset = OmegaConf.load(REPO / "conf" / "study" / f"{NAME}.yaml")
    cfg = compose([f"+study={NAME}"])
    assert cfg.study.name == NAME and cfg.study.statement and cfg.study.expected
    swept = dict(preset.hydra.sweeper.params)
    assert len(str(swept["seed"]).split(",")) >= 3
    assert set(str(swept["objective"]).split(",")) == {"simsiam", "simclr", "supervised"}
    assert set(str(swept["ssl.stop_grad"]).split(",")) == {"true", "false"}
    for key in [*cfg.study.factor.split(","), *swept]:
        assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", key
    # the supervised rows measure their encoder with the same k-NN and probe as the self-supervised ones
    assert cfg.objective.represent is True and cfg.model._target_ == "dlx.models.CNN"
    assert get_finding(NAME).__module__ == "dlx.report.findings_simsiam"
    # every point of the grid composes and passes the checks a run makes before any data loads
    for objective in str(swept["objective"]).split(","):
        for stop_grad in str(swept["ssl.stop_grad"]).split(","):
            point = compose([f"+study={NAME}", f"objective={objective}", f"ssl.stop_grad={stop_grad}"])
            assert point.objective.name == objective and point.ssl.stop_grad == (stop_grad == "true")
            assert point.objective.represent is True  # the preset's value outlives the group's choice


# ---------------------------------------------------------------------------------------------- finding
def record(i: int, params: dict, metrics: dict) -> RunRecord:
    return RunRecord(f"{i:032x}", f"r{i}", "FINISHED", {k: str(v) for k, v in params.items()},
                     {"dlx.outcome": "ok"}, dict(metrics))


def arm(std: list[float], knn: list[float], probe: float = 0.8) -> list[dict]:
    return [{"ssl/output_std": s, "ssl/output_std_ref": REF, "test/knn_acc": k, "probe/acc": probe}
            for s, k in zip(std, knn)]


def rows_of(cells: dict[tuple[str, str], list[dict]]):
    runs, i = [], 0
    for (objective, stop_grad), per_seed in cells.items():
        for seed, metrics in enumerate(per_seed):
            i += 1
            runs.append(record(i, {"objective.name": objective, "ssl.stop_grad": stop_grad, "seed": seed,
                                   "data.num_classes": 10}, metrics))
    return build_rows(runs, BY, METRICS)


HEALTHY = arm([0.121, 0.123, 0.122], [0.84, 0.86, 0.85])


def study(off: list[dict], clr_off: list[dict] | None = None) -> dict:
    sup = [{"test/knn_acc": a, "probe/acc": a, "test/acc": a} for a in (0.97, 0.98, 0.96)]
    return {("simsiam", "True"): HEALTHY, ("simsiam", "False"): off,
            ("simclr", "True"): arm([0.12, 0.121, 0.119], [0.9, 0.91, 0.92]),
            ("simclr", "False"): clr_off or arm([0.118, 0.12, 0.119], [0.9, 0.9, 0.91]),
            ("supervised", "True"): sup, ("supervised", "False"): sup}


def finding(cells) -> str:
    return get_finding(NAME)(rows_of(cells), "test/knn_acc", "max")


def test_finding_appears_when_the_output_collapses_and_the_knn_falls_to_chance():
    text = finding(study(arm([0.002, 0.001, 0.003], [0.11, 0.09, 0.12], probe=0.15)))
    on = mean_ci([v / REF for v in (0.121, 0.123, 0.122)])
    off = mean_ci([v / REF for v in (0.002, 0.001, 0.003)])
    assert f"simsiam with stop-grad: ssl/output_std over 1/sqrt(d) {show(on)}" in text
    assert f"without: ssl/output_std over 1/sqrt(d) {show(off)}, test/knn_acc 0.1067 ± " in text
    assert "probe/acc 0.1500 ± 0.0000" in text and "chance 0.1000" in text
    assert "simclr with stop-grad: ssl/output_std over 1/sqrt(d) 0.9600 ± " in text
    # supervised ignores the switch: its two rows are one run per seed, counted once
    assert "supervised (n=3): test/knn_acc 0.9700 ± " in text
    assert text.count("APPEARED") == 3 and "NOT" not in text


def test_finding_separates_the_output_collapse_from_the_knn_fall():
    # what digits gives at Adam's defaults: the projection collapses, the encoder keeps its neighbourhoods
    text = finding(study(arm([0.024, 0.027, 0.03], [0.74, 0.78, 0.8])))
    assert "expected effect (output collapse:" in text and "output collapse: without the stop-gradient" in text
    collapse, knn = text.split("expected effect (")[1:3]
    assert collapse.endswith("APPEARED; ") and "did NOT appear" in knn


@pytest.mark.parametrize("case", ["no collapse", "one seed", "simclr collapses"])
def test_finding_says_when_a_part_is_missing(case):
    off, clr_off = arm([0.002, 0.001, 0.003], [0.11, 0.09, 0.12]), None
    if case == "no collapse":
        off = arm([0.11, 0.12, 0.115], [0.8, 0.82, 0.81])
    if case == "one seed":  # the means would pass, but nothing tests them
        cells = {k: v[:1] for k, v in study(off).items()}
        text = finding(cells)
        assert text.count("did NOT appear") == 2 and "Welch t-test undefined" in text
        return
    if case == "simclr collapses":
        clr_off = arm([0.01, 0.02, 0.015], [0.3, 0.2, 0.25])
    text = finding(study(off, clr_off))
    assert text.count("did NOT appear") == (2 if case == "no collapse" else 1)


def test_finding_needs_both_switch_settings_and_the_monitor():
    cells = study(arm([0.002, 0.001, 0.003], [0.11, 0.09, 0.12]))
    del cells["simsiam", "False"]
    assert "needs finished runs of objective=simsiam with ssl.stop_grad=true and ssl.stop_grad=false" in finding(cells)
    cells = study([{"test/knn_acc": 0.1}] * 3)
    cells["simsiam", "True"] = [{"test/knn_acc": 0.8}] * 3
    assert "logged no ssl/output_std" in finding(cells)


# ---------------------------------------------------------------------------------------------- for real
def test_study_reports_the_collapse_monitor_over_epochs(workdir, capsys):
    from dlx.report.cli import report_main

    proc = run_dlx(["study", NAME, "objective=simsiam", "seed=0", "trainer.epochs=2",
                    "dataset.train_subset=128", "model.width=8", "ssl.hidden=32", "objective.probe_epochs=2",
                    "hydra.launcher.n_jobs=1"], workdir, check=True)
    parent = proc.stdout.split("dlx report ")[1].split(")")[0].strip()
    capsys.readouterr()
    assert report_main([parent, "--format", "json", "--uri", store_uri(workdir), "--out", str(workdir / "rep")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "collapse.png" in data["images"] and (workdir / "rep" / "collapse.png").stat().st_size > 10_000
    text = next(n for n in data["notes"] if n.startswith("finding"))
    assert "simsiam with stop-grad: ssl/output_std" in text and "chance 0.1000" in text
    assert "expected effect (output collapse" in text and "simclr" not in text  # no simclr runs: no simclr verdict
    onset = next(n for n in data["notes"] if n.startswith("collapse onset"))
    for arm_name in ("without", "with"):  # one seed each: its first epoch below 0.3x, or never
        assert re.search(rf"simsiam {arm_name} stop-grad (never|[12]) \([01]/1 runs\)", onset), onset

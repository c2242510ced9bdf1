"""The four ablation studies of the mission (dropout, norm, init, batch_size): their presets, the one-line
findings `dlx report` states for them (checked on runs with known values, effect present and absent), and two
of them run for real at a tiny size, through `dlx study` and `dlx report`, to check the figures they add."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO, client_for, run_dlx, store_uri
from omegaconf import OmegaConf

import dlx.report.findings  # noqa: F401 - registers the studies' checks
from dlx.compose import compose
from dlx.report.collect import RunRecord
from dlx.report.stats import get_finding, mean_ci
from dlx.report.table import build_rows

STUDIES = ("dropout", "norm", "init", "batch_size")


# ---------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", STUDIES)
def test_preset_composes_and_sweeps_keys_of_the_config(name):
    preset = OmegaConf.load(REPO / "conf" / "study" / f"{name}.yaml")
    cfg = compose([f"+study={name}"])
    assert cfg.study.name == name and cfg.study.statement and cfg.study.expected
    swept = dict(preset.hydra.sweeper.params)
    assert len(str(swept["seed"]).split(",")) >= 3  # at least three seeds
    for key in [*cfg.study.factor.split(","), *swept]:
        assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", key
    assert get_finding(name).__module__ == "dlx.report.findings"


def test_dlx_report_finds_the_check_of_every_ready_made_study_by_itself():
    from dlx.report.cli import register_studies
    from dlx.report.stats import finding

    register_studies()
    generic = {"optimizers", "schedulers"}  # many levels: their finding is the generic best against worst
    for path in sorted((REPO / "conf" / "study").glob("*.yaml")):
        name = OmegaConf.load(path).study.name
        assert (get_finding(name) is finding) == (name in generic), f"{name}: no effect check for dlx report"


# ---------------------------------------------------------------------------------------------- findings
def record(i: int, params: dict, metrics: dict, ok: bool = True) -> RunRecord:
    return RunRecord(f"{i:032x}", f"r{i}", "FINISHED" if ok else "FAILED", {k: str(v) for k, v in params.items()},
                     {"dlx.outcome": "ok" if ok else "failed"}, dict(metrics))


def rows_of(cells: dict[tuple, list[dict]], by: list[str], metrics: list[str], params: dict | None = None):
    runs, i = [], 0
    for key, per_seed in cells.items():
        for seed, m in enumerate(per_seed):
            i += 1
            runs.append(record(i, {**dict(zip(by, key)), "seed": seed, **(params or {})}, m))
    return build_rows(runs, by, metrics)


def dropout_rows(gaps: dict[float, list[float]]):
    cells = {(p,): [{"gap/loss": g, "gap/acc": g / 10, "test/acc": 0.5} for g in gs] for p, gs in gaps.items()}
    return rows_of(cells, ["regularization.dropout"], ["gap/loss", "gap/acc"])


def test_dropout_finding_states_the_gap_at_each_level():
    rows = dropout_rows({0.0: [2.8, 2.7, 2.9], 0.1: [2.4, 2.5, 2.3], 0.5: [1.6, 1.5, 1.7]})
    text = get_finding("dropout")(rows, "gap/loss", "min")
    s0, s5 = mean_ci([2.8, 2.7, 2.9]), mean_ci([1.6, 1.5, 1.7])
    assert f"gap/loss 2.8000 ± {s0.half_width:.4f} at dropout 0 vs 1.6000 ± {s5.half_width:.4f} at dropout 0.5" in text
    assert "mean by dropout 0: 2.8000, 0.1: 2.4000, 0.5: 1.6000" in text
    assert "APPEARED" in text and "NOT" not in text


def test_dropout_finding_says_when_the_gap_does_not_shrink():
    rows = dropout_rows({0.0: [2.0, 2.1, 1.9], 0.1: [2.2, 2.3, 2.1], 0.5: [1.0, 1.1, 0.9]})  # 0.1 is worse
    assert "did NOT appear" in get_finding("dropout")(rows, "gap/loss", "min")
    rows = dropout_rows({0.0: [2.0, 2.5, 1.5], 0.5: [1.9, 2.4, 1.4]})  # smaller, but not significantly
    assert "did NOT appear" in get_finding("dropout")(rows, "gap/loss", "min")


def norm_rows(bn_tiny_acc: float, plain_reaches: bool):
    by = ["model.norm", "trainer.batch_size"]
    plain = {"epochs_to_target": 12} if plain_reaches else {}
    cells = {
        ("none", 64): [{"test/acc": 0.1, **plain}] * 3,
        ("batch", 64): [{"test/acc": 0.96, "epochs_to_target": e} for e in (6, 7, 8)],
        ("layer", 64): [{"test/acc": 0.97, "epochs_to_target": e} for e in (4, 4, 5)],
        ("batch", 4): [{"test/acc": bn_tiny_acc + d} for d in (-0.02, 0.0, 0.02)],
        ("layer", 4): [{"test/acc": 0.96 + d, "epochs_to_target": 2} for d in (-0.01, 0.0, 0.01)],
    }
    return rows_of(cells, by, ["epochs_to_target", "test/acc"])


def test_norm_finding_counts_runs_reaching_the_target_and_compares_tiny_batches():
    text = get_finding("norm")(norm_rows(0.45, plain_reaches=False), "epochs_to_target", "min")
    assert "at batch 64, runs reaching the target: none 0/3 runs, batch 3/3 runs in 7.0000" in text
    assert "layer 3/3 runs in 4.3333" in text
    assert "batch norm 0.9600 ± 0.0000 -> 0.4500 ± " in text and "layer norm 0.9700 ± 0.0000 -> 0.9600 ± " in text
    assert "APPEARED" in text


@pytest.mark.parametrize(("bn_tiny", "plain_reaches"), [(0.95, False), (0.45, True)])
def test_norm_finding_needs_both_effects(bn_tiny, plain_reaches):
    # batch norm as good at batch 4 as at 64: no effect. A plain net that reaches the target, but in 12
    # epochs against 7 and 4.3 for the normalised ones, still shows it.
    text = get_finding("norm")(norm_rows(bn_tiny, plain_reaches), "epochs_to_target", "min")
    assert ("did NOT appear" in text) == (bn_tiny > 0.9)


def init_rows(xavier_relu_ratio: float, xavier_relu_acc: float):
    by = ["model.init", "model.activation", "model.depth"]
    cells = {}
    for depth in (5, 30):
        deep = depth == 30
        cells["xavier_normal", "relu", depth] = [
            {"test/acc": (xavier_relu_acc if deep else 0.97) + d, "init/act_std_ratio": xavier_relu_ratio if deep else 0.2}
            for d in (-0.01, 0, 0.01)]
        cells["he_normal", "relu", depth] = [{"test/acc": 0.94 + d, "init/act_std_ratio": 0.9, "epochs_to_target": 8}
                                             for d in (-0.01, 0, 0.01)]
        for init in ("xavier_normal", "he_normal"):
            cells[init, "tanh", depth] = [{"test/acc": 0.95, "init/act_std_ratio": 0.5, "epochs_to_target": 6}] * 3
    return rows_of(cells, by, ["test/acc"])


def test_init_finding_compares_xavier_and_he_with_relu_at_the_deepest_net():
    text = get_finding("init")(init_rows(1e-5, 0.10), "test/acc", "max")
    assert "relu at depth 30: xavier_normal act_std last/first at init 1.00e-05 ± 0.0000" in text
    assert "he_normal act_std last/first at init 0.9000" in text
    assert "0/3 runs reached" in text and "3/3 runs reached the target in 8.0000" in text
    assert "xavier_normal-relu 0.9700/0.1000, he_normal-relu 0.9400/0.9400" in text
    assert "APPEARED" in text


def test_init_finding_says_when_xavier_relu_trains_fine():
    assert "did NOT appear" in get_finding("init")(init_rows(0.8, 0.94), "test/acc", "max")


def batch_rows(eigs: dict[int, list[float]], gap_small: float, gap_large: float):
    cells = {}
    for b, es in eigs.items():
        gap = gap_small if b == min(eigs) else gap_large
        cells[(b,)] = [{"sharpness/hessian_top_eig": e, "sharpness/eps": e * 2, "gap/acc": gap + 0.001 * i}
                       for i, e in enumerate(es)]
    return rows_of(cells, ["trainer.batch_size"], ["sharpness/hessian_top_eig"],
                   params={"diagnostics.sharpness.eps": "0.001"})


def test_batch_size_finding_orders_sharpness_by_batch():
    text = get_finding("batch_size")(batch_rows({32: [0.05, 0.06, 0.07], 100: [0.3, 0.4, 0.5],
                                                 1000: [5.0, 6.0, 7.0]}, 0.01, 0.03), "x", "min")
    assert "sharpness/hessian_top_eig by batch 32/100/1000: 0.0600 < 0.4000 < 6.0000" in text
    assert "sharpness/eps (eps=0.001) by batch 32/100/1000: 0.1200 < 0.8000 < 12.0000" in text
    assert "gap/acc by batch 32/100/1000: 0.0110 < 0.0310 < 0.0310" not in text  # not rising between 100 and 1000
    assert "APPEARED" in text


def test_batch_size_finding_says_when_large_batches_are_flatter():
    text = get_finding("batch_size")(batch_rows({32: [5.0, 6.0, 7.0], 1000: [0.05, 0.06, 0.07]}, 0.01, 0.03), "x", "min")
    assert "did NOT appear" in text


def test_failed_runs_never_enter_a_finding():
    by = ["regularization.dropout"]
    runs = [record(i, {by[0]: p, "seed": i}, {"gap/loss": g, "gap/acc": 0.1})
            for i, (p, g) in enumerate([(0.0, 2.0), (0.0, 2.1), (0.0, 2.2), (0.5, 1.0), (0.5, 1.1), (0.5, 1.2)])]
    runs.append(record(99, {by[0]: 0.5, "seed": 7}, {"gap/loss": 50.0, "gap/acc": 0.1}, ok=False))
    text = get_finding("dropout")(build_rows(runs, by, ["gap/loss"]), "gap/loss", "min")
    assert "vs 1.1000" in text


# ---------------------------------------------------------------------------------------------- for real
def report(capsys, *args: str) -> str:
    """`dlx report ARGS` in this process (the study itself ran as a subprocess): its stdout."""
    from dlx.report.cli import report_main

    capsys.readouterr()
    assert report_main(list(args)) == 0
    return capsys.readouterr().out


def test_batch_size_study_reports_the_loss_along_the_line_between_solutions(workdir, capsys):
    proc = run_dlx(["study", "batch_size", "trainer.epochs=2", "trainer.batch_size=32,1000", "seed=0",
                    "dataset.train_subset=200", "model.width=32", "diagnostics.sharpness.samples=64",
                    "diagnostics.sharpness.hessian_iters=3", "diagnostics.sharpness.eps_steps=2"], workdir, check=True)
    parent = proc.stdout.split("dlx report ")[1].split(")")[0].strip()
    data = json.loads(report(capsys, parent, "--format", "json", "--uri", store_uri(workdir), "--out",
                             str(workdir / "rep")))
    assert "interpolation.png" in data["images"]
    client = client_for(workdir)
    assert "report/interpolation.png" in {a.path for a in client.list_artifacts(parent, "report")}
    # the line's ends are the two solutions themselves: alpha=0 is the batch-32 runs' own final train loss
    small = next(r for r in data["rows"] if r["label"] == "32")
    own = mean_ci([client.get_run(i).data.metrics["final/train_loss"] for i in [r["run_id"] for r in small["runs"]]]).mean
    note = next(n for n in data["notes"] if n.startswith("train loss along the line"))
    assert f"{own:.3g} at the batch-32 solution" in note
    finding = next(n for n in data["notes"] if n.startswith("finding"))
    assert "sharpness/hessian_top_eig by batch 32/1000" in finding and "expected effect" in finding


def test_init_study_draws_depth_profiles(workdir, capsys):
    run_dlx(["study", "init", "trainer.epochs=1", "model.depth=3", "model.activation=relu", "model.init=he_normal",
             "seed=0", "model.width=16"], workdir, check=True)
    client = client_for(workdir)
    parent = next(r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                  if r.data.tags.get("dlx.study") == "init")
    report(capsys, parent.info.run_id, "--uri", store_uri(workdir), "--out", str(workdir / "rep"))
    assert (workdir / "rep" / "depth_profiles.png").stat().st_size > 10_000
    child = next(r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                 if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    steps = [int(p.step) for p in client.get_metric_history(child.info.run_id, "act_std/layer_2")]
    assert steps == [0, 1] and not math.isnan(child.data.metrics["init/act_std_ratio"])

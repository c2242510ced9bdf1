"""The rnn study (conf/study/rnn.yaml): its preset, the finding `dlx report` states for it on runs with known
values (effect present and absent), and a tiny real run through `dlx study` and `dlx report` for its figures."""

from __future__ import annotations

import json

from conftest import REPO, client_for, run_dlx, store_uri
from omegaconf import OmegaConf

import dlx.report.findings_rnn  # noqa: F401 - registers the rnn study's finding and figures
from dlx.compose import compose
from dlx.report.collect import RunRecord
from dlx.report.findings import show
from dlx.report.stats import get_finding, mean_ci
from dlx.report.table import build_rows

BY = ["model", "dataset.length"]
METRICS = ["test/mse", "test/solved", "bptt/first_last_init", "bptt/first_last_final"]


def test_preset_composes_and_sweeps_keys_of_the_config():
    preset = OmegaConf.load(REPO / "conf" / "study" / "rnn.yaml")
    cfg = compose(["+study=rnn"])
    assert cfg.study.name == "rnn" and cfg.study.statement and cfg.study.expected
    swept = dict(preset.hydra.sweeper.params)
    assert len(str(swept["seed"]).split(",")) >= 3  # at least three seeds
    assert set(str(swept["model"]).split(",")) == {"rnn", "lstm", "gru"}
    assert max(int(n) for n in str(swept["dataset.length"]).split(",")) >= 50
    for key in [*cfg.study.factor.split(","), *swept]:
        assert OmegaConf.select(cfg, key, default="__absent__") != "__absent__", key
    assert cfg.dataset._target_ == "dlx.data.adding" and cfg.diagnostics.sequence.enabled
    assert cfg.loss._target_.endswith("SquaredError")
    assert get_finding("rnn").__module__ == "dlx.report.findings_rnn"


# ---------------------------------------------------------------------------------------------- finding
def record(i: int, params: dict, metrics: dict) -> RunRecord:
    return RunRecord(f"{i:032x}", f"r{i}", "FINISHED", {k: str(v) for k, v in params.items()},
                     {"dlx.outcome": "ok"}, dict(metrics))


def rows_of(cells: dict[tuple[str, int], list[dict]]):
    runs = [(m, n, s, metrics) for (m, n), per_seed in cells.items() for s, metrics in enumerate(per_seed)]
    records = [record(i, {"model": m, "dataset.length": n, "seed": s}, metrics)
               for i, (m, n, s, metrics) in enumerate(runs, start=1)]
    return build_rows(records, BY, METRICS)


def seeds(mse: list[float], solved: float, init: float, final: float) -> list[dict]:
    return [{"test/mse": m, "test/solved": solved, "bptt/first_last_init": init, "bptt/first_last_final": final}
            for m in mse]


def study(rnn_long: list[float], lstm_long: list[float], rnn_final: float = 1e-20) -> dict:
    return {
        ("rnn", 25): seeds([0.01, 0.012, 0.011], 0.3, 1e-6, 0.5),
        ("lstm", 25): seeds([0.001, 0.0012, 0.0011], 0.9, 1e-3, 0.6),
        ("gru", 25): seeds([0.001, 0.0011, 0.0009], 0.9, 1e-6, 0.5),
        ("rnn", 100): seeds(rnn_long, 0.09, 1e-21, rnn_final),
        ("lstm", 100): seeds(lstm_long, 0.9, 5e-8, 0.1),
        ("gru", 100): seeds([0.0009, 0.0006, 0.0008], 0.92, 1e-20, 0.3),
    }


def finding(cells) -> str:
    return get_finding("rnn")(rows_of(cells), "test/mse", "min")


def test_finding_appears_when_the_rnn_stays_at_the_trivial_mse_and_the_gated_nets_solve_it():
    text = finding(study([0.158, 0.160, 0.157], [0.0010, 0.0014, 0.0012]))
    rnn, lstm = mean_ci([0.158, 0.160, 0.157]), mean_ci([0.0010, 0.0014, 0.0012])
    assert f"at length 100: test/mse rnn {show(rnn)} (trivial 0.1667)" in text
    assert f"lstm {show(lstm)} (Welch t-test p=" in text
    assert "||dL/dh_0|| / ||dL/dh_99|| on the final weights: rnn 1.00e-20 ± 0.0000, lstm 0.1000 ± 0.0000" in text
    assert "at initialisation: rnn 1.00e-21 ± 0.0000, lstm 5.00e-08 ± 0.0000, gru 1.00e-20" in text
    assert "test/mse by length 25/100: rnn 0.0110/0.1583, lstm 0.0011/0.0012, gru 0.0010/0.0008" in text
    assert "APPEARED" in text and "NOT" not in text


def test_finding_does_not_appear_when_the_rnn_learns_or_a_gated_net_does_not():
    assert "did NOT appear" in finding(study([0.002, 0.003, 0.0025], [0.0010, 0.0014, 0.0012]))  # the rnn solves it
    assert "did NOT appear" in finding(study([0.158, 0.160, 0.157], [0.150, 0.155, 0.152]))  # the lstm does not
    # the lstm solves it in two seeds of three: far below on average, but not significantly so
    assert "did NOT appear" in finding(study([0.158, 0.160, 0.157], [0.0010, 0.0012, 0.16]))
    # the gated nets solve it, but the rnn's gradient reaches the first step as well as theirs
    assert "did NOT appear" in finding(study([0.158, 0.160, 0.157], [0.0010, 0.0014, 0.0012], rnn_final=0.05))


def test_finding_says_what_is_missing():
    cells = study([0.158, 0.160, 0.157], [0.0010, 0.0014, 0.0012])
    for key in cells:
        cells[key] = [{k: v for k, v in m.items() if not k.startswith("bptt/")} for m in cells[key]]
    text = finding(cells)
    assert "diagnostics=sequence on?" in text and "did NOT appear" in text
    only_gated = {k: v for k, v in cells.items() if k[0] != "rnn"}
    assert "needs finished runs of model=rnn" in finding(only_gated)


# ---------------------------------------------------------------------------------------------- for real
def test_rnn_study_reports_its_finding_and_draws_the_gradient_through_time(workdir, capsys):
    from dlx.report.cli import report_main

    proc = run_dlx(["study", "rnn", "model=rnn,lstm", "dataset.length=12", "seed=0", "trainer.epochs=1",
                    "dataset.n_train=100", "model.hidden=8", "diagnostics.sequence.samples=8",
                    "hydra.launcher.n_jobs=1"], workdir, check=True)
    parent = proc.stdout.split("dlx report ")[1].split(")")[0].strip()
    capsys.readouterr()
    assert report_main([parent, "--format", "json", "--uri", store_uri(workdir), "--out", str(workdir / "rep")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"mse_by_length.png", "grad_through_time.png"} <= set(data["images"])
    assert (workdir / "rep" / "grad_through_time.png").stat().st_size > 10_000
    text = next(n for n in data["notes"] if n.startswith("finding"))
    assert "at length 12: test/mse rnn" in text and "lstm" in text and "expected effect" in text
    assert "||dL/dh_0|| / ||dL/dh_11|| on the final weights: rnn" in text
    # the curves the figure averages: one point per step of the sequence, at initialisation and at the end
    client = client_for(workdir)
    child = next(r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                 if r.data.tags.get("mlflow.parentRunId") == parent)
    for when in ("init", "final"):
        steps = [int(p.step) for p in client.get_metric_history(child.info.run_id, f"bptt/grad_norm_{when}")]
        assert sorted(steps) == list(range(12))

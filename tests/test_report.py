"""`dlx report` against a real SQLite MLflow store built here with known values: a study's parent run with
2 optimizers x 3 seeds, one failed and one pruned trial; an lr sweep; a stand-alone run. Every figure the
report prints is checked against values worked out by hand in this file."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, client_for, run_dlx, store_uri

T975_2 = 4.302653  # Student t quantile 0.975 with 2 degrees of freedom
T975_1 = 12.706205  # ... with 1 degree of freedom
TEST_ACC = {"sgd": [0.90, 0.92, 0.97], "adam": [0.96, 0.97, 0.98]}
VAL_ACC = {"sgd": [[0.50, 0.80, 0.88], [0.55, 0.82, 0.90], [0.60, 0.85, 0.95]],
           "adam": [[0.70, 0.90, 0.95], [0.72, 0.91, 0.96], [0.74, 0.93, 0.97]]}
TRAIN_LOSS = {"sgd": [[1.5, 0.8, 0.5], [1.4, 0.7, 0.45], [1.6, 0.9, 0.55]],
              "adam": [[1.0, 0.4, 0.2], [1.1, 0.5, 0.25], [0.9, 0.3, 0.15]]}
LR = {"sgd": "0.1", "adam": "0.001"}
# by hand: sgd mean 0.93, s = sqrt((0.03^2 + 0.01^2 + 0.04^2) / 2) = sqrt(0.0013) = 0.036056
SGD_MEAN, SGD_HALF = 0.93, T975_2 * math.sqrt(0.0013) / math.sqrt(3)  # 0.089567
ADAM_MEAN, ADAM_HALF = 0.97, T975_2 * 0.01 / math.sqrt(3)  # 0.024841


def _run(client, exp_id, *, params, tags=None, metrics=(), status="FINISHED", parent=None, outcome="ok"):
    """A finished run with params, tags and {metric: [value per epoch 1..]} histories."""
    from mlflow.entities import Metric, Param

    tags = dict(tags or {})
    if parent:
        tags["mlflow.parentRunId"] = parent
    if outcome:
        tags["dlx.outcome"] = outcome
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    now = int(time.time() * 1000)
    points = [Metric(k, v, now + i, step) for k, hist in dict(metrics).items() for i, (step, v) in enumerate(hist)]
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=points)
    client.set_terminated(run_id, status=status)
    return run_id


def _trial(client, exp_id, parent, opt, seed, *, test_acc=None, val=(), loss=(), **kw):
    params = {"optimizer.name": opt, "optimizer.lr": LR[opt], "seed": seed, "trainer.seed": seed,
              "tracking.run_name": f"{opt}-s{seed}", "model.num_params": 1234, "data.n_train": 1000}
    metrics = {"val/acc": list(enumerate(val, 1)), "train/loss": list(enumerate(loss, 1))}
    if test_acc is not None:
        metrics["test/acc"] = [(len(val), test_acc)]
        metrics["test/loss"] = [(len(val), 1 - test_acc)]
    return _run(client, exp_id, params=params, metrics=metrics, parent=parent, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    from dlx.tracking import open_store

    workdir = tmp_path_factory.mktemp("report")
    artifacts = (workdir / "outputs" / "mlartifacts").as_uri()
    client, exp = open_store(store_uri(workdir), "studies", artifacts)
    parent = _run(client, exp, params={"sweep.method": "grid", "sweep.objective": "val/acc",
                                       "sweep.param.optimizer": "sgd,adam", "sweep.param.seed": "0,1,2"},
                  tags={"dlx.study": "optimizers", "dlx.study.statement": "adaptive steps train faster",
                        "dlx.study.metrics": "test/acc,val/acc", "dlx.study.factor": "optimizer.name",
                        "dlx.study.levels": "sgd,adam", "dlx.study.expected": "adam above sgd"}, outcome=None)
    children = {}
    for opt in ("sgd", "adam"):
        for seed in range(3):
            children[opt, seed] = _trial(client, exp, parent, opt, seed, test_acc=TEST_ACC[opt][seed],
                                         val=VAL_ACC[opt][seed], loss=TRAIN_LOSS[opt][seed])
    # a failed trial with a terrible test/acc and a pruned one: counted, never averaged in
    failed = _trial(client, exp, parent, "sgd", 3, test_acc=0.10, val=[0.11, 0.10], loss=[9.0, 9.5],
                    status="FAILED", outcome="failed")
    _trial(client, exp, parent, "adam", 3, val=[0.20], loss=[5.0], status="KILLED", outcome="pruned")
    alone = _trial(client, exp, None, "sgd", 9, test_acc=0.5, val=[0.5], loss=[1.0])

    _, lr_exp = open_store(store_uri(workdir), "lr", artifacts)
    lr_parent = _run(client, lr_exp, params={"sweep.method": "grid", "sweep.param.optimizer.lr": "1e-3,1e-2,1e-1",
                                             "sweep.param.seed": "0,1"}, outcome=None)
    for lr, accs in (("0.001", (0.6, 0.7)), ("0.01", (0.8, 0.9)), ("0.1", (0.5, 0.4))):
        for seed, acc in enumerate(accs):
            _run(client, lr_exp, params={"optimizer.name": "sgd", "optimizer.lr": lr, "seed": seed},
                 metrics={"test/acc": [(2, acc)], "val/acc": [(1, acc / 2), (2, acc)]}, parent=lr_parent)
    return {"workdir": workdir, "parent": parent, "children": children, "failed": failed, "alone": alone,
            "lr_parent": lr_parent}


def _report(store, *args, check=True):
    return run_dlx(["report", *args], store["workdir"], check=check, timeout=120)


def _row(data, label):
    return next(r for r in data["rows"] if r["label"] == label)


def _markdown_cells(text):
    """The Markdown table as {first column: {header: cell}}, bold marks stripped."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip().strip("*") for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return rows


# ---------------------------------------------------------------------------------------------- end to end
def test_study_report_json_files_and_artifacts(store, tmp_path):
    out = tmp_path / "rep"
    proc = _report(store, store["parent"], "--format", "json", "--out", str(out))
    data = json.loads(proc.stdout)
    assert data["by"] == ["optimizer.name"] and data["metrics"] == ["test/acc", "val/acc"]
    assert [r["label"] for r in data["rows"]] == ["sgd", "adam"]  # the study's order of levels
    sgd, adam = _row(data, "sgd"), _row(data, "adam")
    # the failed sgd trial (test/acc 0.10) and the pruned adam trial are counted, not averaged in
    assert sgd["n"] == 3 and sgd["counts"] == {"failed": 1, "pruned": 0, "killed": 0}
    assert adam["n"] == 3 and adam["counts"] == {"failed": 0, "pruned": 1, "killed": 0}
    assert sorted(sgd["metrics"]["test/acc"]["values"]) == TEST_ACC["sgd"]
    assert sgd["metrics"]["test/acc"]["mean"] == pytest.approx(SGD_MEAN, abs=1e-9)
    assert sgd["metrics"]["test/acc"]["ci95"] == pytest.approx(0.089569, abs=1e-5)
    assert sgd["metrics"]["test/acc"]["ci95"] == pytest.approx(SGD_HALF, rel=1e-5)
    assert adam["metrics"]["test/acc"]["ci95"] == pytest.approx(ADAM_HALF, rel=1e-5)
    # val/acc is each run's latest value: the last epoch of its history
    assert adam["metrics"]["val/acc"]["mean"] == pytest.approx((0.95 + 0.96 + 0.97) / 3)
    assert data["best"] == "adam" and adam["best"] and not sgd["best"]

    # the learning curves are the epoch-by-epoch means of the ok runs' logged histories
    for opt in ("sgd", "adam"):
        for metric, hist in (("val/acc", VAL_ACC[opt]), ("train/loss", TRAIN_LOSS[opt])):
            curve = data["curves"][opt][metric]
            assert curve["step"] == [1, 2, 3] and curve["n"] == [3, 3, 3]
            assert curve["mean"] == pytest.approx([sum(h[e] for h in hist) / 3 for e in range(3)])
            assert curve["min"] == pytest.approx([min(h[e] for h in hist) for e in range(3)])

    # the study's statement, expectation and finding, with Welch's t-test between best and worst
    notes = "\n".join(data["notes"])
    assert "adaptive steps train faster" in notes and "expected: adam above sgd" in notes
    p = _welch_by_hand(TEST_ACC["adam"], TEST_ACC["sgd"])
    assert p > 0.05
    assert (f"finding: adam is best on test/acc (0.9700 ± 0.0248, n=3); sgd is worst (0.9300 ± 0.0896, n=3); "
            f"the difference is not significant (Welch t-test p={p:.3f})") in notes

    # the three files agree with each other and with what was printed
    assert json.loads((out / "report.json").read_text()) == data
    table = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    md = _markdown_cells((out / "report.md").read_text())
    for line in table:
        row = _row(data, line["optimizer.name"])
        assert float(line["test/acc mean"]) == row["metrics"]["test/acc"]["mean"]
        assert float(line["test/acc ci95"]) == row["metrics"]["test/acc"]["ci95"]
        assert (int(line["n"]), int(line["failed"]), int(line["pruned"])) == (3, row["counts"]["failed"],
                                                                            row["counts"]["pruned"])
        assert line["best"] == str(int(row["best"]))
        cell = md[line["optimizer.name"]]["test/acc (mean ± 95% CI)"]
        mean, half = (float(x) for x in cell.split("±"))
        assert (mean, half) == (round(row["metrics"]["test/acc"]["mean"], 4), round(row["metrics"]["test/acc"]["ci95"], 4))
    assert md["adam"]["best"] == "best" and md["sgd"]["best"] == ""
    assert "| **adam** |" in (out / "report.md").read_text()

    # logged to the parent run: the same files, and real PNGs
    client = client_for(store["workdir"])
    names = {Path(a.path).name for a in client.list_artifacts(store["parent"], "report")}
    assert {"report.csv", "report.md", "report.json", "learning_curves.png", "final_metrics.png"} <= names
    local = Path(client.download_artifacts(store["parent"], "report", str(tmp_path / "dl")))
    assert (local / "report.csv").read_text() == (out / "report.csv").read_text()
    for png in ("learning_curves.png", "final_metrics.png"):
        assert (local / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _welch_by_hand(a, b):
    from scipy.stats import t

    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return 2 * t.sf(abs(ma - mb) / math.sqrt(va + vb), df)


def test_table_marks_best_row_and_prints_the_finding(store, tmp_path):
    proc = _report(store, store["parent"], "--no-log", "--out", str(tmp_path))
    lines = proc.stdout.splitlines()
    adam = next(ln for ln in lines if "0.9700 ± 0.0248" in ln)
    sgd = next(ln for ln in lines if "0.9300 ± 0.0896" in ln)
    assert "adam" in adam and "best" in adam and "sgd" in sgd and "best" not in sgd
    assert "adaptive steps train faster" in proc.stdout
    assert "finding: adam is best on test/acc" in proc.stdout and "not significant" in proc.stdout
    assert "expected: adam above sgd" in proc.stdout


def test_lr_sweep_groups_by_the_swept_key_and_pipes_csv(store, tmp_path):
    # grouped by the swept key (seeds collapsed); 2 seeds -> t with 1 degree of freedom
    proc = _report(store, store["lr_parent"], "--no-log", "--format", "csv", "--out", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["optimizer.lr"] for r in rows] == ["0.001", "0.01", "0.1"] and rows[0]["n"] == "2"
    mid = rows[1]
    assert float(mid["test/acc mean"]) == pytest.approx(0.85)
    assert float(mid["test/acc ci95"]) == pytest.approx(T975_1 * math.sqrt(0.005) / math.sqrt(2), rel=1e-6)
    assert [r["best"] for r in rows] == ["0", "1", "0"]
    assert client_for(store["workdir"]).list_artifacts(store["lr_parent"]) == []  # --no-log
    assert (tmp_path / "report.csv").read_text() == proc.stdout and (tmp_path / "final_metrics.png").is_file()


def test_experiment_report_leaves_sweep_parents_out(store, tmp_path):
    proc = _report(store, "studies", "--format", "markdown", "--out", str(tmp_path))
    md = _markdown_cells(proc.stdout)
    assert list(md) == ["adam", "sgd"]  # optimizer.lr follows optimizer.name, so it is not a second key
    assert md["sgd"]["n"] == "4" and md["sgd"]["failed"] == "1"  # the stand-alone sgd run joins the trials
    assert md["adam"]["n"] == "3" and md["adam"]["pruned"] == "1"
    assert "**best**" in proc.stdout and (tmp_path / "report.md").read_text() == proc.stdout


def test_errors_name_what_was_asked_and_what_exists(store, tmp_path, monkeypatch, capsys):
    proc = _report(store, "no-such-study", check=False)
    assert proc.returncode == 1
    assert "no-such-study" in proc.stderr and "experiments: Default, lr, studies" in proc.stderr

    # the same entry point in this process (mlflow is imported once; each case costs milliseconds)
    from dlx.cli import main

    def report(*args):
        code = main(["report", *args])
        return code, capsys.readouterr().err

    monkeypatch.chdir(store["workdir"])
    code, err = report(store["children"]["sgd", 0])
    assert code == 1 and f"is one trial of the sweep whose parent run is {store['parent']}" in err
    code, err = report(store["alone"])
    assert code == 1 and f"run {store['alone']} has no child runs" in err
    code, err = report(store["parent"], "--metric", "test/acc", "val/acc_typo", "--no-log")
    assert code == 2 and "--metric val/acc_typo" in err and "train/loss, val/acc" in err
    code, err = report(store["parent"], "--by", "optimizer.nme", "--no-log")
    assert code == 2 and "--by optimizer.nme" in err and "optimizer.name" in err
    monkeypatch.chdir(tmp_path)
    code, err = report("studies")
    assert code == 1 and "no MLflow store at" in err


# ---------------------------------------------------------------------------------------------- the numbers
def test_mean_ci_matches_the_formula():
    from dlx.report.stats import mean_ci

    s = mean_ci([0.90, 0.92, 0.97])
    assert (s.mean, s.n) == (pytest.approx(0.93), 3)
    assert s.std == pytest.approx(0.036056, abs=1e-6)
    assert s.half_width == pytest.approx(4.302653 * math.sqrt(0.0013) / math.sqrt(3), rel=1e-6)  # 0.089567
    assert mean_ci([0.5]).half_width is None and mean_ci([]).mean is None


def test_mean_curve_averages_the_runs_that_reached_each_epoch():
    from dlx.report.stats import mean_curve

    c = mean_curve([{1: 0.2, 2: 0.4, 3: 0.6}, {1: 0.4, 2: 0.8}])  # the second run stopped early
    assert c.steps == [1, 2, 3] and c.n == [2, 2, 1]
    assert c.mean == pytest.approx([0.3, 0.6, 0.6])
    assert c.half_width[0] == pytest.approx(T975_1 * math.sqrt(0.02) / math.sqrt(2), rel=1e-5)
    assert c.half_width[2] is None and (c.lo[1], c.hi[1]) == (0.4, 0.8)


def test_finding_says_significant_with_welch_p_and_takes_study_hooks():
    from types import SimpleNamespace

    from dlx.report.stats import finding, get_finding, mean_ci, register_finding

    good, bad = [0.97, 0.98, 0.99], [0.50, 0.52, 0.51]
    rows = [SimpleNamespace(label=k, metrics={"test/acc": mean_ci(v)}) for k, v in (("adam", good), ("sgd", bad))]
    p = _welch_by_hand(good, bad)
    assert p < 0.001
    assert finding(rows, "test/acc", "max").endswith(f"the difference is significant (Welch t-test p={p:.1e})")
    assert finding(rows, "test/acc", "min").startswith("finding: sgd is best")
    one = [SimpleNamespace(label="a", metrics={"m": mean_ci([1.0])}), SimpleNamespace(label="b", metrics={"m": mean_ci([2.0, 3.0])})]
    assert "not significant" in finding(one, "m", "max") and "n < 2" in finding(one, "m", "max")

    assert get_finding("report-test-study") is finding
    register_finding("report-test-study")(lambda rows, metric, direction: "finding: custom")
    assert get_finding("report-test-study")(rows, "test/acc", "max") == "finding: custom"


def test_best_row_follows_the_metric_direction():
    from dlx.report.cli import parse_metric
    from dlx.report.collect import RunRecord, Target
    from dlx.report.table import build_rows, mark_best

    runs = [RunRecord(str(i), "", "FINISHED", {"optimizer.name": o}, {"dlx.outcome": "ok"},
                      {"test/loss": loss, "test/acc": 1 - loss}) for i, (o, loss) in enumerate([("sgd", 0.3), ("adam", 0.1)])]
    runs.append(RunRecord("x", "", "FAILED", {"optimizer.name": "sgd"}, {"dlx.outcome": "failed"}, {"test/loss": 0.0}))
    rows = build_rows(runs, ["optimizer.name"], ["test/loss", "test/acc"])
    assert parse_metric("test/loss") == ("test/loss", "min") and parse_metric("test/acc") == ("test/acc", "max")
    assert mark_best(rows, "test/loss", "min").label == "adam"  # the failed sgd run's 0.0 is not averaged in
    assert mark_best(rows, "test/acc", "max").label == "adam" and [r.best for r in rows] == [True, False]
    assert mark_best(rows, "test/loss", "max").label == "sgd"
    assert parse_metric("sharpness:max") == ("sharpness", "max") and parse_metric("sharpness")[1] == "min"
    sweep = RunRecord("p", "", "FINISHED", {"sweep.objective": "sharpness", "sweep.direction": "maximize"}, {}, {})
    target = Target("sweep", "p", "e", runs, sweep)
    assert parse_metric("sharpness", target) == ("sharpness", "max")  # the direction the sweep optimised


def test_log_scale_and_grouping_keys():
    from dlx.report.collect import RunRecord, minimal_keys, varying_keys
    from dlx.report.plots import use_log_scale

    assert use_log_scale("optimizer.lr", [1e-3, 1e-2]) and not use_log_scale("optimizer.lr", [0.1, 0.3])
    assert not use_log_scale("model.width", [32, 64]) and use_log_scale("model.width", [1, 1000])
    runs = [RunRecord(str(i), "", "FINISHED", {"optimizer.name": o, "optimizer.betas": b, "seed": str(s),
                                                "tracking.run_name": f"r{i}"}, {}, {})
            for i, (o, b, s) in enumerate([("adam", "[0.9]", 0), ("adam", "[0.9]", 1), ("sgd", "-", 0)])]
    assert varying_keys(runs) == ["optimizer.betas", "optimizer.name"]
    assert minimal_keys(runs, varying_keys(runs)) == ["optimizer.name"]


def test_import_is_light():
    code = "import sys, dlx.report; print(sorted(m for m in ('torch', 'mlflow', 'scipy', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

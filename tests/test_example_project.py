"""The example project (examples/project/) as a user runs it: dlx installed from the built wheel into a fresh
venv, the project copied to a folder outside the checkout, and the venv's `dlx` console script run there. A
console script, unlike `python -m`, does not put the working directory on sys.path: dlx itself must make the
project's mynet.py and mydata.py importable. Every run lands in the project's own outputs/mlflow.db."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, all_runs
from test_packaging import Installed, imported_from, installed_dlx, is_inside

EXAMPLE = REPO / "examples" / "project"
# the settings of the project's README: the 16-unit net reaches ~1.0 test accuracy in ten epochs of ~0.3 s
FAST = ["optimizer.lr=0.05", "trainer.batch_size=32", "trainer.epochs=10", "trainer.progress=none"]
USER = ["--config-dir", "conf", "model=mynet", "dataset=mydata"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    return installed_dlx(tmp_path_factory.getbasetemp())


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh copy of the example project, outside the checkout, with no store yet."""
    path = tmp_path / "myproject"
    shutil.copytree(EXAMPLE, path, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    assert not is_inside(path, REPO)
    return path


def dlx(installed: Installed, project: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(installed.dlx), *args], cwd=project, env=installed.env, capture_output=True,
                          text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_project_trains_with_the_installed_dlx_and_its_run_is_in_mlflow(installed, project):
    where = imported_from(installed, "dlx", project)
    assert is_inside(where, installed.venv) and not is_inside(where, REPO), where
    assert installed.dlx.read_text().splitlines()[0] == f"#!{installed.python}", "not the venv's console script"

    # an option the YAML does not list is added with a +
    ok(dlx(installed, project, "train", *USER, "+model.activation=tanh", *FAST))
    (run,) = all_runs(project)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["model.activation"] == "tanh"
    assert p["model._target_"] == "mynet.MyNet" and p["dataset._target_"] == "mydata.rings"
    assert p["model.hidden"] == "16" and p["model.depth"] == "1"  # conf/model/mynet.yaml's values
    assert p["dataset.n_rings"] == "3" and p["dataset.val_fraction"] == "0.2"
    assert run.data.tags["dlx.choice.model"] == "mynet" and run.data.tags["dlx.choice.dataset"] == "mydata"
    assert run.data.metrics["test/acc"] > 0.8, run.data.metrics  # chance is 1/3: three rings


def test_a_sweep_over_the_user_model_nests_under_its_parent_and_dlx_report_prints_it(installed, project):
    ok(dlx(installed, project, "sweep", *USER, "model.hidden=2,16", "seed=0,1", *FAST, timeout=300))
    runs = all_runs(project)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and len(children) == 4, [r.data.tags.get("mlflow.runName") for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs)
    grid = sorted((r.data.params["model.hidden"], r.data.params["seed"]) for r in children)
    assert grid == [("16", "0"), ("16", "1"), ("2", "0"), ("2", "1")]
    assert all(r.data.params["model._target_"] == "mynet.MyNet" for r in children)
    acc = {h: [r.data.metrics["test/acc"] for r in children if r.data.params["model.hidden"] == h] for h in "2 16".split()}
    assert min(acc["16"]) > max(acc["2"]), acc  # what conf/study/width.yaml claims: 2 units cannot cut the rings

    report = ok(dlx(installed, project, "report", parent.info.run_id, "--no-log")).stdout
    assert re.search(r"^\W*model\.hidden\W", report, re.MULTILINE), report  # the table's first column
    rows = re.findall(r"^\W*(\d+)\s*\W\s*2\s*\W", report, re.MULTILINE)  # a row per width, n=2 seeds
    assert sorted(rows, key=int) == ["2", "16"], report


def test_the_project_s_own_study_runs(installed, project):
    # one seed of the study's three: its two widths, the study's own settings and tags
    ok(dlx(installed, project, "study", "--config-dir", "conf", "width", "hydra.sweeper.params.seed='0'",
           "trainer.progress=none", timeout=300))
    runs = all_runs(project)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags.get("dlx.study") == "width"
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["model.hidden"] for r in runs if r is not parent} == {"2", "16"}
    report = ok(dlx(installed, project, "report", parent.info.run_id, "--no-log"))
    assert "width" in report.stdout and "model.hidden" in report.stdout, report.stdout


def test_a_value_outside_the_user_signature_s_range_is_one_line_and_exit_2(installed, project):
    proc = dlx(installed, project, "train", *USER, "model.hidden=0", "trainer.epochs=1", "trainer.progress=none",
               "tracking=off")  # nothing to store either way: spares MLflow's start while the check is missing
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "model.hidden=0" in lines[0], proc.stderr


def test_a_sweep_over_a_user_dataset_that_leaves_dlx_s_keys_at_their_defaults(installed, project):
    option = project / "conf" / "dataset" / "mydata.yaml"
    option.write_text("".join(line for line in option.read_text().splitlines(keepends=True)
                              if not line.startswith("val_fraction:")))
    ok(dlx(installed, project, "sweep", *USER, "model.hidden=16", *FAST[:2], "trainer.epochs=1",
           "trainer.progress=none", timeout=300))
    runs = all_runs(project)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.params["dataset.val_fraction"] == "0.1" for r in runs if "mlflow.parentRunId" in r.data.tags)

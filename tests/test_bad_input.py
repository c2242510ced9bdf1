"""Bad input through the real command line: `dlx train ...` in a subprocess.

A bad option, key, type or value exits with code 2 and a message that names it and says what is
valid, before any data is loaded and before any MLflow run exists. Combinations that only the built
objects can judge (resnet depth, instance norm on an mlp, ...) exit 2 as well, still without a run.
A run that diverges is different: it was a valid run, so it exists in MLflow, closed FAILED with the
error tagged.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import QUICK, all_runs, run_cli_batch, run_dlx

from dlx.compose import list_options
from dlx.models import Norm

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")


def valid_list(stderr: str, after: str) -> list[str]:
    """The comma-separated names that follow `after` on its line of stderr."""
    match = re.search(re.escape(after) + r"\s*(.*)", stderr)
    assert match, f"no '{after}' in: {stderr}"
    return [name.strip() for name in match.group(1).split(",")]


_RESULTS: dict[str, list] = {}
_LEFT: dict[str, list[str]] = {}  # workdir -> what a case left in its folder


def config_error(args: list[str], workdir) -> str:
    """dlx train args; assert it failed as a config error that left no store behind; return stderr."""
    import json

    key = json.dumps(["train", *args])
    if key in _RESULTS:
        code, stderr, left = _RESULTS[key]
    else:  # a case of its own: `dlx train` as a subprocess in the test's folder
        proc = run_dlx(["train", *args], workdir, timeout=120)
        code, stderr, left = proc.returncode, proc.stderr, [str(p.relative_to(workdir)) for p in workdir.rglob("*")]
        assert all_runs(workdir) == []
    assert code == 2, f"exit {code}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("dlx: "), stderr
    assert "mlflow.db" not in " ".join(left), left
    _LEFT[str(workdir)] = left
    return stderr


def assert_nothing_ran(workdir) -> None:
    """Rejected while composing: no run directory, store or data exists."""
    left = _LEFT.get(str(workdir), [])
    assert not [p for p in left if p.startswith(("outputs", "data"))], left


@pytest.fixture(scope="module", autouse=True)
def the_cases(tmp_path_factory):
    """Every case of this file at once, in one process (see BATCH)."""
    cases = [["optimizer=adamm"], ["optimizer.lrr=0.1"], ["+optimizer.lrr=0.1"], *([c[0]] for c in RANGE_CASES),
             ["optimizer.lr=0", "trainer.batch_size=0", "model.width=0"], ["dataset=mnist", "optimizer.lr=0"],
             ["foo=bar"], ["model=cnn", "model.widht=3"], ["optimizer=sgd", "optimizer.betas=[0.9,0.99]"],
             ["trainer.checkpoint.monitor=val/accuracy"], ["-m", "optimizer=adam,sgd"], ["optimizer.lr=abc"],
             ["model.norm=foo"], *([*a, "dataset=mnist", "trainer.progress=none"] for a, _ in BUILD_CASES[:5]),
             *([*a, "trainer.epochs=1", "trainer.progress=none"] for a, _ in BUILD_CASES)]
    _RESULTS.update(run_cli_batch([["train", *c] for c in cases], tmp_path_factory.mktemp("bad_input")))


# ------------------------------------------------------------------------- unknown options and keys
def test_unknown_group_option_lists_the_options(workdir):
    stderr = config_error(["optimizer=adamm"], workdir)
    assert "optimizer=adamm" in stderr
    assert valid_list(stderr, "valid:") == list_options("optimizer")
    assert_nothing_ran(workdir)


@pytest.mark.parametrize("override", ["optimizer.lrr=0.1", "+optimizer.lrr=0.1"])
def test_unknown_key_names_it_and_lists_the_keys(override, workdir):
    stderr = config_error([override], workdir)
    assert "optimizer.lrr" in stderr
    keys = valid_list(stderr, "valid keys:")
    assert "lr" in keys and "weight_decay" in keys and "lrr" not in keys
    assert_nothing_ran(workdir)


# ------------------------------------------------------------------------------ values out of range
RANGE_CASES = [
    ("optimizer.lr=0", "optimizer.lr=0.0", "allowed > 0"),
    ("optimizer.lr=-1", "optimizer.lr=-1.0", "allowed > 0"),
    ("model.dropout=1.5", "model.dropout=1.5", "allowed in [0, 1)"),
    ("regularization.dropout=-0.1", "regularization.dropout=-0.1", "allowed in [0, 1)"),
    ("trainer.batch_size=0", "trainer.batch_size=0", "allowed >= 1"),
    ("trainer.epochs=-1", "trainer.epochs=-1", "allowed >= 0"),
    ("trainer.device=tpu", "trainer.device='tpu' is not valid", "allowed auto, cpu, mps, cuda or cuda:N"),
    ("diagnostics.sharpness.eps=-1", "diagnostics.sharpness.eps=-1.0", "allowed >= 0"),
    ("trainer.checkpoint.max_overhead=1", "trainer.checkpoint.max_overhead=1.0", "allowed in [0, 1)"),
]


@pytest.mark.parametrize(("override", "named", "allowed"), RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_value_out_of_range_names_key_and_allowed_range(override, named, allowed, workdir):
    stderr = config_error([override], workdir)
    line = next((ln for ln in stderr.splitlines() if named in ln), None)
    assert line is not None, stderr
    assert allowed in line
    assert_nothing_ran(workdir)


def test_every_range_problem_is_reported_at_once(workdir):
    stderr = config_error(["optimizer.lr=0", "trainer.batch_size=0", "model.width=0"], workdir)
    for key in ("optimizer.lr", "trainer.batch_size", "model.width"):
        assert f"{key}=0" in stderr
    assert_nothing_ran(workdir)


def test_range_error_wins_over_a_dataset_that_would_fail_to_load(workdir):
    # mnist's files are absent here: loading it would fail, so the lr message shows nothing was loaded
    stderr = config_error(["dataset=mnist", "optimizer.lr=0"], workdir)
    assert "optimizer.lr=0.0 is out of range: allowed > 0" in stderr
    assert "missing" not in stderr and "download" not in stderr
    assert_nothing_ran(workdir)


def test_unknown_top_level_key_lists_the_groups(workdir):
    stderr = config_error(["foo=bar"], workdir)
    assert "foo" in stderr
    assert {"dataset", "model", "optimizer", "trainer", "seed"} <= set(valid_list(stderr, "valid keys:"))
    assert_nothing_ran(workdir)


def test_misspelt_key_names_the_option_it_was_looked_up_in(workdir):
    stderr = config_error(["model=cnn", "model.widht=3"], workdir)
    assert "model.widht" in stderr and "(cnn)" in stderr
    assert {"width", "depth", "kernel_size", "pool"} <= set(valid_list(stderr, "valid keys:"))
    assert_nothing_ran(workdir)


def test_key_of_another_option_is_unknown_in_this_one(workdir):
    stderr = config_error(["optimizer=sgd", "optimizer.betas=[0.9,0.99]"], workdir)
    assert "optimizer.betas" in stderr and "(sgd)" in stderr
    assert "lr" in valid_list(stderr, "valid keys:")
    assert_nothing_ran(workdir)


def test_monitor_must_be_a_logged_metric(workdir):
    stderr = config_error(["trainer.checkpoint.monitor=val/accuracy"], workdir)
    assert "trainer.checkpoint.monitor=val/accuracy" in stderr
    assert valid_list(stderr, "allowed") == ["val/loss", "val/acc", "train/loss", "train/acc"]
    assert_nothing_ran(workdir)


def test_multirun_is_refused(workdir):
    stderr = config_error(["-m", "optimizer=adam,sgd"], workdir)
    assert "multirun" in stderr
    assert_nothing_ran(workdir)


# -------------------------------------------------------------------------------- CUDA without CUDA
@NO_CUDA
def test_cuda_device_without_cuda(workdir):
    stderr = config_error(["trainer.device=cuda"], workdir)
    assert "trainer.device=cuda" in stderr and "no CUDA device" in stderr and "allowed auto or cpu" in stderr
    assert_nothing_ran(workdir)


@NO_CUDA
def test_bf16_amp_without_cuda(workdir):
    stderr = config_error(["trainer.amp=bf16"], workdir)
    assert "trainer.amp=bf16" in stderr and "allowed off" in stderr
    assert_nothing_ran(workdir)


# ---------------------------------------------------------------------------- wrong types and enums
def test_wrong_type_names_key_value_and_type(workdir):
    stderr = config_error(["optimizer.lr=abc"], workdir)
    assert "optimizer.lr" in stderr and "'abc'" in stderr and "Float" in stderr
    assert_nothing_ran(workdir)


def test_wrong_enum_lists_the_valid_values(workdir):
    stderr = config_error(["model.norm=foo"], workdir)
    assert "model.norm" in stderr and "'foo'" in stderr
    assert all(norm.value in stderr for norm in Norm)
    assert_nothing_ran(workdir)


# ---------------------------------------------------------------------- errors found while building
# Rules that the schema cannot see (they depend on the model, the data or another group) are checked when
# the run is built: still exit code 2 and a message naming the keys, and still no MLflow run.
BUILD_CASES = [
    (["model=resnet", "model.depth=9"], ["model.depth=9", "6n+2", "8, 14, 20"]),
    (["model=cnn", "model.depth=0"], ["model.depth=0", ">= 1"]),
    (["model=mlp", "model.norm=instance"], ["model.norm=instance", "model=cnn / model=resnet", "layer"]),
    (["loss=hinge", "regularization=label_smoothing"], ["regularization.label_smoothing", "hinge"]),
    (["scheduler=onecycle", "scheduler.warmup_epochs=1"], ["onecycle", "warmup_epochs"]),
    (["dataset=moons", "augmentation=flip_crop"], ["'flip'", "'crop'", "(2,)"]),
    (["dataset.train_subset=100000"], ["train_subset=100000", "at most 1294"]),
]


@pytest.mark.parametrize(("args", "needles"), BUILD_CASES[:5], ids=[" ".join(a) for a, _ in BUILD_CASES[:5]])
def test_bad_combination_is_found_before_any_data_loads(args, needles, workdir):
    # with dataset=mnist and no files, loading would fail: the combination message must come first
    stderr = config_error([*args, "dataset=mnist", "trainer.progress=none"], workdir)
    assert "download" not in stderr
    for needle in needles:
        assert needle in stderr


@pytest.mark.parametrize(("args", "needles"), BUILD_CASES, ids=[" ".join(a) for a, _ in BUILD_CASES])
def test_bad_combination_found_while_building(args, needles, workdir):
    stderr = config_error([*args, "trainer.epochs=1", "trainer.progress=none"], workdir)
    for needle in needles:
        assert needle in stderr


def test_missing_dataset_files_say_where_they_go(workdir):
    stderr = config_error(["dataset=mnist"], workdir)
    where = (workdir / "data" / "mnist").resolve()
    assert "mnist" in stderr and str(where) in stderr
    assert "train-images-idx3-ubyte" in stderr and "dataset.download=true" in stderr
    assert not where.exists() or not any(where.iterdir()), "nothing is written without download=true"


# ---------------------------------------------------------------------------------- a diverging run
def test_non_finite_loss_fails_the_run_and_records_it(workdir):
    # plain SGD at lr 1e30 blows the weights up on the first step: the second step's loss is not finite
    args = ["train", *QUICK, "optimizer=sgd", "optimizer.lr=1e30", "trainer.checkpoint.enabled=false"]
    proc = run_dlx(args, workdir, timeout=180)
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    match = re.search(r"non-finite training loss at epoch (\d+), step (\d+)", proc.stderr)
    assert match, proc.stderr
    assert int(match.group(1)) == 1, "lr 1e30 diverges within the first epoch"
    runs = all_runs(workdir)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert "non-finite training loss" in run.data.tags["dlx.error"]
    assert f"step {match.group(2)}" in run.data.tags["dlx.error"]

"""A user's own model, optimizer, loss, dataset and callbacks plug in through `_target_`, from the command
line or from their own config folder; bad targets are one-line errors before any run; code named only by a
stored configuration is never imported. Real `dlx` subprocesses, real Hydra, a real SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import all_runs, client_for, run_dlx

FAST = ["trainer.epochs=2", "trainer.progress=plain", "dataset.train_subset=200", "diagnostics.gap=false"]

USER_CODE = '''
import math
import os

import torch
from torch import nn

if os.environ.get("IMPORT_MARK"):  # shows whether a process imported this module
    with open(os.environ["IMPORT_MARK"], "a") as f:
        f.write("imported\\n")


class MyNet(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=32, wrong_shape=False):
        super().__init__()
        out = num_classes + 1 if wrong_shape else num_classes
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.Tanh(),
                                 nn.Linear(hidden, out))

    def forward(self, x):
        return self.net(x)


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr=0.01, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign() + group["weight_decay"] * p, alpha=-group["lr"])


def squared_error(logits, target):
    onehot = torch.nn.functional.one_hot(target, logits.shape[-1]).float()
    return ((logits - onehot) ** 2).mean()


class CountEpochs:
    def __init__(self, path):
        self.path = path

    def on_epoch_end(self, trainer, state, metrics):
        with open(self.path, "a") as f:
            f.write(f"{state.epoch}\\n")


def blobs(n=300, centers=4, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(centers, dim, generator=g) * 4
    y = torch.arange(n) % centers
    x = means[y] + torch.randn(n, dim, generator=g)
    return {"train": (x[:240], y[:240]), "test": (x[240:], y[240:]), "num_classes": centers}
'''


@pytest.fixture
def project(workdir: Path) -> Path:
    (workdir / "mycode.py").write_text(USER_CODE)
    return workdir


def params_of(workdir: Path) -> dict[str, str]:
    (run,) = all_runs(workdir)
    assert run.info.status == "FINISHED"
    return run.data.params


def test_model_target_on_the_command_line_without_a_plus(project):
    proc = run_dlx(["train", "trainer.epochs=5", "trainer.progress=none", "model._target_=mycode.MyNet",
                    "+model.hidden=24"], project)
    assert proc.returncode == 0, proc.stderr
    p = params_of(project)
    assert p["model._target_"] == "mycode.MyNet" and p["model.hidden"] == "24" and p["model.name"] == "MyNet"
    assert "model.width" not in p  # the built-in option's keys do not reach the user's class
    (run,) = all_runs(project)
    assert run.data.metrics["test/acc"] > 0.5  # it trained: chance is 0.1


def test_own_optimizer_loss_and_callback(project):
    log = project / "epochs.txt"
    proc = run_dlx(["train", *FAST, "optimizer._target_=mycode.SignSGD", "+optimizer.lr=0.002",
                    "+optimizer.weight_decay=1e-4",
                    "loss._target_=mycode.squared_error",
                    f"trainer.callbacks=[{{_target_: mycode.CountEpochs, path: '{log}'}}]"], project)
    assert proc.returncode == 0, proc.stderr
    p = params_of(project)
    assert p["optimizer._target_"] == "mycode.SignSGD" and p["loss._target_"] == "mycode.squared_error"
    assert log.read_text().split() == ["1", "2"]


def test_own_config_folder_with_model_and_dataset_options(project):
    conf = project / "myconf"
    (conf / "model").mkdir(parents=True)
    (conf / "dataset").mkdir()
    (conf / "model" / "mynet.yaml").write_text("_target_: mycode.MyNet\nhidden: 16\n")
    (conf / "dataset" / "blobs.yaml").write_text("_target_: mycode.blobs\ncenters: 3\n")
    proc = run_dlx(["train", "--config-dir", str(conf), "model=mynet", "dataset=blobs", "model.hidden=12",
                    "trainer.epochs=2", "trainer.progress=plain"], project)
    assert proc.returncode == 0, proc.stderr
    p = params_of(project)
    assert p["model.hidden"] == "12" and p["dataset.centers"] == "3" and p["model.name"] == "mynet"
    # dlx's own dataset keys the option leaves out keep their defaults, and the run records them
    assert p["dataset.val_fraction"] == "0.1" and p["data.n_test"] == "60" and p["data.n_val"] == "24"


def test_spirals_takes_the_options_its_generator_has(workdir):
    proc = run_dlx(["train", "dataset=spirals", "dataset.n_classes=3", "dataset.turns=1", "trainer.epochs=1",
                    "trainer.progress=none", "tracking=off"], workdir)
    assert proc.returncode == 0, proc.stderr


BAD_TARGETS = [
    (["model._target_=nosuchmodule.Net"], "model._target_=nosuchmodule.Net: cannot import it: ModuleNotFoundError"),
    (["model._target_=mycode.math"], "model._target_=mycode.math: not a class or function but a module"),
    (["model._target_=mycode.MyNet", "+model.depth=3"], "model.depth: mycode.MyNet takes no option 'depth'"),
    (["optimizer._target_=mycode.blobs"], "optimizer._target_=mycode.blobs"),
    (["model._target_=mycode.MyNet", "+model.wrong_shape=true"], "a model must return logits of shape"),
    (["loss._target_=mycode.CountEpochs", "+loss.path=x"], "loss._target_=mycode.CountEpochs: "),
    (["loss._target_=mycode.CountEpochs"], "loss.path: mycode.CountEpochs needs this option"),
]


@pytest.fixture(scope="module")
def bad_targets(tmp_path_factory):
    """Every bad-target case run by dlx's main() in one process, each in a folder with the user's code."""
    from tests.conftest import run_cli_batch

    top = tmp_path_factory.mktemp("bad_targets")
    (top / "mycode.py").write_text(USER_CODE)
    return run_cli_batch([["train", "trainer.epochs=1", *args] for args, _ in BAD_TARGETS], top, [top / "mycode.py"])


@pytest.mark.parametrize(("args", "expected"), BAD_TARGETS)
def test_a_bad_target_is_one_line_and_exit_2_with_nothing_in_the_store(bad_targets, args, expected):
    import json

    code, stderr, left = bad_targets[json.dumps(["train", "trainer.epochs=1", *args])]
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], stderr
    assert "Traceback" not in stderr and not any("mlflow.db" in f for f in left), left


def test_a_bad_target_from_the_dlx_program(project):
    """The same, through the `dlx` program itself: exit code and stderr as a user sees them."""
    proc = run_dlx(["train", "model._target_=mycode.MyNet", "+model.wrong_shape=true"], project)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "model._target_=mycode.MyNet: returned (2, 11)" in proc.stderr and all_runs(project) == []


def test_resume_by_run_id_and_report_never_import_code_the_command_does_not_name(project):
    mark = project / "imports.txt"
    env_args = ["train", *FAST, "model._target_=mycode.MyNet", "+model.hidden=8"]
    assert run_dlx(env_args, project).returncode == 0
    (run,) = all_runs(project)
    from tests.conftest import dlx_env

    env = dlx_env(IMPORT_MARK=str(mark))
    proc = run_dlx(["train", f"trainer.resume={run.info.run_id}", "trainer.epochs=3"], project, env=env)
    assert proc.returncode == 2 and "model._target_=mycode.MyNet" in proc.stderr, proc.stderr
    assert "name it on the command line" in proc.stderr and not mark.exists()
    # named again on this command line: it resumes
    proc = run_dlx([*env_args[:1], "model._target_=mycode.MyNet", "+model.hidden=8",
                    f"trainer.resume={run.info.run_id}", "trainer.epochs=3", "trainer.progress=plain"],
                   project, env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = all_runs(project)
    assert run.info.status == "FINISHED" and len(client_for(project).get_metric_history(run.info.run_id,
                                                                                       "val/acc")) == 3
    # and a report over the experiment never imports it
    mark.unlink(missing_ok=True)
    proc = run_dlx(["report", "dlx"], project, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not mark.exists()


COUNT_CHECKS = '''
import sys
import dlx.compose, dlx.run, dlx.validate
calls = {"compose": 0, "validate": 0}
def counted(module, name):
    inner = getattr(module, name)
    def wrapper(*args, **kwargs):
        calls[name] += 1
        return inner(*args, **kwargs)
    setattr(module, name, wrapper)
counted(dlx.compose, "compose")
counted(dlx.compose, "validate")  # check_config calls it through the name it imported
from dlx.cli import main
code = main(sys.argv[1:])
print("CALLS", calls["compose"], calls["validate"], code)
'''


def test_dlx_train_composes_and_checks_its_config_once(workdir):
    """dlx composes the run's configuration (with Hydra's node) once and checks it once, before Hydra's run_job
    makes the run's folder; before, `dlx train` composed it twice and checked it twice."""
    import subprocess
    import sys

    from tests.conftest import dlx_env

    def calls(*args):
        proc = subprocess.run([sys.executable, "-c", COUNT_CHECKS, "train", *args], cwd=workdir, env=dlx_env(),
                              capture_output=True, text=True, timeout=240)
        line = next(line for line in proc.stdout.splitlines() if line.startswith("CALLS"))
        return tuple(int(v) for v in line.split()[1:])

    assert calls("trainer.epochs=1", "trainer.progress=none", "tracking=off") == (1, 1, 0)
    assert calls("model=nope") == (1, 0, 2)

"""A sweep runs no code the user did not name on their own command line, and tells how a trial ended
from types and exit statuses, never from message text (issue 10, item 8).

The marker file stands for any code: `builtins.open(file, "w")` creates it when a Hydra callback is
instantiated, so a marker that exists means that code ran."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import all_runs, client_for, run_dlx

TINY = ["model.width=16", "trainer.epochs=1"]


def opener(key: str, marker: Path) -> str:
    """An override that makes whatever instantiates `key` create `marker`."""
    return f"{key}={{_target_:builtins.open,file:'{marker}',mode:w}}"


def assert_refused(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlx: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------- typed
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_typed_hydra_callback_is_refused_before_anything_runs(workdir, command):
    marker = workdir / "MARKER"
    sweep = ["seed=0,1"] if command == "sweep" else []
    proc = run_dlx([command, *TINY, *sweep, opener("+hydra.callbacks.x", marker)], workdir, timeout=120)
    # the message names the key and what is allowed
    assert_refused(proc, "hydra.callbacks.x", "hydra.sweeper.*", "hydra.launcher.*", "hydra.sweep.dir")
    assert not marker.exists()
    assert all_runs(workdir) == [] and not (workdir / "outputs" / "optuna.db").exists()


# ---------------------------------------------------------------------------------------------- stored
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A folder holding a real two-trial sweep: its MLflow store and its Optuna study storage."""
    d = tmp_path_factory.mktemp("sweep")
    run_dlx(["sweep", *TINY, "seed=0,1"], d, check=True)
    return d


def tamper(workdir: Path, append: str | None = None) -> str:
    """Write into the study storage, with Optuna's public API, what someone with write access to
    outputs/optuna.db could: an override more, and the sweep marked unfinished. Returns the study name."""
    import optuna

    storage = f"sqlite:///{workdir / 'outputs' / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    if append is not None:
        study.set_user_attr("dlx.overrides", [*study.user_attrs["dlx.overrides"], append])
    study.set_user_attr("dlx.state", "interrupted")
    return name


@pytest.fixture
def stored(workdir: Path, finished_sweep: Path) -> Path:
    shutil.copytree(finished_sweep / "outputs", workdir / "outputs")
    return workdir


@pytest.mark.parametrize("trust", [False, True])
def test_a_hydra_callback_written_into_the_study_storage_does_not_run_on_resume(stored, trust):
    marker = stored / "MARKER"
    name = tamper(stored, opener("+hydra.callbacks.x", marker))
    before = len(all_runs(stored))
    # the latest unfinished sweep, or the one named; a hydra.* key dlx does not document is refused even
    # with --trust-stored, as it is when typed
    args = ["--resume", name, "--trust-stored"] if trust else ["--resume"]
    proc = run_dlx(["sweep", *args], stored, timeout=120)
    assert_refused(proc, f"--resume {name}", "optuna.db", "hydra.callbacks.x", "allowed: ")
    assert not marker.exists()
    assert len(all_runs(stored)) == before


def test_stored_code_runs_only_with_the_users_consent(stored):
    """A _target_ in a stored override would be imported and called wherever dlx instantiates a node:
    the user says whether they trust the storage."""
    target = "+tracking.tags.x={_target_:builtins.print}"
    name = tamper(stored, target)
    before = len(all_runs(stored))
    proc = run_dlx(["sweep", "--resume", name], stored, timeout=120)
    assert_refused(proc, target, "--trust-stored")
    assert len(all_runs(stored)) == before


def test_trust_stored_is_only_for_resume(workdir):
    assert_refused(run_dlx(["sweep", "seed=0,1", "--trust-stored"], workdir, timeout=60), "--trust-stored", "--resume")


# ---------------------------------------------------------------------------------------------- outcomes
def test_a_failure_whose_message_reads_like_an_interrupt_is_a_failure(workdir):
    """The reason of this failure quotes the data folder, here named `run KILLED`: a failure, recorded, and
    the sweep goes on to the next trial (exit 1), where text matching took it for Ctrl-C and stopped (130)."""
    proc = run_dlx(["sweep", "seed=0,1", "dataset=mnist", f"dataset.root='{workdir / 'run KILLED'}'", *TINY],
                   workdir, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 ok, 2 failed, 0 pruned" in proc.stdout, proc.stdout
    assert "continue with" not in proc.stdout


def test_outcomes_follow_types_and_exit_statuses_not_text():
    import pickle

    from dlx.errors import Pruned, RunError, Terminated
    from dlx.sweep.hygiene import classify, portable_exception
    from dlx.sweep.pool import WorkerDied, death_reason, exit_status

    def crossed(exc):  # as a worker process sends it back
        return pickle.loads(pickle.dumps(portable_exception(exc)))

    assert classify(crossed(RunError("run KILLED: terminated by SIGTERM; the last checkpoint is kept", 143)))[::2] \
        == ("interrupted", 143)
    assert classify(crossed(RunError("run KILLED: interrupted (Ctrl-C)", 130)))[::2] == ("interrupted", 130)
    assert classify(Terminated())[::2] == ("interrupted", 143)
    assert classify(KeyboardInterrupt())[::2] == ("interrupted", 130)
    assert classify(crossed(Pruned("epoch 2: val/acc=0.1")))[:2] == ("pruned", "epoch 2: val/acc=0.1")
    # text that reads like an interrupt or a pruned trial is not one
    for text in ("run KILLED by a typo", "Terminated: not really", "KeyboardInterrupt", "Pruned: no", "SIGTERM"):
        assert classify(crossed(RuntimeError(text)))[0] == "failed", text
    assert classify(crossed(RunError("run FAILED: loss is nan (SIGTERM in the name)", 1)))[0] == "failed"
    # a dead worker: its exit status says whether a signal that stops a sweep ended it
    for returncode, outcome in ((-15, "interrupted"), (-2, "interrupted"), (-9, "failed"), (1, "failed")):
        died = WorkerDied(death_reason(returncode, 42, 0), exit_status(returncode))
        assert classify(died)[0] == outcome, returncode


def test_a_trial_left_running_is_settled_as_interrupted_on_resume(stored):
    """What a SIGKILLed sweep leaves: a trial still RUNNING in the storage (made here with Optuna's public ask)."""
    import optuna

    name = tamper(stored)
    storage = f"sqlite:///{stored / 'outputs' / 'optuna.db'}"
    left = optuna.load_study(study_name=name, storage=storage).ask().number
    proc = run_dlx(["sweep", "--resume", name], stored, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trial = optuna.load_study(study_name=name, storage=storage).trials[left]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["dlx.outcome"] == "interrupted", trial.user_attrs


def test_a_resumed_sweep_does_not_take_over_a_run_that_is_not_its_parent(stored):
    """The storage names the parent run to reopen, set RUNNING and finish: pointed at one of the trials,
    resume is refused and the trial's run stays as it was."""
    import optuna

    name = tamper(stored)
    trial = next(r for r in all_runs(stored) if "mlflow.parentRunId" in r.data.tags)
    storage = f"sqlite:///{stored / 'outputs' / 'optuna.db'}"
    optuna.load_study(study_name=name, storage=storage).set_user_attr("dlx.parent_run_id", trial.info.run_id)
    before = len(all_runs(stored))
    proc = run_dlx(["sweep", "--resume", name], stored, timeout=120)
    assert_refused(proc, trial.info.run_id, "not this sweep's parent run")
    after = {r.info.run_id: r for r in all_runs(stored)}
    assert len(after) == before
    assert after[trial.info.run_id].info.status == "FINISHED"
    assert after[trial.info.run_id].info.end_time == trial.info.end_time


def test_a_trial_whose_run_finished_as_the_sweep_died_is_not_run_again(stored):
    """A SIGKILL of the sweep just as a trial ended: the trial's run is FINISHED in MLflow, but the study
    never heard. Resume takes the run's result instead of training the trial again (which left two FINISHED
    runs of one configuration under the parent, and a report counting that seed twice)."""
    import optuna
    from mlflow.entities import Metric

    name = tamper(stored)
    storage = f"sqlite:///{stored / 'outputs' / 'optuna.db'}"
    study = optuna.load_study(study_name=name, storage=storage)
    left = study.ask().number
    client = client_for(stored)
    parent = client.get_run(study.user_attrs["dlx.parent_run_id"])
    run = client.create_run(parent.info.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id,
                                                             "trial": str(left)})
    client.log_batch(run.info.run_id, metrics=[Metric("val/acc", 0.625, 0, 1)])
    client.set_terminated(run.info.run_id, "FINISHED")
    proc = run_dlx(["sweep", "--resume", name], stored, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trial = optuna.load_study(study_name=name, storage=storage).trials[left]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.625
    assert trial.user_attrs["dlx.outcome"] == "ok" and trial.user_attrs["dlx.run_id"] == run.info.run_id

"""`dlx sweep` and `dlx study` end to end: the real CLI in a subprocess, read back from the MLflow store
with MlflowClient and from the Optuna study storage with optuna."""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import REPO, all_runs, client_for, dlx_env, run_dlx

TINY = ["model.width=16", "trainer.epochs=2"]
TRIAL_LINE = re.compile(r"^trial \d+/\d+ (ok|failed|pruned) ", re.MULTILINE)


@pytest.fixture(scope="module")
def schema_only_store(tmp_path_factory) -> Path:
    """An MLflow store with its schema and nothing else: creating the schema runs MLflow's migrations,
    seconds on 2 cores, so most tests start from a copy (the fresh-store test starts from nothing)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def work(workdir: Path, schema_only_store: Path) -> Path:
    (workdir / "outputs").mkdir()
    shutil.copy(schema_only_store, workdir / "outputs" / "mlflow.db")
    return workdir


def storage(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'outputs' / 'optuna.db'}"


def the_study(workdir: Path):
    import optuna

    names = optuna.get_all_study_names(storage(workdir))
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage(workdir))


def split(runs):
    """(the one parent run, its children)."""
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every other run nests under the parent"
    return parent, children


def artifact_text(workdir: Path, run_id: str, path: str) -> str:
    local = client_for(workdir).download_artifacts(run_id, path, str(workdir / "dl"))
    return Path(local).read_text()


def test_grid_sweep_nests_trials_under_one_parent_with_definition_and_summary(work):
    proc = run_dlx(["sweep", "optimizer=sgd,adam", "seed=0,1", *TINY], work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(TRIAL_LINE.findall(proc.stdout)) == 4, proc.stdout
    parent, children = split(all_runs(work))
    assert len(children) == 4
    combos = {(c.data.params["optimizer.name"], c.data.params["seed"]) for c in children}
    assert combos == {("sgd", "0"), ("sgd", "1"), ("adam", "0"), ("adam", "1")}
    assert all(c.info.status == "FINISHED" and c.data.tags["dlx.outcome"] == "ok" for c in children)
    assert {c.data.tags["trial"] for c in children} == {"0", "1", "2", "3"}
    assert all(c.data.params["trainer.progress"] == "none" for c in children)

    p = parent.data
    assert parent.info.status == "FINISHED"
    assert p.params["sweep.method"] == "grid" and p.params["sweep.n_trials"] == "4"
    assert p.params["sweep.objective"] == "val/acc" and p.params["sweep.direction"] == "maximize"
    assert p.params["sweep.pruner"] == "none"
    assert p.params["sweep.param.optimizer"] == "sgd,adam" and p.params["sweep.param.seed"] == "0,1"
    assert "optimizer=sgd,adam" in p.tags["dlx.command"]
    assert {c.data.tags["dlx.command"] for c in children} == {p.tags["dlx.command"]}  # what the user typed
    assert p.metrics["sweep/ok"] == 4 and p.metrics["sweep/failed"] == 0 and p.metrics["sweep/pruned"] == 0
    best = max(children, key=lambda c: c.data.metrics["val/acc"])
    assert p.tags["dlx.best.run_id"] == best.info.run_id
    assert p.metrics["best/val/acc"] == pytest.approx(best.data.metrics["val/acc"])

    csv = artifact_text(work, parent.info.run_id, "sweep/summary.csv").splitlines()
    assert csv[0].split(",")[:5] == ["trial", "optimizer", "seed", "outcome", "val/acc"]
    assert len(csv) == 5 and all(",ok," in row for row in csv[1:])
    assert {c.info.run_id for c in children} <= set(artifact_text(work, parent.info.run_id,
                                                                  "sweep/summary.md").split())
    assert {t.state.name for t in the_study(work).trials} == {"COMPLETE"}


def test_tpe_sweep_prunes_unpromising_trials(work):
    proc = run_dlx(["sweep", "optimizer=sgd", "optimizer.lr=tag(log,interval(1e-6,1.0))", "hydra.sweeper.method=tpe",
                    "hydra.sweeper.n_trials=8", "hydra.sweeper.pruner=median", "hydra.sweeper.n_startup_trials=2",
                    *TINY], work)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # pruning is not failure
    study = the_study(work)
    states = [t.state.name for t in study.trials]
    assert len(states) == 8 and "FAIL" not in states
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, f"no trial was pruned: {states}"
    # Optuna saw the per-epoch objective the trial reported before it stopped
    assert all(t.intermediate_values for t in pruned)
    parent, children = split(all_runs(work))
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    for t in pruned:
        assert by_trial[t.number].data.tags["dlx.outcome"] == "pruned"
        assert by_trial[t.number].data.metrics["val/acc"] == pytest.approx(t.intermediate_values[1])
    lrs = sorted(float(c.data.params["optimizer.lr"]) for c in children)
    assert 1e-6 <= lrs[0] and lrs[-1] <= 1.0 and len(set(lrs)) == 8
    assert parent.data.params["sweep.method"] == "tpe"
    assert parent.data.params["sweep.param.optimizer.lr"] == "tag(log,interval(1e-6,1.0))"
    assert parent.data.metrics["sweep/pruned"] == len(pruned) and parent.info.status == "FINISHED"


def test_resume_after_sigterm_runs_only_what_is_left_under_the_same_parent(work):
    args = ["sweep", "optimizer=sgd,adam", "seed=0,1", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "dlx", *args], cwd=work, env=dlx_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if len(TRIAL_LINE.findall("".join(seen))) == 2:
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    assert "dlx sweep --resume" in out
    finished_first = {(t.params["optimizer"], t.params["seed"]) for t in the_study(work).trials
                      if t.state.name == "COMPLETE"}
    assert 2 <= len(finished_first) < 4
    parent, _ = split(all_runs(work))
    assert parent.info.status == "KILLED"
    # a sweep stopped between enqueueing a grid trial and asking for it leaves it WAITING: it must not run beside
    # the same combination enqueued anew by the resumed sweep
    left = sorted({(o, s) for o in ("sgd", "adam") for s in ("0", "1")} - finished_first)
    the_study(work).enqueue_trial({"optimizer": left[0][0], "seed": left[0][1]})

    proc = run_dlx([*args, "--resume"], work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(TRIAL_LINE.findall(proc.stdout)) == 4 - len(finished_first), proc.stdout
    study = the_study(work)
    complete = [(t.params["optimizer"], t.params["seed"]) for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted({(o, s) for o in ("sgd", "adam") for s in ("0", "1")})
    resumed_parent, children = split(all_runs(work))
    assert resumed_parent.info.run_id == parent.info.run_id and resumed_parent.info.status == "FINISHED"
    ok = [(c.data.params["optimizer.name"], c.data.params["seed"]) for c in children if c.info.status == "FINISHED"]
    assert sorted(ok) == sorted(complete), "no finished configuration ran twice"
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert resumed_parent.data.metrics["sweep/ok"] == 4


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(work):
    proc = run_dlx(["sweep", "optimizer=sgd", "optimizer.lr=1e-3,1e30", *TINY], work)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 ok, 1 failed, 0 pruned" in proc.stdout
    parent, children = split(all_runs(work))
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["sweep/ok"] == 1 and parent.data.metrics["sweep/failed"] == 1
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and float(failed[0].data.params["optimizer.lr"]) == 1e30
    assert "non-finite" in failed[0].data.tags["dlx.error"] and failed[0].data.tags["dlx.outcome"] == "failed"
    trials = {t.number: t for t in the_study(work).trials}
    number = int(failed[0].data.tags["trial"])
    assert trials[number].state.name == "FAIL" and "non-finite" in trials[number].user_attrs["dlx.reason"]
    assert trials[1 - number].state.name == "COMPLETE"
    # the traceback sits with the trial: its own log file and its run's logs/ artifact
    log = Path(trials[number].user_attrs["dlx.log"])
    assert log.parent.name == str(number) and "Traceback" in log.read_text() and "non-finite" in log.read_text()
    assert "non-finite" in artifact_text(work, failed[0].info.run_id, "logs/train.log")


@pytest.mark.skipif(find_spec("hydra_plugins.dlx_launcher") is None,
                    reason="needs the parallel launcher (hydra/launcher=dlx_local) to start 8 trials at once")
def test_eight_trials_start_at_once_on_a_fresh_store(workdir):
    assert not (workdir / "outputs").exists()
    proc = run_dlx(["sweep", "seed=range(8)", "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=8", *TINY],
                   workdir, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parent, children = split(all_runs(workdir))
    assert len(children) == 8 and parent.data.params["sweep.batch_size"] == "8"
    assert all(c.info.status == "FINISHED" for c in children)
    client = client_for(workdir)
    for c in children:
        epochs, every = int(c.data.params["trainer.epochs"]), int(c.data.params["trainer.log_every_n_steps"])
        per_epoch = math.ceil(int(c.data.params["data.n_train"]) / int(c.data.params["trainer.batch_size"]))
        steps = epochs * per_epoch
        lr_points = steps // every + sum((e * per_epoch) % every != 0 for e in range(1, epochs + 1))
        expected = {"train/loss": epochs, "val/acc": epochs, "val/loss": epochs, "train/loss_step": steps // every,
                    "lr": lr_points, "test/acc": 1}
        got = {k: len(client.get_metric_history(c.info.run_id, k)) for k in expected}
        assert got == expected, c.info.run_id


@pytest.mark.skipif(find_spec("hydra_plugins.dlx_launcher") is None, reason="needs hydra/launcher=dlx_local")
@pytest.mark.parametrize("batch_size", [None, 2])
def test_a_free_worker_takes_the_next_trial_without_waiting_for_the_others(work, batch_size):
    """Two workers, trial 0 long, trials 1 and 2 short: the worker trial 1 frees runs trial 2 while trial
    0 still trains. With hydra.sweeper.batch_size=2, trial 2 waits for the batch of trials 0 and 1."""
    args = ["sweep", "trainer.epochs=150,1,2", "model.width=16", "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"]
    args += [f"hydra.sweeper.batch_size={batch_size}"] if batch_size else []
    proc = run_dlx(args, work, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(TRIAL_LINE.findall(proc.stdout)) == 3  # a line per trial, as each ends
    _, children = split(all_runs(work))
    trial = {int(c.data.tags["trial"]): c for c in children}
    assert [trial[i].data.params["trainer.epochs"] for i in range(3)] == ["150", "1", "2"]
    assert {c.data.tags["dlx.command"] for c in children} == {f"dlx {' '.join(args)}"}  # in the workers too
    long_ends, last_starts = trial[0].info.end_time, trial[2].info.start_time
    if batch_size is None:
        assert last_starts < long_ends, "trial 2 waited for trial 0"
    else:
        assert last_starts >= long_ends, "a batch of two let a third trial in"


def test_study_lists_and_runs_a_preset_tagging_its_parent(work):
    from omegaconf import OmegaConf

    presets = {p.stem: OmegaConf.load(p).study for p in sorted((REPO / "conf" / "study").glob("*.yaml"))}
    assert {"optimizers", "schedulers"} <= set(presets)
    listing = run_dlx(["study"], work, check=True).stdout
    for name, study in presets.items():
        assert f"{name}  " in listing and study.statement in listing

    # the preset's factor, cut to two levels and one seed from the command line
    proc = run_dlx(["study", "optimizers", "optimizer=sgd,adam", "seed=0", "trainer.epochs=1", "model.width=16"],
                   work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parent, children = split(all_runs(work))
    tags, preset = parent.data.tags, presets["optimizers"]
    assert tags["dlx.study"] == "optimizers" and tags["dlx.study.statement"] == preset.statement
    assert tags["dlx.study.factor"] == "optimizer" and tags["dlx.study.metrics"] == ",".join(preset.metrics)
    assert sorted(c.data.params["optimizer.name"] for c in children) == ["adam", "sgd"]
    assert all(c.data.params["study.name"] == "optimizers" for c in children)
    assert parent.info.run_name.startswith("optimizers-")


def test_bad_sweeps_exit_2_before_anything_runs(workdir):
    cases = {("optimizer=sgd,adamm",): "no such option of group 'optimizer'",
             ("optimizer.lr=1e-3,-1",): "optimizer.lr=-1.0 is out of range",
             ("seed=0,1", "hydra.sweeper.objective=test/acc"): "must not choose on the test split",
             ("optimizer.lr=interval(0.1,1)", "hydra.sweeper.method=grid"): "needs discrete values",
             ("+study=nope",): "no such study"}
    for args, message in cases.items():
        proc = run_dlx(["sweep", *args], workdir)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not (workdir / "outputs").exists()


@pytest.mark.slow
def test_in_process_trials_do_not_grow_memory(work):
    proc = run_dlx(["sweep", "seed=range(12)", "hydra/launcher=basic", *TINY], work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rss = [t.user_attrs["dlx.sweeper_rss_mb"] for t in sorted(the_study(work).trials, key=lambda t: t.number)]
    # after the first trials warmed every import and cache; without a collection after each trial the
    # process grew by about 8 MB per trial here
    assert rss[-1] - rss[2] < 10, rss

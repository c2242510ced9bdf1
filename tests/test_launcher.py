"""The sweep launchers: hydra/launcher=dlx_local in this process (n_jobs=1) and on a worker pool
(n_jobs>1); submitit's local executor (hydra/launcher=slurm_local, the slurm launcher's code path).

Launcher-level checks call the Launcher directly from a small Hydra app (this file, run as a script:
`python tests/test_launcher.py SPEC.json`), the way Hydra's sweepers do, with dlx's real conf/, the
real trial task and a real MLflow store in a temporary directory, so each JobReturn can be inspected.
The app prints one line per trial: RESULT {"idx": ..., "status": ..., "value": ..., "error": ...}.
The SIGTERM and submitit checks run the real `dlx sweep`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

if __name__ != "__main__":
    import pytest
    from conftest import all_runs, client_for, dlx_env, read_until, run_dlx

TRIAL = ["trainer=quick", "trainer.progress=none", "model.width=32", "dataset.val_fraction=0.2"]
PID_LINE = re.compile(r"trial (\d+) running in pid (\d+)")


# ---------------------------------------------------------------------------------------------- the app
def launch_app(spec: dict) -> int:
    """Compose dlx's config for a multirun with spec["hydra"] overrides, instantiate the configured
    launcher and launch spec["trials"] (lists of overrides), spec["batch_size"] trials per launch call."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus, setup_globals
    from hydra.types import HydraContext, RunMode

    from dlx.compose import config_dir
    from dlx.config import register_configs
    from dlx.sweep.hygiene import job_error
    from dlx.sweep.task import run_trial
    from dlx.tracking import open_store, resolve_uri

    register_configs()
    setup_globals()
    # as the sweeper's parent run does: the store's schema exists before parallel trials open it (two
    # processes creating the tables of a new SQLite file race, and one of them fails)
    uri, artifacts = resolve_uri(None)
    open_store(uri, "dlx", artifacts)
    hydra = Hydra.create_main_hydra2(task_name="train", config_search_path=create_config_search_path(str(config_dir())))
    cfg = hydra.compose_config("config", overrides=spec["hydra"], run_mode=RunMode.MULTIRUN, with_log_configuration=True)
    HydraConfig.instance().set_config(cfg)
    context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
    launcher = Plugins.instance().instantiate_launcher(hydra_context=context, task_function=run_trial, config=cfg)
    trials, size = spec["trials"], spec.get("batch_size") or len(spec["trials"])
    for start in range(0, len(trials), size):
        for offset, ret in enumerate(launcher.launch(trials[start:start + size], initial_job_idx=start)):
            ok = ret.status == JobStatus.COMPLETED
            error = None if ok else job_error(ret)
            line = {"idx": start + offset, "status": ret.status.name, "overrides": list(ret.overrides),
                    "value": ret.return_value if ok else None, "rss_mb": _rss_mb(), "torch": _torch_state(),
                    "error": None if ok else f"{type(error).__module__}.{type(error).__name__}: {error}"}
            print("RESULT " + json.dumps(line, default=str), flush=True)
    if hasattr(launcher, "close"):
        launcher.close()
    return 0


def _torch_state() -> dict | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"id": id(torch), "deterministic": torch.are_deterministic_algorithms_enabled()}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


if __name__ == "__main__":
    sys.exit(launch_app(json.loads(Path(sys.argv[1]).read_text())))


# ---------------------------------------------------------------------------------------------- helpers
def start_app(workdir: Path, hydra: list[str], trials: list[list[str]], env: dict | None = None,
              **spec) -> subprocess.Popen:
    path = workdir / "spec.json"
    path.write_text(json.dumps({"hydra": ["hydra.sweep.dir=outputs/sweep", *hydra], "trials": trials, **spec}))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(path)], cwd=workdir,
                            env={**dlx_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen, lines: list[str] | None = None, timeout: float = 180) -> tuple[list[dict], str]:
    out, _ = proc.communicate(timeout=timeout)
    text = "".join(lines or []) + out
    results = [json.loads(line[len("RESULT "):]) for line in text.splitlines() if line.startswith("RESULT ")]
    return results, text


def run_app(workdir: Path, hydra: list[str], trials: list[list[str]], **spec) -> tuple[list[dict], str]:
    proc = start_app(workdir, hydra, trials, **spec)
    results, text = finish(proc)
    assert proc.returncode == 0, text[-4000:]
    return results, text


def trial_pids(text: str) -> dict[int, int]:
    return {int(m[1]): int(m[2]) for m in PID_LINE.finditer(text)}


def runs_by_trial(workdir: Path) -> dict[int, object]:
    """MLflow runs keyed by trial number (the last part of their run directory)."""
    client = client_for(workdir)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {int(Path(r.data.tags["dlx.run_dir"]).name): r for r in runs if "dlx.run_dir" in r.data.tags}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the app exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")




def running_run(workdir: Path, trial: int):
    """The trial's MLflow run once it exists and trains (status RUNNING), else None."""
    if not (workdir / "outputs" / "mlflow.db").exists():
        return None
    run = runs_by_trial(workdir).get(trial)
    return run if run is not None and run.info.status == "RUNNING" else None


# ---------------------------------------------------------------------------------------------- in-process
def test_sequential_trials_share_one_process_and_a_failure_does_not_stop_the_sweep(workdir):
    trials = [[*TRIAL, "seed=0", "trainer.deterministic=true"],
              [*TRIAL, "trainer.resume=missing.pt"],  # raises RunError before any MLflow run exists
              [*TRIAL, "seed=1"]]
    results, text = run_app(workdir, ["hydra/launcher=dlx_local"], trials, batch_size=1)

    assert [r["status"] for r in results] == ["COMPLETED", "FAILED", "COMPLETED"], text[-3000:]
    assert "no such checkpoint file" in results[1]["error"]
    assert 0 <= results[0]["value"]["test/acc"] <= 1
    # in-process: every trial in the app's own process, on the torch module imported once
    pids = trial_pids(text)
    assert sorted(pids) == [0, 1, 2] and len(set(pids.values())) == 1, pids
    assert len({r["torch"]["id"] for r in results}) == 1
    # the deterministic switch of trial 0 does not leak into the trials after it
    assert [r["torch"]["deterministic"] for r in results] == [False, False, False]
    # each trial logs to its own file; the failure is in the failed trial's log only, as the user's mistake's one
    # line (a trial that fails otherwise logs its traceback there: test_sweep.py)
    logs = {i: (workdir / "outputs" / "sweep" / str(i) / "train.log").read_text() for i in range(3)}
    assert "trial failed: trainer.resume=missing.pt: no such checkpoint file" in logs[1]
    assert "Traceback" not in logs[0] + logs[1] + logs[2] and "no such checkpoint" not in logs[0] + logs[2]
    runs = runs_by_trial(workdir)
    assert sorted(runs) == [0, 2] and {r.info.status for r in runs.values()} == {"FINISHED"}


# ---------------------------------------------------------------------------------------------- the pool
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_pool_runs_trials_on_two_worker_processes_in_order(workdir, method):
    """Workers from the forkserver (the default) or spawned (DLX_WORKER_START=spawn) alike. Two visible
    CUDA devices (named only: torch here has no CUDA, the trials train on the CPU): each worker gets its
    own in CUDA_VISIBLE_DEVICES, and its trials' runs say which."""
    trials = [[*TRIAL, "seed=0"], [*TRIAL, "trainer.resume=missing.pt"], [*TRIAL, "seed=1"], [*TRIAL, "seed=2"]]
    results, text = run_app(workdir, ["hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"], trials,
                            env={"DLX_WORKER_START": method, "CUDA_VISIBLE_DEVICES": "0,1"})

    assert [r["overrides"] for r in results] == trials  # JobReturns in the order of the overrides
    assert [r["status"] for r in results] == ["COMPLETED", "FAILED", "COMPLETED", "COMPLETED"], text[-3000:]
    assert "RunError: trainer.resume=missing.pt: no such checkpoint file" in results[1]["error"]
    pids = trial_pids(text)
    assert sorted(pids) == [0, 1, 2, 3]
    assert len(set(pids.values())) == 2, pids
    runs = runs_by_trial(workdir)
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    devices = {pids[i]: r.data.tags["gpus"] for i, r in runs.items()}  # worker -> its device
    assert sorted(devices.values()) == ["0", "1"] and len(devices) == 2, devices
    assert all(not alive(pid) for pid in pids.values())  # the pool closed with the app
    wait_for(lambda: not workers_in(workdir), 30, "the forkserver to end with the app")


PROBE = """
import json, os, sys, time
from pathlib import Path
from dlx.sweep.start import context

def status(pid, key):
    return next(l.split()[1] for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith(key))

ctx, out = context(), {}
first = ctx.Process(target=time.sleep, args=(60,))
first.start()
server = int(status(first.pid, "PPid:"))
out.update(server_threads=len(os.listdir(f"/proc/{server}/task")), server=Path(f"/proc/{server}/cmdline").read_text(),
           torch_mapped="libtorch_cpu" in Path(f"/proc/{first.pid}/maps").read_text())
first.kill()
first.join(30)
exits = ctx.Process(target=sys.exit, args=(3,))
exits.start()
exits.join(30)
out["exitcodes"] = [first.exitcode, exits.exitcode]
os.kill(server, 9)  # the out-of-memory killer picks big processes
while status(server, "State:") != "Z":
    time.sleep(0.05)
again = ctx.Process(target=sys.exit, args=(4,))
again.start()
out["restarted"] = int(status(again.pid, "PPid:")) != server
again.join(30)
out["exitcodes"].append(again.exitcode)
print("PROBE " + json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_fork_from_a_single_threaded_forkserver_that_has_the_imports(tmp_path):
    """The pool's Process objects come from multiprocessing's forkserver, which imported torch and dlx
    (dlx.sweep.preload) with one thread; exit codes as Process reports them (-N: signal N); a forkserver
    that died is started again for the next worker."""
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=dlx_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("PROBE "))[6:])
    assert "multiprocessing.forkserver" in out["server"] and "dlx.sweep.preload" in out["server"]
    assert out["server_threads"] == 1, out  # a fork copies only the forking thread
    assert out["torch_mapped"]  # a worker that ran nothing but time.sleep has torch: the server's import
    assert out["exitcodes"] == [-signal.SIGKILL, 3, 4] and out["restarted"], out
    assert "warning" not in proc.stderr


def test_a_killed_worker_fails_only_its_trial(workdir):
    trials = [[*TRIAL, "seed=0"], [*TRIAL, "trainer.epochs=2000", "seed=1"], [*TRIAL, "seed=2"]]
    proc = start_app(workdir, ["hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"], trials)
    lines: list[str] = []
    try:
        victim = int(read_until(proc, re.compile(r"trial 1 running in pid (\d+)"), lines)[1])
        wait_for(lambda: running_run(workdir, 1), 60, "trial 1's MLflow run")
        os.kill(victim, signal.SIGKILL)
        results, text = finish(proc, lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-4000:]

    assert [r["status"] for r in results] == ["COMPLETED", "FAILED", "COMPLETED"], text[-3000:]
    reason = f"worker process {victim} died with signal SIGKILL"
    assert reason in results[1]["error"] and "while running trial 1" in results[1]["error"]
    assert "WorkerDied" in results[1]["error"]
    pids = trial_pids(text)
    assert pids[1] == victim and pids[2] != victim
    started = re.findall(r"worker (\d+) starting", text)
    # two, then one in the victim's place if trial 2 still waited for a worker when it died (on a quiet machine
    # the other worker has often taken it by then)
    assert len(started) in (2, 3) and str(victim) in started[:2], started
    runs = runs_by_trial(workdir)
    assert runs[1].info.status == "FAILED" and reason in runs[1].data.tags["dlx.error"]
    assert {runs[i].info.status for i in (0, 2)} == {"FINISHED"}


def test_sigterm_of_dlx_sweep_stops_its_workers_and_every_run_ends_killed(workdir):
    """The real `dlx sweep` on two workers: trials share the sweep's dir; SIGTERM of the sweep stops the
    workers (each closes its trial's run KILLED), and the sweeper marks the parent run KILLED."""
    proc = subprocess.Popen([sys.executable, "-m", "dlx", "sweep", "seed=0,1", *TRIAL, "trainer.epochs=2000",
                             "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"],
                            cwd=workdir, env=dlx_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        read_until(proc, re.compile(r"trial [01] running in pid"), lines)
        read_until(proc, re.compile(r"trial [01] running in pid"), lines)
        wait_for(lambda: running_run(workdir, 0) and running_run(workdir, 1), 60, "both trials' runs", proc)
        proc.send_signal(signal.SIGTERM)
        _, text = finish(proc, lines, timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, text[-4000:]
    assert "Traceback" not in text and "trial interrupted" in text  # the user's stop is no failure to trace
    pids = trial_pids(text)
    assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2 and proc.pid not in pids.values()
    assert all(not alive(pid) for pid in pids.values())
    runs = all_runs(workdir)
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parents] == ["KILLED"]
    assert len(trials) == 2 and {r.info.status for r in trials} == {"KILLED"}, [r.data.tags for r in trials]
    # both workers resolved the sweep dir's ${now:...} to the same directory
    assert len({Path(r.data.tags["dlx.run_dir"]).parent for r in trials}) == 1


# ---------------------------------------------------------------------------------------------- units
def test_exceptions_cross_the_process_boundary_recognisably():
    import pickle

    from dlx.run import Pruned, RunError
    from dlx.sweep.hygiene import portable_exception
    from dlx.sweep.pool import WorkerDied, death_reason, exit_status

    pruned = pickle.loads(pickle.dumps(portable_exception(Pruned("epoch 2: val/acc=0.1000"))))
    assert isinstance(pruned, Pruned) and str(pruned) == "epoch 2: val/acc=0.1000"
    error = pickle.loads(pickle.dumps(portable_exception(RunError("run FAILED: loss is nan", 1))))
    assert str(error).endswith("run FAILED: loss is nan") and ("RunError" in str(error) or isinstance(error, RunError))
    died = pickle.loads(pickle.dumps(WorkerDied(death_reason(-9, 4242, 3), exit_status(-9))))
    assert isinstance(died, WorkerDied) and died.exit_code == 137
    assert str(died) == ("worker process 4242 died with signal SIGKILL (kill -9 or the out-of-memory killer) "
                         "while running trial 3")
    assert death_reason(1, 7, None) == "worker process 7 exited with code 1 before running a trial"


def test_launcher_configs_compose():
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from dlx.compose import config_dir
    from dlx.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=dlx_local"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith("DlxLocalLauncher") and cfg.hydra.launcher.n_jobs == 1
        with pytest.raises(ConfigCompositionException, match="n_jobs"):  # typed: a wrong type fails at compose time
            compose("config", ["hydra/launcher=dlx_local", "hydra.launcher.n_jobs=two"], return_hydra_config=True)


# ---------------------------------------------------------------------------------------------- submitit
def _require_submitit() -> None:
    """The dev extra installs hydra-submitit-launcher: without it these tests fail instead of skipping,
    so that CI never passes without running them."""
    import importlib.util

    assert importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None, (
        "hydra-submitit-launcher is not installed: pip install -e '.[dev]' (or 'dlx[slurm]')")


def test_slurm_launcher_configs_compose():
    _require_submitit()
    from hydra import compose, initialize_config_dir

    from dlx.compose import config_dir
    from dlx.config import register_configs

    shipped = {p.stem for p in (Path(config_dir()) / "hydra" / "launcher").glob("*.yaml")}
    assert shipped == {"slurm", "slurm_local"}, f"{shipped}: a launcher option needs a test here that runs it"
    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
        assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.timeout_min == 60
        local = compose("config", ["hydra/launcher=slurm_local"], return_hydra_config=True)
        assert local.hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")


def test_sweep_through_submitits_local_executor(workdir):
    """The slurm launcher's code path without a cluster: each trial a pickled submitit job run by a fresh
    interpreter, its result read back from disk; both trials in one batch, which the local executor
    runs at once. One of them trains over two processes: a SLURM job starts its ranks as `dlx train` does."""
    _require_submitit()
    proc = run_dlx(["sweep", "trainer.devices=1,2", "trainer.device=cpu", *TRIAL, "hydra/launcher=slurm_local",
                    "hydra.sweeper.batch_size=2"], workdir, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 ok, 0 failed" in proc.stdout, proc.stdout[-3000:]
    assert "UserWarning" not in proc.stderr  # no option of ours shadows the plugin's own
    runs = all_runs(workdir)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and len(trials) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent[0].info.run_id}
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert sorted(r.data.params["trainer.devices"] for r in trials) == ["1", "2"]
    # each trial ran as a submitit job: its pickled result and logs are in the sweep's .submitit folder
    assert len(list((workdir / "outputs" / "sweeps").rglob(".submitit/*/*_result.pkl"))) == 2


def workers_in(workdir: Path) -> list[int]:
    """Pids of live sweep workers and their forkserver whose working directory is workdir: the
    forkserver's command line names dlx's preload, and its workers share it; spawned workers are
    multiprocessing's."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        dlx_process = b"dlx.sweep.preload" in cmdline or b"--multiprocessing-fork" in cmdline
        if dlx_process and Path(cwd) == workdir and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_forkserver_started_ahead_ends_when_the_sweep_fails_its_checks(workdir):
    """dlx sweep starts the forkserver (and its imports) before it checks every trial; a bad trial ends
    the sweep with exit 2 at once, and the forkserver ends by itself once its imports are done."""
    from conftest import run_dlx

    proc = run_dlx(["sweep", "optimizer=sgd,adamm", "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"], workdir)
    assert proc.returncode == 2 and "adamm" in proc.stderr
    wait_for(lambda: not workers_in(workdir), 60, "the forkserver to end")


def test_the_command_line_pool_size_starts_the_forkserver_ahead(monkeypatch):
    """`dlx sweep` starts the forkserver ahead where the command line asks for the pool, not otherwise."""
    import multiprocessing.forkserver

    from dlx.sweep import cli

    started = []
    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", lambda: started.append(True))
    cli._start_workers_early(["optimizer=sgd,adam", "hydra.launcher.n_jobs=1"])
    cli._start_workers_early(["hydra/launcher=slurm", "hydra.launcher.n_jobs=4"])
    assert started == []  # one job runs in-process; another launcher has its own workers
    cli._start_workers_early(["optimizer=sgd,adam", "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"])
    assert started == [True]
    monkeypatch.setenv("DLX_WORKER_START", "spawn")
    cli._start_workers_early(["optimizer=sgd,adam", "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"])
    assert started == [True]  # spawned workers import for themselves: nothing to start ahead


# ---------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("devices, worker, per_trial, expected", [
    (["0", "1"], 0, None, ["0"]), (["0", "1"], 1, None, ["1"]), (["0", "1"], 2, None, ["0"]),  # round-robin
    (["0"], 3, None, ["0"]),  # workers share the one GPU
    ([], 1, None, None),  # no CUDA: CUDA_VISIBLE_DEVICES untouched
    (["0", "1", "2", "3"], 1, 2, ["2", "3"]), (["0", "1", "2"], 1, 2, ["2", "0"]),
    (["4", "GPU-5e1f"], 1, None, ["GPU-5e1f"]),  # as CUDA_VISIBLE_DEVICES names them
    (["0", "1"], 0, 0, []), ([], 0, 0, []),  # 0: every device hidden, trials on the CPU
])
def test_each_worker_gets_its_devices_round_robin(devices, worker, per_trial, expected):
    from dlx.sweep.devices import trial_devices

    assert trial_devices(devices, worker, per_trial) == expected


def test_devices_visible_and_gpus_per_trial_beyond_them():
    from dlx.sweep.devices import trial_devices, visible_devices

    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({}, count=2) == ["0", "1"]
    with pytest.raises(ValueError, match=r"gpus_per_trial=3: 2 CUDA device\(s\) visible \(0,1\); allowed: 0 "):
        trial_devices(["0", "1"], 0, 3)
    with pytest.raises(ValueError, match="gpus_per_trial=-1"):
        trial_devices(["0"], 0, -1)


def test_gpus_per_trial_beyond_the_visible_devices_is_a_user_error(workdir):
    proc = run_dlx(["sweep", "seed=0,1", *TRIAL, "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2",
                    "hydra.launcher.gpus_per_trial=3"], workdir, env={**dlx_env(), "CUDA_VISIBLE_DEVICES": "0,1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == ("dlx: error: hydra.launcher.gpus_per_trial=3: 2 CUDA device(s) visible (0,1); "
                                   "allowed: 0 (trials on the CPU) to 2, or null (one each where there are any)")
    assert not (workdir / "outputs" / "mlflow.db").exists()


def test_the_pool_s_devices_are_checked_against_the_trials_ranks_wherever_they_are_set(workdir):
    """hydra.launcher.gpus_per_trial from a config file is checked as on the command line; a trial over several
    GPUs (trainer.devices=N) needs N per worker: given by default, refused when fewer are given or visible."""
    study = workdir / "mine" / "study" / "pooled.yaml"
    study.parent.mkdir(parents=True)
    study.write_text("# @package _global_\ndefaults:\n  - override /hydra/launcher: dlx_local\n"
                     "hydra:\n  launcher:\n    n_jobs: 2\n    gpus_per_trial: 1\n")
    pool = ["sweep", "seed=0,1", *TRIAL, "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"]
    cases = {
        ("study", "--config-dir", str(workdir / "mine"), "pooled", "seed=0,1", *TRIAL): (
            "", "hydra.launcher.gpus_per_trial=1: 0 CUDA device(s) visible (none); allowed: 0 (trials on the CPU) "
                "to 0, or null (one each where there are any)"),
        (*pool, "trainer.devices=3", "trainer.batch_size=63"): (
            "0,1", "trainer.devices=3: each rank of a trial takes a GPU, 2 CUDA device(s) visible: allowed 1 to 2, "
                   "or trainer.device=cpu"),
        (*pool, "trainer.devices=1,2", "hydra.launcher.gpus_per_trial=1"): (
            "0,1,2", "hydra.launcher.gpus_per_trial=1 with trainer.devices=2: each rank of a trial takes a GPU: "
                     "allowed 2 to 3, or null (as many as trainer.devices)"),
    }
    for args, (visible, message) in cases.items():
        proc = run_dlx(list(args), workdir, env={**dlx_env(), "CUDA_VISIBLE_DEVICES": visible})
        assert proc.returncode == 2 and proc.stderr.strip() == f"dlx: error: {message}", (args, proc.stderr[-3000:])
    assert not (workdir / "outputs").exists()


def test_a_sweep_over_gpu_counts_gives_each_worker_the_most_it_asks(workdir, monkeypatch):
    from dlx.sweep.checks import prepare

    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    pool = ["hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2", *TRIAL]
    assert "hydra.launcher.gpus_per_trial=2" in prepare([*pool, "trainer.devices=1,2"])
    assert not [a for a in prepare([*pool, "trainer.devices=2", "trainer.device=cpu"]) if "gpus_per_trial" in a]
    assert not [a for a in prepare([*pool, "seed=0,1"]) if "gpus_per_trial" in a]  # one each, the pool's default


@pytest.mark.cuda
def test_two_workers_train_on_cuda_sharing_one_gpu(workdir):
    """With a GPU: two workers on the first device, each trial trains on CUDA and records the device."""
    trials = [[*TRIAL, "trainer.device=cuda", f"seed={i}"] for i in range(2)]
    results, text = run_app(workdir, ["hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"], trials,
                            env={"CUDA_VISIBLE_DEVICES": "0"})
    assert [r["status"] for r in results] == ["COMPLETED", "COMPLETED"], text[-3000:]
    assert len(set(trial_pids(text).values())) == 2
    runs = runs_by_trial(workdir)
    assert {r.data.tags["gpus"] for r in runs.values()} == {"0"}
    assert all(r.data.tags["dlx.device"].startswith("cuda") for r in runs.values())

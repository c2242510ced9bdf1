"""One training over several processes (dlx.distributed): real `python -m dlx train trainer.devices=2` runs,
torchrun starting two gloo ranks on the CPU, each run against a temporary SQLite store.

A 2-rank run is one MLflow run, FINISHED, with rank 0's metrics and checkpoints, and with the test accuracy of
the one-process training on the same global batch; a rank that raises or is SIGKILLed ends the run FAILED with
that rank's error, and the run resumes on two ranks to the one-process result; Ctrl-C to `dlx train` ends
every rank and the run KILLED; DDP settings this machine cannot run exit 2 before any rank starts. The NCCL
variants at the end need CUDA devices and skip without them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICK, all_runs, client_for, dlx_env, run_cli_batch, run_dlx

TWO = ["trainer.devices=2", "trainer.device=cpu", *QUICK]  # gloo ranks, also where a GPU is visible
NCCL = ["trainer.devices=2", "trainer.device=cuda", *QUICK]
LONG = [*(a for a in TWO if not a.startswith("trainer.epochs=")), "trainer.epochs=500"]

# a callback a test names with trainer.callbacks: on one rank, at one step, while its file exists, it removes the
# file and fails (raises, or SIGKILLs its own process); the resumed run finds no file and trains on
FAULTS = '''
import os, signal
from pathlib import Path

import torch.distributed as dist


class Fault:
    def __init__(self, rank, step, armed, how="raise"):
        self.rank, self.step, self.armed, self.how = rank, step, Path(armed), how

    def on_step(self, trainer, state):
        if dist.get_rank() == self.rank and state.step == self.step and self.armed.exists():
            self.armed.unlink()
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault on rank {self.rank} at step {self.step}")
'''


def one_process_reference(args: list[str]) -> dict[str, float]:
    """The same configuration trained in this process, as one process does: final test metrics and the
    per-epoch training loss."""
    from omegaconf import OmegaConf

    from dlx.build import build
    from dlx.compose import compose

    cfg = compose([a for a in args if not a.startswith("trainer.devices=")])
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    trainer = build(resolved).trainer
    state = trainer.fit()
    test = trainer.evaluate(trainer.data.test)
    return {"test/acc": test["acc"], "test/loss": test["loss"], "train/loss": [h["train/loss"] for h in state.history]}


def history(workdir: Path, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client_for(workdir).get_metric_history(run_id, key), key=lambda m: m.step)]


def check_one_run_of_rank_0(workdir: Path, proc, run) -> None:
    """What a finished 2-rank run holds: rank 0's MLflow run, metrics and checkpoints, and its lines only."""
    assert run.info.status == "FINISHED" and run.data.params["trainer.devices"] == "2"
    assert proc.stdout.count("epoch 2/2") == 1 and proc.stdout.count("dlx train: FINISHED") == 1, proc.stdout
    assert len(history(workdir, run.info.run_id, "val/acc")) == 2
    ckpt = Path(run.data.tags["dlx.checkpoint_dir"])
    assert (ckpt / "last.pt").is_file() and (ckpt / "best.pt").is_file()
    run_dir = Path(run.data.tags["dlx.run_dir"])
    assert (run_dir / "ddp" / "rank1.log").is_file() and not list((run_dir / "ddp").glob("rank*.json"))
    # each rank's share of a global batch is every other sample of the one-process batch (DistributedSampler's
    # rule), so the curves are the one-process ones up to the order floating-point sums are taken in
    ref = one_process_reference(TWO)
    assert run.data.metrics["test/acc"] == pytest.approx(ref["test/acc"], abs=0.02)
    assert history(workdir, run.info.run_id, "train/loss") == pytest.approx(ref["train/loss"], rel=1e-3)


STREAM = ["dataset.stream=on", "dataset.workers=1"]  # batches through DataLoader workers, each rank its share


@pytest.mark.slow  # the resumed run below checks the same on the in-memory path, after a failure
def test_two_ranks_train_one_run_as_one_process_does(workdir):
    proc = run_dlx(["train", *TWO, *STREAM], workdir, check=True)
    [run] = all_runs(workdir)
    check_one_run_of_rank_0(workdir, proc, run)


def armed_fault(workdir: Path, how: str) -> str:
    (workdir / "faults.py").write_text(FAULTS)
    (workdir / "armed").touch()
    return f"trainer.callbacks=[{{_target_: faults.Fault, rank: 1, step: 30, armed: '{workdir / 'armed'}', how: {how}}}]"


def check_failed_by_rank_1(workdir: Path, proc, expected: str):
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not (workdir / "armed").exists()  # rank 1 reached step 30 (epoch 2)
    [run] = [r for r in all_runs(workdir) if r.data.params.get("trainer.devices") == "2"]
    error = run.data.tags["dlx.error"]
    assert run.info.status == "FAILED" and error.startswith(f"rank 1: {expected}"), error
    assert proc.stderr.splitlines()[-1].startswith(f"dlx: run FAILED: rank 1: {expected}"), proc.stderr
    assert "Traceback" not in proc.stderr
    if expected.startswith("RuntimeError"):  # its traceback, in its log, sits with the run
        logs = [a.path for a in client_for(workdir).list_artifacts(run.info.run_id, "logs")]
        assert "logs/rank1.log" in logs, logs
    return run


def test_a_rank_that_raises_fails_the_run_with_its_error_and_the_run_resumes_on_every_rank(workdir):
    # an earlier run in the same run folder (hydra.run.dir) is not this one: it stays as it ended
    folder = f"hydra.run.dir={workdir / 'outputs' / 'exp'}"
    run_dlx(["train", *QUICK, folder], workdir, check=True)
    fault = armed_fault(workdir, "raise")
    proc = run_dlx(["train", *TWO, fault, folder], workdir)
    run = check_failed_by_rank_1(workdir, proc, "RuntimeError: injected fault on rank 1 at step 30")
    [earlier] = [r for r in all_runs(workdir) if r.info.run_id != run.info.run_id]
    assert earlier.info.status == "FINISHED" and "dlx.error" not in earlier.data.tags
    # rank 0 reads the checkpoint of epoch 1 and every rank loads it: the run ends where one process ends
    proc = run_dlx(["train", *TWO, fault, f"trainer.resume={run.info.run_id}"], workdir, check=True)
    [resumed] = [r for r in all_runs(workdir) if r.info.run_id == run.info.run_id]
    assert resumed.data.tags["dlx.resumed_from_epoch"] == "1"
    check_one_run_of_rank_0(workdir, proc, resumed)


def test_a_sigkilled_rank_fails_the_run(workdir):
    proc = run_dlx(["train", *TWO, *STREAM, armed_fault(workdir, "kill")], workdir)
    check_failed_by_rank_1(workdir, proc, "killed by SIGKILL")


def _long_run_training(workdir: Path) -> tuple[subprocess.Popen, list[int]]:
    """A 2-rank `dlx train` of LONG, once its first epoch is done, and its ranks' pids."""
    proc = subprocess.Popen([sys.executable, "-m", "dlx", "train", *LONG], cwd=workdir,
                            env=dlx_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the run's log, not its store: a second process opening a store that is being created races its migration
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("epoch 1/500" in f.read_text()
                                                  for f in workdir.glob("outputs/runs/*/*/train.log")):
        time.sleep(0.5)
    ranks = _rank_pids(workdir)
    if len(ranks) != 2:
        proc.kill()
        pytest.fail(f"2 ranks expected, found {ranks}")
    return proc, ranks


def test_ctrl_c_ends_every_rank_and_the_run_killed(workdir):
    proc, ranks = _long_run_training(workdir)
    try:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    [run] = all_runs(workdir)
    assert run.info.status == "KILLED" and "Ctrl-C" in run.data.tags["dlx.error"]
    assert "dlx: run KILLED: interrupted (Ctrl-C)" in err and f"trainer.resume={run.info.run_id}" in err
    assert not [pid for pid in ranks if _alive(pid)]


def test_ranks_end_with_a_launcher_that_is_killed(workdir):
    """torchrun starts the ranks in sessions of their own: `dlx train` SIGKILLed (the out-of-memory killer, a sweep
    worker killed with its trial) leaves nobody to stop them but themselves; they end, and rank 0 closes the run."""
    proc, ranks = _long_run_training(workdir)
    try:
        proc.kill()
        proc.communicate(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and [pid for pid in ranks if _alive(pid)]:
            time.sleep(0.5)
        assert not [pid for pid in ranks if _alive(pid)], "ranks outlived their launcher"
    finally:
        for pid in _rank_pids(workdir):
            os.kill(pid, signal.SIGKILL)
    [run] = all_runs(workdir)
    assert run.info.status == "KILLED", (run.info.status, run.data.tags.get("dlx.error"))


def _rank_pids(workdir: Path) -> list[int]:
    """The processes running `-m dlx.distributed` for a run under workdir."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"dlx.distributed" in cmd and any(str(workdir).encode() in part for part in cmd):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def test_ddp_settings_this_machine_cannot_run_exit_2_before_any_rank_starts(workdir):
    cases = {
        "trainer.batch_size=63": "allowed a multiple of 2",
        "trainer.device=mps": "each rank takes a device of its own",
        "trainer.nodes=2": "trainer.rdzv_endpoint=HOST:PORT",
        "trainer.node_rank=1": "trainer.node_rank=1 is out of range: allowed null or 0 to 0",
        "trainer.nodes=2 trainer.rdzv_endpoint=localhost:abc": "trainer.rdzv_endpoint=localhost:abc: allowed "
                                                               "HOST:PORT ([IPv6]:PORT), PORT 1 to 65535",
    }
    results = run_cli_batch([["train", "trainer.devices=2", *case.split()] for case in cases], workdir)
    for case, needle in cases.items():
        code, err, left = results[json.dumps(["train", "trainer.devices=2", *case.split()])]
        # one line, or one per problem under a header where the machine adds its own (no MPS device here)
        assert code == 2 and err.startswith("dlx: error: ") and "Traceback" not in err, (case, err)
        assert needle in err, (case, err)
        assert not left, (case, left)  # no run folder, no store: nothing started


def test_torchrun_gets_the_rendezvous_of_several_nodes():
    from dlx.distributed import torchrun_args, wanted

    assert wanted({"strategy": "ddp", "devices": 1, "nodes": 1})  # one rank, through torchrun all the same
    assert not wanted({"strategy": "auto", "devices": 1, "nodes": 1})
    assert wanted({"strategy": "auto", "devices": 1, "nodes": 2})

    home = Path("/runs/x/ddp")
    base = {"devices": 4, "nodes": 2, "rdzv_endpoint": "node0:29400"}
    c10d = torchrun_args({**base, "node_rank": None}, home)
    assert {"--nproc-per-node=4", "--nnodes=2", "--rdzv-endpoint=node0:29400", "--rdzv-backend=c10d"} <= set(c10d)
    static = torchrun_args({**base, "node_rank": 1}, home)
    assert {"--rdzv-backend=static", "--node-rank=1", "--rdzv-endpoint=node0:29400"} <= set(static)
    assert "--standalone" in torchrun_args({"devices": 2, "nodes": 1}, home)
    # torchrun itself takes them
    from torch.distributed.run import parse_args

    ns = parse_args([*static, "--module", "dlx.distributed", "spec.json"])
    assert (ns.nnodes, ns.rdzv_endpoint, ns.node_rank, ns.rdzv_backend) == ("2", "node0:29400", 1, "static")


# ------------------------------------------------------------------------------------------------ NCCL
def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA devices for 2 NCCL ranks")
def test_two_ranks_on_cuda_nccl(workdir):
    proc = run_dlx(["train", *NCCL], workdir, check=True)
    [run] = all_runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["dlx.device"].startswith("cuda"), proc.stdout[-2000:]
    assert run.data.metrics["test/acc"] > 0.1


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() < 2, reason="needs 2 CUDA devices for 2 NCCL ranks")
def test_a_failing_nccl_rank_fails_the_run(workdir):
    proc = run_dlx(["train", *NCCL, armed_fault(workdir, "raise")], workdir)
    check_failed_by_rank_1(workdir, proc, "RuntimeError: injected fault on rank 1 at step 30")


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() < 1, reason="needs a CUDA device")
def test_one_nccl_rank_through_torchrun(workdir):
    run_dlx(["train", "trainer.strategy=ddp", *QUICK, "trainer.device=cuda"], workdir, check=True)
    [run] = all_runs(workdir)
    assert run.info.status == "FINISHED" and run.data.metrics["test/acc"] > 0.1


def test_a_sweep_runs_ddp_trials_on_the_pool_each_with_a_gpu_per_rank(workdir):
    """A trial is one `dlx.run.train`, whichever launcher runs it (the local pool here; a SLURM job alike, with
    hydra.launcher.gpus_per_node for its ranks): it starts its ranks the way `dlx train` does. On the pool, each
    worker gets as many of the visible CUDA devices as trainer.devices asks (here four named, the ranks on gloo)."""
    proc = run_dlx(["sweep", "trainer.devices=2", *QUICK, "trainer.progress=none", "seed=0,1",
                    "hydra/launcher=dlx_local", "hydra.launcher.n_jobs=2"], workdir, check=True,
                   env={**dlx_env(), "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    runs = all_runs(workdir)
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and {t.info.status for t in trials} == {"FINISHED"}
    assert {t.data.params["trainer.devices"] for t in trials} == {"2"}
    assert sorted(t.data.tags["gpus"] for t in trials) == ["0,1", "2,3"]
    # a quiet trial's table goes to its log (and the console only as a log line), as one process's does
    assert not [ln for ln in proc.stdout.splitlines() if ln.startswith("dlx train: FINISHED")]


@pytest.mark.slow
@pytest.mark.parametrize("numbering", ["c10d", "static"])
def test_two_nodes_meet_at_the_rendezvous_endpoint(workdir, numbering):
    """Two `dlx train` commands on this host play two nodes of one rank each: one run, from rank 0's node."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["trainer.nodes=2", "trainer.devices=1", "trainer.device=cpu", f"trainer.rdzv_endpoint=127.0.0.1:{port}",
            *QUICK]
    nodes = []
    for node in range(2):
        here = workdir / f"node{node}"
        here.mkdir()
        numbered = [f"trainer.node_rank={node}"] if numbering == "static" else []
        nodes.append(subprocess.Popen([sys.executable, "-m", "dlx", "train", *args, *numbered,
                                       f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"], cwd=here, env=dlx_env(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(3)  # the first opens the store alone (its schema migration is not safe to race)
    outs = [p.communicate(timeout=240) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.params["trainer.nodes"] == "2"

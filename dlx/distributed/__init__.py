"""One training over several processes: torchrun starts the ranks, DistributedDataParallel keeps them in step.

`dlx train trainer.devices=N` checks its configuration in the `dlx train` process (exit 2 before any rank
starts), writes what the ranks need into the run's folder (ddp/spec.json, and ddp/resume.pt when resuming), then
runs torchrun (torch.distributed.run, in this process) with `-m dlx.distributed` (a rank: __main__.py): N ranks on
this node, gloo on CPU, NCCL on CUDA (a GPU each). Rank 0 runs the run as one process does (dlx.run: the MLflow run, checkpoints,
progress, the summary); the other ranks build the same trainer and fit it with the configuration's own callbacks
only. Each rank writes ddp/rank<r>.json when it fails, so that the launching process can name the rank whose
error ended the run and close the run FAILED with it, whichever rank torchrun stopped after it.

Inside the loop (dlx.engine, through `Trainer.dist`): every rank draws the same epoch permutation (same seed,
same draws) and takes its share of it, DistributedSampler's (padded to equal shares, so every rank takes as many
steps); trainer.batch_size is the global batch, each rank taking its share; loss and accuracy sums are all-reduced
per log window; validation runs on rank 0 and its metrics are broadcast, so early stopping and plateau schedules
decide alike on every rank.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("dlx")

SPEC = "spec.json"
RESULT = "result.json"
_LAUNCHER_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")  # torchrun replaces their handlers


def world_size(t: dict) -> int:
    return int(t.get("devices", 1)) * int(t.get("nodes", 1))


def wanted(t: dict) -> bool:
    """Whether the trainer config `t` asks for a training through torchrun."""
    return str(getattr(t.get("strategy"), "value", t.get("strategy"))) == "ddp" or world_size(t) > 1


def joined() -> bool:
    """Whether this process is one rank of a torch.distributed training."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def problems(cfg) -> list[str]:
    """What the configuration's DDP settings cannot do here; called by dlx.validate before any data loads."""
    t = cfg.trainer
    if not wanted(t):
        return []
    world, device, out = world_size(t), str(t.device), []
    each = f"trainer.devices x trainer.nodes = {world}"
    if t.batch_size % world:
        out.append(f"trainer.batch_size={t.batch_size} is the global batch, shared equally by the {each} ranks: "
                   f"allowed a multiple of {world}")
    if device == "mps" or device.startswith("cuda:") and t.devices > 1:
        out.append(f"trainer.device={device} with trainer.devices={t.devices}: each rank takes a device of its "
                   "own: allowed auto, cpu or cuda")
    elif device in ("auto", "cuda") and t.devices > 1:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n and t.devices > n:
            out.append(f"trainer.devices={t.devices} but only {n} CUDA device(s) are visible: allowed 1 to {n}, "
                       "or trainer.device=cpu")
    if t.nodes > 1 and not t.rdzv_endpoint:
        out.append(f"trainer.nodes={t.nodes} needs trainer.rdzv_endpoint=HOST:PORT, a free port on one of the "
                   "nodes, the same on every node")
    elif t.nodes > 1 and not endpoint_ok(str(t.rdzv_endpoint)):
        out.append(f"trainer.rdzv_endpoint={t.rdzv_endpoint}: allowed HOST:PORT ([IPv6]:PORT), PORT 1 to 65535, "
                   "the same on every node")
    if t.node_rank is not None and t.node_rank >= t.nodes:
        out.append(f"trainer.node_rank={t.node_rank} is out of range: allowed null or 0 to {t.nodes - 1}")
    return out


def endpoint_ok(endpoint: str) -> bool:
    """Whether torchrun can read `endpoint` as its rendezvous: a host and a port it can bind or reach."""
    import re

    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]\s]+):(\d{1,5})", endpoint)
    return m is not None and 1 <= int(m[2]) <= 65535


# ---------------------------------------------------------------------------------------------- in the loop
class Ranks:
    """The training's process group as the loop uses it (Trainer.dist)."""

    def __init__(self, trainer):
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        from dlx.engine import smallest_train_batch, train_batches

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        cuda = trainer.device.type == "cuda"
        self.comm = trainer.device if cuda else torch.device("cpu")  # NCCL reduces CUDA tensors, gloo CPU ones
        ids = [trainer.device.index if trainer.device.index is not None else torch.cuda.current_device()] if cuda else None
        # the training steps go through DDP, which all-reduces the gradients during backward; evaluation and
        # checkpoints use the plain module (trainer.forward, trainer.model), which rank 0 may run alone
        self.forward = DistributedDataParallel(trainer.forward, device_ids=ids)
        shard = math.ceil(len(trainer.data.train) / self.world)
        trainer.batches = train_batches(shard, trainer.opt.batch_size // self.world, smallest_train_batch(trainer.model))
        trainer.steps_per_epoch = len(trainer.batches)

    def shard(self, order):
        """This rank's share of an epoch's order, by DistributedSampler's rule: padded by wrapping around to a
        multiple of the world size, then every world-th index from this rank's."""
        import torch
        from torch.utils.data import DistributedSampler

        idx = list(DistributedSampler(range(len(order)), num_replicas=self.world, rank=self.rank, shuffle=False))
        return order[torch.as_tensor(idx, device=order.device)]

    def sum(self, *values) -> list[float]:
        """Each value summed over the ranks (one all-reduce); read once per log window, as the loop reads it."""
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm)
        dist.all_reduce(t)
        return t.tolist()

    def from_lead(self, fn, *args):
        """fn(*args) run on rank 0, its result given to every rank."""
        import torch.distributed as dist

        box = [fn(*args) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def attach(trainer) -> None:
    """Make `trainer` this process's rank of the training; a no-op outside torchrun's ranks."""
    if joined():
        trainer.dist = Ranks(trainer)


# ---------------------------------------------------------------------------------------------- the launcher
def torchrun_args(t: dict, home: Path) -> list[str]:
    """torchrun's options for the trainer config `t`: one node alone (--standalone: a free port on this host),
    or the rendezvous of several nodes at trainer.rdzv_endpoint."""
    n = int(t["devices"])
    args = [f"--nproc-per-node={n}", "--max-restarts=0", f"--log-dir={home / 'logs'}",
            f"--shutdown-timeout={shutdown_timeout()}"]
    if n > 1:  # only rank 0 prints: the other local ranks' output goes to their files under ddp/logs
        args.append("--redirects=" + ",".join(f"{i}:3" for i in range(1, n)))
    if int(t["nodes"]) == 1:
        return [*args, "--standalone"]
    args += [f"--nnodes={t['nodes']}", f"--rdzv-endpoint={t['rdzv_endpoint']}"]
    if t.get("node_rank") is None:  # the c10d rendezvous numbers the nodes; one id per job, the same on each
        return [*args, "--rdzv-backend=c10d", f"--rdzv-id={os.environ.get('SLURM_JOB_ID', 'dlx')}"]
    return [*args, "--rdzv-backend=static", f"--node-rank={t['node_rank']}"]


def shutdown_timeout() -> int:
    """Seconds torchrun gives stopped ranks before SIGKILL (its default, 30, is shorter than one wait for a busy or
    unreachable store): rank 0 closing its run waits out the store twice at most (the run's end, its log files),
    and then spools what the store did not take."""
    from dlx.tracking import store_patience

    return int(2 * store_patience()) + 30


def launch(cfg: dict, *, run_dir: Path, overrides: list[str], choices: dict, checkpoint: dict | None,
           command: list[str]) -> dict:
    """Run the training `cfg` (checked and resolved) over its ranks; the final metrics, as dlx.run.train returns
    them. RunError with the run's outcome when a rank fails or the training is interrupted."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    from dlx.errors import RunError

    home = run_dir / "ddp"
    home.mkdir(parents=True, exist_ok=True)
    for stale in [*home.glob("rank*.json"), home / RESULT]:
        stale.unlink(missing_ok=True)
    resume = None
    if checkpoint is not None:  # as prepare_resume checked it; rank 0 reads it and gives it to every rank
        from dlx.checkpoint import save_checkpoint

        resume = str(save_checkpoint(checkpoint, home / "resume.pt")[0])
    root = logging.getLogger()
    spec = {"config": cfg, "run_dir": str(run_dir.resolve()), "overrides": overrides, "choices": choices,
            "command": command, "resume": resume,
            # rank 0 shows what this process would: its log files, a console only where this has one (a sweep's
            # trials log to their file alone), and its stdout unless it is captured (a quiet trial's table)
            "log_files": [h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)],
            "console": any(type(h) is logging.StreamHandler for h in root.handlers),
            "stdout": sys.stdout is sys.__stdout__}
    (home / SPEC).write_text(json.dumps(spec))
    args = [*torchrun_args(cfg["trainer"], home), "--module", "dlx.distributed", str(home / SPEC)]
    log.info("training over %d processes: torchrun %s", world_size(cfg["trainer"]), " ".join(args))
    # which run rank 0 opens: the resumed one, or one started from now on in this run folder
    mine = _Mine(run_dir, since_ms=int(time.time() * 1000) - 1000,
                 run_id=checkpoint.get("run_id") if checkpoint is not None else None)
    import threading

    # torchrun sets its own handlers (in the main thread only) and leaves them: a sweep worker's stay its own
    main_thread = threading.current_thread() is threading.main_thread()
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in _LAUNCHER_SIGNALS} if main_thread else {}
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads is None:  # the cores shared by the ranks, rather than torchrun's 1 each
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(cfg["trainer"]["devices"])))
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its info and warnings (each rank it stops) would bury the run's one line
    try:
        torchrun.run(torchrun.parse_args(args))
    except ChildFailedError as exc:
        raise _failure(exc.failures, home, cfg, mine) from None
    except SignalException as exc:  # torchrun passed the signal on to every rank; rank 0 closed the run
        lead = _outcome(home, 0)
        code = 130 if exc.sigval == signal.SIGINT else 128 + int(exc.sigval)
        message = f"run KILLED: {exc.sigval.name}"
        if lead is None:  # rank 0 ended before it could close the run (killed, or stuck past the grace)
            _close(cfg, mine, message, None, "KILLED", "interrupted", running_only=True)
        raise RunError(lead["message"] if lead else message, code) from None
    except RendezvousError as exc:  # the nodes did not meet: no rank started
        raise RunError(f"error: the nodes did not meet at trainer.rdzv_endpoint={cfg['trainer']['rdzv_endpoint']}: "
                       f"{type(exc).__name__}: {exc}", 1) from None
    finally:
        if resume is not None:  # a copy for rank 0: the run's own checkpoint stays where it was
            Path(resume).unlink(missing_ok=True)
        quiet.setLevel(level)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        for name, handler in handlers.items():
            signal.signal(getattr(signal, name), handler)
    result = home / RESULT  # absent on a node that does not hold rank 0
    return json.loads(result.read_text()) if result.exists() else {}


def _outcome(home: Path, rank: int) -> dict | None:
    try:
        return json.loads((home / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return None


class _Mine:
    """The MLflow run of one launch: rank 0's, tagged with the run folder (dlx.run_dir), either the run it resumed
    or one started since the launch; not a run that an earlier command left in the same folder."""

    def __init__(self, run_dir: Path, since_ms: int, run_id: str | None):
        self.run_dir, self.since_ms, self.run_id = run_dir, since_ms, run_id

    def __call__(self, run) -> bool:
        return run.info.run_id == self.run_id or run.info.start_time >= self.since_ms


def _failure(failures: dict, home: Path, cfg: dict, mine: _Mine) -> BaseException:
    """The error that ends the run, from the ranks torchrun found failed (before it stopped the others): a rank
    that died without writing its outcome (a signal, the OOM killer) first, else the earliest outcome; rank 0's
    when it found a configuration error, as every rank does."""
    from dlx.errors import Pruned, RunError

    outcomes = {rank: _outcome(home, rank) for rank in failures}
    silent = sorted(r for r, o in outcomes.items() if o is None)
    if silent:
        rank, failure = silent[0], failures[silent[0]]
        text = (f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
                ) + " without an error message; its log: " + str(home / "logs")
        kind = "died"
    else:
        lead = outcomes.get(0)
        rank = 0 if lead and lead["code"] == 2 else min(outcomes, key=lambda r: (outcomes[r]["time"], r))
        text, kind = outcomes[rank]["message"], outcomes[rank]["kind"]
    if rank == 0 and kind != "died":  # rank 0 closed the run with this outcome itself
        if kind == "pruned":
            return Pruned(text)
        return RunError(text if kind == "run" else f"run FAILED: rank 0: {text}", outcomes[0]["code"])
    message = f"rank {rank}: {text}"
    _close(cfg, mine, message, home / f"rank{rank}.log", "FAILED", "failed")
    return RunError(f"run FAILED: {message}", 1)


def _close(cfg: dict, mine: _Mine, message: str, rank_log: Path | None, status: str, outcome: str,
           running_only: bool = False) -> None:
    """Close this launch's run with `status` and a rank's error, that rank's log (and traceback) beside rank 0's.
    FAILED by another rank: torchrun stopped rank 0 after that rank failed, and rank 0 had closed it KILLED (or
    FAILED with the broken connection it saw). KILLED, `running_only`: rank 0 did not close it. The store is
    waited for as a run waits for it."""
    tc = cfg["tracking"]
    if not tc["enabled"]:
        return
    from dlx.redact import redact
    from dlx.tracking import open_store, patiently, resolve_uri, store_patience

    uri, artifacts = resolve_uri(tc["uri"], tc["artifact_location"])
    try:
        patience = store_patience()
        client, experiment = patiently(lambda: open_store(uri, tc["experiment"], artifacts), patience)
        where = str(mine.run_dir.resolve()).replace("'", "\\'")
        runs = patiently(lambda: client.search_runs([experiment], filter_string=f"tags.`dlx.run_dir` = '{where}'"),
                         patience)
        for run in [r for r in runs if mine(r) and (r.info.status == "RUNNING" or not running_only)]:
            for key, value in redact({"dlx.error": message, "dlx.outcome": outcome}).items():
                client.set_tag(run.info.run_id, key, value)
            if rank_log is not None and rank_log.is_file():
                client.log_artifact(run.info.run_id, str(rank_log), "logs")
            client.set_terminated(run.info.run_id, status=status)
    except Exception as exc:  # noqa: BLE001 - the run's own error is the one to report
        log.error("could not close the run %s in %s: %s", status, uri, exc)

"""One rank of a training over several processes, as torchrun starts it: `python -m dlx.distributed SPEC`
(dlx.distributed.launch writes the spec). Rank 0 runs the run as one process does; the others follow."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from dlx.distributed import RESULT, attach, shutdown_timeout

log = logging.getLogger("dlx")


def main(argv: list[str] | None = None) -> int:
    """One rank, as torchrun starts it: `python -m dlx.distributed RUN_DIR/ddp/spec.json`."""
    spec_path = Path((sys.argv[1:] if argv is None else argv)[0])
    spec = json.loads(spec_path.read_text())
    home, rank = spec_path.parent, int(os.environ["RANK"])
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _log_to(spec, home, rank)
    signal.signal(signal.SIGINT, _interrupt_once)
    import threading

    threading.Thread(target=_watch_launcher, args=(os.getppid(),), name="dlx-launcher-watch", daemon=True).start()
    from dlx.errors import Pruned, RunError, Terminated
    from dlx.run import sigterm_as_interrupt

    outcome = None
    shown = io.StringIO()
    try:
        with sigterm_as_interrupt(), (contextlib.nullcontext() if spec["stdout"] else contextlib.redirect_stdout(shown)):
            final = _rank(spec, rank)  # torchrun stops the other ranks with SIGTERM when one fails
        if rank == 0:
            (home / RESULT).write_text(json.dumps(final, default=float))
    except RunError as exc:
        outcome = {"code": exc.exit_code, "message": str(exc), "kind": "run"}
    except Pruned as exc:
        outcome = {"code": 1, "message": str(exc), "kind": "pruned"}
    except KeyboardInterrupt as exc:
        code = 143 if isinstance(exc, Terminated) else 130
        outcome = {"code": code, "message": "terminated by SIGTERM" if code == 143 else "interrupted", "kind": "run"}
    except BaseException as exc:  # noqa: BLE001 - any error of the rank is the run's; its traceback in its log
        log.exception("rank %d failed", rank)
        outcome = {"code": 1, "message": f"{type(exc).__name__}: {exc}", "kind": "exception"}
    if shown.getvalue().strip():
        log.info("%s", shown.getvalue().rstrip())
    if outcome is not None:
        (home / f"rank{rank}.json").write_text(json.dumps({**outcome, "time": time.time()}))
        return outcome["code"]
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


def _watch_launcher(launcher: int) -> None:
    """torchrun starts each rank in a session of its own and stops it itself; a launcher that dies first (SIGKILL,
    the out-of-memory killer, a sweep worker killed with its trial) would leave the ranks training on: the rank
    then ends as on SIGTERM (rank 0 closes the run KILLED), and is killed if it is stuck (in a collective whose
    peer is gone, say) after the grace torchrun would have given it."""
    while os.getppid() == launcher:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(shutdown_timeout())
    os.kill(os.getpid(), signal.SIGKILL)


def _interrupt_once(signum, frame):
    """Ctrl-C, passed on by torchrun: stop as one process does; a second one does not cut the run's closing."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _log_to(spec: dict, home: Path, rank: int) -> None:
    """Rank 0 logs where the launching process does (in Hydra's format); the others to ddp/rank<r>.log only."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if rank:
        handlers = [logging.FileHandler(home / f"rank{rank}.log")]
    else:
        files = spec["log_files"] or [str(Path(spec["run_dir"]) / "train.log")]
        handlers = [logging.FileHandler(f) for f in files]
        if spec["console"]:
            handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)


def _rank(spec: dict, rank: int) -> dict:
    import torch
    import torch.distributed as dist

    from dlx.build import select_device

    cfg = spec["config"]
    device = select_device(cfg["trainer"]["device"])
    if device.type == "cuda":  # "cuda" is then this rank's GPU, wherever the run names it
        torch.cuda.set_device(device.index if device.index is not None else int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    box = [None]
    if spec["resume"] is not None:
        if rank == 0:
            from dlx.checkpoint import load_checkpoint

            box = [load_checkpoint(spec["resume"])]
        dist.broadcast_object_list(box, src=0)
    if rank == 0:
        from dlx.run import _train

        return _train(cfg, run_dir=Path(spec["run_dir"]), overrides=spec["overrides"], choices=spec["choices"],
                      checkpoint=box[0], command=spec["command"])
    return _follow(cfg, box[0])


def _follow(cfg: dict, checkpoint: dict | None) -> dict:
    """A rank other than 0: the same trainer, fitted with the configuration's callbacks only."""
    from dlx.build import build
    from dlx.data import DatasetError
    from dlx.errors import RunError

    try:
        built = build(cfg)
        attach(built.trainer)
    except (DatasetError, ValueError) as exc:
        raise RunError(str(exc), 2) from None
    trainer = built.trainer
    trainer.callbacks = list(built.user_callbacks)
    state = None
    if checkpoint is not None:
        from dlx.checkpoint import restore

        state = restore(trainer, checkpoint)
    trainer.fit(state)
    return {}


if __name__ == "__main__":
    sys.exit(main())

"""Atomic checkpoints with every RNG state, loadable with torch.load(weights_only=True).

A checkpoint holds only plain containers (dict, list, tuple, str, numbers) and tensors: no OmegaConf
objects and no numpy arrays, which the weights-only unpickler refuses.
"""

from __future__ import annotations

import copy as _copy
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlx.engine import Trainer, TrainState


def on_cpu(state: Any, copy: bool = False) -> Any:
    """A copy of `state` whose tensors are all on the CPU, for a checkpoint that loads anywhere. Tensors
    already there are shared unless `copy`: serialize the result before the next step changes them."""
    if isinstance(state, torch.Tensor):
        if state.device.type != "cpu":
            return state.detach().to("cpu")
        return state.detach().clone() if copy else state.detach()
    if isinstance(state, dict):
        return {k: on_cpu(v, copy) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(on_cpu(v, copy) for v in state)
    return _copy.deepcopy(state)


FORMAT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_checkpoint(trainer: Trainer, state: TrainState, *, config: dict, run_id: str | None,
                    copy: bool = False) -> dict[str, Any]:
    """The checkpoint of `trainer` and `state` now. Without `copy` it shares the trainer's CPU tensors: save
    it before the next step. With `copy` it is a snapshot that training no longer changes."""
    return {
        "format": FORMAT_VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "stopped_early": state.stopped_early,
        "history": list(state.history),
        "trainer": on_cpu(trainer.state_dict(), copy=copy),
        "rng": capture_rng(),
        "config": config,
        "run_id": run_id,
    }


def save_checkpoint(checkpoint: dict[str, Any], *paths: str | os.PathLike) -> list[Path]:
    """Write `checkpoint` to every path so that a reader never sees half a file: serialized once, straight
    into a temporary file beside the first path; hard-linked (copied where the filesystem has no links) to a
    temporary name beside each other path; then each renamed over its path. A later save replaces a path by
    a new file, so names that shared one stop sharing it.

    Between two epochs of a small model this is the loop's largest piece of work: serializing through an
    in-memory buffer and writing the bytes once per path moved ~6x the checkpoint's size through memory,
    and the next epoch of a digits MLP ran 5-10% slower for the cache it found cold."""
    paths = [Path(p) for p in paths]
    temporary: list[Path] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)  # left by a killed process that had this pid
            temporary.append(tmp)
            if len(temporary) == 1:
                torch.save(checkpoint, tmp)
            else:
                try:
                    os.link(temporary[0], tmp)
                except OSError:  # no hard links here, or another filesystem
                    shutil.copyfile(temporary[0], tmp)
        for tmp, path in zip(temporary, paths):
            os.replace(tmp, path)
    finally:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
    return paths


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointError(ValueError):
    """A file that is not a checkpoint this dlx can resume from; the message says what is wrong."""


# what make_checkpoint writes: key -> the types its value may have (bool is not an int here)
FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,), "epoch": (int,), "step": (int,), "stopped_early": (bool,), "history": (list,),
    "trainer": (dict,), "rng": (dict,), "config": (dict,), "run_id": (str, type(None)),
}
TRAINER_FIELDS = ("model", "optimizer", "schedule")  # Trainer.load_state_dict needs these
RNG_FIELDS = ("python", "numpy", "torch", "cuda")  # restore_rng reads these


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint from `path`, checked to be one make_checkpoint wrote before anything uses it: a file
    from elsewhere failed deep inside a run (`KeyError: 'config'`) after the run had been reopened."""
    try:
        checkpoint = load_checkpoint(path)
    except pickle.UnpicklingError:
        raise CheckpointError("it holds objects other than tensors and plain containers, which "
                              "torch.load(weights_only=True) refuses to load") from None
    except OSError as exc:
        raise CheckpointError(exc.strerror or type(exc).__name__) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises KeyError, EOFError, RuntimeError, ... for other files
        raise CheckpointError(f"torch.load cannot read it ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"it holds a {type(checkpoint).__name__}, not a dict")
    missing = [k for k in FIELDS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"it lacks {', '.join(missing)}")
    for key, types in FIELDS.items():
        value = checkpoint[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            allowed = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise CheckpointError(f"its {key} is a {type(value).__name__}, not {allowed}")
    if checkpoint["format"] != FORMAT_VERSION:
        raise CheckpointError(f"its format is {checkpoint['format']}; this dlx reads format {FORMAT_VERSION}")
    if checkpoint["epoch"] < 0 or checkpoint["step"] < checkpoint["epoch"]:
        raise CheckpointError(f"its epoch {checkpoint['epoch']} and step {checkpoint['step']} cannot both be "
                              "true (each epoch takes at least one step)")
    for name, fields in (("trainer", TRAINER_FIELDS), ("rng", RNG_FIELDS)):
        lacking = [k for k in fields if k not in checkpoint[name]]
        if lacking:
            raise CheckpointError(f"its {name} state lacks {', '.join(lacking)}")
    if not all(isinstance(h, dict) for h in checkpoint["history"]):
        raise CheckpointError("its history is not a list of per-epoch metrics")
    return checkpoint


def restore(trainer: Trainer, checkpoint: dict[str, Any]) -> TrainState:
    """Put the trainer and every RNG back where the checkpoint was taken; returns the loop state."""
    trainer.load_state_dict(checkpoint["trainer"])
    if trainer.early_stopping is not None and trainer.early_stopping.best_state is not None:
        device = trainer.device
        trainer.early_stopping.best_state = {k: v.to(device) for k, v in trainer.early_stopping.best_state.items()}
    restore_rng(checkpoint["rng"])
    return TrainState(epoch=checkpoint["epoch"], step=checkpoint["step"],
                      stopped_early=checkpoint["stopped_early"], history=list(checkpoint["history"]))

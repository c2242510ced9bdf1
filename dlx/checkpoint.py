"""Atomic checkpoints with every RNG state, loadable with torch.load(weights_only=True).

A checkpoint holds only plain containers (dict, list, tuple, str, numbers) and tensors: no OmegaConf
objects and no numpy arrays, which the weights-only unpickler refuses.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlx.engine import Trainer, TrainState, clone_to_cpu

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


def make_checkpoint(trainer: Trainer, state: TrainState, *, config: dict, run_id: str | None) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "stopped_early": state.stopped_early,
        "history": state.history,
        "trainer": clone_to_cpu(trainer.state_dict()),
        "rng": capture_rng(),
        "config": config,
        "run_id": run_id,
    }


def save_checkpoint(checkpoint: dict[str, Any] | bytes, *paths: str | os.PathLike) -> list[Path]:
    """Serialize once and write to each path: a temporary file in the same directory, then a rename, so a
    reader never sees half a file. `checkpoint` may already be serialized (`serialize`)."""
    data = checkpoint if isinstance(checkpoint, bytes) else serialize(checkpoint)
    written = []
    for path in map(Path, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(path)
    return written


def serialize(checkpoint: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(trainer: Trainer, checkpoint: dict[str, Any]) -> TrainState:
    """Put the trainer and every RNG back where the checkpoint was taken; returns the loop state."""
    trainer.load_state_dict(checkpoint["trainer"])
    if trainer.early_stopping is not None and trainer.early_stopping.best_state is not None:
        device = trainer.device
        trainer.early_stopping.best_state = {k: v.to(device) for k, v in trainer.early_stopping.best_state.items()}
    restore_rng(checkpoint["rng"])
    return TrainState(epoch=checkpoint["epoch"], step=checkpoint["step"],
                      stopped_early=checkpoint["stopped_early"], history=list(checkpoint["history"]))

"""What every diagnostic shares: a fixed, seeded sample of a split, chunked loss, and a model left as found."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from dlx.losses import LossFn


def fixed_subset(split, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` samples of a split (dlx.data.batches: held or streamed) drawn once with `seed` (all of them when
    n >= its length), on the split's device."""
    if n >= len(split):
        return split.take(torch.arange(len(split)))
    g = torch.Generator().manual_seed(seed)
    return split.take(torch.randperm(len(split), generator=g)[:n])


def chunks(x: torch.Tensor, y: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """(x_chunk, y_chunk, weight) with weights len(chunk)/len(x): a mean over x is the weighted sum."""
    n = len(x)
    for start in range(0, n, size):
        xc, yc = x[start:start + size], y[start:start + size]
        yield xc, yc, len(xc) / n


def mean_loss(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    with torch.no_grad():
        return float(sum(w * loss_fn(model(xc), yc).double() for xc, yc, w in chunks(x, y, chunk)))


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def evaluated(model: nn.Module, train: bool = False):
    """Run a diagnostic without leaving a trace: the train/eval mode, the buffers (BatchNorm's running
    statistics) and the random state (dropout) are as before afterwards."""
    was_training = model.training
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        model.train(train)
        try:
            yield model
        finally:
            model.train(was_training)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])

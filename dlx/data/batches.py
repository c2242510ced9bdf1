"""Batch sources: where the training loop and evaluation take their (x, y) batches from.

A TensorSplit holds a whole split as two tensors on the device, and a batch is an index into them: no
copy, no worker, the fastest path where the data fits. A StreamSplit reads its samples through a
torch.utils.data.DataLoader whose workers decode them (images from disk, rows of a user's Dataset) while
the device trains, and moves each batch to the device, where it is scaled and normalised. Both answer
the same three calls, so the loop has no special case for either: len(split), split.permutation() (the
epoch's order, drawn from torch's global generator so that a resumed run draws the same one) and
split.batches(bounds, order).
"""

from __future__ import annotations

import multiprocessing
import weakref
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

Batch = tuple[torch.Tensor, torch.Tensor]


class Split(Protocol):
    device: torch.device

    def __len__(self) -> int: ...

    def permutation(self) -> torch.Tensor: ...

    def batches(self, bounds: Sequence[tuple[int, int]], order: torch.Tensor | None = None) -> Iterator[Batch]: ...

    def take(self, idx: torch.Tensor) -> Batch: ...

    def to(self, device) -> Split: ...


def eval_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive batches of batch_size over n samples, the last one shorter."""
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


class TensorSplit:
    """A split held as tensors x (float32) and y (int64) on one device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return len(self.y)

    def permutation(self) -> torch.Tensor:
        return torch.randperm(len(self.y), device=self.x.device)

    def batches(self, bounds, order=None):
        x, y = self.x, self.y
        if order is None:
            for start, stop in bounds:
                yield x[start:stop], y[start:stop]
        else:
            for start, stop in bounds:
                idx = order[start:stop]
                yield x[idx], y[idx]

    def take(self, idx):
        return self.x[idx], self.y[idx]

    def to(self, device) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device))


class ArrayDataset(Dataset):
    """(x, y) arrays or tensors as a Dataset of samples, so that in-memory data can stream too."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.targets = y  # the labels, known without reading a sample

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return torch.as_tensor(self.x[i]), int(self.y[i])


class Joined(Dataset):
    """Several Datasets behind one index space (part k starts at offsets[k]): every split of a source is read
    by one pool of workers instead of one pool per split."""

    def __init__(self, parts: Sequence[Dataset]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i):
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k][int(i - self.offsets[k])]


class _Lists(Sampler):
    """The index lists of the next pass, set before each: a persistent worker pool serves passes of any order."""

    def __init__(self):
        self.lists: list[list[int]] = []

    def __iter__(self):
        return iter(self.lists)

    def __len__(self) -> int:
        return len(self.lists)


def worker_context():
    """Workers never fork the training process, which has threads (torch's pools, the metric writer): they fork
    from the standard library's forkserver, a fresh single-threaded process that imports torch and dlx.data
    once for all workers (bench/README.md has the times), or else are spawned."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["dlx.data"])  # takes effect when the server starts, with the first pool
    return context


class Pool:
    """One DataLoader with persistent workers over a Joined dataset; load() runs one pass over index lists."""

    def __init__(self, dataset: Dataset, *, workers: int, pin_memory: bool = False):
        self.dataset = dataset
        self.sampler = _Lists()
        self.loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=workers, pin_memory=pin_memory,
            persistent_workers=workers > 0, multiprocessing_context=worker_context() if workers > 0 else None,
            # each pass draws the workers' seeds from this generator, not torch's global one: the global stream
            # (the epoch orders, dropout, augmentation) stays the one the in-memory path consumes
            generator=torch.Generator().manual_seed(torch.initial_seed()))
        self._active = None  # the pass in progress, so a pass started inside it reads in this process instead

    def load(self, lists: list[list[int]]) -> Iterator[Batch]:
        if self._active is not None and self._active() is not None:
            return self._in_process(lists)
        passing = self._pass(lists)
        self._active = weakref.ref(passing)
        return passing

    def _pass(self, lists):
        self.sampler.lists = lists
        try:
            yield from _one_line_errors(self.loader)
        finally:
            self._active = None

    def _in_process(self, lists):
        collate = self.loader.collate_fn
        for idx in lists:
            yield collate([self.dataset[i] for i in idx])


def _one_line_errors(loader: DataLoader) -> Iterator[Batch]:
    """A worker's exception comes back with the worker's traceback as its message; a dlx error keeps only its
    own line ('dlx.data.splits.DatasetError: dataset.path=...: cannot read ...')."""
    try:
        yield from loader
    except ValueError as error:
        text = str(error)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.splitlines() if line.strip()][-1]
        raise type(error)(last.split(": ", 1)[-1]) from None


class StreamSplit:
    """Samples `indices` of a Pool's dataset, delivered on `device` as float32 times `scale`, then standardised
    with (mean, std) when given."""

    def __init__(self, pool: Pool, indices: np.ndarray, *, device="cpu", scale: float = 1.0,
                 mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        self.pool, self.indices = pool, np.asarray(indices, dtype=np.int64)
        self.device = torch.device(device)
        self.scale, self.mean, self.std = scale, mean, std

    def __len__(self) -> int:
        return len(self.indices)

    def permutation(self) -> torch.Tensor:
        return torch.randperm(len(self.indices))  # on the CPU: the indices go to the workers from here

    def batches(self, bounds, order=None):
        order = np.arange(len(self.indices)) if order is None else order.cpu().numpy()
        lists = [self.indices[order[start:stop]].tolist() for start, stop in bounds]
        for x, y in self.pool.load(lists):
            yield self._on_device(x, y)

    def take(self, idx):
        lists = [self.indices[torch.as_tensor(idx).cpu().numpy()].tolist()]
        return next(iter(self._on_device(x, y) for x, y in self.pool.load(lists)))

    def _on_device(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        # pixels travel as uint8 (a quarter of float32) and become floats on the device
        x = x.to(self.device, non_blocking=True).float()
        if self.scale != 1.0:
            x = x.mul_(self.scale)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x, y.to(self.device, non_blocking=True).long()

    def to(self, device) -> StreamSplit:
        mean = None if self.mean is None else self.mean.to(device)
        std = None if self.std is None else self.std.to(device)
        return StreamSplit(self.pool, self.indices, device=device, scale=self.scale, mean=mean, std=std)

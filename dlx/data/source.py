"""What a dataset target returns (Source), dlx's own dataset keys (split_options) and prepare, which turns a
Source into train/val/test splits held on the device or streamed to it."""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler
from typing import Annotated, Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from dlx.data.batches import ArrayDataset, Joined, Pool, StreamSplit, eval_bounds
from dlx.data.resample import Resample
from dlx.data.splits import DatasetError, DataSplits, build_splits, check_labels, plan_splits
from dlx.options import Range, problems, spec
from dlx.tasks import Target, Task

Pair = tuple[Any, Any]  # (x, y): arrays or tensors, x shaped (N, *sample shape), y N class indices


@dataclass
class Source:
    """A data set as its target hands it over: each split an (x, y) pair or a torch Dataset of (x, y) samples.

    test None: a fixed stratified 20% of train becomes the test split (no experiment setting moves it).
    val None: val is carved from train, stratified, with dataset.split_seed. scale multiplies every x
    (e.g. 1/255 for uint8 pixels, which then travel and are stored as bytes until they are split).
    A Dataset may carry its labels as `targets` (torchvision's name) or `labels`; without them they are
    read once, sample by sample, to stratify the splits.
    """

    train: Pair | Dataset
    num_classes: int
    test: Pair | Dataset | None = None
    val: Pair | Dataset | None = None
    name: str | None = None
    scale: float = 1.0
    classes: tuple[str, ...] | None = None  # class names in index order, where the data has them
    # what y holds (dlx.tasks): label (class indices), value (real numbers, num_classes outputs), steps (a class
    # per input position, causal) or sequence (an output sequence read after the whole input)
    target: Target = Target.label
    vocab: int | None = None  # x holds token ids in [0, vocab), 0 the padding; None: real-valued x
    tokens: tuple[str, ...] | None = None  # the string of each token id
    tolerance: float | None = None  # value targets: |error| below which an output counts as solved


class Stream(str, enum.Enum):
    auto = "auto"  # stream when the data would fill more than half of the device's free memory
    on = "on"
    off = "off"


# auto streams a data set whose float32 samples would take more than this share of the device's free memory
STREAM_ABOVE = 0.5


def split_options(*, val_fraction: Annotated[float, Range(ge=0, lt=1)] = 0.1,
                  split_seed: Annotated[int, Range(ge=0)] = 0,
                  train_subset: Annotated[int | None, Range(ge=1)] = None,
                  normalize: bool = True,
                  stream: Stream = Stream.auto,
                  workers: Annotated[int, Range(ge=0)] = 2) -> dict[str, Any]:
    """dlx's own keys of every dataset, beside the target's options; returns them checked, with defaults.

    val_fraction: share of the training part held out, stratified, for validation (when the source has no val).
    split_seed: seeds the val carve-out and train_subset; the test split never depends on it.
    train_subset: keep only this many training samples (stratified), e.g. to study overfitting.
    normalize: standardise per channel (per feature for tabular data) with training-split statistics.
    stream: read batches through DataLoader workers (on), hold every split on the device (off), or decide
      by size (auto: stream when the float32 samples would take more than half the device's free memory).
    workers: DataLoader worker processes when streaming a Dataset (0 reads in the training process; arrays
      are always indexed there).
    """
    values = dict(locals())
    found = problems(_SPLIT_SPEC(), values, "dataset")
    for name in ("split_seed", "workers", "train_subset"):
        value = values[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            found.append(f"dataset.{name}={value!r} is not an integer")
    if found:
        raise DatasetError("; ".join(found))
    values["stream"] = Stream(values["stream"])
    return values


_SPLIT_SPEC = functools.cache(lambda: spec(split_options))


def loader(fn: Callable[..., Source] | None = None, *, target: Target = Target.label,
           tokens: bool = False, images: bool | None = False) -> Callable[..., Source]:
    """A built-in dataset's options are checked from its own signature when Python calls it directly, with
    the messages (dataset.<option>=...) the config checks give. `target` and `tokens` declare what its Source
    holds, so that a model or loss that cannot serve it is refused with the configuration, before any data
    loads (dlx.build.pairing_problems); a user's dataset is checked on its data instead. `images`: whether its
    samples are images (channels, height, width), which a self-supervised objective's views need
    (dlx.ssl.objective); None where only the loaded data can tell (a user's arrays)."""
    if fn is None:
        return functools.partial(loader, target=target, tokens=tokens, images=images)
    options = spec(fn)

    @functools.wraps(fn)
    def checked(**kwargs) -> Source:
        found = problems(options, kwargs, "dataset")
        if found:
            raise DatasetError("; ".join(found))
        return fn(**kwargs)

    checked.declared = (Target(target), bool(tokens))
    checked.images = images
    return checked


def as_source(value: Any) -> Source:
    """A Source, or a plain dict with its keys, as user code may return."""
    if isinstance(value, Source):
        return value
    if isinstance(value, Mapping):
        keys = {f.name for f in dataclasses.fields(Source)}
        unknown = sorted(set(value) - keys)
        missing = sorted(k for k in ("train", "num_classes") if k not in value)
        if unknown or missing:
            what = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
            raise DatasetError(f"dataset: the target returned a dict with {what}; allowed keys: {', '.join(sorted(keys))}")
        return Source(**value)
    raise DatasetError(f"dataset: the target returned {type(value).__name__}; expected a dlx.data.Source or a dict "
                       "with train, num_classes and optionally test, val, name, scale, classes")


def prepare(source: Source | Mapping, *, device: str | torch.device = "cpu", resample: Resample | None = None,
            **options) -> DataSplits:
    """The train/val/test splits of source on device, held as tensors or streamed (see split_options); `resample`:
    a cross-validation fold or a bootstrap member (dlx.data.resample)."""
    opts = split_options(**options)
    src = as_source(source)
    device = torch.device(device)
    name = src.name or "dataset"
    num_classes = _count(src.num_classes)
    target = _target(name, src.target)
    parts = {split: getattr(src, split) for split in ("train", "val", "test")}
    for split, part in parts.items():
        if part is not None and not isinstance(part, Dataset):
            parts[split] = _pair(name, split, part, target, src.vocab)
        elif part is not None and target is not Target.label:
            raise DatasetError(f"'{name}' {split}: a torch Dataset carries class labels only; give {target.value} "
                               "targets as an (x, y) pair of arrays")
    task = _task(name, src, target, parts["train"])
    _check_shapes(name, parts, task)
    if task.target is not Target.label and opts["stream"] is Stream.on:
        raise DatasetError(f"dataset.stream=on: streaming reads class labels only, and '{name}' has "
                           f"{task.target.value} targets: allowed dataset.stream=auto or off")
    if (opts["stream"] is Stream.off or task.target is not Target.label
            or (opts["stream"] is Stream.auto and not _too_big(parts, device))):
        arrays = {split: _materialise(part, opts["workers"]) if isinstance(part, Dataset) else part
                  for split, part in parts.items()}
        x_val, y_val = arrays["val"] or (None, None)
        x_test, y_test = arrays["test"] or (None, None)
        return build_splits(name=name, x_train=arrays["train"][0], y_train=arrays["train"][1], x_test=x_test,
                            y_test=y_test, x_val=x_val, y_val=y_val, num_classes=num_classes,
                            val_fraction=opts["val_fraction"], split_seed=opts["split_seed"],
                            train_subset=opts["train_subset"], normalize=opts["normalize"],
                            scale=src.scale, task=task, resample=resample).to(device)
    return _streamed(name, parts, num_classes, src.scale, opts, device, resample)


def _streamed(name, parts, num_classes, scale, opts, device, resample=None) -> DataSplits:
    datasets = {s: p if isinstance(p, Dataset) else ArrayDataset(*p) for s, p in parts.items() if p is not None}
    order = list(datasets)
    joined = Joined([datasets[s] for s in order])
    start = dict(zip(order, joined.offsets[:-1].tolist()))
    # arrays are indexed faster here than pickled to workers and back: workers serve sources that decode
    decoded = [part for part in datasets.values() if not isinstance(part, ArrayDataset)]
    workers = opts["workers"] if decoded else 0
    if workers:
        for part in decoded:
            _check_picklable(part)
    pool = Pool(joined, workers=workers, pin_memory=device.type == "cuda")
    y_train = _labels(datasets["train"], pool, start["train"])
    for split, part in datasets.items():  # the given val and test too, where their labels are known
        labels = y_train if split == "train" else _known_labels(part)
        if labels is not None:
            check_labels(name, split, labels, num_classes)
    plan = plan_splits(y_train, carve_test="test" not in datasets, carve_val="val" not in datasets,
                       val_fraction=opts["val_fraction"], split_seed=opts["split_seed"],
                       train_subset=opts["train_subset"], name=name, resample=resample)
    indices = {s: (start["train"] + plan[s] if plan[s] is not None
                   else start[s] + np.arange(len(datasets[s]))) for s in ("train", "val", "test")}
    splits = {s: StreamSplit(pool, indices[s], device=device, scale=scale) for s in indices}
    x0, _ = joined[int(indices["train"][0])] if len(indices["train"]) else joined[0]
    if opts["normalize"]:
        mean, std = _statistics(splits["train"])
        for split in splits.values():
            split.mean, split.std = mean, std
    return DataSplits(**splits, input_shape=tuple(int(d) for d in torch.as_tensor(x0).shape),
                      num_classes=num_classes, name=name)


def _count(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DatasetError(f"dataset: num_classes must be an integer >= 1, got {num_classes!r}")
    return int(num_classes)


def _target(name: str, target) -> Target:
    try:
        return Target(getattr(target, "value", target))
    except ValueError:
        raise DatasetError(f"'{name}': target={target!r} is not a kind of target: allowed "
                           f"{', '.join(t.value for t in Target)}") from None


def _task(name: str, src: Source, target: Target, train) -> Task:
    if src.vocab is not None and (isinstance(src.vocab, bool) or not isinstance(src.vocab, (int, np.integer))
                                  or src.vocab < 2):
        raise DatasetError(f"'{name}': vocab must be an integer >= 2 (the token ids, 0 the padding), got {src.vocab!r}")
    if src.tokens is not None and src.vocab is not None and len(src.tokens) != src.vocab:
        raise DatasetError(f"'{name}': tokens names {len(src.tokens)} ids but vocab is {src.vocab}")
    if target is Target.value and (isinstance(src.tolerance, bool) or not isinstance(src.tolerance, (int, float))
                                   or not 0 < src.tolerance < math.inf):
        raise DatasetError(f"'{name}': value targets need a tolerance > 0 (|error| below it counts as solved)")
    per_position = target in (Target.steps, Target.sequence)
    return Task(target=target, vocab=None if src.vocab is None else int(src.vocab),
                tokens=None if src.tokens is None else tuple(src.tokens),
                tolerance=None if src.tolerance is None else float(src.tolerance),
                target_len=int(train[1].shape[1]) if per_position else None)


def _check_shapes(name: str, parts: dict, task: Task) -> None:
    """A given val or test split's samples (and targets per position) have the training split's shape: the model
    is built for that one, and a mismatch would otherwise surface only when that split is evaluated."""
    train = parts["train"]
    if isinstance(train, Dataset):
        return
    for split in ("val", "test"):
        part = parts[split]
        if part is None or isinstance(part, Dataset):
            continue
        if part[0].shape[1:] != train[0].shape[1:] or (task.per_position and part[1].shape[1] != task.target_len):
            raise DatasetError(f"'{name}' {split}: samples {part[0].shape[1:]} and targets {part[1].shape[1:]} do not "
                               f"match the training split's {train[0].shape[1:]} and {train[1].shape[1:]}")


_Y_SHAPES = {Target.label: "(N,) class indices", Target.value: "(N,) real numbers",
             Target.steps: "(N, T) class indices, one per input position",
             Target.sequence: "(N, T_out) class indices"}


def _pair(name: str, split: str, part, target: Target = Target.label, vocab: int | None = None) -> Pair:
    try:
        x, y = part
    except (TypeError, ValueError):
        raise DatasetError(f"'{name}' {split}: expected an (x, y) pair or a torch Dataset, "
                           f"got {type(part).__name__}") from None
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    per_position = target in (Target.steps, Target.sequence)
    if (x.ndim < 2 or y.ndim != (2 if per_position else 1) or len(x) != len(y)
            or (target is Target.steps and y.shape[1] != x.shape[-1])):
        raise DatasetError(f"'{name}' {split}: x {x.shape} and y {y.shape} do not fit; expected x (N, ...) with "
                           f"one row per sample and y {_Y_SHAPES[target]}")
    if vocab is not None:
        if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() >= vocab)):
            raise DatasetError(f"'{name}' {split}: token inputs must be integer ids in [0, {vocab}) (vocab={vocab})")
        x = x.astype(np.int64)
    if target is Target.value:
        if not np.issubdtype(y.dtype, np.number):
            raise DatasetError(f"'{name}' {split}: value targets must be numbers, got {y.dtype}")
        return x, y.astype(np.float32)
    if not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
        raise DatasetError(f"'{name}' {split}: labels must be class indices (integers), got {y.dtype}")
    return x, y.astype(np.int64)


def _sample_bytes(parts) -> int:
    total = 0
    for part in parts.values():
        if part is None:
            continue
        if isinstance(part, Dataset):
            x0 = torch.as_tensor(part[0][0]) if len(part) else torch.zeros(0)
            total += len(part) * x0.numel() * 4
        else:
            total += len(part[1]) * int(np.prod(part[0].shape[1:])) * 4
    return total


def free_memory(device: torch.device) -> float:
    """Bytes free on device: CUDA's own count, else the host's available memory (inf where unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def _too_big(parts, device: torch.device) -> bool:
    return _sample_bytes(parts) > STREAM_ABOVE * free_memory(device)


# starting DataLoader workers costs seconds (each imports torch): a Dataset that reads faster alone is read alone
WORKERS_PAY_AFTER_S = 5.0


def _materialise(dataset: Dataset, workers: int) -> Pair:
    """Every sample of dataset read once into two arrays: the in-memory path for a Dataset that fits. Read by
    the workers when reading it in this process, timed on its first samples, would take longer than starting them."""
    if not len(dataset):
        raise DatasetError("dataset: a split of the source holds no samples")
    t0 = time.perf_counter()
    head = [dataset[i] for i in range(min(len(dataset), 16))]
    alone_s = (time.perf_counter() - t0) / len(head) * len(dataset)
    if workers and alone_s > WORKERS_PAY_AFTER_S:
        _check_picklable(dataset)
        pool = Pool(dataset, workers=workers)
        batches = list(pool.load([list(range(a, b)) for a, b in eval_bounds(len(dataset), 256)]))
    else:
        samples = head + [dataset[i] for i in range(len(head), len(dataset))]
        batches = [default_collate(samples[a:b]) for a, b in eval_bounds(len(samples), 256)]
    return torch.cat([x for x, _ in batches]).numpy(), torch.cat([y for _, y in batches]).numpy().astype(np.int64)


def _check_picklable(dataset: Dataset) -> None:
    """Workers receive the Dataset pickled: a class defined inside a function cannot travel."""
    try:
        ForkingPickler.dumps(dataset)
    except Exception as error:  # noqa: BLE001 - pickling raises AttributeError, TypeError, PicklingError, ...
        raise DatasetError(f"dataset: the {type(dataset).__name__} Dataset cannot be sent to DataLoader workers "
                           f"({error}); define its class at module level, or set dataset.workers=0") from None


def _known_labels(dataset: Dataset) -> np.ndarray | None:
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None and len(labels) == len(dataset):
            return np.asarray(labels, dtype=np.int64)
    return None


def _labels(dataset: Dataset, pool: Pool, offset: int) -> np.ndarray:
    known = _known_labels(dataset)
    if known is not None:
        return known
    lists = [list(range(offset + a, offset + b)) for a, b in eval_bounds(len(dataset), 256)]
    return torch.cat([y for _, y in pool.load(lists)]).numpy().astype(np.int64)


def _statistics(train: StreamSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (per-feature for tabular data) mean and std of the training split, in one pass over it, as
    splits.normalise_ computes them for the in-memory path."""
    total = square = None
    count = 0
    for x, _ in train.batches(eval_bounds(len(train), 256)):
        x = x.double()
        axes = (0,) if x.dim() == 2 else (0, *range(2, x.dim()))
        total = x.sum(dim=axes, keepdim=True) + (0 if total is None else total)
        square = (x * x).sum(dim=axes, keepdim=True) + (0 if square is None else square)
        count += x.numel() // total.numel()
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()

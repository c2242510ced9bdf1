"""Train/val/test splits: the container every dataset returns and the seeded, stratified splitting
and train-only normalisation that turn raw arrays into it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from dlx.data.batches import Split, TensorSplit
from dlx.data.resample import Resample, bootstrap, fold_split
from dlx.tasks import IGNORE, LABELS, Target, Task

# The test split of datasets without an official one is drawn with this seed and nothing else, so no
# experiment setting (split_seed, train_subset, val_fraction) can ever move a sample in or out of it.
TEST_SPLIT_SEED = 20240101
TEST_FRACTION = 0.2


class DatasetError(ValueError):
    """A dataset cannot be built as asked: bad name or option, missing or corrupt files."""


@dataclass
class DataSplits:
    """The three splits plus what a model needs to know about one sample.

    train, val and test are batch sources (dlx.data.batches): a TensorSplit holds float32, channel-first x
    and int64 y on the device; a StreamSplit reads its samples through a DataLoader. input_shape is the
    shape of a single sample, e.g. (1, 28, 28) for MNIST or (2,) for tabular data.
    """

    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    task: Task = LABELS  # what y holds and how it is measured (dlx.tasks)

    # The whole tensors of the in-memory path, for code that indexes them directly; a streamed split has none.
    x_train = property(lambda self: self.train.x)
    y_train = property(lambda self: self.train.y)
    x_val = property(lambda self: self.val.x)
    y_val = property(lambda self: self.val.y)
    x_test = property(lambda self: self.test.x)
    y_test = property(lambda self: self.test.y)

    @property
    def streamed(self) -> bool:
        return not isinstance(self.train, TensorSplit)

    def to(self, device) -> DataSplits:
        """A copy whose splits deliver their batches on device (the original is left where it is)."""
        return dataclasses.replace(self, train=self.train.to(device), val=self.val.to(device),
                                   test=self.test.to(device))


def stratified_split(labels: np.ndarray, *, n_take: int, seed: int | tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Pick n_take indices so that each class keeps (as nearly as integers allow) its share.

    Per-class counts use the largest-remainder rule, so the total is exactly n_take even for tiny
    subsets where a class may get no sample at all. Returns (taken, rest), both sorted so that the
    original sample order survives.
    """
    labels = np.asarray(labels)
    n_total = len(labels)
    if not 0 <= n_take <= n_total:
        raise DatasetError(f"cannot take {n_take} samples out of {n_total}")
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (n_take / max(n_total, 1))
    per_class = np.floor(quotas).astype(np.int64)
    shortfall = n_take - int(per_class.sum())
    # Stable sort: ties go to the lower class id, which keeps the choice deterministic.
    order = np.argsort(-(quotas - per_class), kind="stable")
    per_class[order[:shortfall]] += 1

    rng = np.random.default_rng(seed)
    taken = []
    for cls, k in zip(classes, per_class):
        members = np.flatnonzero(labels == cls)
        taken.append(members[rng.permutation(len(members))[:k]])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    rest_mask = np.ones(n_total, dtype=bool)
    rest_mask[taken_idx] = False
    return taken_idx, np.flatnonzero(rest_mask)


def _channel_axes(x: torch.Tensor) -> tuple[int, ...]:
    """Axes to average over: the sample axis plus every spatial axis. Tabular (N, F) data keeps its
    feature axis, so it is normalised per feature; (N, C, ...) data per channel."""
    return (0,) if x.dim() == 2 else (0, *range(2, x.dim()))


def normalise_(x_train: torch.Tensor, *others: torch.Tensor) -> None:
    """Standardise in place with the mean/std of x_train alone, so no statistic leaks from val or test."""
    # float32 reductions on CPU sum pairwise, which is accurate enough here and avoids a float64 copy
    # of the whole training set (over a gigabyte for CIFAR-10).
    var, mean = torch.var_mean(x_train, dim=_channel_axes(x_train), keepdim=True, unbiased=False)
    std = var.sqrt()
    # A constant channel/feature carries no information; dividing by 1 keeps it finite (and 0).
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    for x in (x_train, *others):
        x.sub_(mean).div_(std)


def plan_splits(y_train: np.ndarray, *, carve_test: bool, carve_val: bool, val_fraction: float,
                split_seed: int, train_subset: int | None, name: str,
                resample: Resample | None = None) -> dict[str, np.ndarray | None]:
    """Indices into the source's training part for each split: "test" (None unless carve_test), "val" (None
    unless carve_val) and "train".

    Without an official test split a fixed stratified 20% becomes the test split. Val is then carved from the
    remaining train part with split_seed, and train_subset shrinks what is left, so the same split_seed gives
    the same val set whatever train_subset is. A cross-validation fold (resample.fold) replaces the val carve:
    that fold of the non-test samples validates; a bootstrap member resamples what trains (dlx.data.resample).
    """
    y_train = np.asarray(y_train, dtype=np.int64)
    rest = np.arange(len(y_train))
    test_idx = None
    if carve_test:
        n_test = int(round(TEST_FRACTION * len(y_train)))
        test_idx, rest = stratified_split(y_train, n_take=n_test, seed=TEST_SPLIT_SEED)
    val_idx = None
    if resample is not None and resample.fold is not None:
        if not carve_val:
            raise DatasetError(f"cv.fold: '{name}' comes with its own validation split, which cross-validation "
                               f"would leave out; give its samples in train")
        taken, kept = fold_split(y_train[rest], fold=resample.fold, folds=resample.folds, repeat=resample.repeat,
                                 split_seed=split_seed, name=name)
        val_idx, rest = rest[taken], rest[kept]
    elif carve_val:
        # Two independent streams derived from split_seed: changing one step never shifts the other.
        n_val = int(round(val_fraction * len(rest)))
        taken, kept = stratified_split(y_train[rest], n_take=n_val, seed=(split_seed, 0))
        val_idx, rest = rest[taken], rest[kept]
    if train_subset is not None:
        if train_subset > len(rest):
            raise DatasetError(
                f"train_subset={train_subset} is larger than the {len(rest)} training samples of '{name}' "
                f"left after carving val_fraction={val_fraction}; use at most {len(rest)}"
            )
        keep, _ = stratified_split(y_train[rest], n_take=int(train_subset), seed=(split_seed, 1))
        rest = rest[keep]
    if resample is not None and resample.bootstrap:
        rest = bootstrap(rest, member=resample.member, split_seed=split_seed, seed=resample.seed)
    return {"test": test_idx, "val": val_idx, "train": rest}


def check_labels(name: str, split: str, labels: np.ndarray, num_classes: int) -> None:
    labels = labels[labels != IGNORE] if labels.ndim > 1 else labels  # a sequence's padding counts for nothing
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"'{name}' {split} labels span {labels.min()}..{labels.max()}, "
                           f"outside the {num_classes} classes 0..{num_classes - 1}")


def build_splits(
    *,
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    num_classes: int,
    val_fraction: float,
    split_seed: int,
    train_subset: int | None,
    normalize: bool,
    scale: float = 1.0,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    task: Task = LABELS,
    resample: Resample | None = None,
) -> DataSplits:
    """Turn raw arrays shaped (N, *sample shape) into in-memory DataSplits; x values are multiplied by scale.

    Loaders may hand over uint8 pixels: they are converted to float32 only after splitting, so the
    big image sets never exist as a full float copy plus per-split float copies at the same time.
    A split that is None is carved from the training part (see plan_splits): stratified by class for label
    targets, at random for the others. Token inputs (task.vocab) stay int64 ids, never scaled or normalised.
    """
    y_dtype = np.float32 if task.target is Target.value else np.int64
    if resample is not None and resample.fold is not None and x_val is not None:
        # cross-validation deals every non-test sample into folds, a given val split's too
        x_train, y_train = np.concatenate([x_train, x_val]), np.concatenate([np.asarray(y_train), np.asarray(y_val)])
        x_val = y_val = None
    y_train = np.asarray(y_train, dtype=y_dtype)
    if task.target is not Target.value:
        for split, labels in {"train": y_train, "test": y_test, "val": y_val}.items():
            if labels is not None:
                check_labels(name, split, np.asarray(labels, dtype=np.int64), num_classes)
    # one stratum for targets that are not class labels: the stratified carve is then a seeded random one
    strata = y_train if task.target is Target.label else np.zeros(len(y_train), dtype=np.int64)
    plan = plan_splits(strata, carve_test=x_test is None, carve_val=x_val is None, val_fraction=val_fraction,
                       split_seed=split_seed, train_subset=train_subset, name=name, resample=resample)
    parts = {}
    for split, x, y in (("test", x_test, y_test), ("val", x_val, y_val)):
        idx = plan[split]
        parts[split] = (x_train[idx], y_train[idx]) if idx is not None else (x, np.asarray(y, dtype=y_dtype))
    parts["train"] = (x_train[plan["train"]], y_train[plan["train"]])

    if task.vocab is not None:
        xs = {split: torch.tensor(np.asarray(x), dtype=torch.int64) for split, (x, _) in parts.items()}
    else:
        xs = {split: _to_float(x, scale) for split, (x, _) in parts.items()}
        if normalize:
            normalise_(xs["train"], xs["val"], xs["test"])
    return DataSplits(
        **{split: TensorSplit(xs[split], torch.from_numpy(np.array(y, dtype=y_dtype))) for split, (_, y) in parts.items()},
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        num_classes=int(num_classes),
        name=name,
        task=task,
    )


def _to_float(array, scale: float) -> torch.Tensor:
    """A fresh float32 tensor (never a view of a loader's array, because normalise_ works in place)."""
    tensor = torch.tensor(np.asarray(array), dtype=torch.float32)
    if scale != 1.0:
        tensor.mul_(scale)
    return tensor

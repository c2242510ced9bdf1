"""Train/val/test splits: the container every dataset returns and the seeded, stratified splitting
and train-only normalisation that turn raw arrays into it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

# The test split of datasets without an official one is drawn with this seed and nothing else, so no
# experiment setting (split_seed, train_subset, val_fraction) can ever move a sample in or out of it.
TEST_SPLIT_SEED = 20240101
TEST_FRACTION = 0.2


class DatasetError(ValueError):
    """A dataset cannot be built as asked: bad name or option, missing or corrupt files."""


@dataclass
class DataSplits:
    """Tensors of the three splits plus what a model needs to know about one sample.

    x tensors are float32 and channel-first; y tensors hold int64 class labels. input_shape is the
    shape of a single sample, e.g. (1, 28, 28) for MNIST or (2,) for tabular data.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    name: str

    def to(self, device) -> DataSplits:
        """A copy with every tensor on device (the original is left where it is)."""
        moved = {
            field.name: getattr(self, field.name).to(device)
            for field in dataclasses.fields(self)
            if isinstance(getattr(self, field.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


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


def build_splits(
    *,
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    input_shape: tuple[int, ...],
    num_classes: int,
    val_fraction: float,
    split_seed: int,
    train_subset: int | None,
    normalize: bool,
    scale: float = 1.0,
) -> DataSplits:
    """Turn raw arrays shaped (N, *input_shape) into DataSplits; x values are multiplied by scale.

    Loaders may hand over uint8 pixels: they are converted to float32 only after splitting, so the
    big image sets never exist as a full float copy plus per-split float copies at the same time.

    Without an official test split (x_test is None) a fixed stratified 20% of the data becomes the
    test split. Val is then carved from the remaining train part with split_seed, and train_subset
    shrinks what is left, so the same split_seed gives the same val set whatever train_subset is.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}")
    y_train = np.asarray(y_train, dtype=np.int64)
    for split, labels in (("train", y_train), ("test", y_test)):
        if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DatasetError(f"'{name}' {split} labels span {labels.min()}..{labels.max()}, "
                               f"outside the {num_classes} classes 0..{num_classes - 1}")
    if x_test is None:
        n_test = int(round(TEST_FRACTION * len(y_train)))
        test_idx, train_idx = stratified_split(y_train, n_take=n_test, seed=TEST_SPLIT_SEED)
        x_test, y_test = x_train[test_idx], y_train[test_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
    y_test = np.asarray(y_test, dtype=np.int64)

    # Two independent streams derived from split_seed: changing one step never shifts the other.
    n_val = int(round(val_fraction * len(y_train)))
    val_idx, fit_idx = stratified_split(y_train, n_take=n_val, seed=(split_seed, 0))
    x_val, y_val = x_train[val_idx], y_train[val_idx]
    x_fit, y_fit = x_train[fit_idx], y_train[fit_idx]

    if train_subset is not None:
        if isinstance(train_subset, bool) or not isinstance(train_subset, (int, np.integer)) or train_subset < 1:
            raise DatasetError(f"train_subset must be a positive integer or null, got {train_subset!r}")
        if train_subset > len(y_fit):
            raise DatasetError(
                f"train_subset={train_subset} is larger than the {len(y_fit)} training samples of '{name}' "
                f"left after carving val_fraction={val_fraction}; use at most {len(y_fit)}"
            )
        keep_idx, _ = stratified_split(y_fit, n_take=int(train_subset), seed=(split_seed, 1))
        x_fit, y_fit = x_fit[keep_idx], y_fit[keep_idx]

    x_fit_t, x_val_t, x_test_t = (_to_float(a, scale) for a in (x_fit, x_val, x_test))
    if normalize:
        normalise_(x_fit_t, x_val_t, x_test_t)
    return DataSplits(
        x_train=x_fit_t,
        y_train=torch.from_numpy(y_fit.copy()),
        x_val=x_val_t,
        y_val=torch.from_numpy(y_val.copy()),
        x_test=x_test_t,
        y_test=torch.from_numpy(y_test.copy()),
        input_shape=tuple(int(d) for d in input_shape),
        num_classes=int(num_classes),
        name=name,
    )


def _to_float(array: np.ndarray, scale: float) -> torch.Tensor:
    """A fresh float32 tensor (never a view of a loader's array, because normalise_ works in place)."""
    tensor = torch.tensor(np.asarray(array), dtype=torch.float32)
    if scale != 1.0:
        tensor.mul_(scale)
    return tensor

"""The dataset catalogue: names, their options, and create_dataset, the one entry point to build splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlx.data import bundled, synthetic, vision
from dlx.data.splits import DatasetError, DataSplits, build_splits


@dataclass(frozen=True)
class _Raw:
    """What a loader hands to build_splits; x_test is None when the dataset has no official test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    num_classes: int
    scale: float = 1.0


def _moons(*, root, download, n_samples, noise) -> _Raw:
    x, y = synthetic.make_moons(n_samples=n_samples, noise=noise)
    return _Raw(x, y, None, None, num_classes=2)


def _spirals(*, root, download, n_samples, noise, n_classes, turns) -> _Raw:
    x, y = synthetic.make_spirals(n_samples=n_samples, noise=noise, n_classes=n_classes, turns=turns)
    return _Raw(x, y, None, None, num_classes=int(n_classes))


def _digits(*, root, download) -> _Raw:
    x, y = bundled.load_digits()
    # Pixel intensities are counts in 0..16.
    return _Raw(x, y, None, None, num_classes=10, scale=1.0 / 16.0)


def _mnist1d(*, root, download) -> _Raw:
    data = bundled.load_mnist1d(root=root)
    return _Raw(data["x"], data["y"], data["x_test"], data["y_test"], num_classes=10)


def _idx_loader(name: str) -> Callable[..., _Raw]:
    def load(*, root, download, mirror) -> _Raw:
        data = vision.load_idx_dataset(name=name, root=root, download_missing=download, mirror=mirror)
        return _Raw(data["x_train"], data["y_train"], data["x_test"], data["y_test"],
                    num_classes=10, scale=1.0 / 255.0)

    return load


def _cifar10(*, root, download, mirror) -> _Raw:
    data = vision.load_cifar10(root=root, download_missing=download, mirror=mirror)
    return _Raw(data["x_train"], data["y_train"], data["x_test"], data["y_test"],
                num_classes=10, scale=1.0 / 255.0)


@dataclass(frozen=True)
class _Entry:
    loader: Callable[..., _Raw]
    options: dict[str, Any]  # option name -> default


_CATALOGUE: dict[str, _Entry] = {
    "cifar10": _Entry(_cifar10, {"mirror": None}),
    "digits": _Entry(_digits, {}),
    "fashion_mnist": _Entry(_idx_loader("fashion_mnist"), {"mirror": None}),
    "mnist": _Entry(_idx_loader("mnist"), {"mirror": None}),
    "mnist1d": _Entry(_mnist1d, {}),
    "moons": _Entry(_moons, {"n_samples": 2000, "noise": 0.1}),
    "spirals": _Entry(_spirals, {"n_samples": 2000, "noise": 0.2, "n_classes": 2, "turns": 1.5}),
}


def list_datasets() -> list[str]:
    """Names accepted by create_dataset, sorted."""
    return sorted(_CATALOGUE)


def dataset_options(name: str) -> dict[str, Any]:
    """The dataset-specific options of name with their defaults."""
    return dict(_entry(name).options)


def _entry(name: str) -> _Entry:
    if name not in _CATALOGUE:
        raise DatasetError(f"unknown dataset '{name}'; available: {', '.join(list_datasets())}")
    return _CATALOGUE[name]


def create_dataset(
    name: str,
    *,
    root: str = "data",
    download: bool = False,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_subset: int | None = None,
    normalize: bool = True,
    **options,
) -> DataSplits:
    """Load dataset name and split it into train/val/test tensors.

    root: folder holding one sub-folder per file-based dataset ({root}/mnist, {root}/cifar10, ...).
    download: fetch missing files from the public mirrors (MD5-checked) instead of failing.
    val_fraction: share of the train part carved out, stratified, as the validation split.
    split_seed: seeds the val carve-out and train_subset; the test split never depends on it.
    train_subset: keep only this many training samples (stratified), e.g. for overfitting studies.
    normalize: standardise per channel (per feature for tabular data) with train-split statistics.
    options: dataset-specific, see dataset_options(name); e.g. n_samples and noise for moons,
    mirror (a base URL replacing the canonical mirrors) for mnist, fashion_mnist and cifar10.
    """
    entry = _entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        valid = ", ".join(sorted(entry.options)) or "none (this dataset takes no options)"
        raise DatasetError(f"unknown option(s) {', '.join(repr(k) for k in unknown)} for dataset '{name}'; "
                           f"valid options: {valid}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise DatasetError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
        raise DatasetError(f"split_seed must be an integer >= 0, got {split_seed!r}")

    raw = entry.loader(root=root, download=bool(download), **{**entry.options, **options})
    return build_splits(
        name=name,
        x_train=raw.x_train,
        y_train=raw.y_train,
        x_test=raw.x_test,
        y_test=raw.y_test,
        input_shape=tuple(raw.x_train.shape[1:]),
        num_classes=raw.num_classes,
        val_fraction=float(val_fraction),
        split_seed=int(split_seed),
        train_subset=train_subset,
        normalize=bool(normalize),
        scale=raw.scale,
    )

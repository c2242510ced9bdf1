"""Datasets as ready-made train/val/test tensors, and batch augmentation for training."""

from dlx.data.augment import BatchAugment, create_augmentation, list_augmentations
from dlx.data.registry import create_dataset, dataset_options, list_datasets
from dlx.data.splits import DatasetError, DataSplits

__all__ = [
    "BatchAugment",
    "DataSplits",
    "DatasetError",
    "create_augmentation",
    "create_dataset",
    "dataset_options",
    "list_augmentations",
    "list_datasets",
]

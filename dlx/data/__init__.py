"""Datasets as components, and batch augmentation for training.

The dataset contract: a dataset is any callable (`_target_`) that takes its options as keywords and returns
a `dlx.data.Source` (or a plain dict with the same keys):

    Source(train=(x, y), num_classes=10, test=(x, y) | None, val=(x, y) | None, name=None, scale=1.0)

Each split is an (x, y) pair of arrays or tensors (x shaped (N, ...), y N class indices 0..num_classes-1)
or a torch.utils.data.Dataset of (x, y) samples (give it `targets` to spare a pass reading the labels).
Without test, a fixed stratified 20% of train is the test split, which no setting moves; without val,
`dataset.val_fraction` of train is carved, stratified, with `dataset.split_seed`. `dlx.data.prepare(source,
device=..., **split_options)` turns a Source into the splits training uses: normalised with training-split
statistics (`dataset.normalize`), held as tensors on the device, or streamed through DataLoader workers when
the data would fill more than half the device's free memory (`dataset.stream=auto|on|off`,
`dataset.workers`). `split_options` is the one home of those dlx keys of every dataset.

Built-in loaders (`dlx.data.digits`, `spirals(n_samples=, noise=, n_classes=, turns=)`, `mnist(root=,
download=, mirror=)`, ...) and the file readers `npz(path=)`, `csv(path=, label=, test_path=)` and
`image_folder(path=, size=)` follow the same contract.
"""

from dlx.data.augment import BatchAugment, create_augmentation, list_augmentations
from dlx.data.batches import StreamSplit, TensorSplit
from dlx.data.builtin import cifar10, digits, fashion_mnist, mnist, mnist1d, moons, spirals
from dlx.data.corpus import text, text_classification
from dlx.data.files import csv, image_folder, npz
from dlx.data.sequences import adding, copy, reverse
from dlx.data.source import Source, Stream, prepare, split_options
from dlx.data.splits import DatasetError, DataSplits

__all__ = [
    "BatchAugment",
    "DataSplits",
    "DatasetError",
    "Source",
    "Stream",
    "StreamSplit",
    "TensorSplit",
    "adding",
    "cifar10",
    "copy",
    "create_augmentation",
    "csv",
    "digits",
    "fashion_mnist",
    "image_folder",
    "list_augmentations",
    "mnist",
    "mnist1d",
    "moons",
    "npz",
    "prepare",
    "reverse",
    "spirals",
    "split_options",
    "text",
    "text_classification",
]

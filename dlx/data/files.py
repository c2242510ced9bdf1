"""Data without code: a user's arrays (npz), table (csv) or folder of images (image_folder), named by
dataset.path. A file that cannot be used is a DatasetError of one line naming dataset.path."""

from __future__ import annotations

import csv as csvlib
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from omegaconf import MISSING
from torch.utils.data import Dataset

from dlx.data.source import Source, loader
from dlx.data.splits import DatasetError
from dlx.options import Range

_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _error(key: str, path, what: str) -> DatasetError:
    return DatasetError(f"dataset.{key}={path}: {what}")


def _existing(key: str, path: str, *, folder: bool = False) -> Path:
    p = Path(path).expanduser()
    if not (p.is_dir() if folder else p.is_file()):
        kind = "folder" if folder else "file"
        raise _error(key, path, f"no such {kind}" if not p.exists() else f"not a {kind}")
    return p


def _labels(y: np.ndarray, key: str, path, array: str) -> np.ndarray:
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                                   and np.all(y == np.round(y)))):
        raise _error(key, path, f"{array} must hold one integer class index per sample, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise _error(key, path, f"{array} holds a negative class index {int(y.min())}")
    return y.astype(np.int64)


@loader(images=None)  # the arrays' shape is known once they are read
def npz(*, path: str) -> Source:
    """Arrays x_train, y_train, x_test, y_test (and optionally x_val, y_val) in a NumPy .npz file; y holds class
    indices 0..K-1, x one sample per row (any shape after the first axis)."""
    file = _existing("path", path)
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        raise _error("path", path, f"not a readable .npz file ({error})") from None
    allowed = (*_NPZ_REQUIRED, "x_val", "y_val")
    missing = [k for k in _NPZ_REQUIRED if k not in arrays]
    if ("x_val" in arrays) != ("y_val" in arrays):
        missing.append("y_val" if "x_val" in arrays else "x_val")
    if missing:
        raise _error("path", path, f"missing array(s) {', '.join(missing)}; it holds {', '.join(arrays) or 'none'} "
                                   f"(expected {', '.join(allowed)})")
    pairs = {}
    for split in ("train", "val", "test"):
        if f"x_{split}" not in arrays:
            continue
        x, y = arrays[f"x_{split}"], _labels(arrays[f"y_{split}"], "path", path, f"y_{split}")
        if x.ndim < 2 or len(x) != len(y) or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise _error("path", path, f"x_{split} {x.dtype} {x.shape} does not fit y_{split} {y.shape}: expected "
                                       "numbers, one row per label")
        if x.shape[1:] != arrays["x_train"].shape[1:]:
            raise _error("path", path, f"x_{split} samples are {x.shape[1:]}, x_train samples {arrays['x_train'].shape[1:]}")
        pairs[split] = (x, y)
    if not len(pairs["train"][1]):
        raise _error("path", path, "x_train holds no samples")
    num_classes = int(max(int(y.max()) for _, y in pairs.values() if len(y))) + 1
    return Source(train=pairs["train"], test=pairs["test"], val=pairs.get("val"), num_classes=num_classes,
                  name=file.stem)


def read_rows(key: str, path: str, delimiter: str) -> tuple[list[str], list[list[str]]]:
    """(header, data rows) of a CSV file with a header row, every row as long as the header; one-line errors
    naming dataset.<key>."""
    file = _existing(key, path)
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            rows = [row for row in csvlib.reader(handle, delimiter=delimiter) if row]
    except (OSError, UnicodeDecodeError, csvlib.Error) as error:
        raise _error(key, path, f"cannot read it as a table ({error})") from None
    if len(rows) < 2:
        raise _error(key, path, "needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise _error(key, path, f"row {r} has {len(row)} fields, the header {len(header)}")
    return header, rows[1:]


def _read_table(key: str, path: str, label: str, delimiter: str) -> tuple[list[str], np.ndarray, list[str]]:
    header, rows = read_rows(key, path, delimiter)
    if label not in header:
        raise _error(key, path, f"has no label column {label!r} (dataset.label); its columns: {', '.join(header)}")
    at = header.index(label)
    features = [name for i, name in enumerate(header) if i != at]
    if not features:
        raise _error(key, path, "has no feature column besides the label")
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    labels = []
    for r, row in enumerate(rows, start=2):  # r: the row's line in the file, after the header
        labels.append(row[at].strip())
        values = row[:at] + row[at + 1:]
        for c, value in enumerate(values):
            try:
                x[r - 2, c] = float(value)
            except ValueError:
                raise _error(key, path, f"column {features[c]!r} row {r}: {value!r} is not a number (features "
                                        "must be numeric; the label column may hold names)") from None
    return features, x, labels


def _class_order(names: set[str]) -> list[str]:
    """Labels in sorted order: numerically when every label is a number (2 before 10), else as text."""
    try:
        return sorted(names, key=float)
    except ValueError:
        return sorted(names)


@loader
def csv(*, path: str, label: str, test_path: str | None = None, delimiter: str = ",") -> Source:
    """A table with a header row: the `label` column holds each row's class (names or numbers, mapped to class
    indices in sorted order), every other column a numeric feature. The test split is the table at test_path,
    or else a fixed stratified 20% of the rows."""
    _, x, y = _read_table("path", path, label, delimiter)
    test = _read_table("test_path", test_path, label, delimiter) if test_path is not None else None
    if test is not None and x.shape[1] != test[1].shape[1]:
        raise _error("test_path", test_path, f"has {test[1].shape[1]} feature columns, dataset.path {x.shape[1]}")
    classes = _class_order(set(y) | set(test[2] if test else ()))
    index = {name: i for i, name in enumerate(classes)}
    to_idx = lambda labels: np.array([index[v] for v in labels], dtype=np.int64)  # noqa: E731
    return Source(train=(x, to_idx(y)), test=(test[1], to_idx(test[2])) if test else None,
                  num_classes=len(classes), name=Path(path).stem, classes=tuple(classes))


class ImageFiles(Dataset):
    """Image files read lazily with Pillow, resized to size x size: uint8 (C, size, size) tensors, C = 1 for
    grey and 3 for colour images. `targets` holds every file's class, so splits need no image read."""

    def __init__(self, files: list[str], targets: list[int], *, size: int, mode: str, root: str):
        self.files, self.targets, self.size, self.mode, self.root = files, targets, size, mode, root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as image:
                image.draft(self.mode, (self.size, self.size))  # JPEG decodes at a reduced scale: much faster
                pixels = np.asarray(image.convert(self.mode).resize((self.size, self.size), Image.BILINEAR))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise _error("path", self.root, f"cannot read image {self.files[i]} ({error})") from None
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return torch.from_numpy(np.array(pixels)), self.targets[i]  # a copy: Pillow's buffer is read-only


_GREY = ("1", "L", "LA", "I", "I;16", "F")


def _class_folders(folder: Path, root: str, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int]]:
    from PIL import Image

    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise _error("path", root, f"{folder} holds no class folders (expected one sub-folder per class)")
    if classes is not None and set(found) - set(classes):
        raise _error("path", root, f"{folder} has class folders {', '.join(sorted(set(found) - set(classes)))} "
                                   f"that train/ lacks")
    classes = classes or found
    extensions = set(Image.registered_extensions())
    files, targets = [], []
    for name in found:
        images = sorted(str(p) for p in (folder / name).iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions)
        if not images:
            raise _error("path", root, f"class folder {folder / name} holds no images")
        files += images
        targets += [classes.index(name)] * len(images)
    return classes, files, targets


def _mode(files: list[str], targets: list[int], root: str) -> str:
    """'L' when the first image of every class is grey, else 'RGB' (a grey image of a colour set is widened)."""
    from PIL import Image

    firsts = [files[targets.index(t)] for t in sorted(set(targets))]
    for file in firsts:
        try:
            with Image.open(file) as image:
                if image.mode not in _GREY:
                    return "RGB"
        except (OSError, ValueError) as error:
            raise _error("path", root, f"cannot read image {file} ({error})") from None
    return "L"


@loader(images=True)
def image_folder(*, path: str, size: Annotated[int, Range(ge=1)] = 32) -> Source:
    """Images in one sub-folder per class (path/<class>/*.png), or path/train/<class> and path/test/<class>.
    Without test/ a fixed stratified 20% of the images is the test split. Read lazily, so a big folder streams
    (dataset.stream)."""
    top = _existing("path", path, folder=True)
    train_dir = top / "train" if (top / "train").is_dir() else top
    classes, files, targets = _class_folders(train_dir, path)
    test = None
    if train_dir != top and (top / "test").is_dir():
        _, test_files, test_targets = _class_folders(top / "test", path, classes)
        test = (test_files, test_targets)
    mode = _mode(files, targets, path)
    make = lambda f, t: ImageFiles(f, t, size=size, mode=mode, root=path)  # noqa: E731
    return Source(train=make(files, targets), test=make(*test) if test else None, num_classes=len(classes),
                  name=top.name, scale=1.0 / 255.0, classes=tuple(classes))


def _paths_exist(*keys: str, folder: bool = False):
    """The rule checked with the config (components.problems) that a file dataset's paths exist: a sweep or
    dlx cv over a missing file is one line before its parent run, not a failed trial each."""
    def problems(options: dict) -> list[str]:
        out = []
        for key in keys:
            if options.get(key) not in (None, MISSING):  # a required path not given is said once, elsewhere
                try:
                    _existing(key, str(options[key]), folder=folder)
                except DatasetError as exc:
                    out.append(str(exc))
        return out
    return problems


npz.option_problems = _paths_exist("path")
csv.option_problems = _paths_exist("path", "test_path")
image_folder.option_problems = _paths_exist("path", folder=True)

"""Readers for the classic image sets in their distribution formats: MNIST and Fashion-MNIST as IDX
files, CIFAR-10 as the python-pickle batches. Missing files are fetched only on request."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np

from dlx.data import download
from dlx.data.splits import DatasetError

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"

_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _missing_files_error(name: str, directory: Path, missing: list[str], alternative: str = "") -> DatasetError:
    return DatasetError(
        f"dataset '{name}' is missing {', '.join(missing)}{alternative} in {directory.resolve()}. "
        f"Set dataset.download=true to fetch them, or copy them into that directory."
    )


# --------------------------------------------------------------------------- IDX (MNIST family)

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed): 2 zero bytes, a type code, the number of
    dimensions, one big-endian uint32 per dimension, then the values in row-major order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[raw[2]]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(f"{path} is truncated or damaged: header says shape {shape}, "
                           f"which needs {expected} bytes, but the file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(*, name: str, root: str | os.PathLike, download_missing: bool,
                     mirror: str | None = None) -> dict[str, np.ndarray]:
    """MNIST or Fashion-MNIST from {root}/{name}/: x as (N, 1, 28, 28) uint8, y as int64."""
    directory = Path(root) / name
    missing = [stem for stem in IDX_FILES.values() if _find_idx(directory, stem) is None]
    if missing and not download_missing:
        raise _missing_files_error(name, directory, [f"{stem}.gz" for stem in missing],
                                  " (gzipped or uncompressed)")
    if missing:
        mirrors = download.mirrors_for(name, mirror=mirror)
        for stem in missing:
            filename = f"{stem}.gz"
            download.download_file(filename=filename, directory=directory, mirrors=mirrors,
                                   md5=download.CHECKSUMS[name][filename])

    arrays = {key: read_idx(_find_idx(directory, stem)) for key, stem in IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"{name} {split} files disagree: images {images.shape}, labels {labels.shape} "
                               "(expected (N, H, W) images and N labels)")
        arrays[f"x_{split}"] = images.astype(np.uint8)[:, None]
        arrays[f"y_{split}"] = labels.astype(np.int64)
    return arrays


# --------------------------------------------------------------------------- CIFAR-10

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays: a batch file from a mirror must not be able
    to run code the way an arbitrary pickle can."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(text, "latin1").
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"cannot read CIFAR-10 batch {path}: {error}") from error
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DatasetError(f"CIFAR-10 batch {path} has data {data.shape} and {len(labels)} labels; "
                           "expected (N, 3072) and N labels")
    return data.reshape(-1, 3, 32, 32), labels


def extract_tar_safely(archive: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Extract archive into destination, refusing members that would land outside it (absolute
    paths, '..', links pointing out) or that are not plain files and folders."""
    destination = Path(destination).resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            target = (destination / member.name).resolve()
            if not target.is_relative_to(destination) or not (member.isfile() or member.isdir()):
                raise DatasetError(f"refusing to extract '{member.name}' from {archive}: it is not a plain "
                                   f"file or folder inside {destination}")
        # The 'data' filter (Python >= 3.11.4) re-checks the same rules and drops unsafe permissions.
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(destination, members=members, **kwargs)


def _ensure_cifar_batches(directory: Path, *, download_missing: bool, mirror: str | None) -> Path:
    batches = directory / CIFAR_FOLDER
    needed = [*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH]
    if all((batches / b).is_file() for b in needed):
        return batches
    archive = directory / CIFAR_ARCHIVE
    if not archive.is_file():
        if not download_missing:
            absent = [f"{CIFAR_FOLDER}/{b}" for b in needed if not (batches / b).is_file()]
            raise _missing_files_error("cifar10", directory, absent, f" (or the archive {CIFAR_ARCHIVE})")
        download.download_file(filename=CIFAR_ARCHIVE, directory=directory,
                               mirrors=download.mirrors_for("cifar10", mirror=mirror),
                               md5=download.CHECKSUMS["cifar10"][CIFAR_ARCHIVE])
    # Extract into a scratch folder and move the batch folder into place in one rename, so a
    # half-finished extraction never looks like a complete dataset.
    scratch = Path(tempfile.mkdtemp(dir=directory, prefix=".extract-"))
    try:
        try:
            extract_tar_safely(archive, scratch)
        except (tarfile.TarError, EOFError, zlib.error) as error:
            raise DatasetError(f"cannot extract {archive} ({error}); delete it to have it downloaded again "
                               "with dataset.download=true") from error
        extracted = scratch / CIFAR_FOLDER
        absent = [b for b in needed if not (extracted / b).is_file()]
        if absent:
            raise DatasetError(f"{archive} does not contain {', '.join(f'{CIFAR_FOLDER}/{b}' for b in absent)}")
        if batches.exists():
            shutil.rmtree(batches)
        os.replace(extracted, batches)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return batches


def load_cifar10(*, root: str | os.PathLike, download_missing: bool,
                 mirror: str | None = None) -> dict[str, np.ndarray]:
    """CIFAR-10 from {root}/cifar10/: x as (N, 3, 32, 32) uint8, y as int64."""
    batches = _ensure_cifar_batches(Path(root) / "cifar10", download_missing=download_missing, mirror=mirror)
    train = [_read_cifar_batch(batches / b) for b in CIFAR_TRAIN_BATCHES]
    x_test, y_test = _read_cifar_batch(batches / CIFAR_TEST_BATCH)
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }

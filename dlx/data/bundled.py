"""Datasets that need no download: scikit-learn's bundled 8x8 digits and the generated MNIST-1D."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import random
import tempfile
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 scikit-learn digits as x (N, 1, 8, 8) uint8 in [0, 16] and y int64.

    Read straight from the digits.csv.gz that scikit-learn ships (64 pixel columns, then the label):
    importing sklearn.datasets costs over a second per run, reading the file a few milliseconds.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.int64)
        pixels, labels = table[:, :-1], table[:, -1]
    else:  # a future scikit-learn may move the file: its loader always works
        from sklearn.datasets import load_digits as _sklearn_digits

        bunch = _sklearn_digits()
        pixels, labels = bunch.data, bunch.target
    return pixels.astype(np.uint8).reshape(-1, 1, 8, 8), labels.astype(np.int64)


def load_mnist1d(*, root: str | os.PathLike) -> dict[str, np.ndarray]:
    """MNIST-1D with its default arguments: 4000 train and 1000 official test sequences of length 40.

    Returns x (N, 1, 40) float32 and y int64 under the keys x, y, x_test, y_test. The arrays are
    generated once (a few seconds) and cached as an .npz under {root}/mnist1d/.
    """
    cache = Path(root) / "mnist1d" / mnist1d_cache_name()
    data = _read_cache(cache)
    if data is None:
        data = _generate_mnist1d()
        _write_cache(cache, data)
    return {
        "x": data["x"].astype(np.float32).reshape(-1, 1, data["x"].shape[-1]),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32).reshape(-1, 1, data["x_test"].shape[-1]),
        "y_test": data["y_test"].astype(np.int64),
    }


def mnist1d_cache_name() -> str:
    """The cache file name carries the generator's version: another release may generate other data."""
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"mnist1d_default_{version}.npz"


def _generate_mnist1d() -> dict[str, np.ndarray]:
    # make_dataset only computes; get_dataset (not used) is the function that downloads a pickle.
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and NumPy's global generators; restore them so that loading
    # data never changes the random streams of the experiment that asked for it.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        generated = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: np.asarray(generated[key]) for key in _MNIST1D_KEYS}


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in _MNIST1D_KEYS}
    except (OSError, ValueError, KeyError) as error:
        # A damaged cache is only a cache: rebuild it rather than fail the run.
        logger.warning("ignoring unreadable MNIST-1D cache %s (%s); regenerating", path, error)
        return None


def _write_cache(path: Path, data: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write next to the target and rename, so a concurrent or interrupted run never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as error:
        warnings.warn(f"could not cache MNIST-1D at {path} ({error}); it will be regenerated next time",
                      stacklevel=3)

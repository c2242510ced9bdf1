"""Fetching dataset files from their public mirrors, checked against published MD5 sums.

Mirrors and checksums are the ones torchvision uses (torchvision/datasets/mnist.py and cifar.py).
Both tables are module constants so that tests, or a site with its own copies, can replace them.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from dlx.data.splits import DatasetError

logger = logging.getLogger(__name__)

# Base URLs, tried in order; a file's URL is base + file name.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}

CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}

TIMEOUT_S = 60.0
_CHUNK = 1 << 20
# Failures that mean "this mirror did not deliver": worth trying the next one.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def mirrors_for(dataset: str, *, mirror: str | None = None) -> list[str]:
    """The base URLs to try: the user's mirror alone when given, else the canonical list."""
    if mirror is not None:
        if not isinstance(mirror, str) or not mirror.strip():
            raise DatasetError(f"option 'mirror' must be a base URL string, got {mirror!r}")
        return [mirror if mirror.endswith("/") else mirror + "/"]
    return list(MIRRORS[dataset])


def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(*, filename: str, directory: str | os.PathLike, mirrors: list[str], md5: str) -> Path:
    """Fetch filename into directory from the first mirror that delivers it with the right MD5.

    The bytes go to a hidden temporary file in the same directory and are renamed into place only
    after the checksum matched, so an interrupted or corrupt transfer never leaves a file that a
    later run would take for a complete one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    failures: list[str] = []
    mismatch: str | None = None
    for base in mirrors:
        url = base + filename
        logger.info("downloading %s", url)
        try:
            tmp, got = _fetch_to_temp(url, directory=directory, filename=filename)
        except _NETWORK_ERRORS as error:
            failures.append(f"{url}: {error}")
            logger.warning("could not download %s (%s); trying the next mirror", url, error)
            continue
        if got != md5:
            Path(tmp).unlink(missing_ok=True)
            mismatch = f"checksum mismatch for '{filename}' from {url}: expected MD5 {md5}, got {got}"
            failures.append(mismatch)
            logger.warning("%s; trying the next mirror", mismatch)
            continue
        os.replace(tmp, target)
        return target

    if mismatch is not None and len(failures) == 1:
        raise DatasetError(f"{mismatch}. The file was discarded; the mirror may serve a damaged copy.")
    tried = "\n  ".join(failures)
    raise DatasetError(
        f"could not download '{filename}' from any mirror:\n  {tried}\n"
        f"Put the file into {directory.resolve()} by hand, or set the dataset's 'mirror' option to a "
        "base URL that serves it."
    )


def _fetch_to_temp(url: str, *, directory: Path, filename: str) -> tuple[str, str]:
    """Stream url into a temporary file in directory; returns (temp path, MD5 of what arrived)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            announced = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
            # http.client ends a sized read quietly when the server hangs up early; catch that here so
            # a dropped connection reads as one, not as a checksum mismatch.
            if announced is not None and announced.isdigit() and int(announced) != received:
                raise http.client.IncompleteRead(b"", int(announced) - received)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest()

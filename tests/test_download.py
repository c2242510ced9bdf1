"""Downloads against a local HTTP server: mirror fall-through, the mirror option, MD5 checks and
atomic writes. The module's mirror and checksum tables are pointed at the server."""

import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

import dlx.data
from dlx.data import DatasetError, download, prepare, split_options
from dlx.options import spec


def create_dataset(name: str, **options):
    extras = {k: options.pop(k) for k in list(options) if k in spec(split_options)}
    return prepare(getattr(dlx.data, name)(**options), **extras)

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def idx_files(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (30, 28, 28))),
        "train-labels-idx1-ubyte.gz": idx_gz(np.arange(30) % 10),
        "t10k-images-idx3-ubyte.gz": idx_gz(rng.integers(0, 256, (10, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": idx_gz(np.arange(10) % 10),
    }


def cifar_archive() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


class Server:
    """Serves {path: bytes}; every request path is recorded. A path under /truncated/ announces the
    full size but sends only half the bytes and hangs up, like a dropped connection."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path.startswith("/truncated/") else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def publish(self, prefix: str, files: dict[str, bytes]) -> str:
        for name, body in files.items():
            self.files[f"/{prefix}/{name}"] = body
        return f"{self.url}/{prefix}/"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture()
def server(monkeypatch):
    # A proxy from the environment must not intercept requests to the local server.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    running = Server()
    yield running
    running.stop()


def md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(body).hexdigest() for name, body in files.items()}


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_mnist_falls_through_a_dead_mirror_and_loads(server, monkeypatch, tmp_path):
    files = idx_files(seed=1)
    good = server.publish("good", files)
    monkeypatch.setitem(download.MIRRORS, "mnist", [f"{server.url}/dead/", good])
    monkeypatch.setitem(download.CHECKSUMS, "mnist", md5s(files))

    splits = create_dataset("mnist", root=str(tmp_path), download=True, normalize=False, val_fraction=0.0)
    assert {f"/dead/{n}" for n in files} | {f"/good/{n}" for n in files} == set(server.requests)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(files)
    assert splits.x_train.shape == (30, 1, 28, 28) and splits.x_test.shape == (10, 1, 28, 28)
    expected = np.frombuffer(gzip.decompress(files["t10k-images-idx3-ubyte.gz"])[16:], dtype=np.uint8)
    assert torch.allclose(splits.x_test.flatten(), torch.from_numpy(expected.copy()).float() / 255)

    # Present files are used as they are: no second download.
    server.requests.clear()
    create_dataset("mnist", root=str(tmp_path), download=True)
    assert server.requests == []


def test_mirror_option_replaces_the_canonical_mirrors(server, monkeypatch, tmp_path):
    files = idx_files(seed=2)
    mirror = server.publish("institute/fmnist", files)
    monkeypatch.setitem(download.MIRRORS, "fashion_mnist", [f"{server.url}/canonical/"])
    monkeypatch.setitem(download.CHECKSUMS, "fashion_mnist", md5s(files))

    splits = create_dataset("fashion_mnist", root=str(tmp_path), download=True, mirror=mirror.rstrip("/"))
    assert len(splits.x_train) + len(splits.x_val) == 30
    assert all(path.startswith("/institute/fmnist/") for path in server.requests)


def test_cifar10_archive_is_downloaded_and_extracted(server, monkeypatch, tmp_path):
    archive = {"cifar-10-python.tar.gz": cifar_archive()}
    monkeypatch.setitem(download.MIRRORS, "cifar10", [server.publish("kriz", archive)])
    monkeypatch.setitem(download.CHECKSUMS, "cifar10", md5s(archive))

    splits = create_dataset("cifar10", root=str(tmp_path), download=True)
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.x_train) + len(splits.x_val) == 50 and len(splits.x_test) == 10
    assert (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert leftovers(tmp_path / "cifar10") == []


def test_checksum_mismatch_leaves_no_file(server, monkeypatch, tmp_path):
    files = idx_files(seed=3)
    expected = md5s(files)
    body = bytearray(files["train-images-idx3-ubyte.gz"])
    body[len(body) // 2] ^= 0xFF
    corrupted = dict(files, **{"train-images-idx3-ubyte.gz": bytes(body)})
    monkeypatch.setitem(download.MIRRORS, "mnist", [server.publish("corrupt", corrupted)])
    monkeypatch.setitem(download.CHECKSUMS, "mnist", expected)

    with pytest.raises(DatasetError) as caught:
        create_dataset("mnist", root=str(tmp_path), download=True)
    message = str(caught.value)
    got = hashlib.md5(corrupted["train-images-idx3-ubyte.gz"]).hexdigest()
    assert "train-images-idx3-ubyte.gz" in message
    assert expected["train-images-idx3-ubyte.gz"] in message and got in message
    assert not (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(tmp_path / "mnist") == []


def test_interrupted_download_leaves_no_file(server, monkeypatch, tmp_path):
    archive = {"cifar-10-python.tar.gz": cifar_archive()}
    monkeypatch.setitem(download.MIRRORS, "cifar10", [server.publish("truncated", archive)])
    monkeypatch.setitem(download.CHECKSUMS, "cifar10", md5s(archive))

    with pytest.raises(DatasetError, match=r"(?s)could not download 'cifar-10-python.tar.gz'.*IncompleteRead"):
        create_dataset("cifar10", root=str(tmp_path), download=True)
    assert list((tmp_path / "cifar10").iterdir()) == []


def test_all_mirrors_failing_names_file_and_directory(server, monkeypatch, tmp_path):
    monkeypatch.setitem(download.MIRRORS, "mnist", [f"{server.url}/a/", f"{server.url}/b/"])
    with pytest.raises(DatasetError) as caught:
        create_dataset("mnist", root=str(tmp_path), download=True)
    message = str(caught.value)
    assert "train-images-idx3-ubyte.gz" in message and "404" in message
    assert str((tmp_path / "mnist").resolve()) in message
    assert server.requests == ["/a/train-images-idx3-ubyte.gz", "/b/train-images-idx3-ubyte.gz"]


def test_published_checksums_are_well_formed():
    # The real values are copied from torchvision; here only their shape and coverage are checked.
    for name, table in download.CHECKSUMS.items():
        assert download.MIRRORS[name], name
        for filename, md5 in table.items():
            assert len(md5) == 32 and int(md5, 16) >= 0, filename
    assert set(download.CHECKSUMS["mnist"]) == {f"{stem}.gz" for stem in IDX_STEMS}
    assert set(download.CHECKSUMS["fashion_mnist"]) == {f"{stem}.gz" for stem in IDX_STEMS}

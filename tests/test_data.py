"""Datasets: every built-in loader loads, splits are stratified, disjoint and deterministic,
normalisation uses train statistics only. File-based sets are read from small files in the real
formats, written here; nothing touches the network."""

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

import dlx.data
from dlx.data import DatasetError, DataSplits, prepare, split_options
from dlx.options import spec

N_TRAIN, N_TEST = 60, 20


def idx_bytes(array: np.ndarray) -> bytes:
    """An array in IDX format: 0, 0, type code 0x08 (ubyte), ndim, big-endian dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def tagged_images(n: int, *, shape: tuple[int, ...], offset: int) -> np.ndarray:
    """Random uint8 images whose first two values encode the sample's number (offset + i), so tests can
    tell from any split which source samples ended up in it."""
    images = np.random.default_rng(offset).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0] = (offset + np.arange(n)) % 256
    flat[:, 1] = (offset + np.arange(n)) // 256
    return images


def balanced_labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint8) % 10


def write_idx_set(directory, *, gz: bool) -> dict[str, np.ndarray]:
    arrays = {
        "train-images-idx3-ubyte": tagged_images(N_TRAIN, shape=(28, 28), offset=0),
        "train-labels-idx1-ubyte": balanced_labels(N_TRAIN),
        "t10k-images-idx3-ubyte": tagged_images(N_TEST, shape=(28, 28), offset=1000),
        "t10k-labels-idx1-ubyte": balanced_labels(N_TEST),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        (directory / (f"{stem}.gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def cifar_batches() -> dict[str, dict]:
    """Pickled-dict contents of the six CIFAR-10 batch files, 12 training images per batch."""
    batches = {}
    for i in range(1, 6):
        images = tagged_images(12, shape=(3, 32, 32), offset=12 * (i - 1)).reshape(12, -1)
        batches[f"data_batch_{i}"] = {b"data": images, b"labels": list(range(i, i + 12))}
    batches["test_batch"] = {b"data": tagged_images(N_TEST, shape=(3, 32, 32), offset=1000).reshape(N_TEST, -1),
                             b"labels": list(range(N_TEST))}
    for batch in batches.values():
        batch[b"labels"] = [label % 10 for label in batch[b"labels"]]
        batch[b"batch_label"] = b"synthetic"
    return batches


def cifar_tarball(batches: dict[str, dict]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, batch in batches.items():
            # Protocol 2, as in the published files (written by Python 2).
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def sample_ids(x: torch.Tensor) -> np.ndarray:
    """Undo tagged_images on unnormalised (x / 255) tensors."""
    flat = (x.reshape(len(x), -1)[:, :2] * 255).round().long().numpy()
    return flat[:, 0] + 256 * flat[:, 1]


def create_dataset(name: str, **options) -> DataSplits:
    """A built-in loader with its options, prepared with dlx's split options, as a run builds it."""
    extras = {k: options.pop(k) for k in list(options) if k in spec(split_options)}
    return prepare(getattr(dlx.data, name)(**options), **extras)


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist1d_root")


def test_builtin_loaders_and_their_yaml_agree():
    """Each built-in loader is a conf/dataset option naming it, and the YAML restates none of its defaults: a
    value it holds is an option of the loader (or a split option) that differs from the signature's default."""
    import yaml

    from dlx.components import builtin
    from dlx.compose import config_dir

    names = sorted(builtin()["dataset"])
    assert {"cifar10", "digits", "fashion_mnist", "mnist", "mnist1d", "moons", "spirals", "npz", "csv",
            "image_folder"} <= set(names)
    for name in names:
        node = yaml.safe_load((config_dir() / "dataset" / f"{name}.yaml").read_text())
        assert node.pop("defaults") == [f"schema_{name}"] and node.pop("_target_") == f"dlx.data.{name}", name
        options = {**spec(split_options), **spec(getattr(dlx.data, name))}
        for key, value in node.items():
            assert key in options and value != options[key].default, f"{name}.yaml: {key}: {value}"


@pytest.mark.parametrize(
    ("name", "shape", "n_test", "n_all"),
    [("digits", (1, 8, 8), 359, 1797), ("moons", (2,), 400, 2000), ("spirals", (2,), 400, 2000)],
)
def test_generated_and_bundled_sets(name, shape, n_test, n_all):
    splits = create_dataset(name)
    assert isinstance(splits, DataSplits) and splits.name == name
    assert splits.input_shape == shape
    assert splits.num_classes == (10 if name == "digits" else 2)
    assert len(splits.x_test) == n_test
    assert len(splits.x_train) + len(splits.x_val) + len(splits.x_test) == n_all
    assert len(splits.x_val) == round(0.1 * (n_all - n_test))
    for x, y in ((splits.x_train, splits.y_train), (splits.x_val, splits.y_val), (splits.x_test, splits.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape and len(x) == len(y)
        assert 0 <= int(y.min()) and int(y.max()) < splits.num_classes
    assert set(splits.y_train.tolist()) == set(range(splits.num_classes))


def test_mnist1d_is_generated_offline_cached_and_keeps_global_rng(mnist1d_root):
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first = create_dataset("mnist1d", root=str(mnist1d_root))
    assert np.array_equal(np.random.get_state()[1], before), "loading must not reseed numpy's global RNG"
    assert list((mnist1d_root / "mnist1d").glob("*.npz")), "the generated arrays are cached"
    assert first.input_shape == (1, 40) and first.num_classes == 10
    assert len(first.x_test) == 1000 and len(first.x_train) + len(first.x_val) == 4000
    second = create_dataset("mnist1d", root=str(mnist1d_root))
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)


@pytest.mark.parametrize(("name", "gz"), [("mnist", True), ("fashion_mnist", False)])
def test_idx_sets_read_official_splits(tmp_path, name, gz):
    arrays = write_idx_set(tmp_path / name, gz=gz)
    splits = create_dataset(name, root=str(tmp_path), normalize=False, val_fraction=0.2)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.x_train.dtype == torch.float32 and splits.y_train.dtype == torch.int64
    # The official test file, in order and scaled to [0, 1].
    expected_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().div(255).unsqueeze(1)
    assert torch.allclose(splits.x_test, expected_test)
    assert splits.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # Train and val partition the training file, and each sample keeps its own label.
    train_ids, val_ids = sample_ids(splits.x_train), sample_ids(splits.x_val)
    assert len(val_ids) == 12 and set(train_ids).isdisjoint(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(N_TRAIN))
    assert splits.y_train.tolist() == [i % 10 for i in train_ids]


def test_cifar10_from_batches_and_from_archive(tmp_path):
    batches = cifar_batches()
    folder = tmp_path / "a" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    from_batches = create_dataset("cifar10", root=str(tmp_path / "a"), normalize=False)
    assert from_batches.input_shape == (3, 32, 32) and from_batches.num_classes == 10
    assert len(from_batches.x_train) + len(from_batches.x_val) == N_TRAIN and len(from_batches.x_test) == N_TEST
    assert sample_ids(from_batches.x_test).tolist() == list(range(1000, 1000 + N_TEST))
    pixels = torch.from_numpy(batches["test_batch"][b"data"]).float().div(255).reshape(-1, 3, 32, 32)
    assert torch.allclose(from_batches.x_test, pixels)

    (tmp_path / "b" / "cifar10").mkdir(parents=True)
    (tmp_path / "b" / "cifar10" / "cifar-10-python.tar.gz").write_bytes(cifar_tarball(batches))
    from_archive = create_dataset("cifar10", root=str(tmp_path / "b"), normalize=False)
    assert (tmp_path / "b" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
    assert [p.name for p in (tmp_path / "b" / "cifar10").iterdir() if p.name.startswith(".")] == []
    assert torch.equal(from_archive.x_train, from_batches.x_train)


def test_cifar_archive_with_escaping_member_is_rejected(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(DatasetError, match="refusing to extract"):
        create_dataset("cifar10", root=str(tmp_path))
    assert not (tmp_path / "escaped.txt").exists()
    assert not any((tmp_path / "cifar10").glob(".extract-*"))


def test_damaged_cifar_archive_is_reported(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(DatasetError, match="cannot extract .*cifar-10-python.tar.gz"):
        create_dataset("cifar10", root=str(tmp_path))


def test_damaged_idx_file_is_reported(tmp_path):
    write_idx_set(tmp_path / "mnist", gz=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte is truncated"):
        create_dataset("mnist", root=str(tmp_path))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, batch in cifar_batches().items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        create_dataset("cifar10", root=str(tmp_path))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_files_message(tmp_path, name):
    with pytest.raises(DatasetError) as caught:
        create_dataset(name, root=str(tmp_path / "nowhere"))
    message = str(caught.value)
    assert str((tmp_path / "nowhere" / name).resolve()) in message
    assert "dataset.download=true" in message
    assert ("cifar-10-python.tar.gz" if name == "cifar10" else "t10k-labels-idx1-ubyte.gz") in message


def test_options_are_checked_from_the_signatures():
    with pytest.raises(TypeError, match="radius"):
        dlx.data.moons(radius=3)
    with pytest.raises(TypeError, match="noise"):
        dlx.data.digits(noise=0.1)
    with pytest.raises(DatasetError, match=r"dataset.noise=-1.0 is out of range: allowed >= 0"):
        dlx.data.spirals(noise=-1.0)
    with pytest.raises(DatasetError, match=r"dataset.n_samples=25 is too small for 3 classes: allowed >= 30"):
        dlx.data.spirals(n_samples=25, n_classes=3)
    with pytest.raises(DatasetError, match=r"dataset.val_fraction=1.0 is out of range: allowed in \[0, 1\)"):
        create_dataset("moons", val_fraction=1.0)
    with pytest.raises(DatasetError, match="dataset.split_seed=-1 is out of range"):
        create_dataset("moons", split_seed=-1)
    with pytest.raises(DatasetError, match="dataset.train_subset=0 is out of range: allowed null or >= 1"):
        create_dataset("moons", train_subset=0)
    with pytest.raises(DatasetError, match="dataset.stream='sometimes' is not valid: allowed auto, on, off"):
        create_dataset("moons", stream="sometimes")
    options = {name: o.default for name, o in spec(dlx.data.spirals).items()}
    assert options == {"n_samples": 2000, "noise": 0.2, "n_classes": 2, "turns": 1.5}


def test_dataset_options_take_effect():
    moons = create_dataset("moons", n_samples=500, noise=0.0, normalize=False)
    assert len(moons.x_train) + len(moons.x_val) + len(moons.x_test) == 500
    # Without noise every point lies exactly on one of the two unit half circles.
    x = torch.cat([moons.x_train, moons.x_val, moons.x_test])
    y = torch.cat([moons.y_train, moons.y_val, moons.y_test])
    centre = torch.where(y[:, None] == 0, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.5]))
    assert torch.allclose((x - centre).norm(dim=1), torch.ones(len(x)), atol=1e-5)
    spirals = create_dataset("spirals", n_classes=3, n_samples=300)
    assert spirals.num_classes == 3 and set(spirals.y_test.tolist()) == {0, 1, 2}


def test_deterministic_and_split_seed_moves_only_val():
    a = create_dataset("digits", split_seed=1)
    b = create_dataset("digits", split_seed=1)
    c = create_dataset("digits", split_seed=2)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.y_val, c.y_val)
    raw_a = create_dataset("digits", split_seed=1, normalize=False)
    raw_c = create_dataset("digits", split_seed=2, normalize=False)
    assert torch.equal(raw_a.x_test, raw_c.x_test) and torch.equal(raw_a.y_test, raw_c.y_test)


def test_splits_are_stratified_and_disjoint():
    splits = create_dataset("moons", val_fraction=0.25, normalize=False)
    rows = [{tuple(r) for r in x.tolist()} for x in (splits.x_train, splits.x_val, splits.x_test)]
    assert sum(map(len, rows)) == 2000 and len(set.union(*rows)) == 2000
    digits = create_dataset("digits", val_fraction=0.25)
    shares = [torch.bincount(y, minlength=10).double() / len(y) for y in (digits.y_train, digits.y_val, digits.y_test)]
    assert torch.allclose(shares[0], shares[1], atol=0.01)
    assert torch.allclose(shares[0], shares[2], atol=0.01)


def test_normalisation_uses_train_statistics_only(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, batch in cifar_batches().items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    raw = create_dataset("cifar10", root=str(tmp_path), normalize=False, val_fraction=0.3)
    norm = create_dataset("cifar10", root=str(tmp_path), val_fraction=0.3)
    assert torch.allclose(norm.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(norm.x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    mean = raw.x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = raw.x_train.std(dim=(0, 2, 3), unbiased=False, keepdim=True)
    assert torch.allclose(norm.x_val, (raw.x_val - mean) / std, atol=1e-4)
    assert torch.allclose(norm.x_test, (raw.x_test - mean) / std, atol=1e-4)
    # Tabular data: per feature.
    moons = create_dataset("moons")
    assert torch.allclose(moons.x_train.mean(dim=0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(moons.x_train.std(dim=0, unbiased=False), torch.ones(2), atol=1e-4)
    assert not torch.allclose(moons.x_test.mean(dim=0), torch.zeros(2), atol=1e-5)
    digits = create_dataset("digits", normalize=False)
    assert float(digits.x_train.max()) == 1.0 and float(digits.x_train.min()) == 0.0


def test_train_subset_is_stratified_inside_train_and_keeps_val():
    full = create_dataset("digits", split_seed=3, normalize=False)
    sub = create_dataset("digits", split_seed=3, normalize=False, train_subset=100)
    assert len(sub.x_train) == 100
    assert torch.bincount(sub.y_train, minlength=10).tolist() == [10] * 10
    assert torch.equal(sub.x_val, full.x_val) and torch.equal(sub.x_test, full.x_test)
    full_rows = {tuple(r) for r in full.x_train.flatten(1).tolist()}
    assert all(tuple(r) in full_rows for r in sub.x_train.flatten(1).tolist())
    with pytest.raises(DatasetError, match=rf"train_subset=5000 is larger than the {len(full.x_train)}"):
        create_dataset("digits", split_seed=3, train_subset=5000)


def test_zero_val_fraction_and_to_device():
    splits = create_dataset("moons", val_fraction=0.0)
    assert splits.x_val.shape == (0, 2) and splits.y_val.shape == (0,)
    assert len(splits.x_train) == 1600
    moved = splits.to("meta")
    assert moved is not splits and splits.x_train.device.type == "cpu"
    assert all(getattr(moved, f).device.type == "meta" for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"))
    assert moved.input_shape == (2,) and moved.num_classes == 2 and moved.name == "moons"

"""Data without code (npz, csv, image_folder), the Source contract for user code, and the streaming path:
the same data streamed through DataLoader workers gives the batches the in-memory path gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dlx.data
from dlx.data import DatasetError, Source, TensorSplit, prepare
from dlx.data.batches import StreamSplit, eval_bounds

PIL = pytest.importorskip("PIL.Image")


def write_npz(path, *, n_train=60, n_test=20, val=False, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(n_train, 3, 4)).astype(np.float32), "y_train": np.arange(n_train) % 3,
              "x_test": rng.normal(size=(n_test, 3, 4)).astype(np.float32), "y_test": np.arange(n_test) % 3}
    if val:
        arrays.update(x_val=rng.normal(size=(9, 3, 4)), y_val=np.arange(9) % 3)
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def write_images(folder, classes=("cat", "dog", "emu"), per_class=10, *, mode="RGB", size=(12, 10)):
    for k, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            value = (40 * k + i) % 256
            PIL.new(mode, size, color=value if mode == "L" else (value, 255 - value, k)).save(folder / name / f"{i}.png")


def test_npz_reads_its_arrays_and_carves_val_from_train(tmp_path):
    arrays = write_npz(tmp_path / "data.npz")
    source = dlx.data.npz(path=str(tmp_path / "data.npz"))
    assert source.num_classes == 3 and source.name == "data"
    splits = prepare(source, normalize=False, val_fraction=0.25)
    assert splits.input_shape == (3, 4) and len(splits.test) == 20
    assert len(splits.train) == 45 and len(splits.val) == 15
    assert torch.equal(splits.x_test, torch.from_numpy(arrays["x_test"]))
    with_val = prepare(dlx.data.npz(path=str(write_npz(tmp_path / "v.npz", val=True) and tmp_path / "v.npz")))
    assert len(with_val.val) == 9 and len(with_val.train) == 60, "a given val split is used as it is"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"x_test": None}, r"missing array\(s\) x_test; it holds x_train, y_train, y_test"),
    ({"y_train": np.arange(59) % 3}, r"x_train float32 \(60, 3, 4\) does not fit y_train \(59,\)"),
    ({"y_test": np.full(20, 0.5)}, "y_test must hold one integer class index per sample"),
    ({"x_test": np.zeros((20, 4, 3), np.float32)}, r"x_test samples are \(4, 3\), x_train samples \(3, 4\)"),
])
def test_npz_with_wrong_arrays_names_the_path(tmp_path, overrides, message):
    write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DatasetError, match=rf"^dataset.path={tmp_path / 'bad.npz'}: {message}") as caught:
        dlx.data.npz(path=str(tmp_path / "bad.npz"))
    assert "\n" not in str(caught.value)


def test_missing_or_unreadable_files_name_the_path(tmp_path):
    with pytest.raises(DatasetError, match=rf"^dataset.path={tmp_path / 'none.npz'}: no such file$"):
        dlx.data.npz(path=str(tmp_path / "none.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz file"):
        dlx.data.npz(path=str(tmp_path / "junk.npz"))
    with pytest.raises(DatasetError, match=rf"^dataset.path={tmp_path}: not a file$"):
        dlx.data.csv(path=str(tmp_path), label="y")
    with pytest.raises(DatasetError, match=rf"^dataset.path={tmp_path / 'nodir'}: no such folder$"):
        dlx.data.image_folder(path=str(tmp_path / "nodir"))


def test_csv_standardises_numeric_features_and_maps_named_labels(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["height,species,weight"] + [f"{rng.normal(170, 10):.3f},{['oak', 'ash', 'elm'][i % 3]},{rng.normal(70, 5):.3f}"
                                        for i in range(100)]
    (tmp_path / "trees.csv").write_text("\n".join(rows) + "\n")
    source = dlx.data.csv(path=str(tmp_path / "trees.csv"), label="species")
    assert source.classes == ("ash", "elm", "oak") and source.num_classes == 3
    splits = prepare(source)
    assert splits.input_shape == (2,) and len(splits.test) == 20, "a fixed 20% hold-out without test_path"
    assert torch.allclose(splits.x_train.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(splits.x_train.std(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert splits.y_test.tolist().count(2) == 7  # 34 oaks: 20% of them, stratified
    (tmp_path / "test.csv").write_text("species,height,weight\n1,2,x\n")
    with pytest.raises(DatasetError, match="test.csv: column 'weight' row 2: 'x' is not a number"):
        dlx.data.csv(path=str(tmp_path / "trees.csv"), label="species", test_path=str(tmp_path / "test.csv"))
    (tmp_path / "test.csv").write_text("weight,height,species\n70,170,oak\n60,150,fir\n")
    tested = dlx.data.csv(path=str(tmp_path / "trees.csv"), label="species", test_path=str(tmp_path / "test.csv"))
    assert tested.classes == ("ash", "elm", "fir", "oak") and len(tested.test[1]) == 2
    with pytest.raises(DatasetError, match=r"has no label column 'label' \(dataset.label\); its columns: height, "):
        dlx.data.csv(path=str(tmp_path / "trees.csv"), label="label")


def test_csv_numeric_labels_sort_as_numbers(tmp_path):
    (tmp_path / "t.csv").write_text("a,y\n" + "".join(f"{i},{[2, 10, 1][i % 3]}\n" for i in range(30)))
    source = dlx.data.csv(path=str(tmp_path / "t.csv"), label="y")
    assert source.classes == ("1", "2", "10") and sorted(set(source.train[1].tolist())) == [0, 1, 2]


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_image_folder_reads_resizes_and_keeps_channels(tmp_path, mode, channels):
    write_images(tmp_path / "pets", mode=mode)
    source = dlx.data.image_folder(path=str(tmp_path / "pets"), size=8)
    assert source.classes == ("cat", "dog", "emu") and source.num_classes == 3 and source.test is None
    x, y = source.train[12]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (channels, 8, 8) and y == 1
    splits = prepare(source, normalize=False, stream="off")
    assert splits.input_shape == (channels, 8, 8) and len(splits.test) == 6 and not splits.streamed
    assert float(splits.x_train.max()) <= 1.0


def test_image_folder_with_train_and_test_folders(tmp_path):
    write_images(tmp_path / "set" / "train")
    write_images(tmp_path / "set" / "test", classes=("cat", "emu"), per_class=2)
    source = dlx.data.image_folder(path=str(tmp_path / "set"), size=4)
    assert len(source.train) == 30 and source.test.targets == [0, 0, 2, 2]


def test_bad_image_folders_name_the_path(tmp_path):
    write_images(tmp_path / "a", classes=("x", "y"))
    (tmp_path / "a" / "z").mkdir()
    with pytest.raises(DatasetError, match=rf"^dataset.path={tmp_path / 'a'}: class folder .*z holds no images$"):
        dlx.data.image_folder(path=str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match="holds no class folders"):
        dlx.data.image_folder(path=str(tmp_path / "b"))
    write_images(tmp_path / "c", classes=("x", "y"))
    (tmp_path / "c" / "y" / "9.png").write_bytes(b"not a png")
    source = dlx.data.image_folder(path=str(tmp_path / "c"))
    for stream in ("off", "on"):
        with pytest.raises(DatasetError, match=rf"^dataset.path={tmp_path / 'c'}: cannot read image .*9.png") as caught:
            prepare(source, stream=stream, workers=0)
        assert "\n" not in str(caught.value)


def test_user_code_may_return_a_dict_and_a_dataset(tmp_path):
    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 50

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i % 2

    splits = prepare({"train": Squares(), "num_classes": 2, "name": "squares"}, normalize=False, stream="off")
    assert splits.name == "squares" and splits.input_shape == (2,) and len(splits.test) == 10
    assert sorted(splits.x_train[:, 0].tolist() + splits.x_val[:, 0].tolist() + splits.x_test[:, 0].tolist()) == \
        [float(i) for i in range(50)]
    with pytest.raises(DatasetError, match="unknown key.*shape; allowed keys: classes, name, num_classes"):
        prepare({"train": Squares(), "num_classes": 2, "shape": 3})
    with pytest.raises(DatasetError, match="returned list; expected a dlx.data.Source"):
        prepare([1, 2])


def batches_of(split, n=7):
    return [(x.clone(), y.clone()) for x, y in split.batches(eval_bounds(len(split), n))]


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_gives_the_in_memory_batches(tmp_path, workers):
    """Same source, split and normalisation: every split's batches agree, in sample order and in a permuted
    order, whether held as tensors or read by workers (spawned by the forkserver, never forked)."""
    write_images(tmp_path / "pets")
    source = dlx.data.image_folder(path=str(tmp_path / "pets"), size=6)
    held = prepare(source, stream="off", val_fraction=0.2)
    streamed = prepare(source, stream="on", val_fraction=0.2, workers=workers)
    assert streamed.streamed and isinstance(streamed.train, StreamSplit) and isinstance(held.train, TensorSplit)
    assert streamed.input_shape == held.input_shape == (3, 6, 6)
    for split in ("train", "val", "test"):
        a, b = batches_of(getattr(held, split)), batches_of(getattr(streamed, split))
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-5), split
    order = torch.randperm(len(held.train), generator=torch.Generator().manual_seed(0))
    bounds = [(0, 5), (5, len(held.train))]
    pairs = zip(held.train.batches(bounds, order), streamed.train.batches(bounds, order))
    assert all(torch.allclose(xa, xb, atol=1e-5) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in pairs)
    # a pass started inside another (a callback evaluating mid-epoch) is read in this process
    outer = streamed.val.batches(eval_bounds(len(streamed.val), 2))
    next(outer)
    inner = batches_of(streamed.test)
    assert len(inner) == len(batches_of(held.test))
    assert len(list(outer)) == len(eval_bounds(len(streamed.val), 2)) - 1, "the outer pass goes on where it was"


def test_arrays_stream_too_and_auto_keeps_what_fits():
    source = dlx.data.spirals(n_samples=200)
    assert not prepare(source).streamed, "auto: 200 two-feature samples fit"
    streamed = prepare(source, stream="on", workers=0)
    held = prepare(source)
    x, _ = streamed.train.take(torch.arange(5))
    assert torch.allclose(x, held.x_train[:5], atol=1e-5)


def test_a_source_dataclass_with_every_split():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20) % 2
    source = Source(train=(x, y), val=(x[:4], y[:4]), test=(x[:6], y[:6]), num_classes=2)
    splits = prepare(source, normalize=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 4, 6) and splits.name == "dataset"
    with pytest.raises(DatasetError, match=r"'dataset' train labels span 0..1, outside the 1 classes"):
        prepare(Source(train=(x, y), num_classes=1))
    with pytest.raises(DatasetError, match=r"'dataset' test: x \(3, 2\) and y \(2,\) do not fit"):
        prepare(Source(train=(x, y), test=(x[:3], y[:2]), num_classes=2))
    for stream in ("off", "on"):
        with pytest.raises(DatasetError, match=r"'dataset' val labels span 0..7, outside the 2 classes"):
            prepare(Source(train=(x, y), val=(x[:8], np.arange(8)), num_classes=2), stream=stream, workers=0)


def test_a_table_trains_from_the_command_line_and_a_bad_one_is_one_line(workdir):
    from conftest import QUICK, all_runs, run_dlx

    rng = np.random.default_rng(2)
    rows = [f"{a:.3f},{b:.3f},{'big' if a + b > 0 else 'small'}" for a, b in rng.normal(size=(120, 2))]
    (workdir / "t.csv").write_text("a,b,kind\n" + "\n".join(rows) + "\n")
    done = run_dlx(["train", "dataset=csv", "dataset.path=t.csv", "dataset.label=kind", *QUICK], workdir)
    assert done.returncode == 0, done.stderr
    [run] = all_runs(workdir)
    assert run.info.status == "FINISHED" and run.data.params["dataset.path"] == "t.csv"
    assert run.data.params["dataset.label"] == "kind" and run.data.params["data.n_test"] == "24"
    bad = run_dlx(["train", "dataset=csv", "dataset.path=t.csv", "dataset.label=size", *QUICK], workdir)
    assert bad.returncode == 2
    line = bad.stderr.strip()
    assert line.startswith("dlx: error: ") and "\n" not in line, bad.stderr
    assert line.endswith("dataset.path=t.csv: has no label column 'size' (dataset.label); its columns: a, b, kind")
    assert len(all_runs(workdir)) == 1, "no MLflow run for a file that cannot be used"


def test_a_missing_data_file_is_refused_with_the_config_before_a_sweep_starts(workdir):
    """Checked with the config, not on loading: dlx cv and dlx sweep over a missing file stop before their
    parent run (each trial failed on it, after the parent run was made)."""
    from conftest import run_cli_batch

    cases = {("cv", "dataset=npz", "dataset.path=gone.npz", "cv.folds=2"): "dataset.path=gone.npz: no such file",
             ("sweep", "dataset=csv", "dataset.path=t.csv", "dataset.test_path=gone.csv", "dataset.label=y",
              "seed=0,1"): "dataset.test_path=gone.csv: no such file",
             ("ensemble", "dataset=image_folder", "dataset.path=gone", "ensemble.members=2"):
                 "dataset.path=gone: no such folder"}
    (workdir / "t.csv").write_text("a,y\n1,0\n2,1\n")
    results = run_cli_batch([list(c) for c in cases], workdir, files=[workdir / "t.csv"])
    for case, message in cases.items():
        code, err, left = results[json.dumps(list(case))]
        assert code == 2 and err.strip() == f"dlx: error: {message}", (case, err)
        assert left == ["t.csv"], (case, left)  # no store, no run folder

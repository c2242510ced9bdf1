"""The sequence and text data sets: the adding problem, copy and reverse, a character language model on a
file and labelled texts from a table; their shapes, their fixed test splits, vocabularies built on the
training split alone, one-line errors, and `dlx train` on each through the real CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import QUICK, all_runs, run_cli_batch, run_dlx

import dlx.data
from dlx.data import DatasetError, prepare
from dlx.data.corpus import UNKNOWN, UNKNOWN_CHAR
from dlx.data.sequences import TEST_SAMPLES
from dlx.data.splits import TEST_FRACTION
from dlx.tasks import IGNORE, PAD, Target


def test_adding_shapes_markers_and_sums():
    source = dlx.data.adding(length=20, n_train=500)
    (x, y), (x_test, y_test) = source.train, source.test
    assert x.shape == (500, 2, 20) and x.dtype == np.float32 and y.shape == (500,) and y.dtype == np.float32
    assert x_test.shape == (TEST_SAMPLES, 2, 20) and y_test.shape == (TEST_SAMPLES,)
    assert source.target is Target.value and source.num_classes == 1 and source.tolerance == 0.04
    markers = x[:, 1]
    assert np.all(markers.sum(axis=1) == 2) and set(np.unique(markers)) == {0.0, 1.0}
    assert np.all(markers[:, :10].sum(axis=1) == 1), "one marker in each half of the sequence"
    assert np.all((x[:, 0] >= 0) & (x[:, 0] < 1))
    np.testing.assert_allclose(y, (x[:, 0] * markers).sum(axis=1), rtol=1e-6)
    splits = prepare(source)
    assert splits.y_train.dtype == torch.float32 and splits.task.tolerance == 0.04 and len(splits.test) == 1000


def test_predicting_the_mean_scores_a_sixth():
    """The trivial baseline of the adding problem: the sum of two U(0, 1) has variance 2/12."""
    source = dlx.data.adding()
    assert abs(float(np.mean((source.train[1] - 1.0) ** 2)) - 1 / 6) < 0.005  # 10000 samples: se ~0.002
    assert abs(float(np.mean((source.test[1] - 1.0) ** 2)) - 1 / 6) < 0.02  # 1000 samples: se ~0.006


@pytest.mark.parametrize("name", ["adding", "copy"])
def test_the_test_split_is_fixed(name):
    """No setting but the task's shape moves a test sample, and every call makes the same samples."""
    small, large = getattr(dlx.data, name)(n_train=100), getattr(dlx.data, name)(n_train=2000)
    assert np.array_equal(small.test[0], large.test[0]) and np.array_equal(small.test[1], large.test[1])
    assert np.array_equal(small.train[0], getattr(dlx.data, name)(n_train=100).train[0])


@pytest.mark.parametrize("name", ["copy", "reverse"])
def test_copy_and_reverse_targets_with_padding(name):
    source = getattr(dlx.data, name)(symbols=5, length=9, min_length=3, n_train=400)
    assert source.target is Target.sequence and source.vocab == 6 and source.num_classes == 6
    assert source.tokens == ("<pad>", "1", "2", "3", "4", "5")
    for x, y in (source.train, source.test):
        assert x.dtype == np.int64 and y.dtype == np.int64 and x.shape == y.shape and x.shape[1] == 9
        lengths = (x != PAD).sum(axis=1)
        assert lengths.min() == 3 and lengths.max() == 9, "lengths drawn in min_length..length"
        for row, target, n in zip(x, y, lengths):
            assert np.all(row[:n] >= 1) and np.all(row[:n] <= 5) and np.all(row[n:] == PAD), "padded after the end"
            assert np.array_equal(target[:n], row[:n] if name == "copy" else row[:n][::-1])
            assert np.all(target[n:] == IGNORE)
    seen = {row.tobytes() for row in source.test[0]}
    assert not any(row.tobytes() in seen for row in source.train[0]), "no test sequence is trained on"
    splits = prepare(source)
    assert splits.x_train.dtype == torch.int64 and splits.task.target_len == 9
    assert torch.equal(splits.x_test, torch.from_numpy(source.test[0])), "token inputs are never normalised"


def test_fixed_length_and_option_checks():
    x, y = dlx.data.reverse(symbols=5, length=6, n_train=50).train
    assert np.all(x != PAD) and np.array_equal(y, x[:, ::-1])
    with pytest.raises(DatasetError, match=r"^dataset.min_length=5 is longer than dataset.length=4: allowed null "
                                           r"or 1..4$"):
        dlx.data.copy(length=4, min_length=5)
    with pytest.raises(DatasetError, match=r"^dataset.length=1 is out of range: allowed >= 2$"):
        dlx.data.adding(length=1)
    with pytest.raises(DatasetError, match=r"^dataset.symbols=1 is out of range"):
        dlx.data.copy(symbols=1)
    with pytest.raises(DatasetError, match=r"^dataset.symbols=2, dataset.length=3: the fixed test split holds every"):
        dlx.data.reverse(symbols=2, length=3)


def decode(tokens, ids) -> str:
    return "".join(tokens[i] for i in ids)


def test_text_chunks_are_contiguous_disjoint_and_in_file_order(tmp_path):
    body = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(200))
    file = tmp_path / "corpus.txt"
    file.write_text(body, encoding="utf-8")
    source = dlx.data.text(path=str(file), context=16)
    assert source.target is Target.steps and source.name == "corpus"
    assert source.vocab == source.num_classes == len(source.tokens) and source.tokens[0] == UNKNOWN_CHAR
    n_val = n_test = round(0.05 * len(body))
    starts = {"train": 0, "val": len(body) - n_val - n_test, "test": len(body) - n_test}
    for split, start in starts.items():
        x, y = getattr(source, split)
        assert x.dtype == np.int64 and y.dtype == np.int64 and x.shape == y.shape and x.shape[1] == 16
        for i in range(len(x)):  # window i covers the split's characters i*16 .. i*16+16, its target one on
            at = start + 16 * i
            assert decode(source.tokens, x[i]) == body[at:at + 16]
            assert decode(source.tokens, y[i]) == body[at + 1:at + 17]
        ends = {"train": starts["val"], "val": starts["test"], "test": len(body)}
        assert start + 16 * len(x) + 1 <= ends[split] < start + 16 * (len(x) + 1) + 1, "every full window is used"
    overlapping = dlx.data.text(path=str(file), context=16, stride=4)
    assert len(overlapping.train[0]) > 3.5 * len(source.train[0])
    assert np.array_equal(overlapping.val[0], source.val[0]), "val and test windows never overlap"
    splits = prepare(source)
    assert splits.task.target_len == 16 and splits.x_val.dtype == torch.int64


def test_text_vocabulary_comes_from_the_training_part_only(tmp_path):
    file = tmp_path / "tail.txt"
    file.write_text("abcab" * 400 + "Z" * 200, encoding="utf-8")  # Z: only in the last part, the test chunk
    source = dlx.data.text(path=str(file), context=8)
    assert source.tokens == (UNKNOWN_CHAR, "a", "b", "c")
    x_test, y_test = source.test
    assert np.all(x_test == 0) and np.all(y_test == 0), "a character only in test maps to id 0"


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"\xff\xfe not utf-8 \x80", "is not UTF-8 text"),
    (b"short text", r"its 10 characters are too few for dataset.context=128"),
])
def test_text_file_that_cannot_serve_is_one_line(tmp_path, content, message):
    file = tmp_path / "bad.txt"
    file.write_bytes(content)
    with pytest.raises(DatasetError, match=rf"^dataset.path={file}: {message}") as caught:
        dlx.data.text(path=str(file))
    assert "\n" not in str(caught.value)
    with pytest.raises(DatasetError, match=rf"^dataset.path={tmp_path / 'none.txt'}: no such file$"):
        dlx.data.text(path=str(tmp_path / "none.txt"))


def write_reviews(path, n=50, *, extra_rows=()):
    """n rows, two classes; row i holds a word of its own (w<i>) and the shared words of its class."""
    lines = ["id,text,label"]
    for i in range(n):
        mood = "pos" if i % 2 else "neg"
        words = "Good, great fun" if i % 2 else "bad dull film"
        lines.append(f'{i},"{words} w{i}",{mood}')
    lines += list(extra_rows)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_classification_carves_test_before_building_the_vocabulary(tmp_path):
    source = dlx.data.text_classification(path=str(write_reviews(tmp_path / "reviews.csv")), max_len=6)
    assert source.target is Target.label and source.classes == ("neg", "pos") and source.num_classes == 2
    assert source.vocab == len(source.tokens) and source.tokens[:2] == ("<pad>", "<unk>")
    (x, y), (x_test, y_test) = source.train, source.test
    assert len(x_test) == round(TEST_FRACTION * 50) and np.bincount(y_test).tolist() == [5, 5], "stratified"
    assert x.shape == (40, 6) and x.dtype == np.int64 and y.dtype == np.int64
    own = {t for t in source.tokens if t.startswith("w")}
    assert len(own) == 40, "each training row's own word is in the vocabulary, no test row's"
    for row in x_test:
        kept = row[row != PAD]
        assert kept[-1] == UNKNOWN and UNKNOWN not in kept[:-1], "a test row's own word is unknown"
    for row, label in zip(x, y):
        words = decode_words(source.tokens, row)
        assert words[:-1] == (["good", ",", "great", "fun"] if label else ["bad", "dull", "film"])
        assert words[-1] == f"w{words[-1][1:]}" and words[-1] in own


def decode_words(tokens, ids) -> list[str]:
    return [tokens[i] for i in ids if i != PAD]


def test_text_classification_options(tmp_path):
    train = write_reviews(tmp_path / "train.csv", 20)
    test = write_reviews(tmp_path / "test.csv", 4, extra_rows=['99,"Unseen GOOD",pos'])
    chars = dlx.data.text_classification(path=str(train), test_path=str(test), tokens="char", lowercase=False,
                                         max_len=40)
    assert len(chars.test[0]) == 5 and "G" in chars.tokens and "U" not in chars.tokens
    assert chars.test[0][-1][0] == UNKNOWN, "a character only in the test table is unknown"
    assert decode_words(chars.tokens, chars.train[0][0]) == list("bad dull film w0")
    words = dlx.data.text_classification(path=str(train), test_path=str(test), max_len=2, min_count=10)
    assert set(words.tokens) == {"<pad>", "<unk>", "good", ",", "great", "fun", "bad", "dull", "film"}
    assert words.train[0].shape == (20, 2), "truncated to max_len"
    assert words.test[0][-1].tolist() == [UNKNOWN, words.tokens.index("good")], "unseen word, lowercased word"


@pytest.mark.parametrize(("rows", "options", "message"), [
    ("id,words,label\n1,hi,a\n", {}, r"has no text column 'text' \(dataset.text\); its columns: id, words, label"),
    ("id,text,y\n1,hi,a\n", {}, r"has no label column 'label' \(dataset.label\); its columns: id, text, y"),
    ("text,label\nhi,a,b\n", {}, "row 2 has 3 fields, the header 2"),
    ("text,label\n", {}, "needs a header row and at least one data row"),
])
def test_text_classification_table_errors_are_one_line(tmp_path, rows, options, message):
    file = tmp_path / "bad.csv"
    file.write_text(rows, encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^dataset.path={file}: {message}$"):
        dlx.data.text_classification(path=str(file), **options)


def test_train_on_the_adding_problem(workdir):
    """model=mlp flattens the (2, T) channels; the run logs the value metrics, and at length 10 three short
    epochs beat the trivial baseline (test/mse 0.08 against 0.167 when this was written)."""
    proc = run_dlx(["train", "dataset=adding", "dataset.length=10", "dataset.n_train=2000", "model=mlp",
                    "model.width=32", "loss=mse", "optimizer.lr=0.01", "trainer.epochs=3", "trainer.progress=plain"],
                   workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = all_runs(workdir)
    metrics = run.data.metrics
    assert {"test/mse", "test/solved", "val/mse", "test/acc"} <= set(metrics)
    assert metrics["test/mse"] < 1 / 6 and metrics["test/acc"] == metrics["test/solved"]
    assert run.data.params["dataset.length"] == "10"


def test_each_loader_declares_what_its_source_holds(tmp_path):
    """The declaration the configuration check reads before any data loads agrees with the Source itself."""
    file = tmp_path / "t.txt"
    file.write_text("abc " * 200, encoding="utf-8")
    for fn, options in ((dlx.data.adding, {"n_train": 10}), (dlx.data.copy, {"n_train": 10}),
                        (dlx.data.reverse, {"n_train": 10}), (dlx.data.text, {"path": str(file), "context": 8}),
                        (dlx.data.text_classification, {"path": str(write_reviews(tmp_path / "r.csv"))})):
        source = fn(**options)
        assert fn.declared == (source.target, source.vocab is not None), fn.__name__


# the recurrent models have no width: their size is `hidden`
SEQ_QUICK = ["trainer.epochs=2", "model.hidden=32", "trainer.progress=plain"]
CORPUS = "the cat sat on the mat. " * 200
TRAINED = {
    "text_classification": ["dataset=text_classification", "dataset.path=reviews.csv", "dataset.max_len=8",
                            "model=lstm", *SEQ_QUICK],
    "text": ["dataset=text", "dataset.path=corpus.txt", "dataset.context=16", "model=lstm", *SEQ_QUICK],
    "copy": ["dataset=copy", "dataset.length=5", "dataset.n_train=500", "model=seq2seq", *SEQ_QUICK],
}
LSTM, SEQ2SEQ = ["model=lstm", *SEQ_QUICK], ["model=seq2seq", *SEQ_QUICK]
REFUSED = [
    ["dataset=adding", "dataset.length=1", *QUICK],
    ["dataset=copy", "dataset.symbols=0", *SEQ2SEQ],
    ["dataset=copy", "dataset.min_length=12", *SEQ2SEQ],
    ["dataset=text", *LSTM],
    ["dataset=text", "dataset.path=short.txt", *LSTM],
    ["dataset=text_classification", "dataset.path=short.txt", "dataset.tokens=bytes", *LSTM],
]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The TRAINED and REFUSED cases of `dlx train`, each in a folder of its own, run by dlx's main() in one
    process (torch, Hydra and MLflow are imported once): args -> (exit code, stderr, the case's folder)."""
    top = tmp_path_factory.mktemp("cli")
    files = [write_reviews(top / "reviews.csv", 60), top / "corpus.txt", top / "short.txt"]
    files[1].write_text(CORPUS, encoding="utf-8")
    files[2].write_text("too short for a window", encoding="utf-8")
    cases = [["train", *args] for args in (*TRAINED.values(), *REFUSED)]
    results = run_cli_batch(cases, top, files=files)
    return {tuple(args[1:]): (*results[json.dumps(args)][:2], top / f"case{i}") for i, args in enumerate(cases)}


def test_bad_options_and_files_exit_2_without_a_run(cli):
    for args in REFUSED:
        code, stderr, folder = cli[tuple(args)]
        assert code == 2 and stderr.startswith("dlx: error: dataset.") and stderr.count("\n") == 1, (args, stderr)
        assert all_runs(folder) == [], args


def finished(cli, name: str):
    code, stderr, folder = cli[tuple(TRAINED[name])]
    assert code == 0, stderr[-3000:]
    (run,) = all_runs(folder)
    assert run.info.status == "FINISHED"
    return run


def test_train_text_classification_with_an_lstm(cli):
    run = finished(cli, "text_classification")
    assert "test/acc" in run.data.metrics and run.data.params["dataset.tokens"] == "word"


def test_train_a_char_model(cli):
    metrics = finished(cli, "text").data.metrics
    assert math.isclose(metrics["test/bpc"], metrics["test/loss"] / math.log(2), rel_tol=1e-6)
    assert metrics["test/perplexity"] < len(set(CORPUS)) + 1, "better than a uniform guess over its vocabulary"


def test_train_copy_with_seq2seq(cli):
    run = finished(cli, "copy")
    assert {"test/token_acc", "test/seq_acc"} <= set(run.data.metrics)
    assert run.data.params["dataset._target_"] == "dlx.data.copy"

"""EDA (dlx.data.eda): each operation keeps what it must keep, one op per sequence, the rates' one home, and the
refusals of `dlx train` (one line, exit 2, no run) before any data loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import all_runs, run_cli_batch

from dlx.config import AugmentationConfig
from dlx.data.augment import create_augmentation
from dlx.data.eda import (
    EDA,
    config_problems,
    create_eda,
    delete,
    insert,
    lengths,
    read_synonyms,
    replace,
    settings,
    swap,
    synonym_table,
)
from dlx.tasks import PAD, Target, Task

TOKENS = ("<pad>", "<unk>", "good", "fine", "nice", "bad", "poor", "the", "a", "movie", "plot", "was")
GROUPS = [["good", "fine", "nice", "great"], ["bad", "poor"]]  # great is not in the vocabulary
SYNONYMS = "# groups of synonyms\ngood, fine,nice , great\n\nbad\tpoor\nlonely\n"
V, T = len(TOKENS), 12


@pytest.fixture
def table():
    return synonym_table(TOKENS, GROUPS)


def batch(n: int = 256, seed: int = 0) -> torch.Tensor:
    """Token sequences of lengths 0..T, PAD after each one's end; ids 1..V-1 (1 is <unk>, without synonyms)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, V, (n, T), generator=g)
    length = torch.randint(0, T + 1, (n,), generator=g)
    return torch.where(torch.arange(T) < length[:, None], x, PAD)


def prefix(row: torch.Tensor) -> list[int]:
    return row[: int(lengths(row[None])[0])].tolist()


def padded_after_end(out: torch.Tensor) -> bool:
    return bool(((out == PAD) | (torch.arange(T) < lengths(out)[:, None])).all())


def is_subsequence(small: list[int], big: list[int]) -> bool:
    it = iter(big)
    return all(tok in it for tok in small)


def synonyms_of(table, tok: int) -> set[int]:
    tab, count = table
    return set(tab[tok, : count[tok]].tolist())


# ------------------------------------------------------------------------------------------ synonyms file
def test_synonym_file_groups_commas_tabs_comments(tmp_path):
    path = tmp_path / "syn.txt"
    path.write_text(SYNONYMS, encoding="utf-8")
    assert read_synonyms(path) == [["good", "fine", "nice", "great"], ["bad", "poor"]]  # a lone word is no group


@pytest.mark.parametrize("content, says", [(None, "no such file"), (b"\xff\xfe\x00bad", "not UTF-8"),
                                           (b"# nothing\nword\n", "holds no group of two or more words")])
def test_a_synonym_file_that_cannot_serve_names_the_key(tmp_path, content, says):
    path = tmp_path / "syn.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"augmentation.synonyms={path}: {says}")):
        read_synonyms(path)


def test_table_is_symmetric_within_the_vocabulary(table):
    ids = {t: i for i, t in enumerate(TOKENS)}
    assert synonyms_of(table, ids["good"]) == {ids["fine"], ids["nice"]}
    assert synonyms_of(table, ids["poor"]) == {ids["bad"]}
    assert synonyms_of(table, PAD) == set() and synonyms_of(table, ids["movie"]) == set()


# ------------------------------------------------------------------------------------------ the operations
def test_lengths_count_up_to_the_last_token():
    x = torch.tensor([[3, 0, 4, 0], [0, 0, 0, 0], [5, 6, 7, 8]])
    assert lengths(x).tolist() == [3, 0, 4]  # a PAD inside a sequence is one of its tokens


def test_swap_permutes_within_each_sequence():
    torch.manual_seed(0)
    x = batch()
    out = swap(x, lengths(x), 0.3)
    assert padded_after_end(out) and (lengths(out) == lengths(x)).all()
    assert all(sorted(prefix(a)) == sorted(prefix(b)) for a, b in zip(out, x))
    assert (out != x).any(1).float().mean() > 0.5


def test_delete_keeps_an_ordered_subsequence_and_pads_the_end():
    torch.manual_seed(0)
    x = batch()
    out = delete(x, lengths(x), 0.5)
    assert padded_after_end(out)
    for a, b in zip(out, x):
        assert is_subsequence(prefix(a), prefix(b))
        assert (len(prefix(a)) >= 1) == (len(prefix(b)) >= 1)  # a sequence never loses its last token
    shrunk = (lengths(x) - lengths(out)).float()
    assert 0.4 < shrunk.sum() / lengths(x).sum() < 0.6


def test_insert_adds_synonyms_of_the_sequence_and_drops_what_falls_off(table):
    torch.manual_seed(0)
    x = batch()
    rate = 0.25
    out = insert(x, lengths(x), rate, *table, vocab=V)
    assert padded_after_end(out)
    for a, b in zip(out, x):
        before, after = prefix(b), prefix(a)
        n = max(1, int(rate * len(before))) if before else 0
        assert len(after) == min(T, len(before) + n)
        assert is_subsequence(before[: T - n], after)  # each insertion pushes at most one token off the end
        offered = set().union(*(synonyms_of(table, t) for t in before)) if before else set()
        added = list(after)
        for t in before:  # what is left once the original tokens are taken out, in order
            if t in added:
                added.remove(t)
        if offered:
            assert set(added) <= offered | set(before)
        else:
            assert all(1 <= t < V for t in added)


def test_replace_puts_a_synonym_in_n_places(table):
    torch.manual_seed(0)
    x = batch()
    rate = 0.3
    out = replace(x, lengths(x), rate, *table)
    has = table[1][x] > 0
    assert ((out == x) | has).all()  # only tokens that have synonyms change ...
    changed = out != x
    for a, b, c in zip(out.tolist(), x.tolist(), changed):
        for new, old, ch in zip(a, b, c.tolist()):
            assert not ch or new in synonyms_of(table, old)  # ... and into one of them
    n = torch.where(lengths(x) > 0, (rate * lengths(x)).long().clamp(min=1), 0)
    assert (changed.sum(1) == torch.minimum(n, has.sum(1))).all()  # every synonym group here has 2+ members


def test_eda_gives_each_sequence_one_operation_and_leaves_labels(tmp_path):
    path = tmp_path / "syn.txt"
    path.write_text(SYNONYMS, encoding="utf-8")
    task = Task(target=Target.label, vocab=V, tokens=TOKENS)
    eda = create_eda(task=task, swap_rate=0.2, delete_rate=0.0, insert_rate=0.0, synonyms=str(path))
    assert isinstance(eda, EDA) and eda.ops == ["swap"]  # defaults (0) from AugmentationConfig: one home
    x, y = batch(), torch.arange(256)
    torch.manual_seed(3)
    out, y_a, y_b, lam = eda(x, y)
    assert y_a is y and y_b is y and lam == 1.0 and out.dtype == torch.int64 and out.shape == x.shape
    assert all(sorted(prefix(a)) == sorted(prefix(b)) for a, b in zip(out, x))
    torch.manual_seed(3)
    assert torch.equal(eda(x, y)[0], out)  # the global generator, which the trainer seeds and checkpoints

    both = create_eda(task=task, delete_rate=0.5, replace_rate=0.5, synonyms=str(path))
    torch.manual_seed(0)
    out = both(x, y)[0]
    deleted = lengths(out) < lengths(x)
    replaced = (out != x).any(1) & (lengths(out) == lengths(x))
    assert not (deleted & replaced).any() and deleted.any() and replaced.any()


# ------------------------------------------------------------------------------------------ one home, refusals
def test_rates_have_one_home_in_the_augmentation_schema():
    for key in ("swap_rate", "delete_rate", "insert_rate", "replace_rate"):
        assert settings()[key] == getattr(AugmentationConfig, key) == 0.0
    with pytest.raises(ValueError, match=r"augmentation.delete_rate=1 is out of range: allowed in \[0, 1\)"):
        settings(delete_rate=1)
    assert config_problems({"swap_rate": 1.5}) == ["augmentation.swap_rate=1.5 is out of range: allowed in [0, 1]"]
    assert "needs augmentation.synonyms" in config_problems({"replace_rate": 0.1, "synonyms": None})[0]


def test_eda_refuses_data_it_cannot_edit(tmp_path):
    with pytest.raises(ValueError, match="EDA edits token sequences, and the dataset gives real-valued inputs"):
        create_augmentation(swap_rate=0.1, task=Task())
    with pytest.raises(ValueError, match="a target per position does not, and the dataset has steps targets"):
        create_augmentation(swap_rate=0.1, task=Task(target=Target.steps, vocab=V, target_len=T))
    with pytest.raises(ValueError, match=r"augmentation \(flip\): .* allowed on token inputs: EDA"):
        create_augmentation(flip=True, task=Task(vocab=V))
    assert create_augmentation(task=Task(vocab=V)) is None


def train_batch(cases: list[list[str]], where: Path, files=()) -> dict:
    """args -> [exit code, stderr, files left] of `dlx train ARGS` for each case (conftest.run_cli_batch)."""
    results = run_cli_batch([["train", *c] for c in cases], where, files=files)
    return {tuple(json.loads(k)[1:]): v for k, v in results.items()}


def test_dlx_train_refuses_eda_mistakes_in_one_line_before_data_loads(tmp_path, workdir):
    syn = tmp_path / "syn.txt"
    syn.write_text(SYNONYMS, encoding="utf-8")
    # dataset.path names no file: a message about augmentation proves it came before the data was read
    no_data = ["dataset=text_classification", "dataset.path=absent.csv", "model=transformer", "trainer.progress=none"]
    cases = {
        ("augmentation=eda", "augmentation.synonyms=absent.txt", *no_data): "augmentation.synonyms=absent.txt: no such file",
        ("augmentation=eda", "augmentation.swap_rate=2", *no_data): "augmentation.swap_rate=2.0 is out of range: allowed in [0, 1]",
        ("augmentation=eda", *no_data): "augmentation.replace_rate=0.1 needs augmentation.synonyms=FILE",
        # what a built-in dataset declares it holds is enough
        ("augmentation=eda", "augmentation.synonyms=syn.txt", "trainer.progress=none"):
            "EDA edits token sequences, and dataset=digits gives real-valued inputs",
        ("augmentation=eda", "augmentation.synonyms=syn.txt", "dataset=text", "dataset.path=absent.txt",
         "model=transformer", "trainer.progress=none"): "and dataset=text has steps targets; allowed: label or value",
    }
    results = train_batch([list(c) for c in cases], workdir, files=[syn])
    for case, says in cases.items():
        code, stderr, left = results[case]
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("dlx: error: augmentation"), (case, stderr)
        assert says in lines[0], (case, stderr)
        assert not any(f.endswith("mlflow.db") for f in left), (case, left)
    assert all_runs(workdir) == []


# ------------------------------------------------------------------------------------------ end to end
def reviews(where: Path) -> list[str]:
    """A small labelled CSV and a synonym file in `where`; the overrides that train a text classifier on them
    with augmentation=eda."""
    rows = ["text,label"]
    for i in range(40):
        for words, label in ((["good", "fine", "nice"], "pos"), (["bad", "poor"], "neg")):
            rows.append(f"the movie was {words[i % len(words)]} and the plot was {words[(i + 1) % len(words)]},{label}")
    (where / "reviews.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (where / "syn.txt").write_text(SYNONYMS, encoding="utf-8")
    return ["dataset=text_classification", "dataset.path=reviews.csv", "dataset.max_len=10", "model=transformer",
            "model.width=16", "model.depth=1", "model.heads=2", "augmentation=eda", "augmentation.synonyms=syn.txt",
            "trainer.epochs=2", "trainer.batch_size=16", "trainer.progress=none"]


def test_eda_edits_the_training_batches_of_a_text_classifier(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from dlx.build import build
    from dlx.compose import compose

    args = reviews(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.to_container(compose([*args, "tracking.enabled=false"]), resolve=True, enum_to_str=True)
    built = build(cfg)
    eda, data = built.trainer.augment, built.data
    assert isinstance(eda, EDA) and eda.ops == ["swap", "delete", "insert", "replace"]
    ids = {t: i for i, t in enumerate(data.task.tokens)}
    assert synonyms_of((eda.table, eda.count), ids["good"]) == {ids["fine"], ids["nice"]}
    x, y = data.train.take(torch.arange(len(data.train)))
    torch.manual_seed(0)
    out, y_a, _, _ = eda(x, y)
    assert y_a is y and (out != x).any(1).float().mean() > 0.5


def test_dlx_train_with_eda_finishes(tmp_path, workdir):
    args = reviews(tmp_path)
    results = train_batch([args], workdir, files=[tmp_path / "reviews.csv", tmp_path / "syn.txt"])
    code, stderr, left = results[tuple(args)]
    assert code == 0, stderr
    (run,) = all_runs(workdir / "case0")
    assert run.info.status == "FINISHED" and run.data.params["augmentation.swap_rate"] == "0.1"

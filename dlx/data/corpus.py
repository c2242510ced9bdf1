"""Text corpora without code: a character language model on any UTF-8 file (text) and a table of labelled texts
(text_classification), named by dataset.path. No statistic of the test split reaches the vocabulary: text's is
built on its training part alone, text_classification's on the rows left after its test rows are held out
(training and validation, which dlx carves later); what it never saw maps to the unknown id.
(Not text.py: a `_target_` resolves to the longest importable module, so a module dlx.data.text would hide
the loader dlx.data.text.)"""

from __future__ import annotations

import collections
import enum
import re
from pathlib import Path
from typing import Annotated

import numpy as np

from dlx.data.files import _class_order, _error, _existing, read_rows
from dlx.data.source import Source, loader
from dlx.data.splits import TEST_FRACTION, TEST_SPLIT_SEED, stratified_split
from dlx.options import Range
from dlx.tasks import PAD, Target

Share = Annotated[float, Range(gt=0, lt=0.5)]
# id 0 of a character model: padding, and every character the training chunk lacks (the replacement
# character is what Unicode itself writes for a character that cannot be shown)
UNKNOWN_CHAR = "\ufffd"


def _read_text(key: str, path: str) -> str:
    file = _existing(key, path)
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise _error(key, path, f"is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise _error(key, path, f"cannot be read ({error.strerror or error})") from None


def _windows(ids: np.ndarray, context: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of context ids starting every step ids, each with the next id of every position as its target."""
    view = np.lib.stride_tricks.sliding_window_view(ids, context + 1)[::step]
    return np.ascontiguousarray(view[:, :-1]), np.ascontiguousarray(view[:, 1:])


@loader(target=Target.steps, tokens=True)
def text(*, path: str, context: Annotated[int, Range(ge=1)] = 128, val_share: Share = 0.05,
         test_share: Share = 0.05, stride: Annotated[int | None, Range(ge=1)] = None) -> Source:
    """A character language model (Karpathy's char-rnn) on the UTF-8 file at path: the file's first part trains,
    the next val_share of it validates and the last test_share tests, contiguous and in file order. A sample is
    a window of `context` characters and its target the character after each of them. Training windows start
    every `stride` characters (null: every `context`, no overlap; each window is stored, so stride s holds
    context/s copies of the text); val and test windows never overlap. The
    vocabulary is the characters of the training part; id 0 stands for any other."""
    codes = np.frombuffer(_read_text("path", path).encode("utf-32-le"), dtype=np.uint32)
    if not len(codes):
        raise _error("path", path, "is empty")
    n_val, n_test = round(val_share * len(codes)), round(test_share * len(codes))
    n_train = len(codes) - n_val - n_test
    if min(n_train, n_val, n_test) < context + 1:
        raise _error("path", path, f"its {len(codes)} characters are too few for dataset.context={context}: the "
                                   f"train, val and test parts ({n_train}, {n_val}, {n_test} characters by "
                                   f"dataset.val_share and dataset.test_share) each need at least {context + 1}")
    chars = np.unique(codes[:n_train])

    def encode(part: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(chars, part), len(chars) - 1)
        return np.where(chars[at] == part, at + 1, PAD).astype(np.int64)

    train, val, test = (encode(part) for part in np.split(codes, [n_train, n_train + n_val]))
    tokens = (UNKNOWN_CHAR, *(chr(c) for c in chars))
    return Source(train=_windows(train, context, stride or context), val=_windows(val, context, context),
                  test=_windows(test, context, context), num_classes=len(tokens), name=Path(path).stem,
                  target=Target.steps, vocab=len(tokens), tokens=tokens)


class Tokens(str, enum.Enum):
    char = "char"  # every character is a token
    word = "word"  # runs of letters and digits, and each punctuation mark


WORD = re.compile(r"\w+|[^\w\s]")
PAD_TOKEN, UNKNOWN_TOKEN = "<pad>", "<unk>"
UNKNOWN = 1  # the id of a token the training split lacks (0 is PAD)


def _read_rows(key: str, path: str, text: str, label: str, delimiter: str) -> tuple[list[str], list[str]]:
    header, rows = read_rows(key, path, delimiter)
    for column, option in ((text, "text"), (label, "label")):
        if column not in header:
            raise _error(key, path, f"has no {option} column {column!r} (dataset.{option}); its columns: "
                                    f"{', '.join(header)}")
    at_text, at_label = header.index(text), header.index(label)
    return [row[at_text] for row in rows], [row[at_label].strip() for row in rows]


@loader(tokens=True)
def text_classification(*, path: str, text: str = "text", label: str = "label", test_path: str | None = None,
                        tokens: Tokens = Tokens.word, lowercase: bool = True,
                        max_len: Annotated[int, Range(ge=1)] = 128, min_count: Annotated[int, Range(ge=1)] = 1,
                        delimiter: str = ",") -> Source:
    """A table with a header row: the `text` column holds each row's text, the `label` column its class (names
    or numbers, mapped to class indices in sorted order). Texts become `tokens` (words or characters), the
    first max_len of them, padded with 0. The vocabulary is the tokens of the training split seen at least
    min_count times; any other token is <unk> (id 1). The test split is the table at test_path, or else a fixed
    stratified 20% of the rows."""
    texts, labels = _read_rows("path", path, text, label, delimiter)
    test = _read_rows("test_path", test_path, text, label, delimiter) if test_path is not None else None
    classes = _class_order(set(labels) | set(test[1] if test else ()))
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    split = lambda s: WORD.findall(s) if tokens == Tokens.word else list(s)  # noqa: E731
    pieces = [split(s.lower() if lowercase else s) for s in texts]
    if test is None:  # the test rows dlx would carve, carved here so the vocabulary never sees them
        test_idx, train_idx = stratified_split(y, n_take=round(TEST_FRACTION * len(y)), seed=TEST_SPLIT_SEED)
        test_pieces, y_test = [pieces[i] for i in test_idx], y[test_idx]
        pieces, y = [pieces[i] for i in train_idx], y[train_idx]
    else:
        test_pieces = [split(s.lower() if lowercase else s) for s in test[0]]
        y_test = np.array([index[v] for v in test[1]], dtype=np.int64)
    counts = collections.Counter(t for row in pieces for t in row)
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    vocabulary = (PAD_TOKEN, UNKNOWN_TOKEN, *kept)
    ids = {t: i for i, t in enumerate(vocabulary)}

    def encode(rows: list[list[str]]) -> np.ndarray:
        x = np.full((len(rows), max_len), PAD, dtype=np.int64)
        for r, row in enumerate(rows):
            x[r, :min(len(row), max_len)] = [ids.get(t, UNKNOWN) for t in row[:max_len]]
        return x

    return Source(train=(encode(pieces), y), test=(encode(test_pieces), y_test), num_classes=len(classes),
                  name=Path(path).stem, classes=tuple(classes), target=Target.label, vocab=len(vocabulary),
                  tokens=vocabulary)

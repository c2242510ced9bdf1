"""EDA, Easy Data Augmentation (Wei & Zou 2019), on batches of token sequences, on the batch's device.

As in the paper, each training sequence gets one operation, drawn per sequence and batch among those whose
rate is > 0. For a sequence of l tokens (those before the padding at its end) and n = max(1, int(rate * l)):

- swap: n times, two random tokens trade places;
- delete: each token goes with probability rate (when all would go, one random token stays); the rest moves
  left and the end is padded;
- insert: n times, a synonym of a random token of the sequence that has one (a random token of the
  vocabulary when none has) goes in at a random position; what passes the end of the window falls off;
- replace: n random tokens that have synonyms each become one of their synonyms.

Synonyms come from the file `augmentation.synonyms`: one group per line, words separated by commas or tabs,
blank lines and lines starting with # skipped; the words of a group are each other's synonyms. A word counts
where the data's vocabulary (dlx.data.Source.tokens) spells it the same way; the id table is built once.
The rates and the file are AugmentationConfig's keys (dlx.config), the one home of their defaults and ranges.

Every operation is vectorised over the batch (no Python loop over sequences; swap and insert loop over at
most int(rate * T) rounds, known without reading the device) and draws from torch's global generators, which
the trainer seeds and checkpoints.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from dlx.options import problems, spec
from dlx.tasks import PAD

RATES = {"swap": "swap_rate", "delete": "delete_rate", "insert": "insert_rate", "replace": "replace_rate"}
KEYS = (*RATES.values(), "synonyms")
FORMAT = "one group of synonyms per line, words separated by commas or tabs"


@functools.cache
def _spec() -> dict:
    from dlx.config import AugmentationConfig

    return {name: opt for name, opt in spec(AugmentationConfig).items() if name in KEYS}


def settings(**values) -> dict:
    """Every EDA key with its default (AugmentationConfig's) where `values` lacks it; ValueError for a value out
    of range, TypeError for a key that is not one."""
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise TypeError(f"unknown augmentation option(s) {', '.join(unknown)}; EDA takes {', '.join(KEYS)}")
    full = {name: values.get(name, opt.default) for name, opt in _spec().items()}
    found = problems(_spec(), full, "augmentation")
    if found:
        raise ValueError("; ".join(found))
    return full


def enabled(values: Mapping) -> bool:
    return any(values.get(key) for key in RATES.values())


def config_problems(augmentation: Mapping, *, dataset: str | None = None, declared=None) -> list[str]:
    """What is wrong with the EDA keys of a composed augmentation group, found without loading data: a rate out
    of range, synonym replacement without a file, a file that cannot be read, and, for a built-in dataset that
    declares what it holds (`declared`: (dlx.tasks.Target, token inputs?), dlx.data.source.loader), data EDA
    cannot edit."""
    values = {k: v for k, v in augmentation.items() if k in KEYS}
    found = problems(_spec(), values, "augmentation")
    if found or not enabled(values):
        return found
    if declared is not None:
        target, tokens = declared
        found += data_problems(values, f"dataset={dataset}", target=target, tokens=tokens)
    path = values.get("synonyms")
    if path is None and values.get("replace_rate"):
        found.append(f"augmentation.replace_rate={values['replace_rate']} needs augmentation.synonyms=FILE ({FORMAT}); "
                     "allowed without one: augmentation.replace_rate=0")
    elif path is not None:
        try:
            read_synonyms(path)
        except ValueError as exc:
            found.append(str(exc))
    return found[:1]  # one mistake, one line: the first of them


def data_problems(values: Mapping, name: str, *, target, tokens: bool, shape: tuple[int, ...] | None = None) -> list[str]:
    """EDA on data it cannot edit: real-valued inputs, or targets per position (which a changed sequence would
    no longer match)."""
    keys = f"augmentation ({', '.join(f'{key}={values[key]}' for key in RATES.values() if values.get(key))})"
    if not tokens:
        shown = f" of shape {tuple(shape)}" if shape is not None else ""
        return [f"{keys}: EDA edits token sequences, and {name} gives real-valued inputs{shown}; allowed: a dataset "
                "with token inputs (e.g. dataset=text_classification), or every EDA rate 0"]
    target = getattr(target, "value", target)
    if target not in ("label", "value"):
        return [f"{keys}: EDA changes a sequence's tokens, which its one label survives but a target per position "
                f"does not, and {name} has {target} targets; allowed: label or value targets"]
    return []


def read_synonyms(path: str | Path) -> list[list[str]]:
    """The groups of the synonym file at path; ValueError naming augmentation.synonyms when it cannot serve."""
    where = f"augmentation.synonyms={path}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file; allowed: a UTF-8 text file, {FORMAT}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: not UTF-8 text; allowed: a UTF-8 text file, {FORMAT}") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__}); allowed: a readable "
                         f"UTF-8 text file, {FORMAT}") from None
    groups = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            words = [w.strip() for w in re.split(r"[,\t]", line) if w.strip()]
            if len(words) > 1:
                groups.append(words)
    if not groups:
        raise ValueError(f"{where}: holds no group of two or more words; allowed: {FORMAT}")
    return groups


def synonym_table(tokens: Sequence[str], groups: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(table (V, K), count (V,)): the ids of the synonyms of id i are table[i, :count[i]]. Only words of the
    vocabulary count; the padding id has none."""
    ids = {word: i for i, word in enumerate(tokens) if i != PAD}
    found: list[set[int]] = [set() for _ in tokens]
    for group in groups:
        members = {ids[w] for w in group if w in ids}
        for m in members:
            found[m] |= members - {m}
    width = max(1, max((len(s) for s in found), default=0))
    table = torch.zeros(len(tokens), width, dtype=torch.int64)
    for i, synonyms in enumerate(found):
        table[i, :len(synonyms)] = torch.tensor(sorted(synonyms), dtype=torch.int64)
    return table, torch.tensor([len(s) for s in found], dtype=torch.int64)


def create_eda(*, task=None, name: str = "the dataset", input_shape: tuple[int, ...] | None = None, **values) -> EDA:
    """The EDA of the augmentation keys `values` for data whose dlx.tasks.Task is `task`; ValueError (one line,
    naming the key) when the data has no token inputs, targets per position, or no tokens for the synonyms."""
    opts = settings(**values)
    vocab = getattr(task, "vocab", None)
    found = data_problems(opts, name, target=getattr(task, "target", "label"), tokens=vocab is not None,
                          shape=input_shape) or config_problems(opts)
    if found:
        raise ValueError(found[0])
    tokens = getattr(task, "tokens", None)
    groups = read_synonyms(opts["synonyms"]) if opts["synonyms"] is not None else []
    if groups and tokens is None:
        raise ValueError(f"augmentation.synonyms={opts['synonyms']}: {name} names no tokens (dlx.data.Source.tokens) "
                         "to find the synonyms' words in; allowed: augmentation.synonyms=null with replace_rate=0")
    table, count = synonym_table(tokens, groups) if groups else synonym_table(["<pad>"] * vocab, [])
    return EDA(vocab=vocab, table=table, count=count, rates={op: opts[key] for op, key in RATES.items()})


class EDA:
    """Calling it on a batch (x, y) of token ids x (N, T) returns (x_aug, y, y, 1.0), the shape of
    dlx.data.augment.BatchAugment's answer (no mixing)."""

    def __init__(self, *, vocab: int, table: torch.Tensor, count: torch.Tensor, rates: Mapping[str, float]):
        self.vocab, self.table, self.count = int(vocab), table, count
        self.rates = {op: float(rates.get(op, 0.0)) for op in RATES}

    @property
    def ops(self) -> list[str]:
        return [op for op, rate in self.rates.items() if rate > 0]

    def __repr__(self) -> str:
        return f"EDA({', '.join(f'{op}={rate}' for op, rate in self.rates.items() if rate)})"

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 1:
            raise ValueError(f"augmentation ({', '.join(self.ops)}): EDA edits sequences of token ids (N, T); this "
                             f"dataset gives samples of shape {tuple(input_shape)}")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        if self.table.device != x.device:  # moved once, on the first batch
            self.table, self.count = self.table.to(x.device), self.count.to(x.device)
        length = lengths(x)
        ops = self.ops
        choice = torch.randint(len(ops), (x.shape[0], 1), device=x.device)
        out = x
        for i, op in enumerate(ops):
            out = torch.where(choice == i, getattr(self, f"_{op}")(x, length, self.rates[op]), out)
        return out, y, y, 1.0

    def _swap(self, x, length, rate):
        return swap(x, length, rate)

    def _delete(self, x, length, rate):
        return delete(x, length, rate)

    def _insert(self, x, length, rate):
        return insert(x, length, rate, self.table, self.count, self.vocab)

    def _replace(self, x, length, rate):
        return replace(x, length, rate, self.table, self.count)


def lengths(x: torch.Tensor) -> torch.Tensor:
    """(N,) tokens of each sequence before the padding at its end (a PAD inside a sequence is one of its tokens)."""
    real = x != PAD
    from_end = real.flip(1).to(torch.int8).argmax(1)
    return torch.where(real.any(1), x.shape[1] - from_end, 0)


def _changes(rate: float, length: torch.Tensor) -> torch.Tensor:
    """n = max(1, int(rate * l)) per sequence; 0 for an empty one."""
    return torch.where(length > 0, (rate * length).floor().long().clamp(min=1), 0)


def _rounds(rate: float, width: int) -> int:
    """The most changes any sequence of the batch can get, from the window's width alone."""
    return max(1, int(rate * width))


def _uniform_below(bound: torch.Tensor) -> torch.Tensor:
    """A random integer in [0, bound) per element (0 where bound is 0)."""
    return (torch.rand(bound.shape, device=bound.device) * bound).long().clamp(max=(bound - 1).clamp(min=0))


def swap(x: torch.Tensor, length: torch.Tensor, rate: float) -> torch.Tensor:
    n, out = _changes(rate, length), x.clone()
    for r in range(_rounds(rate, x.shape[1])):
        a, b = _uniform_below(length).unsqueeze(1), _uniform_below(length).unsqueeze(1)
        active = (n > r).unsqueeze(1)
        at_a, at_b = out.gather(1, a), out.gather(1, b)
        out.scatter_(1, a, torch.where(active, at_b, at_a))
        out.scatter_(1, b, torch.where(active, at_a, at_b))
    return out


def delete(x: torch.Tensor, length: torch.Tensor, rate: float) -> torch.Tensor:
    positions = torch.arange(x.shape[1], device=x.device)
    valid = positions < length.unsqueeze(1)
    keep = valid & (torch.rand(x.shape, device=x.device) >= rate)
    emptied = valid.any(1) & ~keep.any(1)
    keep |= emptied.unsqueeze(1) & (positions == _uniform_below(length).unsqueeze(1))
    # output position j takes the (j+1)-th kept token: the first position where the running count reaches j+1
    kept = keep.long().cumsum(1)
    wanted = (positions + 1).expand_as(x).contiguous()
    source = torch.searchsorted(kept, wanted).clamp(max=x.shape[1] - 1)
    return torch.where(positions < kept[:, -1:], x.gather(1, source), PAD)


def _pick_synonyms(words: torch.Tensor, table: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A random synonym of each id in words (the id itself where it has none)."""
    k = _uniform_below(count[words])
    return torch.where(count[words] > 0, table[words, k], words)


def insert(x: torch.Tensor, length: torch.Tensor, rate: float, table: torch.Tensor, count: torch.Tensor,
           vocab: int) -> torch.Tensor:
    n_rows, width = x.shape
    n, out, length = _changes(rate, length), x.clone(), length.clone()
    positions = torch.arange(width, device=x.device)
    for r in range(_rounds(rate, width)):
        has = (positions < length.unsqueeze(1)) & (count[out] > 0)
        # a uniform choice among the tokens that have synonyms: the largest of random keys
        word = out.gather(1, torch.where(has, torch.rand(x.shape, device=x.device), -1.0).argmax(1, keepdim=True))
        fallback = torch.randint(1, vocab, (n_rows, 1), device=x.device)
        new = torch.where(has.any(1, keepdim=True), _pick_synonyms(word, table, count), fallback)
        at = _uniform_below(length + 1).unsqueeze(1)  # before token `at`; at == length appends
        shifted = out.gather(1, (positions - (positions > at).long()).clamp(min=0))
        shifted = torch.where(positions == at, new, shifted)
        active = n > r
        out = torch.where(active.unsqueeze(1), shifted, out)
        length = torch.where(active, (length + 1).clamp(max=width), length)
    return out


def replace(x: torch.Tensor, length: torch.Tensor, rate: float, table: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(x.shape[1], device=x.device)
    has = (positions < length.unsqueeze(1)) & (count[x] > 0)
    # n of the tokens that have synonyms, uniformly: those whose random key ranks below n
    keys = torch.where(has, torch.rand(x.shape, device=x.device), 2.0)
    rank = keys.argsort(1).argsort(1)
    chosen = has & (rank < _changes(rate, length).unsqueeze(1))
    return torch.where(chosen, _pick_synonyms(x, table, count), x)

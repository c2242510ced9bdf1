"""Generated sequence tasks: the adding problem (a value target) and copy / reverse (sequence targets).

Generation uses fixed seeds: the training samples come from DATA_SEED and the test samples from the test
split's own seed (dlx.data.splits.TEST_SPLIT_SEED), in a fixed number, so no setting but the task's own
shape (length, symbols) moves a test sample. val is carved from the training samples by dlx.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from dlx.data.source import Source, loader
from dlx.data.splits import TEST_SPLIT_SEED, DatasetError
from dlx.data.synthetic import DATA_SEED
from dlx.options import Range
from dlx.tasks import IGNORE, PAD, Target

TEST_SAMPLES = 1000  # every generated task's test split: 1000 samples give acc to about +-1.5% (one std)
# the adding problem's solved threshold: |error| < 0.04, as in Le et al. 2015 and the metric
ADDING_TOLERANCE = 0.04
# the adding problem's trivial score: predicting the mean sum, 1, errs by the difference of two U(0, 1) draws,
# whose variance is 1/6
ADDING_TRIVIAL_MSE = 1 / 6

Length = Annotated[int, Range(ge=2)]
Samples = Annotated[int, Range(ge=10)]


def adding_samples(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n adding-problem samples: x float32 (n, 2, length), row 0 values in U(0, 1), row 1 two markers, one in
    each half of the sequence; y float32 (n,) the sum of the two marked values."""
    values = rng.uniform(0.0, 1.0, size=(n, length))
    half = length // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return np.stack([values, markers], axis=1).astype(np.float32), y.astype(np.float32)


@loader(target=Target.value)
def adding(*, length: Length = 50, n_train: Samples = 10000) -> Source:
    """The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015): a sequence of
    `length` numbers in U(0, 1) and a second channel marking two of them, one in each half; the target is the
    sum of the two marked numbers. Predicting the mean, 1, scores MSE 1/6 (~0.167): the trivial baseline."""
    train = adding_samples(n_train, length, np.random.default_rng(DATA_SEED))
    test = adding_samples(TEST_SAMPLES, length, np.random.default_rng(TEST_SPLIT_SEED))
    return Source(train=train, test=test, num_classes=1, name="adding", target=Target.value,
                  tolerance=ADDING_TOLERANCE)


def symbol_sequences(n: int, *, symbols: int, length: int, min_length: int,
                     rng: np.random.Generator) -> np.ndarray:
    """n sequences of ids 1..symbols, each of a length drawn uniformly in [min_length, length], padded with
    PAD after its end: int64 (n, length)."""
    x = rng.integers(1, symbols + 1, size=(n, length))
    ends = rng.integers(min_length, length + 1, size=n)
    x[np.arange(length)[None, :] >= ends[:, None]] = PAD
    return x.astype(np.int64)


def copy_targets(x: np.ndarray, *, reverse: bool) -> np.ndarray:
    """The target of each padded input row: the row itself (copy) or its symbols in reverse order (reverse),
    IGNORE where the input is padding."""
    lengths = (x != PAD).sum(axis=1)
    if reverse:
        positions = np.arange(x.shape[1])[None, :]
        source = np.clip(lengths[:, None] - 1 - positions, 0, None)
        y = np.take_along_axis(x, source, axis=1)
    else:
        y = x.copy()
    y[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = IGNORE
    return y.astype(np.int64)


def length_problems(options: dict) -> list[str]:
    """The rule joining copy's and reverse's length options (each one's own range is in the signature), checked
    with the configuration before anything is generated."""
    length, shortest = options["length"], options.get("min_length")
    if shortest is not None and shortest > length:
        return [f"dataset.min_length={shortest} is longer than dataset.length={length}: allowed null or 1..{length}"]
    return []


def _symbols_task(name: str, *, reverse: bool, symbols: int, length: int, min_length: int | None,
                  n_train: int) -> Source:
    found = length_problems({"length": length, "min_length": min_length})
    if found:
        raise DatasetError("; ".join(found))
    shortest = length if min_length is None else min_length
    make = lambda n, seed: symbol_sequences(n, symbols=symbols, length=length, min_length=shortest,  # noqa: E731
                                            rng=np.random.default_rng(seed))
    x_test = make(TEST_SAMPLES, TEST_SPLIT_SEED)
    x_train = make(n_train, DATA_SEED)
    # a training sequence that is also a test sequence would be scored on what was learnt by heart (likely
    # only with few symbols and short lengths): such samples leave train
    seen = {row.tobytes() for row in x_test}
    x_train = x_train[np.array([row.tobytes() not in seen for row in x_train], dtype=bool)]
    if not len(x_train):
        raise DatasetError(f"dataset.symbols={symbols}, dataset.length={length}: the fixed test split holds every "
                           "sequence there is, which leaves none to train on: allowed more symbols or a longer length")
    tokens = ("<pad>", *(str(s) for s in range(1, symbols + 1)))
    return Source(train=(x_train, copy_targets(x_train, reverse=reverse)),
                  test=(x_test, copy_targets(x_test, reverse=reverse)), num_classes=symbols + 1, name=name,
                  target=Target.sequence, vocab=symbols + 1, tokens=tokens)


Symbols = Annotated[int, Range(ge=2)]
MinLength = Annotated[int | None, Range(ge=1)]  # null: every sequence is `length` long


@loader(target=Target.sequence, tokens=True)
def copy(*, symbols: Symbols = 8, length: Length = 10, min_length: MinLength = None,
         n_train: Samples = 10000) -> Source:
    """Copy a sequence of ids 1..symbols: the target is the input itself, read after the whole input. With
    min_length each sequence is min_length..length long, padded with 0 (targets with IGNORE) after its end."""
    return _symbols_task("copy", reverse=False, symbols=symbols, length=length, min_length=min_length,
                         n_train=n_train)


@loader(target=Target.sequence, tokens=True)
def reverse(*, symbols: Symbols = 8, length: Length = 10, min_length: MinLength = None,
            n_train: Samples = 10000) -> Source:
    """Reverse a sequence of ids 1..symbols within its length: the first output needs the last input, the
    case attention eases (Bahdanau et al. 2015); padding as in copy."""
    return _symbols_task("reverse", reverse=True, symbols=symbols, length=length, min_length=min_length,
                         n_train=n_train)


copy.option_problems = reverse.option_problems = length_problems

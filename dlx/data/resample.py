"""The splits of one cross-validation fold or one bootstrap member (cv.* and ensemble.* of the config).

A fold: the samples outside the test split are dealt into K stratified folds, one dealing per repeat; fold k is
the validation split and the other folds train. A bootstrap member: the training split is drawn again with
replacement, seeded by the member; validation is unchanged. The test split is never touched by either: it is
carved first, with its own fixed seed (dlx.data.splits.TEST_SPLIT_SEED).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# streams of the split seed, beside plan_splits' own (split_seed, 0) for val and (split_seed, 1) for train_subset
FOLD_STREAM, BOOTSTRAP_STREAM = 2, 3


@dataclass(frozen=True)
class Resample:
    fold: int | None = None  # validate on this fold of `folds`
    folds: int = 5
    repeat: int = 0  # which dealing of the folds
    member: int | None = None  # an ensemble member: with the run's seed, seeds its bootstrap
    bootstrap: bool = False
    seed: int = 0  # the run's trainer.seed

    @classmethod
    def of(cls, cfg: dict[str, Any]) -> Resample | None:
        """From a resolved config's cv and ensemble sections; None when neither applies to this run."""
        cv, ens = cfg.get("cv") or {}, cfg.get("ensemble") or {}
        out = cls(fold=cv.get("fold"), folds=int(cv.get("folds", 5)), repeat=int(cv.get("repeat", 0)),
                  member=ens.get("member"), bootstrap=bool(ens.get("bootstrap")) and ens.get("member") is not None,
                  seed=int((cfg.get("trainer") or {}).get("seed", 0)))
        return out if out.fold is not None or out.bootstrap else None


def stratified_folds(labels: np.ndarray, k: int, seed) -> list[np.ndarray]:
    """Indices of `labels` dealt into k disjoint folds that cover them all, each class spread as evenly as
    integers allow: a class's members, shuffled, are dealt round the folds, starting where the previous class
    stopped, so fold sizes differ by at most one. Each fold's indices are sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    which = np.empty(len(labels), dtype=np.int64)
    start = 0
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        which[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return [np.flatnonzero(which == f) for f in range(k)]


def fold_split(labels: np.ndarray, *, fold: int, folds: int, repeat: int, split_seed: int,
               name: str) -> tuple[np.ndarray, np.ndarray]:
    """(val, train) positions into `labels` for one fold of one repeat."""
    from dlx.data.splits import DatasetError

    if len(labels) < folds:
        raise DatasetError(f"cv.folds={folds}: '{name}' has only {len(labels)} samples outside its test split")
    parts = stratified_folds(labels, folds, (split_seed, FOLD_STREAM, repeat))
    train = np.sort(np.concatenate([p for i, p in enumerate(parts) if i != fold]))
    return parts[fold], train


def bootstrap(train: np.ndarray, *, member: int, split_seed: int, seed: int = 0) -> np.ndarray:
    """A resample of the training indices with replacement, as many as there are, sorted; seeded by the split seed,
    the run's seed and the member, so the members of one seed differ and so do the ensembles of two seeds."""
    rng = np.random.default_rng((split_seed, BOOTSTRAP_STREAM, seed, member))
    return np.sort(train[rng.integers(0, len(train), size=len(train))])


def member_seed(seed: int, member: int | None) -> int:
    """The training seed of ensemble member `member` of a run seeded `seed`: distinct per (seed, member), so
    members differ in their initialisation and batch order, and member m of seed s is not member 0 of another
    seed. A run that is no member keeps its seed."""
    if member is None:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1)[0] & 0x7FFFFFFF)


def problems(cfg: dict[str, Any]) -> list[str]:
    """What the ranges of dlx/config.py cannot say: a fold and a repeat inside what the config deals, and samples
    that can be dealt (windows of a text that do not overlap)."""
    cv, out = cfg.get("cv") or {}, []
    fold, folds = cv.get("fold"), cv.get("folds")
    if isinstance(fold, int) and isinstance(folds, int) and fold >= folds:
        out.append(f"cv.fold={fold} is out of range: allowed 0..{folds - 1} (cv.folds={folds})")
    data = cfg.get("dataset") or {}
    stride, context = data.get("stride"), data.get("context")
    if fold is not None and isinstance(stride, int) and isinstance(context, int) and stride < context:
        # the folds deal windows, not text: a window that overlaps its neighbours would put most of a validation
        # fold's text inside the training windows of the other folds
        out.append(f"dataset.stride={stride} with dataset.context={context}: cross-validation deals the windows "
                   f"into folds, and overlapping windows would train on the validation folds' text: allowed "
                   f"dataset.stride >= dataset.context, or null, with cv")
    repeat, repeats = cv.get("repeat"), cv.get("repeats")
    if isinstance(repeat, int) and isinstance(repeats, int) and repeat >= repeats:
        out.append(f"cv.repeat={repeat} is out of range: allowed 0..{repeats - 1} (cv.repeats={repeats})")
    return out

"""The pruner of a sweep, built from the settings the sweeper records in its Optuna study.

Optuna does not store a study's pruner: every process that loads the study must build the same one.
The sweeper records it in the study's user attrs (`dlx.pruner`); a trial that reports to the study
builds it with `study_pruner`, so the pruner's settings hold in any process.
"""

from __future__ import annotations

from typing import Any

PRUNERS = ("none", "median", "hyperband")


def create_pruner(name: str = "median", *, n_startup_trials: int = 5, warmup_epochs: int = 1,
                  max_epochs: int | None = None):
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":  # stop a trial whose epoch-k objective is worse than the median at epoch k
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=warmup_epochs)
    if name == "hyperband":  # successive halving over brackets: budgets from warmup_epochs to max_epochs
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs),
                                              max_resource=max_epochs or "auto", reduction_factor=3)
    raise ValueError(f"pruner {name}: valid: {', '.join(PRUNERS)}")


def pruner_spec(name: str, *, n_startup_trials: int, warmup_epochs: int, max_epochs: int | None) -> dict[str, Any]:
    return {"name": name, "n_startup_trials": n_startup_trials, "warmup_epochs": warmup_epochs,
            "max_epochs": max_epochs}


def study_pruner(study):
    """The pruner the sweep recorded in `study` (Optuna's default MedianPruner if none is recorded)."""
    spec = dict(study.user_attrs.get("dlx.pruner") or {"name": "median", "n_startup_trials": 5,
                                                        "warmup_epochs": 0})
    return create_pruner(spec.pop("name"), **spec)

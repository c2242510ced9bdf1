"""The sweeper's settings (hydra.sweeper.*), checked with messages that name the key and what is valid."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dlx.config import ConfigError
from dlx.sweep.pruners import PRUNERS

METHODS = ("auto", "grid", "random", "tpe")
DIRECTIONS = ("auto", "maximize", "minimize")
OBJECTIVES = ("val/acc", "val/loss",  # per-epoch validation metrics: what a trial reports and is pruned on
              # the mean over cv.folds fold runs of each trial (dlx.cv.cv_trial): the test split stays unseen
              "cv/val/acc_mean", "cv/val/loss_mean")
DEFAULT_N_TRIALS = 20  # random and tpe without hydra.sweeper.n_trials


@dataclass
class SweepSettings:
    method: str = "auto"
    n_trials: int | None = None
    objective: str = "val/acc"
    direction: str = "auto"
    pruner: str = "none"
    n_startup_trials: int = 5
    warmup_epochs: int = 1
    seed: int = 0
    storage: str | None = None
    study_name: str | None = None
    batch_size: int | None = None
    resume: bool = False
    params: dict[str, str] | None = None

    @classmethod
    def create(cls, raw: Any) -> SweepSettings:
        """From Hydra's hydra.sweeper node (or the keyword arguments Hydra instantiates the plugin with)."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(raw, DictConfig):
            raw = OmegaConf.to_container(raw, resolve=True)
        raw = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v
               for k, v in dict(raw).items() if k != "_target_"}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"hydra.sweeper.{unknown[0]}: no such sweeper setting; valid: {', '.join(sorted(names))}")
        settings = cls(**raw)
        problems = settings.problems()
        if problems:
            raise ConfigError("invalid sweep:\n  " + "\n  ".join(problems))
        return settings

    def problems(self) -> list[str]:
        out = []
        if self.method not in METHODS:
            out.append(f"hydra.sweeper.method={self.method}: valid: {', '.join(METHODS)}")
        if self.objective.startswith(("test/", "cv/test/")):
            out.append(f"hydra.sweeper.objective={self.objective}: a sweep must not choose on the test split "
                       f"(the test metrics would no longer estimate unseen data); use a validation metric: "
                       f"{', '.join(OBJECTIVES)}")
        elif self.objective not in OBJECTIVES:
            out.append(f"hydra.sweeper.objective={self.objective}: valid: {', '.join(OBJECTIVES)}")
        if self.direction not in DIRECTIONS:
            out.append(f"hydra.sweeper.direction={self.direction}: valid: {', '.join(DIRECTIONS)}")
        if self.objective.startswith("cv/") and self.pruner != "none":
            out.append(f"hydra.sweeper.pruner={self.pruner}: a K-fold objective ({self.objective}) is known only "
                       f"after every fold has run, so nothing prunes it: allowed hydra.sweeper.pruner=none")
        elif self.pruner not in PRUNERS:
            out.append(f"hydra.sweeper.pruner={self.pruner}: valid: {', '.join(PRUNERS)}")
        for key in ("n_trials", "batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                out.append(f"hydra.sweeper.{key}={value}: must be >= 1 (or null)")
        if self.n_startup_trials < 0 or self.warmup_epochs < 0:
            out.append("hydra.sweeper.n_startup_trials and warmup_epochs must be >= 0")
        if self.resume and not self.study_name:
            out.append("hydra.sweeper.resume=true needs hydra.sweeper.study_name (use dlx sweep --resume)")
        return out

    @property
    def resolved_direction(self) -> str:
        if self.direction != "auto":
            return self.direction
        from dlx.tasks import maximised

        return "maximize" if maximised(self.objective) else "minimize"


def resolve_method(method: str, space) -> str:
    if method == "auto":
        return "grid" if space.discrete else "tpe"
    if method == "grid" and not space.discrete:
        continuous = ", ".join(a.show() for a in space.axes if not a.discrete)
        raise ConfigError(f"hydra.sweeper.method=grid needs discrete values, but {continuous} is continuous: "
                          f"use hydra.sweeper.method=random or tpe, or list values (a,b,c) or range(start,stop,step)")
    return method


def plan_total(method: str, space, n_trials: int | None) -> int:
    if method == "grid":
        return min(space.grid_size, n_trials) if n_trials else space.grid_size
    return n_trials or DEFAULT_N_TRIALS


def default_storage() -> str:
    return f"sqlite:///{Path('outputs').resolve() / 'optuna.db'}"

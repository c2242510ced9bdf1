"""The `dlx` Hydra sweeper: its typed config (hydra.sweeper.*) and the plugin class.

Hydra imports every module under hydra_plugins on each start, `dlx train` included, so this module
imports nothing heavy: Optuna and MLflow are imported when a sweep starts. Hydra only instantiates
plugin classes defined under hydra_plugins, hence the thin class here delegating to dlx.sweep.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class DlxSweeperConf:
    _target_: str = "hydra_plugins.dlx_sweeper.dlx_sweeper.DlxSweeper"
    # grid (every combination), random or tpe (Bayesian); auto: grid unless an interval() is swept
    method: str = "auto"
    # random/tpe: trials to run (default 20); grid: at most this many of the combinations
    n_trials: int | None = None
    # a validation metric of the trials' last epoch; test/* would leak the test split into the choice;
    # cv/val/acc_mean or cv/val/loss_mean: each trial runs cv.folds folds and is judged on their mean
    objective: str = "val/acc"
    direction: str = "auto"  # auto: maximize accuracies, minimize losses
    pruner: str = "none"  # none, median, hyperband: stop unpromising trials from their per-epoch objective
    # trials before the pruner and TPE act on what they have seen (TPE samples at random before)
    n_startup_trials: int = 5
    warmup_epochs: int = 1  # epochs every trial runs before it may be pruned
    seed: int = 0  # of the sampler
    # the Optuna study storage (null: sqlite:///<cwd>/outputs/optuna.db) and study name (null: generated)
    storage: str | None = None
    study_name: str | None = None
    # trials asked and launched at once (null: the launcher's n_jobs, else 1)
    batch_size: int | None = None
    resume: bool = False  # set by `dlx sweep --resume`: continue the study named by study_name
    # the search space as overrides, e.g. {optimizer: "sgd,adam", seed: "0,1,2"}; the command line wins
    params: dict[str, str] = field(default_factory=dict)


SETTINGS = [name for name in DlxSweeperConf.__dataclass_fields__ if name != "_target_"]

ConfigStore.instance().store(group="hydra/sweeper", name="dlx", node=DlxSweeperConf, provider="dlx")


class DlxSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from dlx.sweep.settings import SweepSettings

        self.settings = SweepSettings.create(settings)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None  # dlx sweep's carries its command line and outcome
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config, self.task_function = hydra_context, config, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        from dlx.sweep.sweeper import run_sweep

        return run_sweep(self, list(arguments))

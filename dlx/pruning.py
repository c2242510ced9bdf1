"""Reporting a trial's per-epoch objective to its Optuna study, and stopping when it is pruned."""

from __future__ import annotations

from dlx.engine import Callback
from dlx.run import Pruned


class PruningCallback(Callback):
    """Reports `objective` after every epoch; raises Pruned when the study's pruner says stop."""

    def __init__(self, *, study: str, storage: str, number: int, objective: str = "val/acc",
                 direction: str = "maximize", prune: bool = True):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.objective, self.prune = objective, prune
        from dlx.sweep.pruners import study_pruner
        from dlx.sweep.study import storage_for

        backend = storage_for(storage)  # the storage's public API names the trial's id
        loaded = optuna.load_study(study_name=study, storage=backend)
        loaded.pruner = study_pruner(loaded)  # Optuna does not store a study's pruner; the sweep records it
        trial_id = backend.get_trial_id_from_study_id_trial_number(backend.get_study_id_from_name(study), number)
        self.trial = optuna.trial.Trial(loaded, trial_id)

    def on_epoch_end(self, trainer, state, metrics):
        value = metrics.get(self.objective)
        if value is None:
            raise KeyError(f"trial.objective={self.objective} is not among this run's epoch metrics: "
                           f"{', '.join(sorted(metrics))}")
        self.trial.report(float(value), state.epoch)
        if self.prune and self.trial.should_prune():
            raise Pruned(f"epoch {state.epoch}: {self.objective}={value:.4f}")

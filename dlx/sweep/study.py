"""The sweep's Optuna study: created or loaded from its storage, and read back as one row per trial.

Each trial carries user attrs the sweeper sets: `dlx.overrides` (what it ran with), `dlx.outcome`
(ok, failed, pruned, interrupted), `dlx.reason`, `dlx.run_id`, `dlx.seconds` and `dlx.metrics`
(its final metrics). The study carries the sweep: `dlx.overrides` (the definition `--resume` replays),
`dlx.parent_run_id`, `dlx.sweep_dir`, `dlx.state` (running, interrupted, finished) and `dlx.pruner`.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from typing import Any

from dlx.config import ConfigError

DONE = ("ok", "failed", "pruned")  # outcomes that count; an interrupted trial is run again on resume
METRICS_KEPT = ("val/acc", "val/loss", "train/loss", "train/acc", "test/acc", "test/loss", "epochs")


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_for(url: str):
    """SQLite waits for a busy database instead of failing: trials in several processes write to it."""
    import optuna

    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.get_storage(url)


def settle_interrupted(study, storage_url: str, reason: str, completed: dict[int, tuple[float, dict]] | None = None
                       ) -> list[int]:
    """Settle the trials a crashed or stopped sweep left RUNNING; returns their numbers. Those in `completed`
    (number -> (objective value, user attrs)) finished their run although the sweep never heard it (it died
    as they ended): told COMPLETE with that value, not run again. The others are told FAIL as interrupted
    (run again on resume). A Study sets user attrs only on the trials it hands out, so the attrs of these go
    through the storage's own public API."""
    from optuna.trial import TrialState

    # a grid trial is enqueued, then asked for: a sweep stopped in between left it WAITING, and the resumed sweep's
    # first ask would hand it out beside the same combination enqueued anew (it ran twice); asked for now, the
    # oldest first as Optuna hands them out, it is settled as interrupted below
    for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        study.ask()
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not stale:
        return []
    completed = completed or {}
    storage = storage_for(storage_url)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        value, attrs = completed.get(t.number, (None, {"dlx.outcome": "interrupted", "dlx.reason": reason}))
        for key, attr in attrs.items():
            storage.set_trial_user_attr(trial_id, key, attr)
        if value is None:
            study.tell(t.number, state=TrialState.FAIL)
        else:
            study.tell(t.number, value, state=TrialState.COMPLETE)
    return [t.number for t in stale]


def study_names(storage_url: str) -> list[Any]:
    """Summaries of every study in the storage, newest first ([] when the storage does not exist)."""
    import optuna

    quiet_optuna()
    if storage_url.startswith("sqlite:///") and not _sqlite_exists(storage_url):
        return []
    summaries = optuna.study.get_all_study_summaries(storage_for(storage_url), include_best_trial=False)
    return sorted(summaries, key=lambda s: s.user_attrs.get("dlx.started", ""), reverse=True)


def _sqlite_exists(url: str) -> bool:
    from pathlib import Path

    return Path(url[len("sqlite:///"):]).is_file()


def create_study(storage_url: str, name: str | None, prefix: str, *, direction: str, sampler, pruner):
    """A new study; a generated name gets a suffix when a study of that name exists."""
    import optuna

    quiet_optuna()
    storage = storage_for(storage_url)
    base = name or f"{prefix}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    for attempt in range(100):
        candidate = base if attempt == 0 else f"{base}-{attempt + 1}"
        try:
            return optuna.create_study(study_name=candidate, storage=storage, direction=direction,
                                       sampler=sampler, pruner=pruner)
        except optuna.exceptions.DuplicatedStudyError:
            if name:
                raise ConfigError(f"hydra.sweeper.study_name={name}: a study of that name exists in {storage_url}; "
                                  f"continue it with: dlx sweep --resume {name}") from None
    raise ConfigError(f"cannot find a free study name near {base}")


def load_study(storage_url: str, name: str, *, sampler, pruner):
    import optuna

    quiet_optuna()
    try:
        return optuna.load_study(study_name=name, storage=storage_for(storage_url), sampler=sampler, pruner=pruner)
    except KeyError:
        raise ConfigError(f"no study {name} in {storage_url}") from None


def make_sampler(method: str, *, seed: int, n_startup_trials: int, batch_size: int):
    import optuna

    if method == "tpe":  # constant_liar: trials asked together do not all land on the same point
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                          constant_liar=batch_size > 1)
    return optuna.samplers.RandomSampler(seed=seed)  # grid trials arrive with every param fixed


def outcome_of(trial) -> str:
    from optuna.trial import TrialState

    if trial.state == TrialState.COMPLETE:
        return "ok"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("dlx.outcome", "failed")
    return "interrupted"  # RUNNING or WAITING: its sweep ended without telling


def summarize(trials, *, axes: list[str], objective: str, direction: str, runs: dict) -> tuple:
    """(rows, columns, counts, best): one row per trial, in trial order."""
    rows, best = [], None
    sign = 1 if direction == "maximize" else -1
    for t in sorted(trials, key=lambda t: t.number):
        outcome = outcome_of(t)
        run = runs.get(t.number)
        metrics = dict(t.user_attrs.get("dlx.metrics") or {})
        if run is not None:
            metrics.update({k: v for k, v in run.data.metrics.items() if k in METRICS_KEPT and k not in metrics})
        value = t.value if outcome == "ok" else _last_intermediate(t) if outcome == "pruned" else None
        row = {"trial": t.number, **{a: _show(t.params.get(a)) for a in axes}, "outcome": outcome,
               objective: value, "test/acc": metrics.get("test/acc"),
               "run_id": t.user_attrs.get("dlx.run_id") or (run.info.run_id if run is not None else None),
               "seconds": t.user_attrs.get("dlx.seconds"), "reason": t.user_attrs.get("dlx.reason", "")}
        rows.append(row)
        if outcome == "ok" and value is not None and (best is None or sign * (value - best["value"]) > 0):
            best = {"trial": t.number, "value": value, "run_id": row["run_id"],
                    "params": {a: row[a] for a in axes}, "overrides": t.user_attrs.get("dlx.overrides", []),
                    **{k: metrics[k] for k in ("test/acc", "test/loss") if k in metrics}}
    counts = {k: sum(r["outcome"] == k for r in rows) for k in DONE}
    columns = ["trial", *axes, "outcome", objective, "test/acc", "run_id", "seconds", "reason"]
    return rows, columns, counts, best


def _last_intermediate(trial) -> float | None:
    steps = trial.intermediate_values
    return float(steps[max(steps)]) if steps else None


def _show(value: Any) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return "" if value is None else str(value)

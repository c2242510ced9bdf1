"""Driving a sweep: ask the Optuna study for trials, launch them through Hydra's launcher, tell the
study how each ended, and keep the MLflow parent run and the summary up to date. Trials go in batches
(Hydra's launcher interface), or one at a time to whichever worker is free when the launcher can
(dlx_local's pool).

A trial that raises, hits a non-finite loss or dies is told FAIL and the sweep goes on; a pruned trial
is told PRUNED. Ctrl-C or SIGTERM stops the sweep: the trials it cut short are marked interrupted and
are run again by `dlx sweep --resume`, which skips every trial that finished (ok, failed or pruned).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlx.redact import command_line
from dlx.sweep.checks import key_of
from dlx.sweep.hygiene import interrupt_code, rss_mb, signals_ignored
from dlx.sweep.progress import SweepProgress, TrialRecord, announce, report
from dlx.sweep.resume import LOCATORS
from dlx.sweep.settings import default_storage, plan_total, resolve_method
from dlx.sweep.space import parse_space, quote
from dlx.sweep.study import DONE, METRICS_KEPT, outcome_of, summarize
from dlx.sweep.tracking import TRIAL_TAG, ParentRun, check_parent


def run_sweep(sweeper, arguments: list[str]) -> dict:
    """Run the sweep and return its outcome (code, counts, study, parent_run_id, sweep_dir, best); Hydra
    drops that return value, so it also goes to the task function's `outcome` when it has one (SweepTask)."""
    from dlx.config import ConfigError

    try:
        result = Sweep(sweeper, arguments).run()
    except ConfigError as exc:
        print(f"dlx: error: {exc}", file=sys.stderr)
        result = {"code": 2}
    outcome = getattr(sweeper.task_function, "outcome", None)
    if isinstance(outcome, dict):
        outcome.update(result)
    return result


class Sweep:
    def __init__(self, sweeper, arguments: list[str]):
        self.s, self.cfg, self.launcher = sweeper.settings, sweeper.config, sweeper.launcher
        self.command = getattr(sweeper.task_function, "command", None)  # the user's words, from dlx sweep
        # dlx cv and dlx ensemble: the parent's own metrics from its children (dlx.cv, dlx.ensemble)
        self.aggregate = getattr(sweeper.task_function, "aggregate", None)
        params = [f"{k}={v}" for k, v in (self.s.params or {}).items()]
        self.space = parse_space(params + arguments, sweeper.hydra_context.config_loader)
        self.axes = [a.key for a in self.space.axes]
        self.method = resolve_method(self.s.method, self.space)
        self.objective, self.direction = self.s.objective, self.s.resolved_direction
        self.total = plan_total(self.method, self.space, self.s.n_trials)
        self.storage = self.s.storage or default_storage()
        self.sweep_dir = Path(str(self.cfg.hydra.sweep.dir))
        jobs = OmegaConf.select(self.cfg, "hydra.launcher.n_jobs", default=None)
        jobs = (os.cpu_count() or 1) if jobs == -1 else jobs
        self.batch_size = self.s.batch_size or (jobs if isinstance(jobs, int) and jobs > 0 else 1)
        self.definition = [o for o in [*self.cfg.hydra.overrides.task, *self.cfg.hydra.overrides.hydra]
                           if key_of(o) not in LOCATORS]
        self.study = self.parent = None
        self.todo: list[dict] | int = 0
        self.in_flight: dict[int, tuple[Any, float]] = {}  # trial number -> (trial, start), when streaming
        self.started = time.monotonic()

    # ------------------------------------------------------------------------------------------- start
    def open(self) -> None:
        from dlx.sweep.pruners import create_pruner, pruner_spec
        from dlx.sweep.study import create_study, load_study, make_sampler

        epochs = OmegaConf.select(self.cfg, "trainer.epochs", default=None)
        spec = pruner_spec(self.s.pruner, n_startup_trials=self.s.n_startup_trials,
                           warmup_epochs=self.s.warmup_epochs, max_epochs=epochs)
        pruner = create_pruner(**spec)
        if self.s.resume:
            self.study = load_study(self.storage, self.s.study_name, sampler=None, pruner=pruner)
            parent = self.study.user_attrs.get("dlx.parent_run_id")
            if parent is not None and self.cfg.tracking.enabled:
                check_parent(self.cfg.tracking, parent, self.study.study_name)
            seed = self.s.seed + len(self.study.trials)  # a resumed sampler must not replay the first draws
            self.study.sampler = make_sampler(self.method, seed=seed, n_startup_trials=self.s.n_startup_trials,
                                              batch_size=self.batch_size)
            self.sweep_dir = Path(self.study.user_attrs.get("dlx.sweep_dir", self.sweep_dir))
            # what it runs now: the same, or more members of an ensemble (dlx.sweep.organise)
            self.study.set_user_attr("dlx.overrides", self.definition)
            self.study.set_user_attr("dlx.total", self.total)
        else:
            sampler = make_sampler(self.method, seed=self.s.seed, n_startup_trials=self.s.n_startup_trials,
                                   batch_size=self.batch_size)
            # a study's name, else the command's: sweep, cv or ensemble
            prefix = OmegaConf.select(self.cfg, "study.name", default=None) or self._command()[1]
            self.study = create_study(self.storage, self.s.study_name, prefix, direction=self.direction,
                                      sampler=sampler, pruner=pruner)
            attrs = {"dlx.overrides": self.definition, "dlx.command": command_line(self._command()),
                     "dlx.method": self.method, "dlx.objective": self.objective, "dlx.total": self.total,
                     "dlx.sweep_dir": str(self.sweep_dir.resolve()), "dlx.started": dt.datetime.now().isoformat(),
                     "dlx.pruner": spec}
            for k, v in attrs.items():
                self.study.set_user_attr(k, v)
        self.study.set_user_attr("dlx.state", "running")
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, self.sweep_dir / "multirun.yaml")
        self.parent = ParentRun.open(self.cfg.tracking, run_id=self.study.user_attrs.get("dlx.parent_run_id"),
                                     name=self.study.study_name, tags=self._parent_tags(),
                                     params=self._parent_params(), spool_dir=self.sweep_dir)
        if self.parent is not None:
            self.study.set_user_attr("dlx.parent_run_id", self.parent.run_id)
        self._settle_stale()
        self.todo = self._remaining()

    def _command(self) -> list[str]:
        return self.command or ["dlx", "sweep", *self.definition]

    def _parent_tags(self) -> dict[str, Any]:
        from dlx.run import git_info

        tags = {"dlx.command": command_line(self._command()), "dlx.sweep.study": self.study.study_name,
                "dlx.sweep.storage": self.storage, "dlx.sweep.dir": str(self.sweep_dir.resolve()),
                "mlflow.source.name": "dlx sweep", "mlflow.source.type": "LOCAL", **git_info()}
        study = OmegaConf.select(self.cfg, "study", default=None)
        if study is not None and study.name:
            tags.update({"dlx.study": study.name, "dlx.study.statement": study.statement,
                         "dlx.study.factor": study.factor, "dlx.study.metrics": ",".join(study.metrics),
                         "dlx.study.levels": ",".join(map(str, study.levels)), "dlx.study.expected": study.expected})
        return tags

    def _parent_params(self) -> dict[str, Any]:
        params = {"sweep.method": self.method, "sweep.n_trials": self.total, "sweep.objective": self.objective,
                  "sweep.direction": self.direction, "sweep.pruner": self.s.pruner, "sweep.seed": self.s.seed,
                  "sweep.batch_size": self.batch_size, "sweep.fixed": " ".join(self.space.fixed)}
        params.update({f"sweep.param.{a.key.lstrip('+~')}": a.spec for a in self.space.axes})
        return params

    def _settle_stale(self) -> None:
        """Trials a crashed or stopped sweep left open. One whose run FINISHED with a finite objective is
        told COMPLETE with it: a SIGKILL of the sweep as a trial ended left a whole result that running the
        trial again would count twice. The rest are told FAIL as interrupted (run again), and their MLflow
        runs, if still RUNNING, closed as FAILED with the reason."""
        from dlx.sweep.study import settle_interrupted

        runs = self.parent.children() if self.parent else {}
        completed = {}
        for number, run in runs.items():
            value = run.data.metrics.get(self.objective)
            if run.info.status == "FINISHED" and value is not None and math.isfinite(value):
                attrs = {"dlx.outcome": "ok", "dlx.run_id": run.info.run_id,
                         "dlx.seconds": (run.info.end_time - run.info.start_time) / 1000,
                         "dlx.metrics": {k: v for k, v in run.data.metrics.items() if k in METRICS_KEPT}}
                completed[number] = (float(value), attrs)
        settle_interrupted(self.study, self.storage, "the sweep ended before the trial", completed)
        for run in runs.values():
            if run.info.status == "RUNNING":
                self.parent.close_dangling(run, "its process ended without closing the run (sweep stopped)")

    def _remaining(self) -> list[dict] | int:
        trials = self.study.get_trials(deepcopy=False)
        done = [t for t in trials if outcome_of(t) in DONE]
        if self.method != "grid":
            return max(0, self.total - len(done))
        finished = {self._grid_key(t.params) for t in done}
        plan = [c for _, c in zip(range(self.total), self.space.grid())]
        return [c for c in plan if self._grid_key(c) not in finished]

    def _grid_key(self, params: dict) -> tuple:
        return tuple(str(params.get(k)) for k in self.axes)

    # ------------------------------------------------------------------------------------------- loop
    def run(self) -> dict:
        from dlx.run import sigterm_as_interrupt

        with sigterm_as_interrupt():  # SIGTERM stops the sweep like Ctrl-C, as it stops a run
            self.open()
            left = len(self.todo) if isinstance(self.todo, list) else self.todo
            progress = SweepProgress(total=self.total, done=self.total - left, objective=self.objective,
                                     direction=self.direction)
            announce(self.study.study_name, self.method, left=left, total=self.total, objective=self.objective,
                     direction=self.direction, batch_size=self.batch_size, pruner=self.s.pruner,
                     resumed=self.s.resume, parent_run_id=self.parent.run_id if self.parent else None)
            progress.start(best=self._best_value())
            interrupted, asked = None, []
            try:
                if self._streams():
                    interrupted = self._stream(progress)
                else:
                    while (asked := self._ask()):
                        interrupted = self._launch(asked, progress)
                        if interrupted:
                            break
            except KeyboardInterrupt as exc:
                interrupted = interrupt_code(exc)
                with signals_ignored():  # a second Ctrl-C must not cut the bookkeeping short
                    self._abandon([*asked, *(t for t, _ in self.in_flight.values())])
            finally:
                progress.close()
            with signals_ignored():
                return self.finish(interrupted)

    def _abandon(self, trials: list) -> None:
        """Trials launched but never told (the sweep stopped under them): interrupted, run again on resume."""
        from optuna.trial import TrialState

        running = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        for t in trials:
            if t.number in running:
                self._tell(t, TrialRecord(t.number, "interrupted", reason="the sweep was stopped"), None)

    def _ask(self, n: int | None = None) -> list:
        """The next trials (a batch, or `n`), asked of the study and tagged with their overrides."""
        n = n or self.batch_size
        if isinstance(self.todo, int):
            k = min(n, self.todo)
            self.todo -= k
            trials = [self.study.ask(self.space.distributions()) for _ in range(k)]
        else:
            trials = []
            for combo in self.todo[:n]:
                self.study.enqueue_trial(combo)
                trials.append(self.study.ask(self.space.distributions()))
            asked = {self._grid_key(t.params) for t in trials}
            self.todo = [c for c in self.todo if self._grid_key(c) not in asked]
        for t in trials:
            t.set_user_attr("dlx.overrides", self.space.trial_overrides(t.params))
        return trials

    def _launch(self, trials: list, progress: SweepProgress) -> int | None:
        jobs = [[*self.space.trial_overrides(t.params), *self._internal(t.number)] for t in trials]
        start = time.monotonic()
        returns = list(self.launcher.launch(jobs, initial_job_idx=trials[0].number))
        elapsed = (time.monotonic() - start) / max(1, len(trials))
        runs = self.parent.children() if self.parent else {}
        interrupted = None
        for i, t in enumerate(trials):
            ret = returns[i] if i < len(returns) else None
            interrupted = self._record(t, ret, runs.get(t.number), elapsed, progress) or interrupted
        return interrupted

    def _record(self, trial, ret, run, seconds: float, progress: SweepProgress) -> int | None:
        """Settle one trial and show it; 130/143 when the trial was interrupted by Ctrl-C/SIGTERM."""
        record = self._settle(trial, ret, run, seconds)
        progress.trial(record)
        return record.code if record.outcome == "interrupted" else None

    def _streams(self) -> bool:
        """Whether trials go one at a time to whichever worker is free (a launcher with launch_stream,
        i.e. dlx_local's pool) rather than in batches that wait for their slowest trial; setting
        hydra.sweeper.batch_size asks for batches."""
        return (not self.s.batch_size and self.batch_size > 1 and getattr(self.launcher, "n_jobs", 1) > 1
                and callable(getattr(self.launcher, "launch_stream", None)))

    def _stream(self, progress: SweepProgress) -> int | None:
        """Keep every worker busy: ask the study for a trial whenever one is free, tell it each result as
        it arrives (so TPE and the pruners learn from it at once). Returns 130/143 when a trial was
        interrupted, after the trials in flight came back."""
        stop: list[int] = []

        def next_job():
            if stop or not (asked := self._ask(1)):
                return None
            trial = asked[0]
            self.in_flight[trial.number] = (trial, time.monotonic())
            return trial.number, [*self.space.trial_overrides(trial.params), *self._internal(trial.number)]

        def on_done(number: int, ret) -> None:
            trial, start = self.in_flight.pop(number)
            run = self.parent.child(number) if self.parent else None
            code = self._record(trial, ret, run, time.monotonic() - start, progress)
            if code and not stop:
                stop.append(code)

        self.launcher.launch_stream(next_job, on_done)
        return stop[0] if stop else None

    def _internal(self, number: int) -> list[str]:
        """What the sweeper adds to every trial: nesting under the parent run, the trial tag, and the
        study to report per-epoch objectives to when a pruner is on."""
        out = [f"++tracking.tags.{TRIAL_TAG}={number}", f"++tracking.tags.sweep={quote(self.study.study_name)}"]
        if self.parent is not None:
            out.append(f"tracking.parent_run_id={self.parent.run_id}")
        if self.objective.startswith("cv/"):  # the trial runs its folds itself (dlx.cv.cv_trial)
            out.append(f"trial.objective={self.objective}")
        if self.s.pruner != "none":
            out += [f"trial.study={quote(self.study.study_name)}", f"trial.storage={quote(self.storage)}",
                    f"trial.number={number}", f"trial.objective={self.objective}",
                    f"trial.direction={self.direction}", "trial.prune=true"]
        return out

    def _settle(self, trial, ret, run, elapsed: float) -> TrialRecord:
        from hydra.core.utils import JobStatus

        from dlx.sweep.hygiene import classify, job_error

        params = {k.lstrip("+~"): str(v) for k, v in trial.params.items()}
        record = TrialRecord(trial.number, "failed", params=params, seconds=elapsed,
                             run_id=run.info.run_id if run is not None else None)
        if run is not None and run.info.end_time:
            record.seconds = (run.info.end_time - run.info.start_time) / 1000
        metrics = None
        if ret is None:
            record.reason = "the launcher returned no result for this trial"
        elif ret.status == JobStatus.COMPLETED:
            metrics = ret.return_value if isinstance(ret.return_value, dict) else {}
            value = metrics.get(self.objective)
            if isinstance(value, (int, float)) and math.isfinite(value):
                record.outcome, record.value = "ok", float(value)
            else:
                record.reason = f"no finite {self.objective} among the trial's final metrics"
        else:
            record.outcome, record.reason, record.code = classify(job_error(ret))
        if ret is not None and ret.hydra_cfg is not None:
            out = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None)
            record.log = str(Path(out) / f"{ret.hydra_cfg.hydra.job.name}.log") if out else ""
        if record.outcome == "pruned":
            steps = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number).intermediate_values
            record.value = float(steps[max(steps)]) if steps else None
        self._tell(trial, record, metrics)
        if run is not None and run.info.status == "RUNNING" and record.outcome != "ok":
            reason = record.reason or "its process ended without closing the run"
            self.parent.close_dangling(run, reason, "KILLED" if record.outcome == "interrupted" else "FAILED")
        return record

    def _tell(self, trial, record: TrialRecord, metrics: dict | None) -> None:
        from optuna.trial import TrialState

        attrs = {"dlx.outcome": record.outcome, "dlx.reason": record.reason[:2000], "dlx.seconds": record.seconds,
                 "dlx.run_id": record.run_id, "dlx.log": record.log, "dlx.sweeper_rss_mb": rss_mb()}
        if metrics:
            attrs["dlx.metrics"] = {k: float(v) for k, v in metrics.items()
                                    if k in METRICS_KEPT and isinstance(v, (int, float))}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        state = {"ok": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(record.outcome, TrialState.FAIL)
        self.study.tell(trial, record.value if state == TrialState.COMPLETE else None, state=state)

    # ------------------------------------------------------------------------------------------- end
    def finish(self, interrupted: int | None) -> dict:
        trials = self.study.get_trials(deepcopy=False)
        runs = self.parent.children() if self.parent else {}
        for run in runs.values():  # a trial cut short whose process could not close its run
            if run.info.status == "RUNNING":
                self.parent.close_dangling(run, "the sweep stopped before the trial ended",
                                           "KILLED" if interrupted else "FAILED")
        rows, columns, counts, best = summarize(trials, axes=self.axes, objective=self.objective,
                                                direction=self.direction, runs=runs)
        left = max(0, self.total - sum(counts.values()))
        status = "KILLED" if interrupted else "FAILED" if counts["failed"] else "FINISHED"
        self.study.set_user_attr("dlx.state", "interrupted" if interrupted or left else "finished")
        from dlx.sweep.tracking import write_summary

        if self.parent is not None:
            extra, files = self.aggregate(self.parent, runs) if callable(self.aggregate) else ({}, [])
            self.parent.finish(rows=rows, columns=columns, counts={**counts, "trials": len(rows)}, best=best,
                               objective=self.objective, status=status, sweep_dir=self.sweep_dir, extra=extra,
                               files=files)
        else:
            write_summary(rows, columns, self.sweep_dir)
        code = interrupted or (1 if counts["failed"] else 0)
        report(self.study.study_name, counts, left=left, best=best, interrupted=interrupted,
               objective=self.objective, seconds=time.monotonic() - self.started,
               parent_run_id=self.parent.run_id if self.parent else None, sweep_dir=self.sweep_dir)
        return {"code": code, "counts": counts, "left": left, "study": self.study.study_name,
                "parent_run_id": self.parent.run_id if self.parent else None, "sweep_dir": str(self.sweep_dir),
                "best": best}

    def _best_value(self) -> float | None:
        values = [t.value for t in self.study.get_trials(deepcopy=False) if outcome_of(t) == "ok"]
        if not values:
            return None
        return max(values) if self.direction == "maximize" else min(values)

"""`dlx sweep` and `dlx study`: read the command, check the sweep (dlx.sweep.checks) or find the one to
resume (dlx.sweep.resume), then hand it to Hydra's multirun with the dlx sweeper."""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec

from dlx.sweep.checks import key_of, list_studies, prepare
from dlx.sweep.resume import resume_overrides

SWEEP_USAGE = """usage: dlx sweep [override ...] [hydra.sweeper.SETTING=value ...] [--config-dir DIR]
                 [--resume [STUDY] [--trust-stored]]

Runs one trial per combination (grid) or per sample (random, tpe) of the swept overrides; every
trial is a `dlx train` run nested under one MLflow parent run that records the sweep and its summary.

sweeping, in Hydra's override grammar:
  optimizer=sgd,adam seed=0,1,2          every combination (grid)
  model.width=range(16,129,16)           16, 32, ..., 128
  optimizer.lr=choice(1e-3,1e-2)         a list of values
  optimizer.lr=tag(log,interval(1e-5,1)) a continuous range (log scale): random or tpe search
  +study=optimizers                      a ready-made study (dlx study lists them)
  model.hidden=32,64 --config-dir ./conf your own options (DIR/<group>/<option>.yaml) and studies

hydra.sweeper settings:
  method=grid|random|tpe       default: grid, or tpe when an interval() is swept
  n_trials=N                   random/tpe: trials to run (default 20); grid: at most N combinations
  objective=val/acc|val/loss   the last epoch's validation metric (test/* is refused); cv/val/acc_mean or
                               cv/val/loss_mean: each trial runs cv.folds folds, judged on their mean (dlx cv --help)
  direction=auto|maximize|minimize
  pruner=none|median|hyperband stop trials whose per-epoch objective falls behind
  n_startup_trials=5 warmup_epochs=1 seed=0
  batch_size=N                 launch trials in batches of N (default: with dlx_local's workers, each
                               free worker gets the next trial; other launchers: batches of n_jobs, else 1)
  storage=URL study_name=NAME  the Optuna study (default sqlite:///<cwd>/outputs/optuna.db, generated name)
  params.KEY=VALUE             the search space in config; the command line wins

--resume [STUDY]   continue a stopped sweep: finished trials are not run again and new trials nest
                   under the same parent run. STUDY defaults to the latest unfinished sweep (the
                   one with the same overrides when they are given). Only hydra/launcher,
                   hydra.launcher.*, hydra.sweeper.batch_size and hydra.sweeper.storage may change.
                   The stored overrides pass the checks typed ones do.
--trust-stored     with --resume: also replay stored overrides that name code to run (a _target_, a
                   --config-dir, hydra.launcher.setup); without it they are refused, since anyone who can write
                   the study storage could have put them there.

HYDRA_ALLOWED

Trials default to trainer.progress=none and log to their own train.log under outputs/sweeps/.
Exit code: 0 when every trial ended ok or pruned, 1 when one failed, 2 for a bad sweep, 130/143 when
stopped by Ctrl-C or SIGTERM."""


def error(message: str, code: int = 2) -> int:
    print(f"dlx: error: {message}", file=sys.stderr)
    return code


def sweep_main(args: list[str]) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from dlx.config import ConfigError

    if {"-h", "--help"}.intersection(args):
        import textwrap

        from dlx.compose import HYDRA_ALLOWED

        allowed = f"Hydra's own settings, as in dlx train: only {', '.join(HYDRA_ALLOWED)}; any other is refused."
        print(SWEEP_USAGE.replace("HYDRA_ALLOWED", textwrap.fill(allowed, 104)))
        return 0
    overrides, resume, name, trust = [], False, None, False
    try:
        from dlx.compose import expand_config_dir

        rest = [a for a in expand_config_dir(args) if a not in ("-m", "--multirun")]  # a sweep is a multirun
    except ConfigError as exc:
        return error(str(exc))
    for i, a in enumerate(rest):
        if a == "--resume":
            resume = True
        elif a == "--trust-stored":
            trust = True
        elif a.startswith("-"):
            return error(f"dlx sweep: unknown option {a}; see dlx sweep --help")
        elif resume and rest[i - 1] == "--resume" and "=" not in a:
            name = a
        else:
            overrides.append(a)
    try:
        if trust and not resume:
            raise ConfigError("--trust-stored: only with --resume, which replays a study's stored overrides")
        if resume:
            overrides = resume_overrides(name, overrides, trust=trust)
        from dlx.components import expand_targets

        overrides = expand_targets(overrides)
        _start_workers_early(overrides)
        argv = prepare(overrides)
    except ConfigError as exc:
        return error(str(exc))
    return run_hydra(argv, shown=args)


def _start_workers_early(overrides: list[str]) -> None:
    """With the worker pool asked for on the command line (hydra.launcher.n_jobs=N, N > 1), start what
    its workers fork from now (dlx.sweep.start: the forkserver): its imports of torch and MLflow overlap
    with this process composing and checking every trial. A sweep that fails its checks leaves it to
    end by itself once its imports are done."""
    given = {key_of(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    if given.get("hydra/launcher", "dlx_local") != "dlx_local" or find_spec("hydra_plugins.dlx_launcher") is None:
        return
    from dlx.sweep.start import pool_size, prespawn

    try:
        n = pool_size(int(given.get("hydra.launcher.n_jobs", "1")))
    except ValueError:  # a sweep over n_jobs, or a typo the checks will report
        return
    if n > 1:
        prespawn()


def run_hydra(argv: list[str], shown: list[str], task=None) -> int:
    """Hydra's multirun with the dlx sweeper; `task` (a SweepTask) defaults to dlx sweep's own."""
    import hydra

    from dlx.compose import config_dir
    from dlx.config import register_configs
    from dlx.sweep.task import SweepTask

    register_configs()
    task = task or SweepTask(["dlx", "sweep", *shown])
    main = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(task)
    saved, sys.argv = sys.argv, ["dlx-sweep", "--multirun", *argv]
    try:
        main()
    except SystemExit as exc:  # Hydra exits 1 after printing an error it caught itself
        if not task.outcome:
            return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt as exc:  # stopped before the first trial
        from dlx.sweep.hygiene import interrupt_code

        return task.outcome.get("code", interrupt_code(exc))
    finally:
        sys.argv = saved
    return task.outcome.get("code", 1)


def study_main(args: list[str]) -> int:
    from dlx.compose import expand_config_dir, user_config_dirs
    from dlx.config import ConfigError

    try:
        expanded = expand_config_dir(args)
    except ConfigError as exc:
        return error(str(exc))
    search = [a for a in expanded if a.startswith("hydra.searchpath=")]
    args = [a for a in expanded if a not in search]
    studies = list_studies(user_config_dirs(search))
    if not args or args[0] in ("-h", "--help", "list"):
        width = max((len(n) for n in studies), default=0)
        print("usage: dlx study <name> [override ...] [--resume]   (a ready-made sweep; overrides as in dlx sweep)"
              "\n\nstudies:\n" + "\n".join(f"  {n:<{width}}  {s.get('statement', '')}" for n, s in studies.items()))
        return 0
    name, rest = args[0], args[1:]
    if name not in studies:
        return error(f"dlx study {name}: no such study; valid: {', '.join(studies) or 'none'} (dlx study lists them)")
    return sweep_main([*search, f"+study={name}", *rest])


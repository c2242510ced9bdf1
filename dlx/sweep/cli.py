"""`dlx sweep` and `dlx study`: check the sweep, then hand it to Hydra's multirun with the dlx sweeper.

Every option of every swept group and both ends of every other axis are composed before anything
runs, so a bad option, key or value exits with code 2 and the message `dlx train` gives, and no trial,
study or MLflow run is created.
"""

from __future__ import annotations

import os
import sys
from importlib.util import find_spec

SWEEP_USAGE = """usage: dlx sweep [override ...] [hydra.sweeper.SETTING=value ...] [--resume [STUDY] [--trust-stored]]

Runs one trial per combination (grid) or per sample (random, tpe) of the swept overrides; every
trial is a `dlx train` run nested under one MLflow parent run that records the sweep and its summary.

sweeping, in Hydra's override grammar:
  optimizer=sgd,adam seed=0,1,2          every combination (grid)
  model.width=range(16,129,16)           16, 32, ..., 128
  optimizer.lr=choice(1e-3,1e-2)         a list of values
  optimizer.lr=tag(log,interval(1e-5,1)) a continuous range (log scale): random or tpe search
  +study=optimizers                      a ready-made study (dlx study lists them)

hydra.sweeper settings:
  method=grid|random|tpe       default: grid, or tpe when an interval() is swept
  n_trials=N                   random/tpe: trials to run (default 20); grid: at most N combinations
  objective=val/acc|val/loss   the last epoch's validation metric (test/* is refused)
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
--trust-stored     with --resume: also replay stored overrides that name code to run (a _target_,
                   hydra.launcher.setup); without it they are refused, since anyone who can write
                   the study storage could have put them there.

HYDRA_ALLOWED

Trials default to trainer.progress=none and log to their own train.log under outputs/sweeps/.
Exit code: 0 when every trial ended ok or pruned, 1 when one failed, 2 for a bad sweep, 130/143 when
stopped by Ctrl-C or SIGTERM."""

# overrides a resumed sweep may change: where and how fast trials run, not what they are
MUTABLE = ("hydra/launcher", "hydra.launcher.", "hydra.sweeper.batch_size", "hydra.sweeper.storage")


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
    rest = [a for a in args if a not in ("-m", "--multirun")]  # a sweep is a multirun anyway
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
        _start_workers_early(overrides)
        argv = prepare(overrides)
    except ConfigError as exc:
        from dlx.sweep.start import discard_prespawned

        discard_prespawned()
        return error(str(exc))
    return run_hydra(argv, shown=args)


def _start_workers_early(overrides: list[str]) -> None:
    """With the worker pool asked for on the command line (hydra.launcher.n_jobs=N, N > 1), start what
    its workers come from now (dlx.sweep.start: the zygote, or the workers themselves): its imports of
    torch and MLflow overlap with this process composing and checking every trial, and the pool takes it
    when Hydra launches it."""
    given = {_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}
    if given.get("hydra/launcher", "dlx_local") != "dlx_local" or find_spec("hydra_plugins.dlx_launcher") is None:
        return
    try:
        n = int(given.get("hydra.launcher.n_jobs", "1"))
        threads = int(given["hydra.launcher.torch_threads"]) if given.get("hydra.launcher.torch_threads",
                                                                           "null") != "null" else None
    except ValueError:  # a sweep over n_jobs, or a typo the checks will report
        return
    if n < 0:
        n = len(os.sched_getaffinity(0))
    if n > 1:
        from dlx.sweep.start import prespawn

        prespawn(n, threads)


def with_defaults(overrides: list[str]) -> list[str]:
    """The user's overrides plus the sweep's defaults where the user set none: the dlx sweeper, the
    parallel launcher when installed, quiet trials that log to their own file."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    extra = []
    if "hydra/sweeper" not in keys:
        extra.append("hydra/sweeper=dlx")
    if "hydra/launcher" not in keys and find_spec("hydra_plugins.dlx_launcher") is not None:
        extra.append("hydra/launcher=dlx_local")
    if "hydra/hydra_logging" not in keys:
        extra.append("hydra/hydra_logging=disabled")
    if "trainer.progress" not in keys:
        extra.append("trainer.progress=none")
        if "hydra/job_logging" not in keys and not any(k.startswith("hydra.job_logging") for k in keys):
            extra.append("hydra.job_logging.root.handlers=[file]")  # the trial's train.log only
    return [*extra, *overrides]


def prepare(overrides: list[str]) -> list[str]:
    """The overrides to hand Hydra, after composing enough combinations to find any bad input."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dlx.compose import check_hydra_overrides
    from dlx.config import ConfigError
    from dlx.store_check import probe as probe_store
    from dlx.sweep.settings import SweepSettings, resolve_method
    from dlx.sweep.space import check_values, parse_space

    argv = with_defaults(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(argv)
    except Exception as exc:
        raise ConfigError(f"cannot parse the overrides: {str(exc).strip().splitlines()[0]}") from None
    hydra_part = [o.input_line for o in parsed if o.is_hydra_override()]
    task_part = [o.input_line for o in parsed if not o.is_hydra_override()]
    check_hydra_overrides(argv)  # what dlx train also checks: only the hydra.* keys dlx documents
    _check_hydra_overrides([o for o in parsed if o.is_hydra_override()])
    _check_study([o for o in parsed if o.key_or_group == "study"])
    loader = _config_loader()  # glob(...) sweeps list a group's options through it
    first = check_values(parse_space(task_part, loader))[0]
    cfg = _compose_with_hydra(first, hydra_part)
    settings = SweepSettings.create(cfg.hydra.sweeper)
    params = [f"{k}={v}" for k, v in (settings.params or {}).items()]
    space = parse_space([*params, *task_part], loader)
    resolve_method(settings.method, space)
    if not cfg.dataset.val_fraction > 0:
        raise ConfigError(f"hydra.sweeper.objective={settings.objective} needs a validation split: "
                          f"dataset.val_fraction must be > 0")
    compose_all(check_values(space))
    probe_store(cfg.tracking)  # before any trial or parent run: seconds, not minutes of MLflow's retries
    return argv


def _compose_with_hydra(task: list[str], hydra: list[str]):
    """The composed config with its hydra node (the sweeper's settings and the presets' params).
    A failure is explained by dlx's messages when the task overrides are at fault, else by Hydra's."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dlx.compose import compose, config_dir
    from dlx.config import ConfigError, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
            return hydra_compose("config", overrides=[*task, *hydra], return_hydra_config=True)
    except Exception as exc:
        error = exc
    finally:
        GlobalHydra.instance().clear()
    compose(task, check=False)  # raises ConfigError naming the bad task override, if one is bad
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raise ConfigError(" ".join(lines[:2]) or type(error).__name__)


def compose_all(combos: list[list[str]]) -> None:
    """Compose and check each combination; on a failure, `dlx.compose.compose` says what is wrong.

    One Hydra context serves every combination (re-initializing Hydra per combination is what makes
    the per-option check slow)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dlx.compose import check_config, compose, config_dir

    compose(combos[0], check=True)  # the first also checks keys added with +
    GlobalHydra.instance().clear()
    bad = None
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        for combo in combos[1:]:
            try:
                check_config(hydra_compose("config", overrides=combo))
            except Exception:
                bad = combo
                break
    GlobalHydra.instance().clear()
    if bad is not None:
        compose(bad, check=True)  # raises ConfigError with the message dlx train gives


def _config_loader():
    """Hydra's config loader over conf/, through Hydra's public initialize API (it outlives the context)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dlx.compose import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        return GlobalHydra.instance().config_loader()


def _check_hydra_overrides(parsed) -> None:
    from omegaconf import OmegaConf

    from dlx.config import ConfigError
    from hydra_plugins.dlx_sweeper.dlx_sweeper import SETTINGS, DlxSweeperConf

    typed = OmegaConf.structured(DlxSweeperConf)
    for o in parsed:
        key = o.key_or_group
        if o.is_sweep_override():
            raise ConfigError(f"{o.input_line}: Hydra's settings cannot be swept; to give the sweeper a list, "
                              f"quote it: hydra.sweeper.params.seed='0,1,2'")
        if key == "hydra/sweeper" and o.value() != "dlx":
            raise ConfigError(f"{o.input_line}: dlx sweep runs its own sweeper (hydra/sweeper=dlx)")
        if key.startswith("hydra.sweeper.") and key.split(".")[2] not in SETTINGS:
            raise ConfigError(f"{key}: no such sweeper setting; valid: {', '.join(sorted(SETTINGS))}")
        if key.startswith("hydra.sweeper.") and not o.is_delete():
            try:
                OmegaConf.update(typed, key.removeprefix("hydra.sweeper."), o.value(), force_add=True)
            except Exception as exc:  # OmegaConf's type errors: "Value 'abc' could not be converted to Integer"
                raise ConfigError(f"{o.input_line}: {str(exc).strip().splitlines()[0]}") from None


def _check_study(parsed) -> None:
    from dlx.config import ConfigError

    studies = list_studies()
    for o in parsed:
        if o.value() not in studies:
            raise ConfigError(f"study={o.value()}: no such study; valid: {', '.join(studies) or 'none'}")


def run_hydra(argv: list[str], shown: list[str]) -> int:
    import hydra

    from dlx.compose import config_dir
    from dlx.config import register_configs
    from dlx.sweep.task import SweepTask

    register_configs()
    task = SweepTask(["dlx", "sweep", *shown])
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


# ---------------------------------------------------------------------------------------------- resume
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_mutable(override: str) -> bool:
    return _key(override).startswith(MUTABLE)


def definition(overrides: list[str]) -> list[str]:
    """What defines a sweep: its overrides without where it is stored, how fast it runs, its name."""
    from dlx.sweep.sweeper import LOCATORS

    return sorted(o for o in overrides if _key(o) not in LOCATORS and not _is_mutable(o))


def resume_overrides(name: str | None, overrides: list[str], *, trust: bool = False) -> list[str]:
    """The stopped sweep's own overrides, with the launcher settings given now, pointed at its study.
    What the storage holds is checked as typed input is (`prepare` checks it all again with the rest)."""
    from dlx.config import ConfigError
    from dlx.sweep.settings import default_storage
    from dlx.sweep.space import quote
    from dlx.sweep.study import study_names

    storage = next((o.split("=", 1)[1].strip("'\"") for o in overrides if _key(o) == "hydra.sweeper.storage"),
                   None) or default_storage()
    studies = [s for s in study_names(storage) if _stored(s) is not None]
    given = definition(with_defaults(overrides)) if definition(overrides) else []
    if name is not None:
        found = [s for s in studies if s.study_name == name]
        if not found:
            known = ", ".join(s.study_name for s in studies[:10]) or "none"
            raise ConfigError(f"--resume {name}: no such sweep in {storage}; recent: {known}")
    else:
        found = [s for s in studies if s.user_attrs.get("dlx.state") != "finished"
                 and (not given or definition(_stored(s)) == given)]
        if not found:
            what = "with these overrides " if given else ""
            raise ConfigError(f"--resume: no unfinished sweep {what}in {storage}; name one: dlx sweep --resume STUDY "
                              f"(recent: {', '.join(s.study_name for s in studies[:10]) or 'none'})")
    study = found[0]
    stored = _stored(study)
    _check_stored(f"--resume {study.study_name}", storage, stored, trust)
    if given and given != definition(stored):
        raise ConfigError(f"--resume {study.study_name}: a resumed sweep keeps its definition; it was started as: "
                          f"{study.user_attrs.get('dlx.command') or ' '.join(definition(stored))}")
    now = {_key(o): o for o in overrides if _is_mutable(o)}
    kept = [o for o in stored if _key(o) not in now]
    return [*kept, *now.values(), f"hydra.sweeper.study_name={study.study_name}", "hydra.sweeper.resume=true",
            f"hydra.sweep.dir={quote(study.user_attrs['dlx.sweep_dir'])}"]


def _stored(study) -> list[str] | None:
    """A study's stored overrides and sweep dir as dlx wrote them (a list of strings and a string), else None."""
    overrides, sweep_dir = study.user_attrs.get("dlx.overrides"), study.user_attrs.get("dlx.sweep_dir")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides) \
            or not isinstance(sweep_dir, str):
        return None
    return list(overrides)


def _check_stored(where: str, storage: str, stored: list[str], trust: bool) -> None:
    """Anyone who can write the study storage can change what a resumed sweep runs: its overrides pass
    the hydra.* rule typed ones pass (the rest is composed and checked with them), and one that names
    code to run is replayed only with the user's --trust-stored."""
    from dlx.compose import check_hydra_overrides, names_code
    from dlx.config import ConfigError

    try:
        check_hydra_overrides(stored)
    except ConfigError as exc:
        raise ConfigError(f"{where}: the overrides stored in {storage} are refused: {exc}") from None
    code = [o for o in stored if names_code(o)]
    if code and not trust:
        raise ConfigError(f"{where}: the override {code[0]} stored in {storage} names code to run; "
                          f"add --trust-stored to run it if you trust that storage")


# ---------------------------------------------------------------------------------------------- studies
def list_studies() -> dict[str, dict]:
    """Every conf/study/<name>.yaml: name -> its study node."""
    from omegaconf import OmegaConf

    from dlx.compose import config_dir

    out = {}
    for path in sorted((config_dir() / "study").glob("*.yaml")):
        node = OmegaConf.load(path).get("study") or {}
        out[path.stem] = OmegaConf.to_container(node) if node else {}
    return out


def study_main(args: list[str]) -> int:
    studies = list_studies()
    if not args or args[0] in ("-h", "--help", "list"):
        width = max((len(n) for n in studies), default=0)
        print("usage: dlx study <name> [override ...] [--resume]   (a ready-made sweep; overrides as in dlx sweep)"
              "\n\nstudies:\n" + "\n".join(f"  {n:<{width}}  {s.get('statement', '')}" for n, s in studies.items()))
        return 0
    name, rest = args[0], args[1:]
    if name not in studies:
        return error(f"dlx study {name}: no such study; valid: {', '.join(studies) or 'none'} (dlx study lists them)")
    return sweep_main([f"+study={name}", *rest])

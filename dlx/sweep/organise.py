"""`dlx cv` and `dlx ensemble`: sweeps over which fold (cv.fold, cv.repeat) or which member (ensemble.member) a
run is, with everything `dlx sweep` gives them (checks before anything runs, one parent run with nested children,
the parallel launchers, `--resume`); at the end the parent logs the children's summary (dlx.cv, dlx.ensemble)."""

from __future__ import annotations

import os
import re
import sys

from dlx.sweep.checks import key_of

RUN_ID = re.compile(r"^[0-9a-f]{32}$")

CV_USAGE = """usage: dlx cv [override ...] [cv.folds=K] [cv.repeats=R] [hydra.launcher.SETTING=value ...] [--config-dir DIR]
              [--resume PARENT [--trust-stored]]

k-fold cross-validation of one configuration: the samples outside the test split are dealt into K stratified
folds (one dealing per repeat, seeded by it); one run per fold trains on the others and validates on it, nested
under a parent run (tags cv.fold, cv.repeat) and run in parallel as dlx sweep's trials are. The test split is
never touched. At the end the parent logs cv/<metric>_mean, _ci95 (95% CI over the fold values), _std and
_holdout (fold 0 alone) for the val/ and test/ metrics; dlx report <parent id> shows them.

  dlx cv model=mlp cv.folds=5 cv.repeats=2 hydra.launcher.n_jobs=2
  dlx cv --resume <parent run id>       the folds that did not finish (parent id or study name)

To choose hyperparameters on the K-fold mean instead: dlx sweep ... hydra.sweeper.objective=cv/val/acc_mean
(each trial runs cv.folds folds one after the other; cv/val/loss_mean also works)."""

ENSEMBLE_USAGE = """usage: dlx ensemble [override ...] [ensemble.members=M] [ensemble.bootstrap=true|false]
                    [hydra.launcher.SETTING=value ...] [--config-dir DIR] [--resume PARENT [--trust-stored]]

M runs of one configuration nested under a parent run (tag ensemble.member), run in parallel as dlx sweep's
trials are. With bootstrap=true (the default) member m trains on a resample of the training split drawn with
replacement (seeded by m); with false on the whole split. Each member trains with its own seed (derived from
seed and m) and saves its test-split probabilities (predictions/test.npz). The parent averages them and logs
ensemble/test/acc, ensemble/test/loss (NLL of the average), ensemble/test/ece (15 bins),
ensemble/test/vote_acc (majority vote), members/test/{acc,loss,ece}_mean and _ci95, and the averaged
probabilities as the artifact ensemble/test.npz.

  dlx ensemble model=mlp dataset.train_subset=300 ensemble.members=5
  dlx ensemble --resume <parent run id> ensemble.members=8    adds members 5..7 and evaluates all 8 again"""


def error(message: str, code: int = 2) -> int:
    print(f"dlx: error: {message}", file=sys.stderr)
    return code


def cv_main(args: list[str]) -> int:
    return _main("cv", args)


def ensemble_main(args: list[str]) -> int:
    return _main("ensemble", args)


def _main(kind: str, args: list[str]) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from dlx.config import ConfigError

    if {"-h", "--help"}.intersection(args):
        print(CV_USAGE if kind == "cv" else ENSEMBLE_USAGE)
        return 0
    try:
        from dlx.compose import expand_config_dir

        rest = expand_config_dir(args)
        overrides, resume, trust = [], None, False
        for i, a in enumerate(rest):
            if a == "--resume":
                if i + 1 >= len(rest) or "=" in rest[i + 1] or rest[i + 1].startswith("-"):
                    raise ConfigError(f"--resume: name the parent run id (or the study) of the dlx {kind} to continue")
            elif a == "--trust-stored":
                trust = True
            elif a.startswith("-"):
                raise ConfigError(f"dlx {kind}: unknown option {a}; see dlx {kind} --help")
            elif i and rest[i - 1] == "--resume":
                resume = a
            else:
                overrides.append(a)
        if trust and resume is None:
            raise ConfigError("--trust-stored: only with --resume, which replays a study's stored overrides")
        argv = _resumed(kind, resume, overrides, trust) if resume else _fresh(kind, overrides)
        from dlx.components import expand_targets
        from dlx.sweep.checks import prepare
        from dlx.sweep.cli import _start_workers_early

        argv = expand_targets(argv)
        _start_workers_early(argv)
        argv = prepare(argv)
    except ConfigError as exc:  # a forkserver started early ends by itself once its imports are done
        return error(str(exc))
    from dlx.sweep.cli import run_hydra
    from dlx.sweep.task import SweepTask

    if kind == "cv":
        from dlx.cv import aggregate
    else:
        from dlx.ensemble import aggregate
    return run_hydra(argv, shown=args, task=SweepTask(["dlx", kind, *args], aggregate=aggregate))


def _axes(kind: str, cfg) -> list[str]:
    if kind == "cv":
        return [f"cv.fold=range(0,{cfg.cv.folds})", f"cv.repeat=range(0,{cfg.cv.repeats})"]
    return [f"ensemble.member=range(0,{cfg.ensemble.members})"]


def _fresh(kind: str, overrides: list[str]) -> list[str]:
    """The sweep of a new dlx cv / dlx ensemble: the user's one configuration, and the axis of folds or members."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dlx.compose import compose
    from dlx.config import ConfigError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"cannot parse the overrides: {str(exc).strip().splitlines()[0]}") from None
    owned = ("cv.fold", "cv.repeat") if kind == "cv" else ("ensemble.member",)
    for o in parsed:
        if o.is_sweep_override() and not o.is_hydra_override():
            raise ConfigError(f"{o.input_line}: dlx {kind} runs one configuration; to choose among several, "
                              f"sweep them with dlx sweep ... hydra.sweeper.objective=cv/val/acc_mean")
        if key_of(o.input_line) in owned:
            raise ConfigError(f"{key_of(o.input_line)}: set by dlx {kind} for each run it starts; give "
                              f"{'cv.folds and cv.repeats' if kind == 'cv' else 'ensemble.members'} instead")
        if key_of(o.input_line) == "hydra.sweeper.objective" or key_of(o.input_line) == "hydra.sweeper.method":
            raise ConfigError(f"{key_of(o.input_line)}: dlx {kind} runs every {'fold' if kind == 'cv' else 'member'}"
                              f" of one configuration; it searches nothing")
    # the configuration every fold or member shares (with --config-dir's folder, where the user's options are)
    cfg = compose([o.input_line for o in parsed if not o.is_hydra_override() or o.key_or_group == "hydra.searchpath"],
                  check=True)
    if not cfg.tracking.enabled:
        raise ConfigError(f"tracking.enabled=false: dlx {kind} reads its runs back from MLflow to summarise them on "
                          f"the parent run; use tracking=default or tracking=server")
    return [*overrides, *_axes(kind, cfg), "hydra.sweeper.method=grid"]


def _resumed(kind: str, ref: str, overrides: list[str], trust: bool) -> list[str]:
    """The stored sweep named by its parent run id (or study name), with the launcher settings given now; for an
    ensemble also ensemble.members=M, which adds members (the stored axis becomes range(0,M))."""
    from dlx.config import ConfigError
    from dlx.sweep.resume import resume_overrides

    members = [o for o in overrides if key_of(o) == "ensemble.members"]
    if members and kind != "ensemble":
        raise ConfigError("ensemble.members: only dlx ensemble --resume adds runs")
    rest = [o for o in overrides if o not in members and key_of(o) != "tracking.uri"]
    study = _study_of(ref, [o for o in overrides if key_of(o) == "tracking.uri"]) if RUN_ID.match(ref) else ref
    argv = resume_overrides(study, rest, trust=trust)
    axis = "cv.fold" if kind == "cv" else "ensemble.member"  # what every dlx cv / dlx ensemble sweeps
    if not any(key_of(o) == axis for o in argv):
        raise ConfigError(f"--resume {ref}: not a dlx {kind} (its overrides sweep no {axis}); resume it with the "
                          f"command that started it (dlx sweep, dlx cv or dlx ensemble --resume)")
    if not members:
        return argv
    value = members[-1].split("=", 1)[1]
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"ensemble.members={value} is out of range: allowed >= 1")
    stored = next(o for o in argv if key_of(o) == "ensemble.member")
    have = re.fullmatch(r"ensemble\.member=range\(0,(\d+)\)", stored)
    if have and int(value) < int(have.group(1)):
        raise ConfigError(f"ensemble.members={value}: the ensemble has {have.group(1)} members already; "
                          f"resume adds members, it removes none")
    argv = [o for o in argv if key_of(o) not in ("ensemble.member", "ensemble.members")]
    return [*argv, f"ensemble.member=range(0,{value})", f"ensemble.members={value}"]


def _study_of(run_id: str, uri: list[str]) -> str:
    """The study name a dlx sweep / cv / ensemble parent run carries (tag dlx.sweep.study)."""
    from mlflow.exceptions import MlflowException

    from dlx.config import ConfigError
    from dlx.store import open_client, sqlite_file
    from dlx.tracking import resolve_uri

    store = resolve_uri(uri[-1].split("=", 1)[1] if uri else None)[0]
    db = sqlite_file(store)
    if db is not None and not db.is_file():  # opening it would create an empty store: a bad id leaves nothing
        raise ConfigError(f"--resume {run_id}: no such run: there is no MLflow store at {store}")
    try:
        run = open_client(store).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--resume {run_id}: no such run in {store}") from None
    study = run.data.tags.get("dlx.sweep.study")
    if not study:
        raise ConfigError(f"--resume {run_id}: not the parent run of a dlx sweep, cv or ensemble in {store}")
    return study

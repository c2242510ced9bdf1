"""`dlx <command>`: subcommand dispatch. Heavy imports (torch, mlflow) happen inside the commands,
so `dlx --help` answers at once."""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn

USAGE = """usage: dlx <command> [args]

A deep-learning experiment lab: Hydra-composed runs, recorded in MLflow.

commands:
  train   train one model; args are Hydra overrides, e.g. dlx train model=resnet optimizer=adam
          (dlx train --help lists every config group and option; --cfg job prints the composed config)
  sweep   a grid, random or Bayesian search; trials nest under one parent MLflow run
          e.g. dlx sweep optimizer=sgd,adam seed=0,1,2   (dlx sweep --help for search options)
  cv      k-fold cross-validation of one configuration; folds nest under one parent run that logs
          cv/<metric>_mean and _ci95: dlx cv model=mlp cv.folds=5   (dlx cv --help)
  ensemble  M members (bootstrap resamples) under one parent run evaluated as an averaged ensemble:
          dlx ensemble ensemble.members=5   (dlx ensemble --help)
  study   run a ready-made study (dlx study lists them): dlx study optimizers
  report  a sweep's runs as a table of mean +- 95% CI over seeds, with plots: dlx report <parent run id>
  sample  text from a character language model run: dlx sample <run id> --prompt "..." --temperature 0.8
  runs    list recent MLflow runs with their key params and metrics
  ui      open the MLflow UI on the tracking store (127.0.0.1)
  server  start an MLflow tracking server for a team (database backend, proxied artifacts), 127.0.0.1
  sync    replay into the store what a run kept in its spool when the store failed: dlx sync [spool or run folder]

Run `dlx <command> --help` for the options of a command."""

# Hydra flags that inspect rather than run: the pre-flight check would only get in their way
_INSPECT_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc"}


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except BrokenPipeError:
        # the reader went away (`dlx runs | head`): stop quietly, as a tool killed by SIGPIPE does, and keep
        # Python from complaining again while it flushes stdout on the way out
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13


def entry() -> NoReturn:
    """The `dlx` program: main(), then the interpreter's own exit, which stops what libraries left running
    the way they expect (threading's exit hook stops concurrent.futures workers, such as the compile
    workers torch.compile starts, before non-daemon threads are joined; then the atexit handlers).

    Before that exit the heap is frozen out of the garbage collector, which would otherwise spend the exit
    collecting objects the process is about to return anyway (bench/README.md); exit handlers still run."""
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    gc.freeze()
    sys.exit(code)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from dlx import __version__

        print(f"dlx {__version__}")
        return 0
    command, args = argv[0], argv[1:]
    commands = {"train": cmd_train, "sweep": cmd_sweep, "cv": cmd_cv, "ensemble": cmd_ensemble, "study": cmd_study,
                "report": cmd_report, "runs": cmd_runs, "ui": cmd_ui, "server": cmd_server, "sync": cmd_sync,
                "sample": cmd_sample}
    if command not in commands:
        print(f"dlx: unknown command '{command}'; valid: {', '.join(commands)}\n\n{USAGE}", file=sys.stderr)
        return 2
    return commands[command](args)


def error(message: str, code: int) -> int:
    print(f"dlx: error: {message}", file=sys.stderr)
    return code


def cmd_train(args: list[str]) -> int:
    if "-m" in args or "--multirun" in args:
        return error("-m/--multirun is not for dlx train, which runs one job: use dlx sweep with the same "
                     "overrides (dlx sweep optimizer=sgd,adam seed=0,1,2)", 2)
    if any(a.split("=", 1)[0] == "--experimental-rerun" for a in args):
        return error("--experimental-rerun loads a pickled config, and unpickling can run any code: not "
                     "accepted; repeat the overrides of the run instead (its .hydra/overrides.yaml)", 2)
    from dlx.compose import check_hydra_overrides, expand_config_dir
    from dlx.config import ConfigError

    try:
        from dlx.components import expand_targets

        args = expand_targets(expand_config_dir(args))
        check_hydra_overrides([a for a in args if not a.startswith("-")])
    except ConfigError as exc:
        return error(str(exc), 2)
    if {"--help", "-h"}.intersection(args):
        return train_help([a for a in args if not a.startswith("-")])
    return _run_hydra(args)


def train_help(overrides: list[str]) -> int:
    """Hydra's --help would list the schema entries of the ConfigStore as options: answer from conf/."""
    from omegaconf import OmegaConf

    from dlx.compose import GROUPS, compose, list_options
    from dlx.config import ConfigError

    try:
        cfg = compose(overrides, check=False)
    except ConfigError as exc:
        return error(str(exc), 2)
    from dlx.components import GROUPS as COMPONENTS
    from dlx.components import chosen_options
    from dlx.help import describe

    groups = "\n".join(f"  {g}: {', '.join(list_options(g, overrides))}" for g in GROUPS)
    chosen = chosen_options(overrides)
    options = "\n".join(describe(g, chosen[g]) for g in COMPONENTS)
    print(f"usage: dlx train [group=option ...] [key=value ...] [--config-dir DIR] [--cfg job] [--hydra-help]\n\n"
          f"== Configuration groups ==\nCompose your configuration from those groups (group=option;\n"
          f"regularization and augmentation take lists: regularization=[l2,dropout]); --config-dir DIR adds\n"
          f"your own options (DIR/<group>/<option>.yaml) and studies (DIR/study/<name>.yaml)\n\n{groups}\n\n"
          f"== Options of the chosen components (key: default, allowed) ==\n"
          f"Any component takes your own class instead: model._target_=mypkg.MyNet +model.hidden=64\n\n"
          f"{options}\n\n"
          f"== Config ==\nOverride anything in the config (foo.bar=value)\n\n{OmegaConf.to_yaml(cfg)}")
    return 0


def _run_hydra(args: list[str]) -> int:
    """One composition, one check, then the job. dlx composes the configuration (with Hydra's node) and checks
    it before anything is written; only then does Hydra's run_job make the run's folder and logging and call
    the task, as `@hydra.main` would. The flags that inspect rather than run (--cfg, --info, ...) go to
    `@hydra.main` itself."""
    if _INSPECT_FLAGS.intersection(args):
        return _hydra_main(args)
    import copy

    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict, read_write

    from dlx import run
    from dlx.compose import compose
    from dlx.config import ConfigError

    try:
        cfg = compose(args, check=False, hydra_config=True)
        task_cfg = copy.deepcopy(cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        run.preflight(task_cfg)  # on a copy: the run resolves its own, after telling set values from followed
    except ConfigError as exc:
        return error(str(exc), 2)
    except run.RunError as exc:
        return error(str(exc), exc.exit_code)
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.RUN
    outcome = {"code": 0}

    def task(job_cfg):
        try:
            run.train(job_cfg, command=["dlx", "train", *args], checked=True)
        except run.RunError as exc:
            outcome["code"] = exc.exit_code
            print(f"dlx: {'error: ' if exc.exit_code == 2 else ''}{exc}", file=sys.stderr)

    done = run_job(task_function=task, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                   hydra_context=HydraContext(config_loader=None, callbacks=_NoHydraCallbacks()))
    _ = done.return_value  # re-raises what the task raised beyond a RunError
    return outcome["code"]


class _NoHydraCallbacks:
    """Hydra's job callbacks: dlx refuses hydra.callbacks (they name code), so there are none to call."""

    def on_job_start(self, **_) -> None: ...

    def on_job_end(self, **_) -> None: ...


def _hydra_main(args: list[str]) -> int:
    import hydra

    from dlx.compose import config_dir
    from dlx.config import register_configs

    register_configs()

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def task(cfg):
        raise AssertionError("only the inspecting flags reach Hydra's main")  # they return before the task

    saved = sys.argv
    sys.argv = ["dlx-train", *args]
    try:
        task()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def cmd_sweep(args: list[str]) -> int:
    from dlx.sweep.cli import sweep_main

    return sweep_main(args)


def cmd_cv(args: list[str]) -> int:
    from dlx.sweep.organise import cv_main

    return cv_main(args)


def cmd_ensemble(args: list[str]) -> int:
    from dlx.sweep.organise import ensemble_main

    return ensemble_main(args)


def cmd_study(args: list[str]) -> int:
    from dlx.sweep.cli import study_main

    return study_main(args)


def cmd_report(args: list[str]) -> int:
    from dlx.report.cli import report_main

    return report_main(args)


def cmd_sample(args: list[str]) -> int:
    from dlx.sample import sample_main

    return sample_main(args)


def cmd_runs(args: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="dlx runs", description="List recent MLflow runs.")
    p.add_argument("--experiment", "-e", default=None, help="experiment name (default: all)")
    p.add_argument("--limit", "-n", type=int, default=20)
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or outputs/mlflow.db)")
    ns = p.parse_args(args)
    from dlx.runs import list_runs

    return list_runs(uri=ns.uri, experiment=ns.experiment, limit=ns.limit)


def cmd_sync(args: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="dlx sync", description="Replay into the tracking store the metric points, "
                                "tags and final status that runs kept in their spool when the store failed.")
    p.add_argument("paths", nargs="*", help="spool files or run folders (default: every pending spool of the store)")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or outputs/mlflow.db)")
    ns = p.parse_args(args)
    from dlx.spool import sync

    return sync(ns.paths, uri=ns.uri)


def cmd_server(args: list[str]) -> int:
    from dlx.server import server_main

    return server_main(args)


def cmd_ui(args: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="dlx ui", description="Open the MLflow UI on the tracking store.")
    p.add_argument("--port", type=int, default=5000)
    from dlx.runs import add_serving_arguments

    add_serving_arguments(p, auth_help="MLflow's basic-auth login (mlflow ui --app-name basic-auth; needs "
                          "mlflow[auth]; set MLFLOW_AUTH_ADMIN_PASSWORD on the first start)",
                          allowed_help="Host headers the server answers, comma-separated (passed to mlflow ui; "
                          "MLflow's default: localhost and private addresses)")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or outputs/mlflow.db)")
    ns = p.parse_args(args)
    from dlx.config import ConfigError
    from dlx.runs import exposure_warning, ui_command

    try:
        cmd = ui_command(uri=ns.uri, host=ns.host, port=ns.port, workers=ns.workers, expose=ns.expose,
                         auth=ns.auth, allowed_hosts=ns.allowed_hosts)
    except ConfigError as exc:
        return error(str(exc), 2)
    if ns.auth:
        from dlx.server import ensure_auth_secret

        ensure_auth_secret()
    warning = exposure_warning(ns.host, ns.port, ns.auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"MLflow UI at http://{ns.host}:{ns.port}  (Ctrl-C stops it)", flush=True)
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())

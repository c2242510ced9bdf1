"""The checks of `dlx sweep` before anything runs: every option of every swept group and both ends of every
other axis are composed, so a bad option, key or value exits with code 2 and the message `dlx train`
gives, and no trial, study or MLflow run is created. Also the sweep's defaults, and the studies of conf/study/.
"""

from __future__ import annotations

from importlib.util import find_spec


def key_of(override: str) -> str:
    """The key an override sets: `+optimizer.lr=0.1` -> optimizer.lr."""
    return override.split("=", 1)[0].lstrip("+~")


def with_defaults(overrides: list[str]) -> list[str]:
    """The user's overrides plus the sweep's defaults where the user set none: the dlx sweeper, the
    parallel launcher when installed, quiet trials that log to their own file."""
    keys = {key_of(o) for o in overrides}
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

    from dlx.compose import check_hydra_overrides, user_config_dirs
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
    _check_study([o for o in parsed if o.key_or_group == "study"], user_config_dirs(argv))
    search = [o for o in hydra_part if key_of(o) == "hydra.searchpath"]  # --config-dir: every combination needs it
    loader = _config_loader()  # glob(...) sweeps list a group's options through it
    first = [*search, *check_values(parse_space(task_part, loader))[0]]
    cfg = _compose_with_hydra(first, hydra_part)
    settings = SweepSettings.create(cfg.hydra.sweeper)
    params = [f"{k}={v}" for k, v in (settings.params or {}).items()]
    space = parse_space([*params, *task_part], loader)
    resolve_method(settings.method, space)
    from omegaconf import OmegaConf

    from dlx.data import split_options
    from dlx.options import spec

    # a user's dataset option may leave val_fraction to its default, whose home is split_options' signature
    if not OmegaConf.select(cfg, "dataset.val_fraction", default=spec(split_options)["val_fraction"].default) > 0:
        raise ConfigError(f"hydra.sweeper.objective={settings.objective} needs a validation split: "
                          f"dataset.val_fraction must be > 0")
    from dlx.cv import sweep_folds

    fold = sweep_folds(settings.objective, cfg)  # a K-fold objective: each combination is checked as a fold
    compose_all([[*search, *combo, *fold] for combo in check_values(space)])
    argv = [*argv, *_pool_devices(cfg, space)]
    probe_store(cfg.tracking)  # before any trial or parent run: seconds, not minutes of MLflow's retries
    return argv


def _pool_devices(cfg, space) -> list[str]:
    """The CUDA devices of the worker pool's trials (hydra.launcher.gpus_per_trial, from the command line or a
    config file) checked against the visible ones; unset while trials train over several GPUs (trainer.devices=N),
    N each, as the trials' ranks need: the Hydra override that says so, else none."""
    from dlx.config import ConfigError
    from dlx.sweep.devices import trial_devices, visible_devices
    from dlx.sweep.start import pool_size

    launcher = cfg.hydra.launcher
    if not str(launcher.get("_target_", "")).endswith(".DlxLocalLauncher"):
        return []
    if pool_size(launcher.n_jobs) == 1:  # trials in this process: every device is theirs
        return []
    devices, per_trial = visible_devices(), launcher.gpus_per_trial
    try:
        trial_devices(devices, 0, per_trial)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ranks = _most_devices(cfg, space) if str(cfg.trainer.device) in ("auto", "cuda") and devices else 1
    if ranks <= 1 or per_trial == 0:  # one GPU, or none (gpus_per_trial=0: trials on the CPU)
        return []
    if ranks > len(devices):
        raise ConfigError(f"trainer.devices={ranks}: each rank of a trial takes a GPU, {len(devices)} CUDA device(s) "
                          f"visible: allowed 1 to {len(devices)}, or trainer.device=cpu")
    if per_trial is None:
        return [f"hydra.launcher.gpus_per_trial={ranks}"]
    if per_trial < ranks:
        raise ConfigError(f"hydra.launcher.gpus_per_trial={per_trial} with trainer.devices={ranks}: each rank of a "
                          f"trial takes a GPU: allowed {ranks} to {len(devices)}, or null (as many as trainer.devices)")
    return []


def _most_devices(cfg, space) -> int:
    """The largest trainer.devices of the sweep's trials: its axis when swept, else the composed value."""
    axis = next((a for a in space.axes if key_of(a.key) == "trainer.devices"), None)
    if axis is None:
        return int(cfg.trainer.devices)
    return int(max(float(v) for v in axis.values) if axis.discrete else axis.high)


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


def _check_study(parsed, user_dirs=()) -> None:
    from dlx.config import ConfigError

    studies = list_studies(user_dirs)
    for o in parsed:
        if o.value() not in studies:
            raise ConfigError(f"study={o.value()}: no such study; valid: {', '.join(studies) or 'none'}")


def list_studies(user_dirs=()) -> dict[str, dict]:
    """Every conf/study/<name>.yaml, and study/<name>.yaml of the folders --config-dir adds: name -> its
    study node (a user's study of the same name comes first, as Hydra's search path finds it)."""
    from omegaconf import OmegaConf

    from dlx.compose import config_dir

    out = {}
    paths = [p for d in [*user_dirs, config_dir()] for p in sorted((d / "study").glob("*.yaml"))]
    for path in reversed(paths):
        node = OmegaConf.load(path).get("study") or {}
        out[path.stem] = OmegaConf.to_container(node) if node else {}
    return out


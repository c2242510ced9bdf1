"""Finding conf/ and composing a configuration with user-facing error messages."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dlx.config import ConfigError, register_configs
from dlx.validate import validate

GROUPS = ("dataset", "model", "optimizer", "scheduler", "loss", "regularization", "augmentation", "trainer",
          "tracking", "diagnostics", "objective")
# The hydra.* overrides dlx documents (a trailing .* takes every key below): the sweeper and its settings,
# the launcher and its settings, where runs and sweeps write, and the logging a sweep picks for its
# trials. Any other hydra.* key could run code: hydra.callbacks.* instantiates the _target_ it is given,
# hydra.job_logging.* hands `()` factories to logging.config, hydra.searchpath adds config folders.
# hydra.searchpath is how `--config-dir DIR` reaches Hydra: the user's own config folder on their own command
# line, like a _target_; a stored one is code to trust (names_code).
HYDRA_ALLOWED = ("hydra/sweeper", "hydra.sweeper.*", "hydra/launcher", "hydra.launcher.*", "hydra.run.dir",
                 "hydra.sweep.dir", "hydra.sweep.subdir", "hydra/hydra_logging", "hydra/job_logging",
                 "hydra.job_logging.root.handlers", "hydra.searchpath")


def config_dir() -> Path:
    """conf/ of a source checkout (editable install) or the copy a wheel ships as dlx/conf."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):  # the wheel's own copy first
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"dlx cannot find its configs: neither {package.parent / 'conf'} nor {package / 'conf'}")


def user_config_dirs(overrides: list[str]) -> list[Path]:
    """The folders `--config-dir` added (as hydra.searchpath) to an override list, searched before conf/."""
    dirs: list[Path] = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            dirs += [Path(v.strip().removeprefix("file://")) for v in value.strip("[]").split(",") if v.strip()]
    return dirs


def expand_config_dir(args: list[str]) -> list[str]:
    """`--config-dir DIR` (or -cd DIR, --config-dir=DIR): the user's own conf folder, whose <group>/<option>.yaml
    and study/<name>.yaml files join dlx's, as the override hydra.searchpath=[file://DIR]."""
    out, dirs, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a in ("--config-dir", "-cd") or a.startswith("--config-dir="):
            value = a.partition("=")[2] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in a else 2
            path = Path(value).expanduser().resolve()
            if not value or not path.is_dir():
                raise ConfigError(f"--config-dir {value}: no such folder; give the folder that holds your "
                                  "<group>/<option>.yaml files")
            dirs.append(path)
            continue
        out.append(a)
        i += 1
    if dirs:
        out.insert(0, "hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]")
    return out


def list_options(group: str, overrides: list[str] = ()) -> list[str]:
    folders = [*user_config_dirs(list(overrides)), config_dir()]
    return sorted({p.stem for d in folders for p in (d / group).glob("*.yaml")})


def compose(overrides: list[str] = (), *, check: bool = True, hydra_config: bool = False) -> DictConfig:
    """Compose conf/config.yaml with Hydra's override grammar; raise ConfigError on any bad input."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dlx.components import expand_targets

    register_configs()
    overrides = expand_targets(list(overrides))
    check_hydra_overrides(overrides)
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        try:
            cfg = hydra_compose("config", overrides=overrides, return_hydra_config=hydra_config)
        except Exception as exc:  # Hydra raises several types; each becomes one clear message
            raise ConfigError(explain_compose_error(exc, overrides)) from None
        problems = added_key_problems(overrides)
        if problems:
            raise ConfigError("\n".join(problems))
    if check:
        check_config(cfg)
    return cfg


def added_key_problems(overrides: list[str]) -> list[str]:
    """`+key=value` appends even into a typed group: its key must be one the group has. Needs Hydra initialised
    (inside compose, or a Hydra task)."""
    if not any(o.startswith("+") for o in overrides):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return unknown_keys(OverridesParser.create().parse_overrides(overrides))


def check_config(cfg: DictConfig) -> None:
    """Resolve every interpolation (type errors surface here) and check the value ranges."""
    try:
        OmegaConf.resolve(cfg) if not OmegaConf.is_readonly(cfg) else OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:
        raise ConfigError(f"invalid configuration: {_first_line(exc)}") from None
    validate(cfg)


def check_hydra_overrides(overrides: list[str]) -> None:
    """Refuse hydra.* overrides outside HYDRA_ALLOWED, and any that names code (_target_): a plugin's
    arguments are instantiated recursively, so a _target_ inside hydra.launcher.* would run too. Typed
    and stored overrides (dlx sweep --resume) go through this same check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - compose explains an override that does not parse
        return
    for o in parsed:
        key = o.key_or_group
        if o.package is not None and "hydra" in o.package.split("."):  # group@hydra.callbacks=option
            key = f"{key}@{o.package}"
        elif key != "hydra" and not o.is_hydra_override():
            continue
        if not any(key == a or (a.endswith(".*") and key.startswith(a[:-1])) for a in HYDRA_ALLOWED):
            raise ConfigError(f"{key}: not a Hydra setting dlx accepts; allowed: {', '.join(HYDRA_ALLOWED)}")
        if "_target_" in o.input_line and key != "hydra.searchpath":
            raise ConfigError(f"{o.input_line}: a Hydra setting cannot name code (_target_)")


def names_code(override: str) -> bool:
    """Whether an override's value is code to run: a _target_ (in its key or value) is imported and
    called; the lines of a launcher's setup run in a shell before each trial."""
    return "_target_" in override or override.split("=", 1)[0].lstrip("+~") in ("hydra.launcher.setup",
                                                                               "hydra.searchpath")


def explain_compose_error(exc: Exception, overrides: list[str]) -> str:
    """Turn Hydra's composition errors into a message naming the bad item and what is valid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException):
        missing = exc.missing_cfg_file or ""
        group, _, option = missing.rpartition("/")
        if group in GROUPS:
            valid = ", ".join(list_options(group, overrides))
            return f"{group}={option}: no such option of group '{group}'; valid: {valid}"
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return f"cannot parse the overrides: {_first_line(exc)}"
    unknown_groups = [o.key_or_group for o in parsed if "." not in o.key_or_group and o.key_or_group not in GROUPS]
    try:
        problems = unknown_keys(parsed)
    except Exception:
        problems = []
    if problems:
        return "\n".join(problems)
    if unknown_groups:
        return f"{unknown_groups[0]}: no such config group or key; groups: {', '.join(GROUPS)}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None:  # OmegaConf's type errors: "Value 'abc' ... could not be converted to Float"
        key = getattr(cause, "full_key", None)
        detail = _first_line(cause, keep=1)
        return f"{key}: {detail}" if key else detail
    return _first_line(exc, keep=3)


def unknown_keys(parsed) -> list[str]:
    """Messages for overrides naming keys that the schema of their group does not have.

    Hydra's `+key=value` appends even into a typed (dataclass) node, so this also runs on configs that
    composed fine; free-form dicts such as tracking.tags still accept new keys.
    """
    # what decides the base's shape: group choices, a study (it changes groups), the --config-dir search path
    group_choices = [o.input_line for o in parsed if o.key_or_group in (*GROUPS, "study", "hydra.searchpath")
                     or "/" in o.key_or_group]
    base = _compose_plain([c for c in group_choices if not c.startswith("~")])
    from dlx.components import chosen_options

    chosen = chosen_options([o.input_line for o in parsed])
    problems = []
    for o in parsed:
        key = o.key_or_group
        if o.is_delete() or key in GROUPS or "/" in key or key.startswith("hydra."):
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if not isinstance(node, DictConfig) or leaf in node.keys():  # `in node` is False for a ??? value
            continue
        if o.is_add() and not _is_typed(node):
            continue
        option = chosen.get(parent.split(".")[0])
        where = f"'{parent}'" + (f" ({option})" if option else "") if parent else "the top level"
        valid = ", ".join(sorted(str(k) for k in node.keys()))
        problems.append(f"{key}: no such key in {where}; valid keys: {valid}")
    return problems


def _is_typed(node: DictConfig) -> bool:
    import dataclasses

    return dataclasses.is_dataclass(OmegaConf.get_type(node))


def _compose_plain(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose

    return hydra_compose("config", overrides=overrides)


def _first_line(exc: Exception, keep: int = 2) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:keep]) if lines else type(exc).__name__

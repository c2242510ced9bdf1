"""Component groups: dataset, model, optimizer, scheduler and loss, each a Hydra `_target_`.

A built-in option is a YAML file under conf/<group>/ naming its callable (`_target_`) and holding only the
values that differ from the callable's signature defaults; the signature is the one home of every option's
type, default and range (dlx.options). This module derives the structured schema of each built-in option for
Hydra (`register`), checks a composed config's components before any data loads (`problems`), and builds
them with `hydra.utils.instantiate` (`factory`).

A user's component plugs in the same way, from the command line (`model._target_=mynet.MyNet
+model.hidden=64`) or from their own config folder (`--config-dir ./conf model=mynet`). Code runs only when
the user named it: targets of dlx's own conf/ are trusted; any other target must be named by this command
(its overrides or config folder), never only by a configuration read back from a store (`untrusted`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dlx.config import ConfigError
from dlx.options import Option, spec
from dlx.options import problems as option_problems


@dataclass(frozen=True)
class Group:
    """A component group: what dlx passes its target itself (`fixed`: the arguments, or "module:NAME" of the
    tuple the group's own code keeps), and the function whose signature holds the keys dlx reads for the group
    besides the target's options (`extras`, "module:function")."""

    name: str
    fixed: tuple[str, ...] | str
    extras: str | None = None
    rules: str | None = None  # "module:function(target, options) -> problems", rules of any target of the group


GROUPS: dict[str, Group] = {g.name: g for g in (
    Group("dataset", (), "dlx.data:split_options"),
    Group("model", "dlx.models:NOT_OPTIONS"),
    Group("optimizer", "dlx.optim:NOT_OPTIONS", "dlx.optim:param_group_options", "dlx.optim:option_problems"),
    Group("scheduler", ("optimizer", "steps_per_epoch", "epochs"), "dlx.schedule:warmup_options",
          "dlx.schedule:option_problems"),
    Group("loss", ()),
)}
# the name under which a command-line `_target_` replaces a group's option (see `expand_targets`)
TARGET_OPTION = "target"


def _object(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def fixed(group: str) -> tuple[str, ...]:
    """The arguments dlx passes a target of the group itself: not options."""
    f = GROUPS[group].fixed
    return tuple(_object(f)) if isinstance(f, str) else f


# ------------------------------------------------------------------------------------------ built-in options
@functools.cache
def builtin() -> dict[str, dict[str, str]]:
    """group -> option -> `_target_` of every YAML option dlx ships."""
    import yaml

    from dlx.compose import config_dir

    out: dict[str, dict[str, str]] = {}
    for group in GROUPS:
        for path in sorted((config_dir() / group).glob("*.yaml")):
            node = yaml.safe_load(path.read_text()) or {}
            if isinstance(node, dict) and isinstance(node.get("_target_"), str):
                out.setdefault(group, {})[path.stem] = node["_target_"]
    return out


def trusted_targets() -> set[str]:
    return {t for options in builtin().values() for t in options.values()}


@functools.cache
def group_spec(group: str, target: str) -> dict[str, Option]:
    """Every key an option of `group` with this target takes: dlx's extras of the group, then the target's
    options. Optimizers attach the ranges torch checks in its constructors (dlx.optim.optimizer_spec)."""
    g = GROUPS[group]
    fn = locate(target, f"{group}._target_")
    out = dict(spec(_object(g.extras))) if g.extras else {}
    if group == "optimizer":
        from dlx.optim import optimizer_spec

        out.update(optimizer_spec(fn))
    else:
        out.update(spec(fn, skip=fixed(group)))
    return out


def register() -> None:
    """Store `schema_<option>` for every built-in option: `_target_` and the options of the target's signature
    with their types and defaults, so Hydra refuses unknown keys and wrong types while composing."""
    from hydra.core.config_store import ConfigStore

    from dlx.options import schema

    cs = ConfigStore.instance()
    for group, options in builtin().items():
        for option, target in options.items():
            node = schema(group_spec(group, target), target=target, name=f"{group}_{option}")
            cs.store(group=group, name=f"schema_{option}", node=node)
        # `group._target_=X` on the command line: an untyped node holding only the target and what the user adds
        cs.store(group=group, name=TARGET_OPTION, node={"_target_": "???"})


# ------------------------------------------------------------------------------------------ the command line
def chosen_options(overrides: list[str]) -> dict[str, str]:
    """group -> the option an override list picks for each component group (conf/config.yaml's otherwise)."""
    chosen = {g: _default_option(g) for g in GROUPS}
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") in GROUPS:
            chosen[key.lstrip("+~")] = value
    return chosen


def expand_targets(overrides: list[str]) -> list[str]:
    """`model._target_=X` (accepted without a `+`) swaps the group's option for a bare node holding the target,
    so the built-in option's keys do not reach the user's class; `+model.hidden=64` then adds its options.
    A target that is the chosen built-in option's own leaves the option in place."""
    chosen = chosen_options(overrides)
    out = list(overrides)
    for o in overrides:
        key, _, value = o.partition("=")
        group, _, leaf = key.lstrip("+").partition(".")
        if leaf != "_target_" or group not in GROUPS:
            continue
        option = chosen[group]
        if builtin().get(group, {}).get(option) == value:
            continue
        out = [x for x in out if x.partition("=")[0].lstrip("+~") != group]
        at = out.index(o)
        out[at:at + 1] = [f"{group}={TARGET_OPTION}", f"{group}._target_={value}"]
    return out


@functools.cache
def _default_option(group: str) -> str | None:
    import yaml

    from dlx.compose import config_dir

    defaults = (yaml.safe_load((config_dir() / "config.yaml").read_text()) or {}).get("defaults", [])
    return next((d[group] for d in defaults if isinstance(d, dict) and group in d), None)


# ------------------------------------------------------------------------------------------ checks
def locate(target: Any, key: str) -> Callable:
    """Import a `_target_`; the working directory is importable, as for `python -m`. ConfigError naming the
    key and the target when it cannot be imported or is not callable."""
    if not isinstance(target, str) or not target or target == "???":
        raise ConfigError(f"{key}: a dotted path to a class or function is required, e.g. mypkg.MyNet")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # after the installed packages: a local file never shadows one
    try:
        obj = _import(target)
    except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, or whatever the module raised
        raise ConfigError(f"{key}={target}: cannot import it: {type(exc).__name__}: {_first(exc)}") from None
    if not callable(obj):
        raise ConfigError(f"{key}={target}: not a class or function but a {type(obj).__name__}")
    return obj


def extra_keys(group: str) -> set[str]:
    """The keys dlx itself reads for every option of the group (its extras function's options)."""
    g = GROUPS[group]
    return set(spec(_object(g.extras))) if g.extras else set()


def _import(path: str) -> Any:
    """The object at a dotted path (package.module.Class.attr): the longest prefix that is a module, then its
    attributes. (Hydra's own locator logs an error of its own before raising.)"""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module.startswith(exc.name):
                raise  # the module exists and failed on an import of its own
            if cut == 1:
                raise
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def options_of(group: str, node: Mapping) -> tuple[dict, dict]:
    """(the target's options, dlx's extras of the group) of a resolved component node."""
    extra_keys_ = extra_keys(group)
    opts = {k: v for k, v in node.items() if k != "_target_" and k not in extra_keys_}
    return opts, {k: v for k, v in node.items() if k in extra_keys_}


def problems(cfg: Mapping) -> list[str]:
    """Every problem of the config's components found without loading data: a target that does not import or
    is not callable, an option its signature does not take or a required one missing, and for built-in targets
    each value outside its range and each rule that joins options."""
    out: list[str] = []
    for group in GROUPS:
        node = cfg.get(group)
        if not isinstance(node, Mapping):
            continue
        try:
            target = node.get("_target_")
            fn = locate(target, f"{group}._target_")
        except ConfigError as exc:
            out.append(str(exc))
            continue
        options, extras = options_of(group, node)
        found = []
        if target in trusted_targets():
            found += option_problems(group_spec(group, target), {**options, **extras}, group)
            joint = getattr(fn, "option_problems", None)  # a built-in's rules that join its options
            if joint is not None and not found:
                found += joint(options)
        else:  # the user's own: its options bind to its signature and keep the ranges it states there
            found += _signature_problems(group, target, fn, options)
            found += option_problems(spec(fn, skip=fixed(group)), options, group) if not found else []
        rules = GROUPS[group].rules
        if rules and not found:
            found += _object(rules)(target, {**options, **extras})
        out += found
    declared = getattr(_located(cfg, "dataset"), "declared", None)  # what a built-in dataset's Source holds
    if not out:  # what the objective rules out first: a self-supervised run's model serves no loss (dlx.ssl.objective)
        from dlx.ensemble import config_problems as ensemble_problems
        from dlx.ssl.objective import config_problems as objective_problems

        images = getattr(_located(cfg, "dataset"), "images", None)
        out += objective_problems(cfg, declared, images) or ensemble_problems(cfg, declared)
    if declared is not None and not out and all(_located(cfg, g) for g in ("model", "loss")):
        from dlx.build import pairing_problems

        out += pairing_problems(cfg, cfg["dataset"]["_target_"].rpartition(".")[2], *declared)
    if not out and isinstance(cfg.get("augmentation"), Mapping) and isinstance(cfg.get("dataset"), Mapping):
        from dlx.data.eda import config_problems  # EDA's keys, and the data a built-in dataset says it holds

        name = str(cfg["dataset"].get("_target_", "")).rpartition(".")[2]
        out += config_problems(cfg["augmentation"], dataset=name, declared=declared)
    return out


def _located(cfg: Mapping, group: str) -> Callable | None:
    try:
        return locate(cfg[group]["_target_"], f"{group}._target_")
    except (ConfigError, KeyError, TypeError):
        return None


def _signature_problems(group: str, target: str, fn: Callable, options: dict) -> list[str]:
    """A user's target: the options must bind to its signature, with dlx's own arguments for the group."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []  # a builtin without a signature: its call will tell
    passed = fixed(group)
    params = sig.parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    out = []
    for key in options:
        if key not in params and not takes_any:
            valid = ", ".join(n for n in params if n not in passed and n != "self") or "none"
            out.append(f"{group}.{key}: {target} takes no option {key!r}; its options: {valid}")
    if group == "loss" and not isinstance(fn, type):
        return out  # a loss function is called with (logits, target) itself: its required arguments are those
    for name, p in params.items():
        if (p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in passed
                and name not in options and name != "self"):
            out.append(f"{group}.{name}: {target} needs this option: add +{group}.{name}=VALUE")
    return out


def untrusted(stored: Mapping, current: Mapping) -> list[str]:
    """The `_target_`s of a configuration read back from a store (a resumed run's) that neither dlx ships nor
    this command names: importing them would run code the user did not name."""
    out = []
    for group in GROUPS:
        target = (stored.get(group) or {}).get("_target_")
        if target and target not in trusted_targets() and target != (current.get(group) or {}).get("_target_"):
            out.append(f"{group}._target_={target}")
    for i, cb in enumerate(stored.get("trainer", {}).get("callbacks") or []):
        named = [c.get("_target_") for c in current.get("trainer", {}).get("callbacks") or []]
        if isinstance(cb, Mapping) and cb.get("_target_") not in named and cb.get("_target_") not in trusted_targets():
            out.append(f"trainer.callbacks[{i}]._target_={cb.get('_target_')}")
    return out


def fill_extras(cfg: dict) -> None:
    """Give each component node the keys dlx reads for its group (a user's dataset option need not list
    val_fraction): with their defaults, from the extras function's signature, so the run records what it used."""
    for group, g in GROUPS.items():
        node = cfg.get(group)
        if g.extras and isinstance(node, dict):
            for name, opt in spec(_object(g.extras)).items():
                if name not in node and opt.default is not dataclasses.MISSING:
                    node[name] = opt.default.value if isinstance(opt.default, enum.Enum) else opt.default


def component_names(cfg: Mapping, choices: Mapping[str, str]) -> dict[str, str]:
    """group -> a short name for run names and the `<group>.name` param: the chosen option, or for a target given
    on the command line its last dotted part (mynet.MyNet -> MyNet)."""
    out = {}
    for group in GROUPS:
        choice = choices.get(group)
        target = str((cfg.get(group) or {}).get("_target_", ""))
        out[group] = choice if choice and choice != TARGET_OPTION else target.rpartition(".")[2] or "?"
    return out


# ------------------------------------------------------------------------------------------ building
def factory(group: str, node: Mapping) -> tuple[Callable, dict]:
    """(a partial of the target with its options, dlx's extras) for a resolved, checked component node, made
    by hydra.utils.instantiate with `_partial_`: nested `_target_`s in the options are built too."""
    from hydra.utils import instantiate

    options, extras = options_of(group, node)
    key = f"{group}._target_"
    locate(node.get("_target_"), key)
    try:
        made = instantiate({"_target_": node["_target_"], **options}, _partial_=True, _convert_="all")
    except Exception as exc:  # noqa: BLE001 - a nested target that fails: the user's configuration
        raise ConfigError(f"{key}={node['_target_']}: {_first(exc.__cause__ or exc)}") from None
    return made, extras


def call(group: str, target: str, make: Callable, /, *args, **kwargs):
    """Call a component's factory; an error it raises is the configuration's (exit 2), naming the target."""
    from dlx.data.splits import DatasetError

    try:
        return make(*args, **kwargs)
    except DatasetError as exc:  # names the dataset key itself
        raise ConfigError(_first(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{group}._target_={target}: {_first(exc)}") from None


def _first(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__

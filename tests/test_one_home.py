"""Each default, allowed value and range has one home, and every copy that would disagree is derived.

Component groups (dataset, model, optimizer, scheduler, loss): the signature of an option's `_target_` holds
its defaults and ranges; the YAML option holds only the values where dlx's choice differs; the schema Hydra
composes against is derived from the signature. The other groups: the dataclass of dlx/config.py holds the
defaults and a YAML option holds only what it changes. Every case below is discovered from conf/ itself.
"""

from __future__ import annotations

import copy
import dataclasses
import enum

import pytest
import yaml
from omegaconf import OmegaConf

from dlx.components import GROUPS, builtin, group_spec
from dlx.compose import check_config, compose, config_dir, list_options
from dlx.config import Config, ConfigError
from dlx.options import Items, Range

COMPONENT_CASES = [(g, o) for g in GROUPS for o in list_options(g)]
FIXED_GROUPS = [f.name for f in dataclasses.fields(Config) if f.name not in GROUPS and f.name not in
                ("trial", "study", "seed")]
FIXED_CASES = [(g, o) for g in FIXED_GROUPS for o in list_options(g)]


def option_file(group: str, option: str) -> dict:
    return yaml.safe_load((config_dir() / group / f"{option}.yaml").read_text()) or {}


def test_every_component_option_names_a_target_and_its_schema():
    for group, option in COMPONENT_CASES:
        node = option_file(group, option)
        assert isinstance(node.get("_target_"), str), f"conf/{group}/{option}.yaml has no _target_"
        assert node.get("defaults") == [f"schema_{option}"], f"conf/{group}/{option}.yaml: defaults"
    assert {g for g, _ in COMPONENT_CASES} == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), COMPONENT_CASES)
def test_component_yaml_holds_only_deltas_and_composes_to_the_signature(group, option):
    """What the constructor would use, what the schema says and what the YAML says agree: the YAML only sets
    keys the target takes, never restates a signature default, and the composed group is the signature's
    defaults with the YAML's values on top."""
    node = option_file(group, option)
    spec = group_spec(group, node["_target_"])
    values = {k: v for k, v in node.items() if k not in ("defaults", "_target_")}
    for key, value in values.items():
        assert key in spec, f"conf/{group}/{option}.yaml sets {key}, which {node['_target_']} does not take"
        default = spec[key].default
        shown = default.value if isinstance(default, enum.Enum) else default
        assert value != shown, f"conf/{group}/{option}.yaml restates {key}={value!r}, the signature's default"
    composed = OmegaConf.to_container(compose([f"{group}={option}"], check=False)[group], resolve=True,
                                      enum_to_str=True)
    assert composed["_target_"] == node["_target_"]
    for key, opt in spec.items():
        expected = values.get(key, opt.default)
        if isinstance(expected, str) and expected.startswith("${"):
            continue  # follows another key
        expected = expected.value if isinstance(expected, enum.Enum) else expected
        expected = "???" if expected is dataclasses.MISSING else expected  # required: OmegaConf's MISSING
        assert composed[key] == expected, f"{group}={option}: {key}"


@pytest.mark.parametrize(("group", "option"), FIXED_CASES)
def test_other_groups_yaml_changes_the_dataclass_defaults_only(group, option):
    defaults = OmegaConf.to_container(OmegaConf.structured(Config)[group], enum_to_str=True)

    def walk(node, base, where):
        for key, value in (node or {}).items():
            assert key in base, f"conf/{group}/{option}.yaml: {where}{key} is not a key of {group}"
            if isinstance(value, dict):
                walk(value, base[key], f"{where}{key}.")
            else:
                assert value != base[key], (f"conf/{group}/{option}.yaml restates {where}{key}={value!r}, the "
                                            "default of dlx/config.py")

    walk(option_file(group, option), defaults, "")


def _outside(rule) -> object | None:
    """A value the rule refuses."""
    if isinstance(rule, Range):
        if rule.ge is not None:
            return rule.ge - 1
        if rule.gt is not None:
            return rule.gt
        return (rule.le + 1) if rule.le is not None else rule.lt
    if isinstance(rule, Items):
        return [_outside(rule.each)] * (rule.length or 1) if rule.each else None
    if isinstance(rule, type) and issubclass(rule, enum.Enum):
        return "nope"
    return None


RANGE_CASES = sorted({(g, o, key) for g, o in COMPONENT_CASES
                      for key, opt in group_spec(g, option_file(g, o)["_target_"]).items()
                      if _outside(opt.rule) is not None})


@pytest.fixture(scope="module")
def composed():
    """One composed config per option (Hydra's composition is the slow part); each case edits a copy."""
    cache = {}

    def get(group: str, option: str):
        if (group, option) not in cache:
            cache[group, option] = compose([f"{group}={option}"], check=False)
        return copy.deepcopy(cache[group, option])

    return get


@pytest.mark.parametrize(("group", "option", "key"), RANGE_CASES)
def test_every_range_and_choice_is_checked_before_any_data_loads(group, option, key, composed):
    spec = group_spec(group, builtin()[group][option])
    bad = _outside(spec[key].rule)
    if isinstance(spec[key].rule, type):  # a choice: the schema refuses it while composing
        with pytest.raises(ConfigError) as info:
            compose([f"{group}={option}", f"{group}.{key}=nope"])
    else:
        cfg = composed(group, option)
        OmegaConf.update(cfg, f"{group}.{key}", bad, force_add=True)
        with pytest.raises(ConfigError) as info:
            check_config(cfg)
    message = str(info.value)
    assert f"{group}.{key}" in message and spec[key].allowed() in message, message


def _annotated_fields(schema: type, prefix: str = ""):
    """(dotted key, Option) of every field of dlx/config.py's dataclasses whose annotation states a rule."""
    from dlx.options import spec

    for key, opt in spec(schema).items():
        if prefix and isinstance(opt.rule, (Range, Items)):  # a choice (an enum) is the schema's type check
            yield f"{prefix}{key}", opt
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(f.default_factory):
            yield from _annotated_fields(f.default_factory, f"{prefix}{f.name}.")


@pytest.mark.parametrize(("key", "option"), list(_annotated_fields(Config)), ids=lambda v: getattr(v, "type", v))
def test_a_range_in_a_config_dataclass_annotation_is_checked_before_any_data_loads(key, option, composed):
    cfg = composed("trainer", "default")
    OmegaConf.update(cfg, key, _outside(option.rule), force_add=True)
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert f"{key}=" in str(info.value) and option.allowed() in str(info.value), str(info.value)


def test_the_readme_table_is_the_one_the_signatures_give():
    from dlx.help import readme_section

    readme = (config_dir().parent / "README.md").read_text()
    assert readme_section(readme) == readme, "run `python -m dlx.help --readme` and commit README.md"


def test_the_readme_names_every_option_of_every_group():
    readme = (config_dir().parent / "README.md").read_text()
    table = readme[readme.index("| group | options |"):readme.index("Every default, allowed value")]
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines()[2:] if line.startswith("| `")}
    for group in [*GROUPS, *FIXED_GROUPS]:
        missing = [o for o in list_options(group) if f"`{o}`" not in rows[group]]
        assert not missing, f"README's table lacks {group} options {missing}"

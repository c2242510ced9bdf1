"""A sweep's search space, read with Hydra's override grammar.

`optimizer=sgd,adam`, `choice(...)` and `range(...)` are discrete axes: a grid enumerates them and Optuna
sees them as categorical or integer/stepped distributions. `interval(a, b)` is continuous (uniform, or
log-uniform with `tag(log, interval(a, b))`) and needs random or TPE search. Values travel as override
strings, so a trial's overrides are exactly what a user would type for `dlx train`.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dlx.config import ConfigError


@dataclass
class Axis:
    key: str  # the override key as typed, prefix included: "optimizer", "optimizer.lr", "+model.x"
    spec: str  # the value as typed: "sgd,adam", "tag(log, interval(1e-5, 1))"
    kind: str  # choice, range or interval
    values: list[str] = field(default_factory=list)  # discrete axes: each value as an override string
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    integer: bool = False

    @property
    def discrete(self) -> bool:
        return self.kind != "interval"

    def distribution(self):
        """The Optuna distribution this axis samples from (random and TPE search)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def show(self) -> str:
        return f"{self.key}={self.spec}"


@dataclass
class SearchSpace:
    axes: list[Axis]
    fixed: list[str]  # the overrides every trial gets, as typed

    @property
    def discrete(self) -> bool:
        return all(a.discrete for a in self.axes)

    @property
    def grid_size(self) -> int:
        return math.prod(len(a.values) for a in self.axes) if self.discrete else 0

    def grid(self) -> Iterator[dict[str, str]]:
        """Every combination, the first axis varying slowest (like Hydra's basic sweeper)."""
        for combo in itertools.product(*(a.values for a in self.axes)):
            yield dict(zip((a.key for a in self.axes), combo))

    def distributions(self) -> dict:
        return {a.key: a.distribution() for a in self.axes}

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """Fixed overrides and the trial's values, in the order the user gave them."""
        return [*self.fixed, *(f"{a.key}={format_value(params[a.key])}" for a in self.axes)]


def format_value(value: Any) -> str:
    """An override string for a sampled value: categorical values already are; numbers are written
    in full precision (repr), so the trial runs with exactly the value Optuna recorded."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else repr(float(value))


def parse_space(overrides: list[str], config_loader=None) -> SearchSpace:
    """Overrides (sweeper params first, then the command line: a later key replaces an earlier one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(list(overrides))
    except Exception as exc:  # the grammar's messages name the bad override
        raise ConfigError(f"cannot parse the sweep: {str(exc).strip().splitlines()[0]}") from None
    entries: dict[str, Any] = {}
    for o in parsed:
        ident = o.key_or_group + (f"@{o.package}" if o.package else "")
        entries.pop(ident, None)  # re-insert: the last occurrence decides the position too
        entries[ident] = _axis(o) if o.is_sweep_override() else o.input_line
    axes = [e for e in entries.values() if isinstance(e, Axis)]
    fixed = [e for e in entries.values() if isinstance(e, str)]
    return SearchSpace(axes=axes, fixed=fixed)


def _axis(o) -> Axis:
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep

    key, spec, value = o.get_key_element(), o.get_value_string().strip(), o.value()
    if o.is_hydra_override():
        raise ConfigError(f"{key}: Hydra's own settings cannot be swept")
    if o.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        low, high = value.start, value.end
        if not low < high:
            raise ConfigError(f"{key}={spec}: an interval needs start < end")
        log = "log" in value.tags
        if log and low <= 0:
            raise ConfigError(f"{key}={spec}: a log interval needs start > 0")
        integer = isinstance(low, int) and isinstance(high, int)
        return Axis(key, spec, "interval", low=low, high=high, log=log, integer=integer)
    values = list(o.sweep_string_iterator())
    if not values:
        raise ConfigError(f"{key}={spec}: the sweep has no values")
    if len(set(values)) != len(values):
        raise ConfigError(f"{key}={spec}: a value appears twice")
    if o.is_range_sweep() and isinstance(value, RangeSweep) and not value.shuffle:
        numbers = [float(v) for v in values]
        integer = all(isinstance(x, int) for x in (value.start, value.stop, value.step))
        step = abs(value.step)
        return Axis(key, spec, "range", values=values, low=min(numbers), high=max(numbers),
                    step=int(step) if integer else float(step), integer=integer)
    return Axis(key, spec, "choice", values=values)


def check_values(space: SearchSpace) -> list[list[str]]:
    """A few combinations that together use every option of every swept group and both ends of
    every other axis: composing them finds bad options, keys and values before anything runs."""
    first = {a.key: a.values[0] if a.discrete else format_value(a.low) for a in space.axes}
    combos = [dict(first)]
    for a in space.axes:
        if a.discrete:
            picks = a.values[1:] if _is_group(a.key) else a.values[-1:]
        else:
            picks = [format_value(a.high)]
        for v in picks:
            if v != first[a.key]:
                combos.append({**first, a.key: v})
    return [[*space.fixed, *(f"{k}={v}" for k, v in c.items())] for c in combos]


def _is_group(key: str) -> bool:
    return "." not in key.lstrip("+~") or "/" in key


_SAFE = re.compile(r"^[\w./:\-+@%~]+$")


def quote(value: str) -> str:
    """A string as a Hydra override value: bare when it is safe, else single-quoted and escaped."""
    if _SAFE.match(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

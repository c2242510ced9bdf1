"""A component's options have one home: the signature of the callable that takes them.

A built-in model, dataset, schedule or loss declares each option once, as a keyword parameter with its
type, its default and, where a type cannot say it, its range::

    def __init__(self, *, input_shape, num_classes, width: Annotated[int, Range(ge=1)] = 256,
                 norm: Norm = Norm.none, dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0): ...

From that signature dlx derives the structured schema Hydra composes against (`schema`), the range and
choice checks run before any data loads (`problems`), the checks a direct Python call gets (`checked`)
and the tables of `dlx train --help` and the README. A YAML option under conf/<group>/ names the callable
(`_target_`) and holds only the values that differ from these defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class Range:
    """Bounds of a number option; each is inclusive (ge, le) or exclusive (gt, lt). `none` names a value that
    is allowed besides the range and switches the option off (e.g. 0 for a disabled guard)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""  # appended to the allowed values in messages, e.g. "(0 disables clipping)"

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            text = f"in {low}, {high}"
        elif low:
            text = f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        elif high:
            text = f"{'<=' if self.le is not None else '<'} {high[:-1]}"
        else:
            text = "any number"
        return f"{text} {self.note}".rstrip()


@dataclass(frozen=True)
class Items:
    """A rule for every item of a list option (betas, milestones), and for the list as a whole."""

    each: Range | None = None
    length: int | None = None
    increasing: bool = False

    def ok(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        if self.each is not None and not all(self.each.ok(v) for v in value):
            return False
        return not self.increasing or list(value) == sorted(value)

    def __str__(self) -> str:
        count = f"{self.length} numbers" if self.length is not None else "numbers"
        order = " in increasing order" if self.increasing else ""
        return f"{count} {self.each}{order}" if self.each is not None else f"{count}{order}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Option:
    """One option of a component: name, type as OmegaConf takes it, default, and its rule (a Range, Items or
    the Enum whose members are the choices)."""

    name: str
    type: Any
    default: Any
    rule: Range | Items | type[enum.Enum] | None

    def allowed(self) -> str:
        if isinstance(self.rule, type) and issubclass(self.rule, enum.Enum):
            text = ", ".join(m.value for m in self.rule)
        else:
            text = str(self.rule) if self.rule is not None else ""
        return f"null or {text}" if text and _optional(self.type) else text

    def ok(self, value: Any) -> bool:
        if value is None and _optional(self.type):
            return True
        if isinstance(self.rule, type) and issubclass(self.rule, enum.Enum):
            return _enum_value(value) in {m.value for m in self.rule}
        return self.rule is None or self.rule.ok(value)


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


# the argument types OmegaConf validates; anything else in a signature (a Tensor, a callable) becomes Any
_PLAIN = (int, float, bool, str)


def _omegaconf_type(tp: Any) -> Any:
    """The closest type OmegaConf can validate: torch writes `lr: float | Tensor`, `betas: tuple[float, float]`."""
    if tp in _PLAIN or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        kept = [_omegaconf_type(a) for a in args if a is not type(None)]
        kept = [a for a in kept if a is not Any]
        inner = kept[0] if kept else Any
        return (inner | None) if type(None) in args and inner is not Any else inner  # type: ignore[operator]
    if origin in (list, tuple, typing.Sequence):
        inner = [_omegaconf_type(a) for a in args if a is not Ellipsis]
        first = inner[0] if inner else Any
        return list[first] if first is not Any and all(a == first for a in inner) else list[Any]
    return Any


def spec(fn: Callable, *, skip: tuple[str, ...] = ()) -> dict[str, Option]:
    """The keyword options of fn (a class: its __init__), in signature order; `skip` names arguments dlx passes
    itself (input_shape, params, ...) or that are not options (torch's foreach, fused)."""
    target = fn.__init__ if isinstance(fn, type) else fn
    target = inspect.unwrap(target)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - annotations that do not resolve leave the options untyped
        hints = {}
    out: dict[str, Option] = {}
    for name, p in inspect.signature(target).parameters.items():
        if name in ("self", *skip) or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint, rule = hints.get(name, Any), None
        if typing.get_origin(hint) is Annotated:
            hint, *meta = typing.get_args(hint)
            rule = next((m for m in meta if isinstance(m, (Range, Items))), None)
        base = _omegaconf_type(hint)
        plain = typing.get_args(base)[0] if _optional(base) else base
        if rule is None and isinstance(plain, type) and issubclass(plain, enum.Enum):
            rule = plain
        default = p.default if p.default is not p.empty else dataclasses.MISSING
        if isinstance(default, tuple):
            default = list(default)
        if isinstance(default, enum.Enum) and not (isinstance(plain, type) and issubclass(plain, enum.Enum)):
            default = default.value
        out[name] = Option(name, base, default, rule)
    return out


def schema(options: Mapping[str, Option], *, target: str, name: str) -> type:
    """A dataclass Hydra can compose against: `_target_` and each option with its type and default (a required
    option without a default is OmegaConf's MISSING, so composing without it fails)."""
    fields: list[tuple] = [("_target_", str, dataclasses.field(default=target))]
    for opt in options.values():
        default = opt.default
        if default is dataclasses.MISSING:
            field = dataclasses.field(default="???")
        elif isinstance(default, (list, dict)):
            field = dataclasses.field(default_factory=functools.partial(_copy, default))
        else:
            field = dataclasses.field(default=default)
        fields.append((opt.name, opt.type, field))
    return dataclasses.make_dataclass(name, fields)


def _copy(value):
    return list(value) if isinstance(value, list) else dict(value)


def problems(options: Mapping[str, Option], values: Mapping[str, Any], prefix: str) -> list[str]:
    """One message per value outside its option's rule, naming `prefix.name` and what is allowed."""
    out = []
    for name, opt in options.items():
        if name not in values or (opt.rule is None and not _optional(opt.type)):
            continue
        value = values[name]
        if not opt.ok(value):
            shown = _enum_value(value)
            what = "is not valid" if isinstance(shown, str) else "is out of range"
            text = repr(shown) if isinstance(shown, str) else shown
            out.append(f"{prefix}.{name}={text} {what}: allowed {opt.allowed()}")
    return out


def checked(group: str, *, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorate a component's __init__ (or function): each call's options are checked against its own signature,
    and then against its class's `option_problems(options)` (rules joining options), so a direct Python call
    refuses what the config checks refuse, with the same messages naming `group.<option>`."""

    def decorate(fn: Callable) -> Callable:
        signature, options = inspect.signature(fn), spec(fn, skip=skip)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = {k: v for k, v in bound.arguments.items() if k in options}
            found = problems(options, values, group)
            joint = getattr(args[0], "option_problems", None) if args and "self" in signature.parameters else None
            if not found and joint is not None:  # one message per mistake: joint rules once each value is valid
                found = joint(values)
            if found:
                raise ValueError("; ".join(found))
            return fn(*args, **kwargs)

        return wrapper

    return decorate

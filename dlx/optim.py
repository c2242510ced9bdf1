"""Optimizers: any torch.optim.Optimizer subclass, built over dlx's decay / no-decay parameter groups.

An option under conf/optimizer/ names its class (`_target_: torch.optim.SGD`) and holds only the values where dlx's
choice differs from the class's signature, which is the one home of every default. The ranges torch checks inside
its constructors (after the data has loaded, without naming a key) are written once here, by parameter name
(`RANGES`), and attached to the options of each class that takes them from torch (`optimizer_spec`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dlx.options import Items, Option, Range, problems, spec

__all__ = ["NOT_OPTIONS", "RANGES", "create_optimizer", "decayed_params", "fastest_implementation",
           "option_problems", "optimizer_class", "optimizer_spec", "param_group_options"]

# Arguments of an optimizer's constructor that are not options: dlx passes the parameters itself, and picks
# torch's implementation switches (`fastest_implementation`); capturable and differentiable serve CUDA graphs and
# higher-order optimisation, which dlx does not do.
NOT_OPTIONS = ("params", "foreach", "fused", "capturable", "differentiable")

_UNIT = Range(ge=0, lt=1)
RANGES: dict[str, Range | Items] = {
    "lr": Range(gt=0),
    "weight_decay": Range(ge=0),
    "momentum": _UNIT,
    "dampening": _UNIT,
    "betas": Items(each=_UNIT, length=2),
    "eps": Range(gt=0),
    "rho": _UNIT,
    "alpha": _UNIT,
    "lr_decay": Range(ge=0),
    "initial_accumulator_value": Range(ge=0),
}


def param_group_options(*, decay_norm_and_bias: bool = False) -> dict[str, Any]:
    """dlx's own keys of the optimizer group, beside the class's options; this signature is their home.

    decay_norm_and_bias: put biases and norm weights in the decayed group too (by default they never decay).
    """
    return {"decay_norm_and_bias": bool(decay_norm_and_bias)}


def _torch_names(cls: type) -> set[str]:
    """The parameter names cls takes from a torch optimizer it derives from: only there does a name mean what
    torch means by it (SAM's rho is a radius, 2.0 in ASAM; Adan takes three betas)."""
    names: set[str] = set()
    for base in cls.__mro__:
        if (base is not torch.optim.Optimizer and isinstance(base, type) and issubclass(base, torch.optim.Optimizer)
                and base.__module__.startswith("torch.optim")):
            names |= set(inspect.signature(base).parameters)
    return names


def optimizer_spec(cls: type[torch.optim.Optimizer]) -> dict[str, Option]:
    """The options of an optimizer class, from its signature; where the signature states no range, a name it
    takes from torch gets the range from `RANGES`."""
    return dict(_optimizer_spec(cls))


@functools.cache
def _optimizer_spec(cls: type[torch.optim.Optimizer]) -> dict[str, Option]:
    out = spec(cls, skip=NOT_OPTIONS)
    inherited = _torch_names(cls)
    for name, opt in out.items():
        if opt.rule is None and name in RANGES and name in inherited:
            out[name] = Option(opt.name, opt.type, opt.default, RANGES[name])
    return out


def option_problems(target: Any, options: Mapping[str, Any]) -> list[str]:
    """The rules that join options, said before any data loads: torch's SGD refuses Nesterov momentum without
    momentum or with dampening, in its constructor. `target` is the class or its dotted `_target_`, already
    imported by the checks before."""
    from hydra.utils import get_object

    cls = get_object(target) if isinstance(target, str) else target
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.SGD)):
        return []
    value = {name: options.get(name, opt.default) for name, opt in optimizer_spec(cls).items()}.get
    if not value("nesterov"):
        return []
    out = []
    if value("momentum") <= 0:
        out.append(f"optimizer.momentum={value('momentum')} is not allowed with nesterov: allowed > 0")
    if value("dampening") != 0:
        out.append(f"optimizer.dampening={value('dampening')} is not allowed with nesterov: allowed 0")
    return out


def optimizer_class(factory: Any) -> type[torch.optim.Optimizer]:
    """The class a factory makes: a torch.optim.Optimizer subclass, bare or in a functools.partial with its options
    as keywords (what `hydra.utils.instantiate(node, _partial_=True)` returns). TypeError for anything else."""
    cls = factory.func if isinstance(factory, functools.partial) else factory
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        what = f"{cls.__module__}.{cls.__qualname__}" if hasattr(cls, "__qualname__") else repr(cls)
        raise TypeError(f"an optimizer must be a torch.optim.Optimizer subclass or a partial of one; {what} is not")
    if isinstance(factory, functools.partial) and factory.args:
        raise TypeError(f"{cls.__qualname__}: dlx passes the parameters itself; give the options as keywords")
    return cls


def fastest_implementation(cls: type[torch.optim.Optimizer], devices: set[torch.device]) -> dict[str, bool]:
    """The fastest update torch has for parameters on `devices`: on CPU the fused kernel (one pass over each
    tensor) where the optimizer has one, else the multi-tensor (foreach) one; on an accelerator foreach, as
    torch picks by default there. Parameters spread over several devices get torch's own choice.
    A checkpoint keeps the choice in its param groups, so a resumed run updates as it started.
    """
    # torch leaves CPU on its per-tensor loop; fused cut Adam's step 2.7x (bench/README.md, Optimizers)
    if len(devices) != 1:
        return {}
    accepted = inspect.signature(cls).parameters
    if next(iter(devices)).type == "cpu" and "fused" in accepted:
        return {"fused": True}
    return {"foreach": True} if "foreach" in accepted else {}


def _param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> tuple[list[dict], list]:
    """Split trainable parameters into a decay group and a no-decay group, each tagged with `decay`; returns the
    groups and the parameters that decay.

    Matrices and conv kernels (ndim >= 2) decay; biases and norm scales/shifts (ndim < 2) don't, because shrinking
    them towards zero does not limit capacity and only fights the normalisation (the split timm and nanoGPT use).
    Without weight decay the two groups would differ in nothing, so there is one: one fused update per step
    instead of two (on CPU that was 6% of a digits MLP's step); the split still tells explicit L1/L2 penalties
    what to cover (`decayed_params`).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if decay_norm_and_bias or p.ndim >= 2]
    no_decay = [p for p in params if not (decay_norm_and_bias or p.ndim >= 2)]
    if weight_decay == 0.0 and decay and no_decay:
        return [{"params": params, "weight_decay": 0.0, "decay": "mixed"}], decay
    groups = [
        {"params": decay, "weight_decay": weight_decay, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]
    # torch rejects an empty param group, and a model may have only one kind of parameter.
    return [g for g in groups if g["params"]], decay


def create_optimizer(factory: Callable[..., torch.optim.Optimizer] | type[torch.optim.Optimizer], model: nn.Module,
                     **group_options: Any) -> torch.optim.Optimizer:
    """Build the optimizer `factory` makes over the trainable parameters of `model`.

    `factory` is an Optimizer subclass or a functools.partial of one with its options as keywords. Its options are
    checked against `optimizer_spec` (ValueError naming `optimizer.<key>`). `group_options` are dlx's own keys
    (`param_group_options`): biases and norm parameters get no weight decay unless `decay_norm_and_bias`.
    """
    cls = optimizer_class(factory)
    split = param_group_options(**group_options)
    options = dict(factory.keywords) if isinstance(factory, functools.partial) else {}
    if isinstance(options.get("betas"), Sequence) and not isinstance(options["betas"], str):
        # Configs deliver lists (an OmegaConf ListConfig without _convert_), and `betas: [0, 0.99]` parses 0 as an
        # int, which torch's Adam rejects ("both floats or both Tensors"); torch documents and checkpoints betas
        # as a tuple of floats.
        options["betas"] = [float(b) if isinstance(b, int) and not isinstance(b, bool) else b for b in options["betas"]]
    found = problems(optimizer_spec(cls), options, "optimizer") + option_problems(cls, options)
    if found:
        raise ValueError("; ".join(found))
    if "betas" in options:
        options["betas"] = tuple(options["betas"])

    # an optimizer without weight decay (a user's may have none) keeps the key in its groups unread, as torch
    # keeps `decay`
    known = optimizer_spec(cls).get("weight_decay")
    default = known.default if known is not None and known.default is not dataclasses.MISSING else 0.0
    weight_decay = float(options.get("weight_decay", default))
    groups, decay = _param_groups(model, weight_decay, split["decay_norm_and_bias"])
    if not groups:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters to optimize")
    if not {"foreach", "fused"} & set(options):  # a Python caller's own choice stands
        options.update(fastest_implementation(cls, {p.device for g in groups for p in g["params"]}))
    optimizer = cls(groups, **options)
    optimizer.dlx_decayed = decay
    return optimizer


def decayed_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters in the groups tagged `decay=True`, the ones an explicit L1/L2 penalty should cover.

    A group without the tag (an optimizer not built by `create_optimizer`) counts as decayed, matching torch, where
    weight_decay applies to every group.
    """
    if hasattr(optimizer, "dlx_decayed"):  # built here: the split is known even when the groups are merged
        return list(optimizer.dlx_decayed)
    return [p for g in optimizer.param_groups if g.get("decay", True) for p in g["params"]]

"""Optimizers by name, with the knobs each one accepts.

Each optimizer is registered with the keyword arguments it takes (and their defaults), so the factory rejects a
knob the optimizer does not have with a readable error instead of passing it through to torch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["OptimInfo", "create_optimizer", "decayed_params", "fastest_implementation", "get_optimizer_info",
           "list_optimizers"]

# Accepted by every optimizer; listed after the optimizer's own knobs in error messages.
_COMMON = ("lr", "weight_decay", "decay_norm_and_bias")


@dataclass(frozen=True)
class OptimInfo:
    """What the factory needs to know about one optimizer.

    `defaults` are the knobs a user may set and the values used when they don't; `fixed` are keyword arguments
    always passed and never user-settable (they are what distinguishes e.g. "nesterov" from "momentum").
    """

    name: str
    cls: type[torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    has_momentum: bool = False
    has_betas: bool = False

    @property
    def valid_kwargs(self) -> list[str]:
        """Every keyword `create_optimizer` accepts for this optimizer, in the order error messages list them."""
        return [*self.defaults, *_COMMON]


def _info(name: str, cls: type[torch.optim.Optimizer], defaults: dict | None = None, fixed: dict | None = None,
          has_momentum: bool = False, has_betas: bool = False) -> tuple[str, OptimInfo]:
    return name, OptimInfo(name, cls, dict(defaults or {}), dict(fixed or {}), has_momentum, has_betas)


_ADAM_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}

_REGISTRY: dict[str, OptimInfo] = dict(
    [
        _info("adadelta", torch.optim.Adadelta, {"rho": 0.9, "eps": 1e-6}),
        _info("adagrad", torch.optim.Adagrad, {"lr_decay": 0.0, "eps": 1e-10, "initial_accumulator_value": 0.0}),
        _info("adam", torch.optim.Adam, _ADAM_DEFAULTS, has_betas=True),
        # torch.optim.AdamW decouples weight decay from the gradient; torch.optim.Adam adds it to the gradient.
        _info("adamw", torch.optim.AdamW, _ADAM_DEFAULTS, has_betas=True),
        _info("momentum", torch.optim.SGD, {"momentum": 0.9, "dampening": 0.0}, {"nesterov": False},
              has_momentum=True),
        # torch refuses nesterov with dampening != 0, so dampening is not a knob here.
        _info("nesterov", torch.optim.SGD, {"momentum": 0.9}, {"nesterov": True, "dampening": 0.0},
              has_momentum=True),
        _info("rmsprop", torch.optim.RMSprop, {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False},
              has_momentum=True),
        # Plain SGD: pinning momentum to 0 keeps "sgd" meaning the textbook update whatever torch's default becomes.
        _info("sgd", torch.optim.SGD, {}, {"momentum": 0.0, "nesterov": False}),
    ]
)


def list_optimizers() -> list[str]:
    """Names accepted by `create_optimizer`, sorted."""
    return sorted(_REGISTRY)


def get_optimizer_info(name: str) -> OptimInfo:
    """The registry entry for `name`; raises ValueError listing the valid names when there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(list_optimizers())}") from None


def fastest_implementation(cls: type[torch.optim.Optimizer], devices: set[torch.device]) -> dict[str, bool]:
    """The fastest update torch has for parameters on `devices`: on CPU the fused kernel (one pass over each
    tensor) where the optimizer has one, else the multi-tensor (foreach) one; on an accelerator foreach, as
    torch picks by default there. Parameters spread over several devices get torch's own choice.

    Median optimizer step, 1 thread, 64-256-256-10 MLP, foreach -> fused: adam 268 -> 98 us, adamw 264 -> 92,
    adagrad 195 -> 78, momentum 80 -> 51, nesterov 94 -> 47, sgd 41 -> 37 (a digits MLP epoch 19% shorter with
    Adam). Earlier, default -> foreach on CPU (2 threads, 40-w-w-10 MLP with LayerNorm, batch 128, w=32 | w=256):
    adam 274->215 | 395->302, rmsprop 231->162 | 412->318, adadelta 1837->1715 | 690->539.
    A checkpoint keeps the choice in its param groups, so a resumed run updates as it started.
    """
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


def create_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    decay_norm_and_bias: bool = False,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build optimizer `name` over the trainable parameters of `model`.

    `kwargs` are the optimizer's own knobs (see `get_optimizer_info(name).defaults`); a knob it does not have raises
    ValueError listing the valid ones. `weight_decay` is torch's own: added to the gradient for every optimizer but
    adamw, which decouples it. Biases and norm parameters get no weight decay unless `decay_norm_and_bias`.
    """
    info = get_optimizer_info(name)
    unknown = [k for k in kwargs if k not in info.defaults]
    if unknown:
        raise ValueError(
            f"optimizer {name!r} has no option {unknown[0]!r}; valid: {', '.join(info.valid_kwargs)}"
        )
    options = {**info.defaults, **kwargs, **info.fixed}
    if "betas" in options:
        # Configs (YAML, Hydra) deliver lists, and `betas: [0, 0.99]` parses 0 as an int, which torch's Adam
        # rejects ("both floats or both Tensors"); torch documents and checkpoints betas as a tuple of floats.
        options["betas"] = tuple(float(b) for b in options["betas"])

    groups, decay = _param_groups(model, float(weight_decay), decay_norm_and_bias)
    if not groups:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters to optimize")
    options.update(fastest_implementation(info.cls, {p.device for g in groups for p in g["params"]}))
    optimizer = info.cls(groups, lr=float(lr), **options)
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

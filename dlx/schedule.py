"""Learning-rate schedules as pure functions of the global step.

Every schedule maps the 0-based optimizer step to a multiplier of each param group's base lr (nanoGPT's
`get_lr(it)`), so resuming needs no replay: the lr at step s is the same however the run got there. Only plateau,
which reacts to validation metrics, carries state; `state_dict` holds it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LRSchedule", "create_scheduler", "list_schedulers"]

_COMMON = ("steps_per_epoch", "epochs", "warmup_epochs", "warmup_start_factor")

# Knobs of each schedule and their defaults; anything else is rejected by name.
_KNOBS: dict[str, dict[str, Any]] = {
    "constant": {},
    "cosine": {"min_lr_ratio": 0.0},
    "cosine_restarts": {"t0_epochs": 10, "t_mult": 2, "min_lr_ratio": 0.0},
    "exponential": {"gamma": 0.95},
    "multistep": {"milestones": [30, 60], "gamma": 0.1},
    "onecycle": {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "anneal": "cos"},
    "plateau": {"monitor": "val/loss", "mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4,
                "min_lr_ratio": 0.0},
    "step": {"step_size": 30, "gamma": 0.1},
}

Curve = Callable[[int], float]


def list_schedulers() -> list[str]:
    """Names accepted by `create_scheduler`, sorted."""
    return sorted(_KNOBS)


def _flat(step: int) -> float:
    return 1.0


def _per_epoch(steps_per_epoch: int, by_epoch: Callable[[int], float]) -> Curve:
    # Epoch-granular schedules only see whole epochs, so the lr is constant within an epoch.
    return lambda step: by_epoch(step // steps_per_epoch)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _linear_anneal(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


def _cosine(total: int, min_lr_ratio: float) -> Curve:
    def curve(t: int) -> float:
        # Past the end the lr stays at its floor rather than climbing back up the cosine.
        return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * min(t, total) / total)) / 2

    return curve


def _cosine_restarts(period: int, t_mult: int, min_lr_ratio: float) -> Curve:
    def curve(t: int) -> float:
        if t_mult == 1:
            return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * (t % period) / period)) / 2
        # Integer walk over the (geometrically growing, so few) cycles instead of torch's log formula, which can
        # land one cycle off at a boundary.
        t_i = period
        while t >= t_i:
            t -= t_i
            t_i *= t_mult
        return min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * t / t_i)) / 2

    return curve


def _onecycle(total: int, pct_start: float, div_factor: float, final_div_factor: float, anneal: str) -> Curve:
    anneal_fn = _cos_anneal if anneal == "cos" else _linear_anneal
    start, peak = 1.0 / div_factor, 1.0
    end = start / final_div_factor
    # Same phase boundaries as torch's OneCycleLR (peak at step pct_start * total - 1). Only the lr cycles: moving
    # momentum/betas too (torch's cycle_momentum) would override the optimizer's configured knobs.
    up_end = float(pct_start * total) - 1
    down_end = float(total - 1)

    def curve(t: int) -> float:
        t = min(t, total - 1)
        if t <= up_end:
            return anneal_fn(start, peak, t / up_end) if up_end > 0 else peak
        return anneal_fn(peak, end, (t - up_end) / (down_end - up_end))

    return curve


class _Plateau:
    """ReduceLROnPlateau's bookkeeping ('rel' threshold, no cooldown) acting on a shared lr multiplier."""

    def __init__(self, monitor: str, mode: str, factor: float, patience: int, threshold: float, min_lr_ratio: float):
        self.monitor, self.mode, self.factor = monitor, mode, factor
        self.patience, self.threshold, self.min_lr_ratio = patience, threshold, min_lr_ratio
        self.scale = 1.0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0

    def update(self, metric: float) -> None:
        better = (metric < self.best * (1 - self.threshold) if self.mode == "min"
                  else metric > self.best * (1 + self.threshold))
        if better:
            self.best, self.num_bad_epochs = metric, 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            # torch also skips reductions smaller than 1e-8 in absolute lr; with one multiplier shared by all groups
            # that per-group rule cannot hold, and it only matters once the lr is already ~1e-8.
            self.scale = max(self.scale * self.factor, self.min_lr_ratio)
            self.num_bad_epochs = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "num_bad_epochs": self.num_bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best = float(state["scale"]), float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])


class LRSchedule:
    """Sets each param group's lr to base_lr * multiplier(step); create it with `create_scheduler`.

    The multiplier is linear warmup (per batch, from `warmup_start_factor` to 1 over the first `warmup_steps`)
    times the schedule's curve times, for plateau, the reduction so far. Epoch-granular curves see
    `step // steps_per_epoch`; cosine, cosine_restarts and onecycle see the step counted from the end of warmup.
    """

    def __init__(self, name: str, optimizer: torch.optim.Optimizer, curve: Curve, *, steps_per_epoch: int,
                 warmup_steps: int, warmup_start_factor: float, plateau: _Plateau | None = None):
        self.name = name
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.monitor: str | None = plateau.monitor if plateau else None
        self._curve = curve
        self._plateau = plateau
        # setdefault, as torch's schedulers do: an optimizer restored from a checkpoint holds the mid-run lr in
        # "lr" but the true base in "initial_lr".
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", float(group["lr"]))
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_step = -1
        # Like torch, the lr is right for step 0 as soon as the schedule exists (useful for logging).
        self._apply(0)

    def multiplier(self, step: int) -> float:
        """Factor applied to every base lr at global 0-based `step`."""
        warm = 1.0
        if step < self.warmup_steps:
            warm = self.warmup_start_factor + (1 - self.warmup_start_factor) * step / self.warmup_steps
        scale = self._plateau.scale if self._plateau else 1.0
        return warm * self._curve(step) * scale

    def _apply(self, step: int) -> None:
        m = self.multiplier(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * m

    def step_batch(self, step: int) -> None:
        """Set the lr for global 0-based `step`; call before every optimizer step."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.last_step = step
        self._apply(step)

    def step_epoch(self, epoch: int, metric: float | None = None) -> None:
        """Report the end of 0-based `epoch` with its validation `metric`; only plateau uses it."""
        if self._plateau is None:
            return
        if metric is None:
            raise ValueError(f"scheduler 'plateau' needs the {self.monitor!r} metric in step_epoch")
        self._plateau.update(float(metric))
        # Show the reduced lr right away (e.g. in the epoch's log), as it will be at the next epoch's first step.
        self._apply((epoch + 1) * self.steps_per_epoch)

    @property
    def lr(self) -> float:
        """Current lr of the first param group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        """Plain python containers, safe for torch.save with weights_only=True."""
        state = {"name": self.name, "base_lrs": list(self.base_lrs), "last_step": self.last_step}
        if self._plateau is not None:
            state["plateau"] = self._plateau.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a schedule re-created with the same arguments; the next `step_batch` continues the run."""
        if state.get("name") != self.name:
            raise ValueError(f"state is for scheduler {state.get('name')!r}, this schedule is {self.name!r}")
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"state has {len(state['base_lrs'])} base lrs but the optimizer has "
                f"{len(self.optimizer.param_groups)} param groups"
            )
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base
        if self._plateau is not None:
            self._plateau.load_state_dict(state["plateau"])
        self.last_step = int(state["last_step"])
        if self.last_step >= 0:
            self._apply(self.last_step)


def _check_knobs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if name not in _KNOBS:
        raise ValueError(f"unknown scheduler {name!r}; valid: {', '.join(list_schedulers())}")
    knobs = _KNOBS[name]
    unknown = [k for k in kwargs if k not in knobs]
    if unknown:
        valid = ", ".join([*knobs, *_COMMON])
        raise ValueError(f"scheduler {name!r} has no option {unknown[0]!r}; valid: {valid}")
    return {**knobs, **kwargs}


def _choice(name: str, key: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"scheduler {name!r}: {key}={value!r} is not one of {', '.join(valid)}")
    return value


def create_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = 0.0,
    **kwargs: Any,
) -> LRSchedule:
    """Build schedule `name` for `optimizer`, whose current group lrs become the base (peak, for onecycle) lrs.

    `kwargs` are the schedule's own knobs; an unknown one raises ValueError listing the valid ones. Epoch-valued
    knobs (step_size, milestones, t0_epochs, warmup_epochs) count epochs; warmup may be fractional.
    """
    k = _check_knobs(name, kwargs)
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}")
    if warmup_epochs < 0 or not 0.0 <= warmup_start_factor <= 1.0:
        raise ValueError(f"need warmup_epochs >= 0 and 0 <= warmup_start_factor <= 1, got {warmup_epochs} and "
                         f"{warmup_start_factor}")
    total = steps_per_epoch * epochs
    warmup = round(warmup_epochs * steps_per_epoch)

    def after_warmup(curve: Curve) -> Curve:
        # Per-step curves start once warmup ends so the peak lr is reached exactly when warmup hands over.
        return lambda step: curve(max(step - warmup, 0))

    plateau = None
    if name == "constant":
        curve: Curve = _flat
    elif name == "step":
        step_size, gamma = int(k["step_size"]), float(k["gamma"])
        if step_size < 1:
            raise ValueError(f"scheduler 'step': step_size must be >= 1, got {step_size}")
        curve = _per_epoch(steps_per_epoch, lambda epoch: gamma ** (epoch // step_size))
    elif name == "multistep":
        # Sorted, duplicates kept: torch's MultiStepLR applies gamma once per listed milestone.
        milestones, gamma = sorted(int(m) for m in k["milestones"]), float(k["gamma"])
        curve = _per_epoch(steps_per_epoch, lambda epoch: gamma ** bisect.bisect_right(milestones, epoch))
    elif name == "exponential":
        gamma = float(k["gamma"])
        curve = _per_epoch(steps_per_epoch, lambda epoch: gamma**epoch)
    elif name == "cosine":
        curve = after_warmup(_cosine(max(total - warmup, 1), float(k["min_lr_ratio"])))
    elif name == "cosine_restarts":
        period, t_mult = round(float(k["t0_epochs"]) * steps_per_epoch), float(k["t_mult"])
        if period < 1 or not t_mult.is_integer() or t_mult < 1:
            raise ValueError(f"scheduler 'cosine_restarts' needs t0_epochs * steps_per_epoch >= 1 and an integer "
                             f"t_mult >= 1, got {k['t0_epochs']} and {k['t_mult']!r}")
        curve = after_warmup(_cosine_restarts(period, int(t_mult), float(k["min_lr_ratio"])))
    elif name == "onecycle":
        if warmup:
            # Its first phase is the warmup; stacking a second one would start at warmup_start_factor / div_factor.
            raise ValueError("scheduler 'onecycle' warms up by itself (pct_start); set warmup_epochs to 0")
        if not 0.0 <= float(k["pct_start"]) <= 1.0:
            raise ValueError(f"scheduler 'onecycle': pct_start must be in [0, 1], got {k['pct_start']}")
        anneal = _choice(name, "anneal", k["anneal"], ("cos", "linear"))
        curve = _onecycle(total, float(k["pct_start"]), float(k["div_factor"]), float(k["final_div_factor"]), anneal)
    else:  # plateau
        mode = _choice(name, "mode", k["mode"], ("min", "max"))
        plateau = _Plateau(str(k["monitor"]), mode, float(k["factor"]), int(k["patience"]), float(k["threshold"]),
                           float(k["min_lr_ratio"]))
        curve = _flat
    return LRSchedule(name, optimizer, curve, steps_per_epoch=steps_per_epoch, warmup_steps=warmup,
                      warmup_start_factor=warmup_start_factor, plateau=plateau)

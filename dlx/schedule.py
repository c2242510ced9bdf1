"""Learning-rate schedules as pure functions of the global step.

Every schedule maps the 0-based optimizer step to a multiplier of each param group's base lr (nanoGPT's
`get_lr(it)`), so resuming needs no replay: the lr at step s is the same however the run got there. Only plateau,
which reacts to validation metrics, carries state; `state_dict` holds it.

Each built-in schedule is a public function whose keyword parameters are its options (type, default and range:
the one home dlx.options reads) and which returns a `Shape`; conf/scheduler/<name>.yaml names it as `_target_`.
`create_scheduler` lays a shape over a run, or wraps a user's torch.optim.lr_scheduler class in the same interface.
"""

from __future__ import annotations

import bisect
import enum
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from dlx.config import Mode
from dlx.options import Items, Range, problems, spec

Curve = Callable[[int], float]
Gamma = Annotated[float, Range(gt=0, le=1)]
Ratio = Annotated[float, Range(ge=0, le=1)]
Epochs = Annotated[int, Range(ge=1)]
# the metric a user's ReduceLROnPlateau reads: its own signature has no monitor
TORCH_PLATEAU_MONITOR = "val/loss"


class Anneal(str, enum.Enum):
    cos = "cos"
    linear = "linear"


@dataclass(frozen=True)
class Span:
    """The run a schedule is laid over, in optimizer steps."""

    steps_per_epoch: int
    total: int
    warmup: int

    def per_epoch(self, by_epoch: Callable[[int], float]) -> Curve:
        # Epoch-granular schedules only see whole epochs, so the lr is constant within an epoch.
        return lambda step: by_epoch(step // self.steps_per_epoch)

    def after_warmup(self, curve: Curve) -> Curve:
        # Per-step curves start once warmup ends so the peak lr is reached exactly when warmup hands over.
        return lambda step: curve(max(step - self.warmup, 0))


@dataclass(frozen=True)
class Shape:
    """What a schedule function returns: its multiplier curve for a span; plateau's settings for plateau."""

    curve: Callable[[Span], Curve]
    plateau: Mapping[str, Any] | None = None


def warmup_options(*, warmup_epochs: Annotated[float, Range(ge=0)] = 0.0,
                   warmup_start_factor: Annotated[float, Range(ge=0, le=1)] = 0.0) -> dict:
    """dlx's own keys of the scheduler group: a per-batch linear warmup from lr * warmup_start_factor to lr over
    warmup_epochs (may be fractional), multiplying the schedule."""
    values = {"warmup_epochs": warmup_epochs, "warmup_start_factor": warmup_start_factor}
    _raise(problems(spec(warmup_options), values, "scheduler"))
    return {k: float(v) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------- the schedules
def constant() -> Shape:
    """The optimizer's lr throughout."""
    return Shape(lambda span: _flat)


def step(*, step_size: Epochs = 10, gamma: Gamma = 0.1) -> Shape:
    """Multiply the lr by gamma every step_size epochs."""
    return Shape(lambda span: span.per_epoch(lambda epoch: gamma ** (epoch // step_size)))


def multistep(*, milestones: Annotated[list[int], Items(each=Range(ge=1), increasing=True)] = (10, 15),
              gamma: Gamma = 0.1) -> Shape:
    """Multiply the lr by gamma at each milestone epoch; a repeated milestone applies gamma again, as torch's
    MultiStepLR does."""
    marks = [int(m) for m in milestones]
    return Shape(lambda span: span.per_epoch(lambda epoch: gamma ** bisect.bisect_right(marks, epoch)))


def exponential(*, gamma: Gamma = 0.9) -> Shape:
    """Multiply the lr by gamma after every epoch."""
    return Shape(lambda span: span.per_epoch(lambda epoch: gamma**epoch))


def cosine(*, min_lr_ratio: Ratio = 0.0) -> Shape:
    """Cosine annealing from lr to lr * min_lr_ratio over the run after warmup, per batch."""
    return Shape(lambda span: span.after_warmup(_cosine(max(span.total - span.warmup, 1), min_lr_ratio)))


def cosine_restarts(*, t0_epochs: Epochs = 5, t_mult: Annotated[int, Range(ge=1)] = 2,
                    min_lr_ratio: Ratio = 0.0) -> Shape:
    """Cosine annealing restarted after t0_epochs, each cycle t_mult times longer than the one before."""
    if int(t_mult) != t_mult:
        raise ValueError(f"scheduler.t_mult={t_mult} is not an integer")
    return Shape(lambda span: span.after_warmup(
        _cosine_restarts(t0_epochs * span.steps_per_epoch, int(t_mult), min_lr_ratio)))


def onecycle(*, pct_start: Annotated[float, Range(gt=0, lt=1)] = 0.3,
             div_factor: Annotated[float, Range(ge=1)] = 25.0,
             final_div_factor: Annotated[float, Range(ge=1)] = 1e4, anneal: Anneal = Anneal.cos) -> Shape:
    """From lr / div_factor up to lr over pct_start of the run, then down to that start / final_div_factor."""
    anneal = Anneal(anneal)
    return Shape(lambda span: _onecycle(span.total, pct_start, div_factor, final_div_factor, anneal))


def plateau(*, monitor: str = "val/loss", mode: Mode = Mode.auto,
            factor: Annotated[float, Range(gt=0, lt=1)] = 0.1, patience: Annotated[int, Range(ge=0)] = 3,
            threshold: Annotated[float, Range(ge=0)] = 1e-4, min_lr_ratio: Ratio = 0.0) -> Shape:
    """Multiply the lr by factor when `monitor` has not improved by a relative threshold for patience epochs;
    mode auto: max for accuracies, min for losses."""
    settings = {"monitor": str(monitor), "mode": Mode(mode).value, "factor": factor, "patience": patience,
                "threshold": threshold, "min_lr_ratio": min_lr_ratio}
    return Shape(lambda span: _flat, plateau=settings)


def option_problems(target: Any, options: Mapping[str, Any]) -> list[str]:
    """Rules that join a schedule with dlx's warmup (`options` holds the node's keys, warmup_epochs included);
    `target` is the dotted `_target_` or the callable."""
    if not options.get("warmup_epochs"):
        return []
    name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
    if name == f"{__name__}.onecycle":
        return ["scheduler.warmup_epochs must be 0 with scheduler=onecycle (pct_start is its warmup)"]
    if not name.startswith(f"{__name__}."):
        return [f"scheduler.warmup_epochs must be 0 with scheduler._target_={name} (dlx warms up only its own "
                f"schedules)"]
    return []


# ---------------------------------------------------------------------------------------------- curves
def _flat(step: int) -> float:
    return 1.0


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


def _onecycle(total: int, pct_start: float, div_factor: float, final_div_factor: float, anneal: Anneal) -> Curve:
    anneal_fn = _cos_anneal if anneal is Anneal.cos else _linear_anneal
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


# ---------------------------------------------------------------------------------------------- running schedules
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
        """Report the end of an epoch with its validation `metric`; only plateau uses it."""
        if self._plateau is None:
            return
        if metric is None:
            raise ValueError(f"scheduler 'plateau' needs the {self.monitor!r} metric in step_epoch")
        self._plateau.update(float(metric))
        # Show the reduced lr right away (e.g. in the epoch's log), as the next step will have it. Counted from the
        # last step, not from `epoch`, which callers number from 0 or from 1.
        self._apply(self.last_step + 1)

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
        same_name(state, self.name)
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


def _raise(found: list[str]) -> None:
    if found:
        raise ValueError("; ".join(found))


def same_name(state: dict, name: str) -> None:
    if state.get("name") != name:
        raise ValueError(f"state is for scheduler {state.get('name')!r}, this schedule is {name!r}")


def create_scheduler(factory: Callable, optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int,
                     mode_for: Callable[[str], str] | None = None, **warmup: float) -> LRSchedule:
    """Lay the schedule `factory` makes over a run for `optimizer`, whose group lrs become the base (peak, for
    onecycle) lrs. `factory` is what hydra.utils.instantiate(node, _partial_=True) gives for the scheduler node: a
    partial of a function returning a `Shape` (dlx's schedules) or of a torch.optim.lr_scheduler class, made with
    the optimizer. `warmup`: the keys of `warmup_options`; `mode_for(monitor)` -> "min" or "max" resolves plateau's
    mode auto (dlx.engine.metric_mode). A bad option raises ValueError naming the key and what is allowed."""
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}")
    w = warmup_options(**warmup)
    fn = factory.func if isinstance(factory, functools.partial) else factory
    options = dict(getattr(factory, "keywords", None) or {})
    name = getattr(fn, "__name__", type(fn).__name__)
    found = option_problems(fn, {**options, **w})
    torch_class = isinstance(fn, type) and issubclass(fn, (LRScheduler, ReduceLROnPlateau))
    if not torch_class:
        found += problems(spec(fn), options, "scheduler")
    _raise(found)
    if torch_class:
        per_batch = "steps_per_epoch" in inspect.signature(fn).parameters
        extra = {"steps_per_epoch": steps_per_epoch, "epochs": epochs} if per_batch else {}
        made = factory(optimizer, **{k: v for k, v in extra.items() if k not in options})
        from dlx.torch_schedule import TorchSchedule

        return TorchSchedule(name, made, steps_per_epoch=steps_per_epoch, per_batch=per_batch)
    shape = factory()
    if not isinstance(shape, Shape):
        raise TypeError(f"scheduler {name!r} is neither a torch.optim.lr_scheduler class nor a function returning "
                        f"a dlx.schedule.Shape (it returned a {type(shape).__name__})")
    span = Span(steps_per_epoch, steps_per_epoch * epochs, round(w["warmup_epochs"] * steps_per_epoch))
    reducer = None
    if shape.plateau is not None:
        settings = dict(shape.plateau)
        if settings["mode"] == Mode.auto.value:
            if mode_for is None:
                raise ValueError("scheduler.mode=auto needs mode_for (e.g. dlx.engine.metric_mode) to pick min or "
                                 "max for its monitor")
            settings["mode"] = mode_for(settings["monitor"])
        reducer = _Plateau(**settings)
    return LRSchedule(name, optimizer, shape.curve(span), steps_per_epoch=steps_per_epoch, warmup_steps=span.warmup,
                      warmup_start_factor=w["warmup_start_factor"], plateau=reducer)

"""A torch.optim.lr_scheduler scheduler (a user's `scheduler._target_`) behind dlx's LRSchedule interface."""

from __future__ import annotations

from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from dlx.schedule import TORCH_PLATEAU_MONITOR, same_name


class TorchSchedule:
    """A torch.optim.lr_scheduler scheduler behind LRSchedule's interface. It is stepped once per epoch (at the
    first step of the next epoch, so step_batch alone drives it and a resume lands where it left off), or once
    per step when its signature takes steps_per_epoch (OneCycleLR); ReduceLROnPlateau steps in step_epoch on the
    `val/loss` of the epoch."""

    def __init__(self, name: str, scheduler: LRScheduler, *, steps_per_epoch: int, per_batch: bool):
        self.name, self.scheduler, self.optimizer = name, scheduler, scheduler.optimizer
        self.steps_per_epoch, self.per_batch = steps_per_epoch, per_batch
        self.monitor = TORCH_PLATEAU_MONITOR if isinstance(scheduler, ReduceLROnPlateau) else None
        self.last_step = -1

    def step_batch(self, step: int) -> None:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self.last_step = step
        if self.monitor is None:
            due = step if self.per_batch else step // self.steps_per_epoch
            while self.scheduler.last_epoch < due:
                self.scheduler.step()

    def step_epoch(self, epoch: int, metric: float | None = None) -> None:
        if self.monitor is None:
            return
        if metric is None:
            raise ValueError(f"scheduler {self.name!r} needs the {self.monitor!r} metric in step_epoch")
        self.scheduler.step(float(metric))

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"name": self.name, "last_step": self.last_step, "torch": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        same_name(state, self.name)
        self.scheduler.load_state_dict(state["torch"])
        self.last_step = int(state["last_step"])

"""Early stopping: the monitored validation metric's best epoch, patience, and the best weights kept on the
device to restore."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dlx.tasks import metric_mode


@dataclass
class EarlyStopping:
    monitor: str = "val/loss"
    mode: str = "auto"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict | None = field(default=None, repr=False)

    def update(self, epoch: int, metrics: dict, model: nn.Module) -> bool:
        """Record this epoch's monitored value; True when training should stop."""
        value = metrics[self.monitor]
        sign = 1 if metric_mode(self.monitor, self.mode) == "max" else -1
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.restore_best:  # a copy on the device: restoring costs no transfer
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        keep = ("best", "best_epoch", "bad_epochs", "best_state")
        return {k: getattr(self, k) for k in keep}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)

"""Classification losses on logits and integer labels, with optional label smoothing.

The regression-style losses (mse, mae, huber) and bce compare the logits with (smoothed) one-hot
targets, the square-loss classification of Hui & Belkin (2021); hinge is the multi-class margin loss
of Crammer & Singer as implemented by torch's multi_margin_loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("ce", "bce", "mse", "mae", "huber", "hinge")


def list_losses() -> list[str]:
    return sorted(LOSSES)


def _targets(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    k = logits.shape[-1]
    onehot = F.one_hot(y, k).to(logits.dtype)
    return onehot * (1 - smoothing) + smoothing / k if smoothing else onehot


def create_loss(name: str, *, label_smoothing: float = 0.0) -> LossFn:
    """A function (logits, labels) -> mean loss over the batch."""
    s = float(label_smoothing)
    if name == "ce":
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=s)
    if name == "bce":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, _targets(logits, y, s))
    if name == "mse":
        return lambda logits, y: F.mse_loss(logits, _targets(logits, y, s))
    if name == "mae":
        return lambda logits, y: F.l1_loss(logits, _targets(logits, y, s))
    if name == "huber":
        return lambda logits, y: F.huber_loss(logits, _targets(logits, y, s))
    if name == "hinge":
        if s:
            raise ValueError("regularization.label_smoothing does not apply to trainer.loss=hinge (it takes hard labels)")
        return lambda logits, y: F.multi_margin_loss(logits, y)
    raise ValueError(f"trainer.loss={name!r} is not a loss; valid: {', '.join(list_losses())}")

"""Classification losses on logits and integer labels, with optional label smoothing.

Each built-in loss is a class whose signature holds its options (dlx.options reads them) and whose instances are
callables (logits, labels) -> mean loss over the batch; conf/loss/<name>.yaml names it as `_target_`. The
regression-style losses (mse, mae, huber) and bce compare the logits with (smoothed) one-hot targets, the
square-loss classification of Hui & Belkin (2021); hinge is torch's multi_margin_loss, the multi-class margin
loss of Weston & Watkins (1999), which sums the violations over the wrong classes. A user's loss is any callable
(logits, target) -> scalar tensor.

Sequence outputs (N, T, C) with targets (N, T) are losses per position, averaged over the positions whose
target is not dlx.tasks.IGNORE (padding). Real-valued targets (dlx.tasks.Target.value) are compared with the
outputs directly by mse, mae and huber; ce, bce and hinge take class labels and refuse them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import torch
import torch.nn.functional as F

from dlx.options import Range, problems, spec
from dlx.tasks import IGNORE

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Smoothed:
    """A loss whose targets put label_smoothing of their mass uniformly on all classes."""

    def __init__(self, *, label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0):
        found = problems(spec(type(self)), {"label_smoothing": label_smoothing}, "loss")
        if found:
            raise ValueError("; ".join(found))
        self.label_smoothing = float(label_smoothing)

    def targets(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():  # real-valued targets: the outputs are compared with them as they are
            return y.reshape(logits.shape).to(logits.dtype)
        k, s = logits.shape[-1], self.label_smoothing
        onehot = F.one_hot(y, k).to(logits.dtype)
        return onehot * (1 - s) + s / k if s else onehot

    def compare(self, fn: Callable, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """fn(outputs, targets) averaged over elements, and for sequences over the counted positions."""
        def loss(outputs: torch.Tensor, t: torch.Tensor, reduction: str) -> torch.Tensor:
            value = fn(outputs, self.targets(outputs, t), reduction=reduction)
            return value if reduction == "mean" else value.mean(-1)  # a position's mean over its classes

        return per_position(loss, logits, y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(label_smoothing={self.label_smoothing})"


def labels_only(loss: str, y: torch.Tensor) -> None:
    if y.is_floating_point():
        raise ValueError(f"loss={loss} takes class labels and the data's targets are real numbers: allowed "
                         "loss=mse, mae or huber")


def per_position(loss: Callable[..., torch.Tensor], logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`loss(outputs, targets, reduction)`: its mean for one output per sample; for (N, T, C) outputs and (N, T)
    targets the mean over the positions whose target is not IGNORE of its value per position (reduction "none"),
    weighted by a mask rather than by selecting rows, which would make the host wait for the device every step."""
    if logits.dim() < 3 or y.is_floating_point():
        return loss(logits, y, "mean")
    keep = y != IGNORE
    per = loss(logits.reshape(-1, logits.shape[-1]), y.clamp_min(0).reshape(-1), "none").reshape(y.shape)
    return (per * keep).sum() / keep.sum().clamp_min(1)


class CrossEntropy(_Smoothed):
    """Softmax cross-entropy."""

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels_only("ce", y)
        if logits.dim() > 2:  # per position; torch skips IGNORE (its ignore_index) without a host sync
            logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, ignore_index=IGNORE)


class BinaryCrossEntropy(_Smoothed):
    """A sigmoid and binary cross-entropy per class against the one-hot targets."""

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels_only("bce", y)
        return self.compare(F.binary_cross_entropy_with_logits, logits, y)


class SquaredError(_Smoothed):
    """Mean squared error of the logits against the one-hot targets."""

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.compare(F.mse_loss, logits, y)


class AbsoluteError(_Smoothed):
    """Mean absolute error of the logits against the one-hot targets."""

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.compare(F.l1_loss, logits, y)


class Huber(_Smoothed):
    """Huber loss (delta 1) of the logits against the one-hot targets."""

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.compare(F.huber_loss, logits, y)


class Hinge:
    """Multi-class margin loss; it takes hard labels, so no label smoothing."""

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels_only("hinge", y)
        return per_position(lambda o, t, reduction: F.multi_margin_loss(o, t, reduction=reduction), logits, y)

    def __repr__(self) -> str:
        return "Hinge()"


def label_smoothing_problems(target: Any, options: Mapping[str, Any], label_smoothing: float) -> list[str]:
    """regularization.label_smoothing reaches a loss only through the loss node's own label_smoothing option
    (conf/loss/*.yaml interpolate it): a loss node without one would drop it silently. `target` is the dotted
    `_target_` or the callable; `options` the node's options."""
    if not label_smoothing or "label_smoothing" in options:
        return []
    name = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
    if name == f"{__name__}.{Hinge.__qualname__}":
        return ["regularization.label_smoothing must be 0 with loss=hinge (it takes hard labels)"]
    return [f"regularization.label_smoothing must be 0 with loss._target_={name} (its node has no "
            f"label_smoothing to pass it to)"]


def create_loss(factory: Callable, *, evaluation: bool = False) -> LossFn:
    """The loss function `factory` makes: what hydra.utils.instantiate(node, _partial_=True) gives for the loss
    node. A class (dlx's losses, torch.nn.CrossEntropyLoss) is instantiated with its options and the instance is
    the loss; a function (torch.nn.functional.cross_entropy) is the loss itself, its options bound.

    `evaluation=True` turns label smoothing off where the loss takes it: validation and test losses measure the
    model, not the regularizer.
    """
    fn = factory.func if isinstance(factory, functools.partial) else factory
    if evaluation and "label_smoothing" in _parameters(fn):
        factory = functools.partial(factory, label_smoothing=0.0)
    loss = factory() if isinstance(fn, type) else factory
    if not callable(loss):
        raise TypeError(f"loss {getattr(fn, '__name__', fn)!r} made a {type(loss).__name__}, not a callable "
                        f"(logits, target) -> loss")
    return loss


def _parameters(fn: Callable) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return {}


# the losses that take class labels only: refused for real-valued targets with the configuration
LABELS_ONLY = (CrossEntropy, BinaryCrossEntropy, Hinge)

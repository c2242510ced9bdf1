"""What a sample's target is, and the metrics each kind of target is measured by.

A dataset says what its targets are (`dlx.data.Source.target`); the loop asks the data's Task for its counts
and metrics, so classification, regression and sequence outputs share one loop with no special case in it.

- label: one class index per sample, y int64 (N,); the model returns (N, num_classes) logits.
- value: one real number per sample (regression), y float32 (N,); the model returns (N, 1).
- steps: a class index per input position, causal (a language model): y int64 (N, T); output t may depend on
  inputs 0..t only; the model returns (N, T, num_classes).
- sequence: an output sequence read after the whole input (copy, reverse, translation): y int64 (N, T_out);
  the model returns (N, T_out, num_classes).

`acc` is each kind's headline accuracy (class accuracy; the fraction of values solved, |error| < tolerance;
token accuracy), so checkpoints, sweeps and reports that follow val/acc work for every kind. Target positions
equal to IGNORE count for nothing, in the loss and in the metrics: they pad sequences of unequal length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tensors arrive from the loop; this module is imported by `dlx report` too, without torch
    import torch

IGNORE = -100  # a target position that counts for nothing (torch's cross_entropy ignore_index default)
PAD = 0  # the padding id of token inputs


# words of metric names that are better when larger; everything else (loss, mse, perplexity, bpc, error, time,
# sharpness) is better when smaller, and so is a gap (gap/acc: train minus test accuracy). ssl/output_std is the
# spread of a self-supervised model's outputs: larger is further from collapse
MAXIMISED = ("acc", "solved", "f1", "auc", "precision", "recall", "score", "samples_per_sec", "output_std")


def maximised(metric: str) -> bool:
    """Whether a larger value of the metric is better: the one rule checkpoints, early stopping, schedules,
    sweeps and reports share."""
    name = metric.lower()
    return not name.startswith("gap/") and any(w in name.rpartition("/")[2] for w in MAXIMISED)


def metric_mode(name: str, mode: str = "auto") -> str:
    """'max' for accuracy-like metrics (dlx.tasks.maximised), 'min' for losses and the rest, unless given."""
    if mode != "auto":
        return mode
    return "max" if maximised(name) else "min"


class Target(str, Enum):
    label = "label"
    value = "value"
    steps = "steps"
    sequence = "sequence"


@dataclass(frozen=True)
class Task:
    target: Target = Target.label
    vocab: int | None = None  # token inputs: how many ids (0 is PAD); None: real-valued inputs
    tokens: tuple[str, ...] | None = None  # the string of each id, where the data has them
    tolerance: float | None = None  # value targets: |error| below which an output counts as solved
    target_len: int | None = None  # steps and sequence targets: positions per target

    @property
    def per_position(self) -> bool:
        return self.target in (Target.steps, Target.sequence)

    def output_shape(self, n: int, num_classes: int) -> tuple[int, ...]:
        """The shape a model's output must have for n samples."""
        if self.per_position:
            return (n, self.target_len, num_classes)
        return (n, num_classes)

    def hits(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | int]:
        """(correct, counted) for `acc`: samples for label and value targets, non-ignored positions else."""
        if self.target is Target.value:
            tolerance = self.tolerance if self.tolerance is not None else 0.0
            return ((out.reshape(y.shape) - y).abs() < tolerance).sum(), len(y)
        pred = out.argmax(-1)
        if self.per_position:
            keep = y != IGNORE
            return ((pred == y) & keep).sum(), keep.sum()
        return (pred == y).sum(), len(y)

    def sums(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample sums of the extra metrics over one batch (evaluation only)."""
        if self.target is Target.value:
            return {"mse": ((out.reshape(y.shape).float() - y) ** 2).sum()}
        if self.per_position:
            right = (out.argmax(-1) == y) | (y == IGNORE)
            return {"seq_right": right.all(-1).sum()}
        return {}

    def metrics(self, loss: float, acc: float, sums: dict[str, float], n: int) -> dict[str, float]:
        """The evaluation metrics of a split of n samples from its mean loss, acc and the summed extras."""
        out = {"loss": loss, "acc": acc}
        if self.target is Target.value:
            out.update(mse=sums["mse"] / n, solved=acc)
        elif self.per_position:
            out.update(token_acc=acc, seq_acc=sums["seq_right"] / n,
                       perplexity=math.exp(min(loss, 700.0)), bpc=loss / math.log(2))
        return out


LABELS = Task()  # the task of data sets whose targets are class labels, the default everywhere

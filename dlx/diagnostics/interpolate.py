"""Loss and accuracy along the straight line between two solutions (Goodfellow et al. 2015; Keskar et al.
2017, figure 3): w(alpha) = (1 - alpha) * w_a + alpha * w_b, so alpha = 0 is solution a and alpha = 1 is b."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlx.diagnostics.common import evaluated
from dlx.losses import LossFn


def blend(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for every floating tensor of two state dicts; counters keep a's values."""
    return {k: torch.lerp(v, b[k].to(v.device, v.dtype), alpha) if v.is_floating_point() else v
            for k, v in a.items()}


def interpolate(model: nn.Module, state_a: dict, state_b: dict, loss_fn: LossFn,
                splits: dict[str, tuple[torch.Tensor, torch.Tensor]], alphas: Sequence[float],
                chunk: int = 4096) -> dict[str, dict[str, list[float]]]:
    """{split: {"loss": [...], "acc": [...]}} at each alpha, in eval mode; the model's own state is put back."""
    own = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {name: {"loss": [], "acc": []} for name in splits}
    try:
        with evaluated(model), torch.no_grad():
            for alpha in alphas:
                model.load_state_dict(blend(state_a, state_b, float(alpha)))
                for name, (x, y) in splits.items():
                    loss, correct = 0.0, 0.0
                    for start in range(0, len(x), chunk):
                        logits = model(x[start:start + chunk])
                        yc = y[start:start + chunk]
                        loss += float(loss_fn(logits, yc)) * len(yc)
                        correct += float((logits.argmax(-1) == yc).sum())
                    out[name]["loss"].append(loss / max(1, len(x)))
                    out[name]["acc"].append(correct / max(1, len(x)))
    finally:
        model.load_state_dict(own)
    return out

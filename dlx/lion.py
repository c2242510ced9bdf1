"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of a blend of momentum and
gradient, so every weight moves by exactly lr per step; one state tensor per parameter, Adam has two."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any

import torch

from dlx.optim import RANGES
from dlx.options import checked


class Lion(torch.optim.Optimizer):
    """update = sign(beta1 * m + (1 - beta1) * g); p <- p * (1 - lr * weight_decay) - lr * update;
    m <- beta2 * m + (1 - beta2) * g.

    The sign makes the update's size lr whatever the gradient's scale, larger than Adam's typical step: the paper
    uses an lr 3-10x smaller than AdamW's, and a weight decay as many times larger, to keep lr * weight_decay.
    """

    @checked("optimizer", skip=("params",))
    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], *,
                 lr: Annotated[float, RANGES["lr"]] = 1e-4,
                 betas: Annotated[tuple[float, float], RANGES["betas"]] = (0.9, 0.99),
                 weight_decay: Annotated[float, RANGES["weight_decay"]] = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                if weight_decay:
                    p.mul_(1 - lr * weight_decay)  # decoupled, as in AdamW
                p.add_(torch.lerp(m, p.grad, 1 - beta1).sign_(), alpha=-lr)
                m.lerp_(p.grad, 1 - beta2)
        return loss

"""Epsilon-sharpness (Keskar et al. 2017, On large-batch training for deep learning, metric 2.1 with A = I).

    phi = 100 * (max_{z in C} L(w + z) - L(w)) / (1 + L(w)),   C = { z : |z_i| <= eps * (|w_i| + 1) }

the largest relative increase of the training loss within a box around the weights. Keskar et al.
solve the inner maximisation with L-BFGS-B; here it is a fixed number of projected sign-gradient
ascent steps from z = 0, keeping the highest loss seen. That is a lower bound on the maximum, always
>= 0, exactly 0 at eps = 0, and it grows with eps since the box does.
"""

from __future__ import annotations

import torch
from torch import nn

from dlx.diagnostics.common import chunks, evaluated, mean_loss, trainable
from dlx.losses import LossFn


def eps_sharpness(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-3,
                  steps: int = 10, chunk: int = 4096) -> float:
    """phi in percent. The model is evaluated in eval mode; its weights are put back afterwards."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    params = trainable(model)
    with evaluated(model):
        base = mean_loss(model, loss_fn, x, y, chunk)
        if eps == 0 or steps == 0:
            return 0.0
        original = [p.detach().clone() for p in params]
        bounds = [eps * (w.abs() + 1) for w in original]
        # a step of 2.5 * bound / steps lets the walk reach the box's corner and still turn (Madry et al. 2018)
        rate = 2.5 / steps
        best = base
        try:
            for _ in range(steps):
                grads = [torch.zeros_like(p) for p in params]
                loss = 0.0
                for xc, yc, w in chunks(x, y, chunk):
                    value = loss_fn(model(xc), yc)
                    for acc, g in zip(grads, torch.autograd.grad(value, params, allow_unused=True)):
                        if g is not None:
                            acc.add_(g, alpha=w)
                    loss += w * float(value.detach())
                best = max(best, loss)
                with torch.no_grad():
                    for p, w0, b, g in zip(params, original, bounds, grads):
                        z = (p - w0) + rate * b * g.sign()
                        p.copy_(w0 + torch.maximum(torch.minimum(z, b), -b))
            best = max(best, mean_loss(model, loss_fn, x, y, chunk))
        finally:
            with torch.no_grad():
                for p, w0 in zip(params, original):
                    p.copy_(w0)
    return 100.0 * (best - base) / (1.0 + base)

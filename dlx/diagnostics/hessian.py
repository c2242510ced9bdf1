"""The top eigenvalue of the training-loss Hessian by power iteration on Hessian-vector products.

Hv is the gradient of (grad L . v) (Pearlmutter 1994), so each iteration costs about two backward
passes over the sample and the Hessian is never formed. Power iteration converges to the eigenvalue of
largest magnitude; at (or near) a minimum that is the largest positive one, the curvature of the
sharpest direction that Keskar et al. (2017) and Jastrzebski et al. (2018) relate to batch size.
"""

from __future__ import annotations

import torch
from torch import nn

from dlx.diagnostics.common import chunks, evaluated, trainable
from dlx.losses import LossFn


def hvp(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, vector: list[torch.Tensor],
        chunk: int = 1024) -> list[torch.Tensor]:
    """H v for the Hessian of the mean loss over (x, y) w.r.t. the trainable parameters."""
    params = trainable(model)
    out = [torch.zeros_like(p) for p in params]
    for xc, yc, w in chunks(x, y, chunk):
        loss = loss_fn(model(xc), yc)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector))
        hv = torch.autograd.grad(dot, params, allow_unused=True)
        for o, h in zip(out, hv):
            if h is not None:
                o.add_(h.detach(), alpha=w)
    return out


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((u * v).sum() for u, v in zip(a, b))


def hessian_top_eig(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *, iters: int = 20,
                    tol: float = 1e-3, seed: int = 0, chunk: int = 1024) -> tuple[float, int]:
    """(eigenvalue, iterations used): the Rayleigh quotient v.Hv of the power iteration, stopped after
    `iters` iterations or when it changes by less than `tol` (relative). The model is evaluated in eval
    mode (no dropout; BatchNorm on its running statistics) and left as it was found."""
    params = trainable(model)
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g).to(p.device, p.dtype) for p in params]
    norm = _dot(v, v).sqrt()
    v = [t / norm for t in v]
    eig, done = 0.0, 0
    with evaluated(model):
        for done in range(1, iters + 1):
            hv = hvp(model, loss_fn, x, y, v, chunk)
            new = float(_dot(hv, v))
            norm = float(_dot(hv, hv).sqrt())
            if norm == 0.0:  # v lies in the Hessian's null space: the loss is flat along every direction tried
                return 0.0, done
            v = [t / norm for t in hv]
            converged = done > 1 and abs(new - eig) <= tol * abs(new)
            eig = new
            if converged:
                break
    return eig, done

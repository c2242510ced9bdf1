"""Per-layer activation scale and gradient norm: the depth profiles of Glorot & Bengio (2010) and He et
al. (2015). A layer is one of the model's blocks (`model.blocks`, the hidden blocks of every dlx model)
followed by its head; a model without blocks uses each Linear/Conv module in order."""

from __future__ import annotations

import torch
from torch import nn

from dlx.diagnostics.common import evaluated
from dlx.losses import LossFn

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The model's layers in forward order: its blocks, then its head."""
    if hasattr(model, "blocks"):
        head = [model.head] if hasattr(model, "head") else []
        return [*model.blocks, *head]
    return [m for m in model.modules() if isinstance(m, _WEIGHTED)]


def layer_stats(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                train: bool = True) -> tuple[list[float], list[float]]:
    """(act_std, grad_norm), one value per hidden layer (the head is left out of act_std, it is the logits;
    it is the last entry of grad_norm). act_std[k] is the standard deviation over the batch and units of
    layer k's output; grad_norm[k] is the L2 norm of the loss gradient w.r.t. all of layer k's parameters.
    `train` evaluates as training does (BatchNorm on batch statistics); dropout's random draws and the
    running statistics are restored afterwards, so training goes on exactly as without the diagnostic."""
    layers = layer_modules(model)
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach())) for m in layers[:-1]]
    try:
        with evaluated(model, train=train):
            loss = loss_fn(model(x), y)
            per_layer = [[p for p in m.parameters() if p.requires_grad] for m in layers]
            flat = [p for ps in per_layer for p in ps]
            grads = torch.autograd.grad(loss, flat, allow_unused=True)
            norms, start = [], 0
            for ps in per_layer:
                mine = [g for g in grads[start:start + len(ps)] if g is not None]
                start += len(ps)
                norms.append(float(sum((g.float().pow(2).sum() for g in mine), torch.zeros((), device=x.device)).sqrt()))
    finally:
        for h in hooks:
            h.remove()
    act = [float(o.float().std()) for o in outputs[:len(layers) - 1]]
    return act, norms

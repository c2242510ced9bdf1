"""Per-layer activation scale and gradient norm: the depth profiles of Glorot & Bengio (2010) and He et
al. (2015). A layer is one of the model's blocks (`model.blocks`, the hidden blocks of every dlx model)
followed by its head. A model without blocks (a user's nn.Sequential, a model with an LSTM) uses each
module that holds parameters of its own, in the order its forward pass calls them: the last is taken
for the head."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from dlx.diagnostics.common import evaluated
from dlx.losses import LossFn


def _holds_parameters(module: nn.Module) -> bool:
    # recurse=False: each parameter belongs to exactly one such module, so the layers' gradients partition
    # the model's, whether the module is a leaf (Linear, LSTM, LayerNorm) or a container with its own
    return any(p.requires_grad for p in module.parameters(recurse=False))


def _candidates(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """(modules, ordered): the blocks and head in forward order, or the modules holding parameters in
    attribute order, which need not be the forward order (a head may be defined before the encoder)."""
    if hasattr(model, "blocks"):
        head = [model.head] if hasattr(model, "head") else []
        return [*model.blocks, *head], True
    return [m for m in model.modules() if _holds_parameters(m)], False


def _tensor(out) -> torch.Tensor | None:
    """A module's output, or the first tensor of it (an LSTM returns (output, (h, c)))."""
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out.detach() if isinstance(out, torch.Tensor) else None


@contextlib.contextmanager
def _recording(modules: list[nn.Module]) -> Iterator[dict[nn.Module, torch.Tensor | None]]:
    """Record each module's output at its first call, in call order (a dict keeps insertion order)."""
    seen: dict[nn.Module, torch.Tensor | None] = {}

    def hook(module, _inputs, out):
        if module not in seen:
            seen[module] = _tensor(out)

    hooks = [m.register_forward_hook(hook) for m in modules]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def layer_modules(model: nn.Module, x: torch.Tensor | None = None) -> list[nn.Module]:
    """The model's layers in forward order: its blocks, then its head. For a model without blocks, the
    modules holding parameters in the order one forward pass of the batch `x` calls them (without `x`, in
    attribute order); the model's mode, buffers and random state are left as they were."""
    modules, ordered = _candidates(model)
    if ordered or x is None:
        return modules
    with _recording(modules) as seen, evaluated(model), torch.no_grad():
        model(x)
    return list(seen)


def layer_stats(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                train: bool = True) -> tuple[list[float], list[float]]:
    """(act_std, grad_norm), one value per hidden layer (the head is left out of act_std, it is the logits;
    it is the last entry of grad_norm). act_std[k] is the standard deviation over the batch and units of
    layer k's output (NaN where it is not a tensor); grad_norm[k] is the L2 norm of the loss gradient w.r.t.
    all of layer k's parameters. `train` evaluates as training does (BatchNorm on batch statistics);
    dropout's random draws and the running statistics are restored afterwards, so training goes on exactly
    as without the diagnostic. The forward pass that computes the loss also records the layers' order."""
    modules, ordered = _candidates(model)
    with _recording(modules) as seen, evaluated(model, train=train):
        loss = loss_fn(model(x), y)
        layers = modules if ordered else list(seen)
        # a block owns its sub-modules' parameters; a fallback module only its own (the others are layers)
        per_layer = [[p for p in m.parameters(recurse=ordered) if p.requires_grad] for m in layers]
        flat = [p for ps in per_layer for p in ps]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
        norms, start = [], 0
        for ps in per_layer:
            mine = [g for g in grads[start:start + len(ps)] if g is not None]
            start += len(ps)
            norms.append(float(sum((g.float().pow(2).sum() for g in mine), torch.zeros((), device=x.device)).sqrt()))
    outputs = [seen.get(m) for m in layers[:-1]]
    act = [float(o.float().std()) if o is not None else float("nan") for o in outputs]
    return act, norms

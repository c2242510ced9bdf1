"""Model registry: build any dlx model by name from plain keyword options.

Every model returns logits of shape (N, num_classes) and exposes ``blocks`` (its depth units in
forward order, for per-layer hooks), ``head`` (the final Linear) and ``num_layers``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from torch import nn

from dlx.models.cnn import CNN
from dlx.models.layers import ACTIVATIONS, INITS, NORMS
from dlx.models.mlp import MLP
from dlx.models.resnet import ResNet

__all__ = ["ACTIVATIONS", "INITS", "NORMS", "create_model", "list_models"]

_MODELS: dict[str, type[nn.Module]] = {"cnn": CNN, "mlp": MLP, "resnet": ResNet}

# Filled in by create_model itself, so they are not options a config may set.
_FIXED = ("self", "input_shape", "num_classes")


def list_models() -> list[str]:
    """Names accepted by create_model, sorted."""
    return sorted(_MODELS)


def _options(cls: type[nn.Module]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return sorted(name for name in params if name not in _FIXED)


def create_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """Build model ``name`` for samples of ``input_shape`` and ``num_classes`` classes.

    ``input_shape`` is one sample's shape: (C, H, W) images, (C, L) sequences or (F,) tabular
    features. ``kwargs`` are the model's options (width, depth, norm, activation, dropout, init and
    model-specific ones); an unknown name or option raises ValueError listing the valid ones.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
    cls = _MODELS[name]
    valid = _options(cls)
    for key in kwargs:
        if key not in valid:
            raise ValueError(f"model {name!r} has no option {key!r}; valid: {', '.join(valid)}")
    # Config systems hand over list-like shapes (e.g. OmegaConf ListConfig); models expect a tuple.
    if not isinstance(input_shape, Sequence) or not input_shape:
        raise ValueError(
            f"input_shape={input_shape!r} is not valid; it must be a non-empty sequence of sizes"
        )
    shape = tuple(int(s) for s in input_shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"input_shape={shape} is not valid; every size must be >= 1")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not valid; it must be an integer >= 1")
    return cls(input_shape=shape, num_classes=num_classes, **kwargs)

"""Multi-layer perceptron: flatten, ``depth`` hidden blocks, linear head."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlx.models.layers import check_common, check_int, init_weights, make_activation, make_norm


class MLP(nn.Module):
    """Fully connected classifier over the flattened input.

    Each hidden block is Linear -> norm -> activation -> dropout; ``depth=0`` leaves only the head,
    i.e. multinomial logistic regression.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 128,
        depth: int = 2,
        norm: str = "none",
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
    ):
        super().__init__()
        dropout = check_common(norm=norm, activation=activation, dropout=dropout, init=init)
        if norm == "instance":
            raise ValueError(
                "model.norm=instance needs feature maps; mlp has none; use cnn or resnet, or norm=layer"
            )
        check_int("model.width", width, minimum=1)
        check_int("model.depth", depth, minimum=0)
        in_features = math.prod(input_shape)

        blocks = []
        for _ in range(depth):
            blocks.append(
                nn.Sequential(
                    # A norm right after the Linear re-centres its output, so the bias would be dead weight.
                    nn.Linear(in_features, width, bias=norm == "none"),
                    make_norm(norm, width, spatial_dims=0),
                    make_activation(activation),
                    nn.Dropout(dropout),
                )
            )
            in_features = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(in_features, num_classes)
        self.num_layers = len(self.blocks)
        init_weights(self, init=init, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

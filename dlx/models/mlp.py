"""Multi-layer perceptron: flatten, ``depth`` hidden blocks, linear head."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
from torch import nn

from dlx.models.layers import (
    Activation,
    Dropout,
    Init,
    Norm,
    Width,
    check_io,
    checked_options,
    choice,
    init_weights,
    make_activation,
    make_norm,
    member,
)
from dlx.options import Range


class MLP(nn.Module):
    """Fully connected classifier over the flattened input.

    Each hidden block is Linear -> norm -> activation -> dropout; ``depth=0`` leaves only the head,
    i.e. multinomial logistic regression.
    """

    @checked_options
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        width: Width = 256,
        depth: Annotated[int, Range(ge=0)] = 2,  # hidden blocks; 0 is logistic regression
        norm: Norm = Norm.none,
        activation: Activation = Activation.relu,
        dropout: Dropout = 0.0,
        init: Init = Init.default,
    ):
        super().__init__()
        input_shape = check_io(input_shape, num_classes)
        norm = member(Norm, "model.norm", norm)
        in_features = math.prod(input_shape)

        blocks = []
        for _ in range(depth):
            blocks.append(
                nn.Sequential(
                    # A norm right after the Linear re-centres its output, so the bias would be dead weight.
                    nn.Linear(in_features, width, bias=norm is Norm.none),
                    make_norm(norm, width, spatial_dims=0),
                    make_activation(activation),
                    nn.Dropout(float(dropout)),
                )
            )
            in_features = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(in_features, num_classes)
        self.num_layers = len(self.blocks)
        init_weights(self, init=init, activation=activation)

    @staticmethod
    def option_problems(options: dict) -> list[str]:
        """Rules that join options or depend on the model, beyond each option's own range and choices."""
        if choice(options.get("norm")) != Norm.instance.value:
            return []
        allowed = ", ".join(n.value for n in Norm if n is not Norm.instance)
        return [f"model.norm=instance needs feature maps and mlp has none: allowed {allowed} "
                "(or model=cnn / model=resnet)"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

"""LeNet-style convolutional network for images (C, H, W) and sequences (C, L)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlx.models.layers import (
    check_choice,
    check_common,
    check_int,
    conv_class,
    conv_out_size,
    init_weights,
    make_activation,
    make_norm,
    spatial_input,
)

POOLS = ("max", "avg", "none")


def _pool(kind: str, spatial_dims: int) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(2) if spatial_dims == 2 else nn.MaxPool1d(2)
    return nn.AvgPool2d(2) if spatial_dims == 2 else nn.AvgPool1d(2)


class CNN(nn.Module):
    """``depth`` conv blocks, then one hidden fully connected block and a linear head.

    Conv block i has ``width * 2**i`` channels: Conv -> norm -> activation -> pool(2). The pool is
    left out once the map is too small to halve, so deep stacks still fit small inputs such as
    8x8 digits. The hidden block is flatten -> Linear(hidden) -> activation -> dropout.
    """

    def __init__(
        self,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 32,
        depth: int = 2,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        pool: str = "max",
        hidden: int = 128,
        norm: str = "none",
        activation: str = "relu",
        dropout: float = 0.0,
        init: str = "default",
    ):
        super().__init__()
        spatial_dims = spatial_input("cnn", input_shape)
        dropout = check_common(norm=norm, activation=activation, dropout=dropout, init=init)
        check_choice("model.pool", pool, POOLS)
        check_int("model.width", width, minimum=1)
        check_int("model.depth", depth, minimum=1)
        check_int("model.kernel_size", kernel_size, minimum=1)
        check_int("model.stride", stride, minimum=1)
        check_int("model.padding", padding, minimum=0)
        check_int("model.hidden", hidden, minimum=1)

        # Track the map size by arithmetic rather than a dry forward pass: it is exact, needs no
        # tensors, and tells us up front whether a pool still fits.
        channels, sizes = input_shape[0], list(input_shape[1:])
        conv = conv_class(spatial_dims)
        blocks = []
        for i in range(depth):
            out_channels = width * 2**i
            sizes = [conv_out_size(s, kernel_size=kernel_size, stride=stride, padding=padding) for s in sizes]
            if min(sizes) < 1:
                raise ValueError(
                    f"model.depth={depth} with kernel_size={kernel_size}, stride={stride}, padding={padding} "
                    f"shrinks the input {tuple(input_shape)} to nothing at conv block {i + 1}; "
                    "use a smaller model.depth or model.stride, or more model.padding"
                )
            if norm == "instance" and math.prod(sizes) == 1:
                # InstanceNorm cannot normalise a single value per channel and fails in training.
                raise ValueError(
                    f"model.norm=instance needs maps larger than 1 element, but conv block {i + 1} of "
                    f"model.depth={depth} sees {tuple(sizes)}; use a smaller model.depth or another "
                    "model.norm (batch, layer, group)"
                )
            layers = [
                # The norm's own shift makes a conv bias redundant.
                conv(
                    channels, out_channels, kernel_size, stride=stride, padding=padding, bias=norm == "none"
                ),
                make_norm(norm, out_channels, spatial_dims=spatial_dims),
                make_activation(activation),
            ]
            if pool != "none" and min(sizes) >= 2:
                layers.append(_pool(pool, spatial_dims))
                sizes = [s // 2 for s in sizes]
            blocks.append(nn.Sequential(*layers))
            channels = out_channels

        blocks.append(
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * math.prod(sizes), hidden),
                make_activation(activation),
                nn.Dropout(dropout),
            )
        )
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(hidden, num_classes)
        self.num_layers = len(self.blocks)
        init_weights(self, init=init, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

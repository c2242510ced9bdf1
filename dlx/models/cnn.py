"""LeNet-style convolutional network for images (C, H, W) and sequences (C, L)."""

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
    Pool,
    Width,
    check_io,
    checked_options,
    conv_class,
    conv_out_size,
    init_weights,
    make_activation,
    make_norm,
    member,
    spatial_input,
)
from dlx.options import Range


def _pool(kind: Pool, spatial_dims: int) -> nn.Module:
    if kind is Pool.max:
        return nn.MaxPool2d(2) if spatial_dims == 2 else nn.MaxPool1d(2)
    return nn.AvgPool2d(2) if spatial_dims == 2 else nn.AvgPool1d(2)


class CNN(nn.Module):
    """``depth`` conv blocks, then one hidden fully connected block and a linear head.

    Conv block i has ``width * 2**i`` channels: Conv -> norm -> activation -> pool(2). The pool is
    left out once the map is too small to halve, so deep stacks still fit small inputs such as
    8x8 digits. The hidden block is flatten -> Linear(hidden) -> activation -> dropout.
    """

    @checked_options
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        width: Width = 32,  # channels of the first conv block
        depth: Annotated[int, Range(ge=1, note="(depth 0 is an mlp)")] = 2,  # conv blocks
        kernel_size: Annotated[int, Range(ge=1)] = 3,
        stride: Annotated[int, Range(ge=1)] = 1,
        padding: Annotated[int, Range(ge=0)] = 1,
        pool: Pool = Pool.max,  # 2x2, skipped once the map is 1 wide
        hidden: Annotated[int, Range(ge=1)] = 128,  # units of the fully connected layer before the head
        norm: Norm = Norm.none,
        activation: Activation = Activation.relu,
        dropout: Dropout = 0.0,  # before the head
        init: Init = Init.default,
    ):
        super().__init__()
        input_shape = check_io(input_shape, num_classes)
        spatial_dims = spatial_input("cnn", input_shape)
        norm, pool = member(Norm, "model.norm", norm), member(Pool, "model.pool", pool)

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
                    f"shrinks the input {input_shape} to nothing at conv block {i + 1}; "
                    "use a smaller model.depth or model.stride, or more model.padding"
                )
            if norm is Norm.instance and math.prod(sizes) == 1:
                # InstanceNorm cannot normalise a single value per channel and fails in training.
                raise ValueError(
                    f"model.norm=instance needs maps larger than 1 element, but conv block {i + 1} of "
                    f"model.depth={depth} sees {tuple(sizes)}; use a smaller model.depth or another "
                    "model.norm (batch, layer, group)"
                )
            layers = [
                # The norm's own shift makes a conv bias redundant.
                conv(
                    channels, out_channels, kernel_size, stride=stride, padding=padding, bias=norm is Norm.none
                ),
                make_norm(norm, out_channels, spatial_dims=spatial_dims),
                make_activation(activation),
            ]
            if pool is not Pool.none and min(sizes) >= 2:
                layers.append(_pool(pool, spatial_dims))
                sizes = [s // 2 for s in sizes]
            blocks.append(nn.Sequential(*layers))
            channels = out_channels

        blocks.append(
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(channels * math.prod(sizes), hidden),
                make_activation(activation),
                nn.Dropout(float(dropout)),
            )
        )
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(hidden, num_classes)
        self.num_layers = len(self.blocks)
        init_weights(self, init=init, activation=activation)

    @staticmethod
    def option_problems(options: dict) -> list[str]:
        """Rules that join options, beyond each option's own range and choices: none for cnn (what depends
        on the input's size is checked when the network is built)."""
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

"""CIFAR-style residual network (He et al., 2016, section 4.2) and its plain counterpart."""

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
    conv_class,
    init_weights,
    make_activation,
    make_norm,
    member,
    spatial_input,
)
from dlx.options import Range

_DEPTHS = "6n+2: 8, 14, 20, 32, 44, 56, ..."


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> act -> conv3x3 -> norm, plus the shortcut, then act.

    With ``skip=False`` the block has no shortcut at all (not even a projection), which turns the
    network into the "plain" baseline of the paper.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        stride: int,
        spatial_dims: int,
        norm: Norm,
        activation: Activation,
        skip: bool,
    ):
        super().__init__()
        conv = conv_class(spatial_dims)
        bias = norm is Norm.none  # a following norm's shift makes a conv bias redundant
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = make_norm(norm, out_channels, spatial_dims=spatial_dims)
        self.act1 = make_activation(activation)
        self.conv2 = conv(out_channels, out_channels, 3, stride=1, padding=1, bias=bias)
        self.norm2 = make_norm(norm, out_channels, spatial_dims=spatial_dims)
        self.act2 = make_activation(activation)
        self.skip = skip
        self.shortcut: nn.Module | None = None
        if skip:
            if stride != 1 or in_channels != out_channels:
                # Projection shortcut (option B of the paper) where the shape changes.
                self.shortcut = nn.Sequential(
                    conv(in_channels, out_channels, 1, stride=stride, bias=bias),
                    make_norm(norm, out_channels, spatial_dims=spatial_dims),
                )
            else:
                self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    """Stem, three stages of ``(depth - 2) / 6`` basic blocks, global average pool, linear head.

    The stages have width, 2*width and 4*width channels; stages 2 and 3 halve the map in their
    first block. ``depth`` counts weighted layers as in the paper (stem + 6n convs + head).
    """

    @checked_options
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        depth: Annotated[int, Range(ge=8, note=f"({_DEPTHS})")] = 8,  # weighted layers, as in the paper
        width: Width = 16,
        skip: bool = True,  # false: the same network without residual connections (the "plain" net)
        norm: Norm = Norm.batch,
        activation: Activation = Activation.relu,
        dropout: Dropout = 0.0,  # before the head
        init: Init = Init.he_normal,
    ):
        super().__init__()
        input_shape = check_io(input_shape, num_classes)
        spatial_dims = spatial_input("resnet", input_shape)
        norm = member(Norm, "model.norm", norm)
        blocks_per_stage = (depth - 2) // 6
        if norm is Norm.instance:
            # Two stride-2 stages shrink each spatial side to ceil(side / 4).
            last = [math.ceil(s / 4) for s in input_shape[1:]]
            if math.prod(last) == 1:
                raise ValueError(
                    f"model.norm=instance needs maps larger than 1 element, but resnet's last stage sees "
                    f"{tuple(last)} for input {input_shape}; use another model.norm (batch, layer, group)"
                )

        conv = conv_class(spatial_dims)
        blocks: list[nn.Module] = [
            nn.Sequential(
                conv(input_shape[0], width, 3, stride=1, padding=1, bias=norm is Norm.none),
                make_norm(norm, width, spatial_dims=spatial_dims),
                make_activation(activation),
            )
        ]
        in_channels = width
        for stage in range(3):
            out_channels = width * 2**stage
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(
                    BasicBlock(
                        in_channels=in_channels,
                        out_channels=out_channels,
                        stride=stride,
                        spatial_dims=spatial_dims,
                        norm=norm,
                        activation=activation,
                        skip=skip,
                    )
                )
                in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(float(dropout))
        self.head = nn.Linear(in_channels, num_classes)
        self.num_layers = len(self.blocks)
        init_weights(self, init=init, activation=activation)

    @staticmethod
    def option_problems(options: dict) -> list[str]:
        """Rules beyond each option's own range: depth is 6n+2 (its Range says >= 8)."""
        depth = options.get("depth")
        if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 8 and (depth - 2) % 6:
            return [f"model.depth={depth} is not valid for resnet: allowed {_DEPTHS}"]
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.dropout(self.pool(x).flatten(1)))

"""Vision Transformer (Dosovitskiy et al. 2021): an image cut into patches, each a token, a class token read by
the head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import nn

from dlx.models.attention import Block, Depth, Heads, MlpRatio, Placement, final_norm, heads_problems
from dlx.models.layers import Dropout, Width, check_io, checked_options, member
from dlx.options import Range
from dlx.tasks import Target


class ViT(nn.Module):
    """Patch embedding (a Conv2d of kernel and stride ``patch``), a class token, learned positions, ``depth``
    blocks, a final LayerNorm (pre-LN) and a linear head on the class token.

    The defaults are sized for 8x8 digits (patch 2: 16 patches) with about the parameters of the default cnn
    there, so the two compare at similar size (the vit_vs_cnn study).
    """

    targets = (Target.label, Target.value)  # the kinds of target it serves (dlx.build checks)

    @checked_options
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        patch: Annotated[int, Range(ge=1)] = 2,  # side of a square patch; must divide the image's height and width
        width: Width = 32,
        depth: Depth = 4,
        heads: Heads = 4,  # must divide width
        mlp_ratio: MlpRatio = 4.0,
        dropout: Dropout = 0.0,
        placement: Placement = Placement.pre,
    ):
        super().__init__()
        shape = check_io(input_shape, num_classes)
        placement = member(Placement, "model.placement", placement)
        if len(shape) != 3:
            raise ValueError(f"model=vit needs images (C, H, W); the dataset gives samples of shape {shape}: use "
                             "model=transformer or model=mlp")
        channels, height, width_px = shape
        if height % patch or width_px % patch:
            allowed = ", ".join(str(p) for p in range(1, min(height, width_px) + 1)
                                if height % p == 0 and width_px % p == 0)
            raise ValueError(f"model.patch={patch} does not divide the {height}x{width_px} images of this dataset: "
                             f"allowed {allowed}")
        self.grid = (height // patch, width_px // patch)
        self.patches = nn.Conv2d(channels, width, patch, stride=patch)
        # the class token and the positions start small, as in the reference implementation (std 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.positions = nn.Parameter(torch.randn(1, 1 + self.grid[0] * self.grid[1], width) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout, placement) for _ in range(depth))
        self.norm = final_norm(width, placement)
        self.head = nn.Linear(width, num_classes)
        self.num_layers = len(self.blocks)

    @staticmethod
    def option_problems(options: dict) -> list[str]:
        """Rules that join options: heads divide width (whether patch divides the images depends on the data,
        and is checked when the model is built)."""
        return heads_problems(options)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1 + patches, width): the class token, then the patches row by row, with their positions."""
        h = self.patches(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1)
        return self.drop(h + self.positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._tokens(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, 0])

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The class token's attention over the patch grid (N, gh, gw) in the last block, mean over heads."""
        h = self._tokens(x)
        for block in self.blocks[:-1]:
            h = block(h)
        weights = self.blocks[-1].self_weights(h).mean(1)[:, 0, 1:]
        return {"cls_attention": weights.reshape(len(x), *self.grid)}

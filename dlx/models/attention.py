"""Blocks shared by the attention models (transformer, vit): multi-head attention, the transformer block with
pre- or post-LN, and position encodings; small and readable, in the manner of nanoGPT.

Attention runs on F.scaled_dot_product_attention (fused kernels). When asked for its weights it computes
softmax(QK^T / sqrt(d)) explicitly instead, the same function written out, so an attention map is the one the
model actually used (tests/test_transformer.py checks both paths agree).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from dlx.options import Range


class Placement(str, Enum):
    pre = "pre"  # LayerNorm before each sub-layer, inside the residual branch (Xiong et al. 2020)
    post = "post"  # LayerNorm after each residual sum, as published (Vaswani et al. 2017)


class Positions(str, Enum):
    sinusoidal = "sinusoidal"  # fixed sines and cosines (Vaswani et al. 2017)
    learned = "learned"  # one trained vector per position


# The ranges of the options both attention models share, written once for both.
Heads = Annotated[int, Range(ge=1)]
MlpRatio = Annotated[float, Range(gt=0)]  # hidden units of each block's MLP per unit of width
Depth = Annotated[int, Range(ge=1)]


def heads_problems(options: dict) -> list[str]:
    """The rule joining width and heads: each head gets width / heads dimensions."""
    width, heads = options.get("width"), options.get("heads")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (width, heads)):
        return []
    if width % heads == 0:
        return []
    allowed = ", ".join(str(h) for h in range(1, width + 1) if width % h == 0)
    return [f"model.heads={heads} does not divide model.width={width}: allowed heads for this width {allowed}"]


def key_mask(tokens: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, 1, 1, T) True where a key may be attended to: not padding. A row that is padding only keeps every
    key, so its softmax stays defined (its outputs count for nothing anyway)."""
    keep = tokens != pad
    keep = keep | ~keep.any(-1, keepdim=True)
    return keep[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention of x over itself, or over `context` (cross-attention)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, causal: bool = False,
                mask: torch.Tensor | None = None, need_weights: bool = False):
        """x (N, T, width) attends over context (N, S, width), x itself when None. `mask` (broadcast to
        (N, heads, T, S)) is True where attending is allowed; `causal` lets position t see keys 0..t only.
        Returns the output, or (output, weights (N, heads, T, S)) with need_weights."""
        context = x if context is None else context
        n, t, width = x.shape
        split = lambda z: z.view(n, z.shape[1], self.heads, width // self.heads).transpose(1, 2)  # noqa: E731
        q = split(self.query(x))
        k, v = (split(z) for z in self.key_value(context).chunk(2, dim=-1))
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if causal:
                mask = _causal(t, k.shape[2], x.device) if mask is None else mask & _causal(t, k.shape[2], x.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(-1)
            y = F.dropout(weights, p) @ v
        else:
            # SDPA takes is_causal or a mask, not both: a causal self-attention here never has a key mask
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        y = self.out(y.transpose(1, 2).reshape(n, t, width))
        return (y, weights) if need_weights else y


def _causal(t: int, s: int, device: torch.device) -> torch.Tensor:
    return torch.ones(t, s, dtype=torch.bool, device=device).tril()


class Block(nn.Module):
    """Self-attention, optionally cross-attention over an encoder's output, then an MLP with GELU; each
    sub-layer is a residual branch with dropout, its LayerNorm before it (pre) or after the sum (post)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, placement: Placement, *,
                 cross: bool = False):
        super().__init__()
        self.pre = Placement(placement) is Placement.pre
        hidden = max(1, round(width * mlp_ratio))
        self.attn, self.norm1 = Attention(width, heads, dropout), nn.LayerNorm(width)
        self.cross = Attention(width, heads, dropout) if cross else None
        self.norm_cross = nn.LayerNorm(width) if cross else None
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def _sub(self, x: torch.Tensor, norm: nn.Module, branch) -> torch.Tensor:
        if self.pre:
            return x + branch(norm(x))
        return norm(x + branch(x))

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, *, causal: bool = False,
                mask: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self._sub(x, self.norm1, lambda h: self.drop(self.attn(h, causal=causal, mask=mask)))
        if self.cross is not None:
            x = self._sub(x, self.norm_cross, lambda h: self.drop(self.cross(h, memory, mask=memory_mask)))
        return self._sub(x, self.norm2, self.mlp)

    def self_weights(self, x: torch.Tensor, *, causal: bool = False, mask: torch.Tensor | None = None):
        """The self-attention weights (N, heads, T, T) this block uses on its input x."""
        h = self.norm1(x) if self.pre else x
        return self.attn(h, causal=causal, mask=mask, need_weights=True)[1]

    def cross_weights(self, x: torch.Tensor, memory: torch.Tensor, *, causal: bool = False,
                      memory_mask: torch.Tensor | None = None):
        """The cross-attention weights (N, heads, T, S) this block uses on its input x over memory."""
        x = self._sub(x, self.norm1, lambda h: self.drop(self.attn(h, causal=causal)))
        h = self.norm_cross(x) if self.pre else x
        return self.cross(h, memory, mask=memory_mask, need_weights=True)[1]


def final_norm(width: int, placement: Placement) -> nn.Module:
    """After the last block: with pre-LN a LayerNorm, since the residual stream itself is never normalised
    (nanoGPT's ln_f); post-LN blocks end normalised already."""
    return nn.LayerNorm(width) if Placement(placement) is Placement.pre else nn.Identity()


def sinusoidal(length: int, width: int) -> torch.Tensor:
    """(length, width) sines and cosines of geometric wavelengths (Vaswani et al. 2017, section 3.5)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : width // 2]
    return table


class PositionEncoding(nn.Module):
    """Adds a vector per position to (N, T, width) inputs of at most `length` positions."""

    def __init__(self, length: int, width: int, kind: Positions):
        super().__init__()
        if Positions(kind) is Positions.learned:
            self.table = nn.Parameter(torch.randn(length, width) * 0.02)
        else:
            self.register_buffer("table", sinusoidal(length, width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[1]]

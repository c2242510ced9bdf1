"""Transformer (Vaswani et al. 2017) shaped by the data's target: an encoder classifier or regressor (label,
value), a causal language model (steps) or an encoder-decoder (sequence)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlx.models.attention import (
    Block,
    Depth,
    Heads,
    MlpRatio,
    Placement,
    PositionEncoding,
    Positions,
    final_norm,
    heads_problems,
    key_mask,
)
from dlx.models.layers import Dropout, Width, check_io, checked_options, member
from dlx.tasks import IGNORE, PAD, Target


class Inputs(nn.Module):
    """One sample as a sequence of width-vectors: token ids (T,) through an embedding, real-valued (C, L) one
    Linear(C, width) per position along L, images (C, H, W) row by row (T = H, C * W features a row)."""

    def __init__(self, shape: tuple[int, ...], vocab: int | None, width: int):
        super().__init__()
        if vocab is not None:
            if len(shape) != 1:
                raise ValueError(f"model=transformer reads token ids of shape (T,); the dataset gives {shape}")
            self.embed, self.length = nn.Embedding(vocab, width), shape[0]
        elif len(shape) == 2:
            self.embed, self.length = nn.Linear(shape[0], width), shape[1]
        elif len(shape) == 3:
            self.embed, self.length = nn.Linear(shape[0] * shape[2], width), shape[1]
        else:
            raise ValueError(f"model=transformer needs tokens, sequences (C, L) or images (C, H, W); the dataset "
                             f"gives samples of shape {shape}: use model=mlp")
        self.rank = len(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 2:  # (N, C, L) -> (N, L, C)
            x = x.transpose(1, 2)
        elif self.rank == 3:  # (N, C, H, W) -> (N, H, C * W)
            x = x.permute(0, 2, 1, 3).flatten(2)
        return self.embed(x)


class Transformer(nn.Module):
    """``depth`` blocks of ``heads``-head attention and an MLP (``mlp_ratio`` x width, GELU).

    label / value: a bidirectional encoder, mean-pooled over the non-padding positions, then the head (N,
    num_classes). steps: the same blocks with a causal mask, a head per position (N, T, num_classes).
    sequence: ``depth`` encoder blocks and ``depth`` decoder blocks (causal self-attention, cross-attention over
    the encoder); training reads the target (teacher forcing), evaluation decodes greedily for target_len steps.
    The decoder starts from an extra embedding row, id num_classes. ``blocks`` lists encoder then decoder blocks.
    """

    @checked_options
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        vocab: int | None = None,
        target: str = "label",
        target_len: int | None = None,
        width: Width = 64,
        depth: Depth = 2,  # blocks (an encoder-decoder has this many of each)
        heads: Heads = 4,  # must divide width
        mlp_ratio: MlpRatio = 4.0,
        dropout: Dropout = 0.0,
        placement: Placement = Placement.pre,
        positions: Positions = Positions.sinusoidal,
    ):
        super().__init__()
        shape = check_io(input_shape, num_classes)
        self.kind = member(Target, "target", target)
        placement = member(Placement, "model.placement", placement)
        positions = member(Positions, "model.positions", positions)
        self.tokens = vocab is not None
        self.inputs = Inputs(shape, vocab, width)
        length = self.inputs.length
        if self.kind is Target.steps and target_len not in (None, length):
            raise ValueError(f"model=transformer: a steps target has one position per input ({length}), "
                             f"not {target_len}")
        if self.kind is Target.sequence and target_len is None:
            raise ValueError("model=transformer: a sequence target needs target_len")
        self.positions = PositionEncoding(length, width, positions)
        self.drop = nn.Dropout(dropout)
        block = lambda cross=False: Block(width, heads, mlp_ratio, dropout, placement, cross=cross)  # noqa: E731
        blocks = [block() for _ in range(depth)]
        self.encoder_depth = depth
        if self.kind is Target.sequence:
            self.target_len = target_len
            self.start = num_classes  # the decoder's start symbol: one id past the classes
            self.out_embed = nn.Embedding(num_classes + 1, width)
            self.out_positions = PositionEncoding(target_len, width, positions)
            self.encoder_norm = final_norm(width, placement)
            blocks += [block(cross=True) for _ in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = final_norm(width, placement)
        self.head = nn.Linear(width, num_classes)
        self.num_layers = len(self.blocks)

    @staticmethod
    def option_problems(options: dict) -> list[str]:
        """Rules that join options: heads divide width."""
        return heads_problems(options)

    # ------------------------------------------------------------------------------------------ encoder
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, T, width) inputs with positions, and the key mask of token inputs (a causal model needs none:
        padding at the end cannot reach an earlier position, and its targets are IGNORE)."""
        mask = key_mask(x, PAD) if self.tokens and self.kind is not Target.steps else None
        return self.drop(self.positions(self.inputs(x))), mask

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h, mask = self._embed(x)
        causal = self.kind is Target.steps
        for block in self.blocks[: self.encoder_depth]:
            h = block(h, causal=causal, mask=mask)
        return h, mask

    # ------------------------------------------------------------------------------------------ decoder
    def _decode(self, prev: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> torch.Tensor:
        """Logits (N, T, num_classes) of the decoder reading previous output ids prev (N, T)."""
        h = self.drop(self.out_positions(self.out_embed(prev)))
        for block in self.blocks[self.encoder_depth:]:
            h = block(h, memory, causal=True, memory_mask=memory_mask)
        return self.head(self.norm(h))

    def _greedy(self, memory: torch.Tensor, memory_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding for target_len steps: the logits (N, T_out, C) of the path taken and the decoder's
        input ids (N, T_out) along it (start symbol, then each step's choice)."""
        prev = torch.full((memory.shape[0], 1), self.start, dtype=torch.long, device=memory.device)
        logits = []
        for t in range(self.target_len):
            # causal decoding: the last position's output on the prefix is what it is on the whole sequence
            step = self._decode(prev, memory, memory_mask)[:, -1]
            logits.append(step)
            if t + 1 < self.target_len:
                prev = torch.cat([prev, step.argmax(-1, keepdim=True)], dim=1)
        return torch.stack(logits, dim=1), prev

    def _teacher(self, target: torch.Tensor) -> torch.Tensor:
        """The decoder's inputs under teacher forcing: the start symbol, then the target shifted right, with
        padding (IGNORE) read as PAD."""
        start = torch.full_like(target[:, :1], self.start)
        prev = torch.cat([start, target[:, :-1]], dim=1)
        return prev.masked_fill(prev == IGNORE, PAD)

    # ------------------------------------------------------------------------------------------ model
    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Logits; ``target`` (the batch's y, given in training steps) is read by the encoder-decoder only."""
        h, mask = self._encode(x)
        if self.kind is Target.sequence:
            memory = self.encoder_norm(h)
            if target is not None:
                return self._decode(self._teacher(target), memory, mask)
            return self._greedy(memory, mask)[0]
        h = self.norm(h)
        if self.kind is Target.steps:
            return self.head(h)
        if mask is None:
            return self.head(h.mean(1))
        keep = mask[:, 0, 0, :, None].to(h.dtype)  # mean over the positions that are not padding
        return self.head((h * keep).sum(1) / keep.sum(1))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The last block's attention, mean over heads: self-attention (N, T, T) of an encoder or language
        model; the decoder's cross-attention (N, T_out, T_in) along the greedy path of an encoder-decoder."""
        if self.kind is Target.sequence:
            h, mask = self._encode(x)
            memory = self.encoder_norm(h)
            prev = self._greedy(memory, mask)[1]
            h = self.drop(self.out_positions(self.out_embed(prev)))
            for block in self.blocks[self.encoder_depth:-1]:
                h = block(h, memory, causal=True, memory_mask=mask)
            weights = self.blocks[-1].cross_weights(h, memory, causal=True, memory_mask=mask)
            return {"cross_attention": weights.mean(1)}
        h, mask = self._embed(x)
        causal = self.kind is Target.steps
        for block in self.blocks[:-1]:
            h = block(h, causal=causal, mask=mask)
        return {"self_attention": self.blocks[-1].self_weights(h, causal=causal, mask=mask).mean(1)}

"""Recurrent networks over a sequence: the plain tanh RNN (Elman 1990), the LSTM (Hochreiter & Schmidhuber
1997) and the GRU (Cho et al. 2014), each torch's own layer, one block per layer.

What a step reads: token ids through an embedding (a dataset with a vocabulary); real-valued sequences
(C, L) one column of C features per step, as channel-first data runs everywhere in dlx; images (C, H, W)
one row of C*W features per step (`read=rows`, T = H) or one pixel of C features per step (`read=pixels`,
T = H*W): the sequential digits / MNIST of Le et al. (2015); feature vectors (F,) one feature per step.

Heads: a label or a value is read from the last step (bidirectional: the last forward and the first
backward output); a label per step (steps, a causal language model) from every step. A sequence target
read after the whole input needs an encoder-decoder (model=seq2seq or model=transformer).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Annotated

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dlx.models.layers import Dropout, Width, check_io, checked_options, member
from dlx.options import Range
from dlx.tasks import PAD, Target


class Read(str, Enum):
    rows = "rows"  # an image row per step: T = H, C*W features
    pixels = "pixels"  # a pixel per step: T = H*W, C features


def steps_and_features(input_shape: tuple[int, ...], vocab: int | None, read: Read) -> tuple[int, int]:
    """(T, features per step) of one sample, before any embedding (token inputs: features is 1)."""
    if vocab is not None or len(input_shape) == 1:
        return input_shape[-1], 1
    if len(input_shape) == 2:
        return input_shape[1], input_shape[0]
    c, h, w = input_shape[-3:]
    return (h, c * w) if read is Read.rows else (h * w, c)


def as_steps(x: torch.Tensor, input_shape: tuple[int, ...], read: Read) -> torch.Tensor:
    """Real-valued samples (N, *input_shape) as (N, T, features), time along the second axis."""
    if len(input_shape) == 1:
        return x.unsqueeze(-1)
    if len(input_shape) == 2:
        return x.transpose(1, 2)
    n, c, h, w = x.shape
    if read is Read.rows:
        return x.permute(0, 2, 1, 3).reshape(n, h, c * w)
    return x.reshape(n, c, h * w).transpose(1, 2)


class Layer(nn.Module):
    """One recurrent layer and the dropout on its output: a block whose output is a tensor (N, T, D)."""

    def __init__(self, rnn: nn.RNNBase, dropout: float):
        super().__init__()
        self.rnn, self.drop = rnn, nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if lengths is None:
            return self.drop(self.rnn(x)[0])
        # padded token sequences: each is read to its own end only, so no state passes through its padding
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=x.shape[1])[0]
        return self.drop(out)


class Recurrent(nn.Module):
    """A stack of `layers` recurrent layers of `hidden` units and a linear head."""

    cell: type[nn.RNNBase] = nn.RNN
    name = "rnn"  # the conf/model option, for messages
    targets = (Target.label, Target.value, Target.steps)  # the kinds of target it serves (dlx.build checks)

    @checked_options
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        vocab: int | None = None,
        target: Target | str = Target.label,
        target_len: int | None = None,
        hidden: Width = 128,  # units per layer and direction
        layers: Annotated[int, Range(ge=1)] = 1,
        bidirectional: bool = False,
        dropout: Dropout = 0.0,  # on each layer's output, the head's input included (Zaremba et al. 2014)
        embedding: Width = 64,  # width of the token embedding (token inputs only)
        read: Read = Read.rows,  # how an image becomes a sequence (image inputs only)
    ):
        super().__init__()
        self.input_shape = check_io(input_shape, num_classes)
        self.target, self.read = member(Target, "target", target), member(Read, "model.read", read)
        if self.target is Target.sequence:
            raise ValueError(f"model={self.name} cannot produce a sequence target (an output sequence read after "
                             "the whole input): use model=seq2seq or model=transformer")
        if self.target is Target.steps and bidirectional:
            raise ValueError(f"model.bidirectional=true lets each step of model={self.name} see the future, which a "
                             "steps target (a causal language model) forbids: allowed false")
        self.embed = nn.Embedding(vocab, embedding, padding_idx=PAD) if vocab is not None else None
        _, features = steps_and_features(self.input_shape, vocab, self.read)
        width = embedding if vocab is not None else features
        directions = 2 if bidirectional else 1
        blocks = []
        for _ in range(layers):
            rnn = self.cell(width, hidden, batch_first=True, bidirectional=bidirectional)
            blocks.append(Layer(rnn, float(dropout)))
            width = hidden * directions
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(width, num_classes)
        self.num_layers = len(self.blocks)
        self.hidden, self.bidirectional = hidden, bidirectional
        self.init_gates()

    def init_gates(self) -> None:
        """Torch's initialisation, except where a cell's gates want another start."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else as_steps(x, self.input_shape, self.read)
        if self.target is Target.steps:
            for block in self.blocks:
                h = block(h)
            return self.head(h)  # (N, T, num_classes)
        # Token sequences end at their last non-PAD id (padding comes after it). One direction reads each to its
        # end and the state there is taken: what comes after cannot change it. Two directions are packed, so
        # the backward one starts at each sequence's own end; packing needs the lengths on the host.
        lengths = (x != PAD).sum(1).clamp(min=1) if self.embed is not None else None
        packed = lengths.cpu() if lengths is not None and self.bidirectional else None
        for block in self.blocks:
            h = block(h, packed) if packed is not None and bool((packed < x.shape[1]).any()) else block(h)
        ends = lengths - 1 if lengths is not None else torch.full((len(h),), h.shape[1] - 1, device=h.device)
        last = h[torch.arange(len(h), device=h.device), ends]
        if self.bidirectional:  # the backward direction has read the whole sequence at its first step
            last = torch.cat([last[:, :self.hidden], h[:, 0, self.hidden:]], dim=1)
        return self.head(last)


class RNN(Recurrent):
    """The plain tanh RNN: h_t = tanh(W x_t + U h_{t-1} + b)."""


class LSTM(Recurrent):
    """Long short-term memory: gated cell state, the constant error carousel.

    The forget gates start with bias 1 (Gers et al. 2000; Jozefowicz et al. 2015), so the cell keeps most of
    its state at initialisation: with torch's bias near 0 each step halves it, and the gradient through time
    vanishes as fast as a plain RNN's (the first/last ratio of diagnostics=sequence at T=50, hidden 128:
    ~5e-11 with bias 0, ~7e-5 with bias 1; the plain RNN ~3e-12)."""

    cell = nn.LSTM
    name = "lstm"

    def init_gates(self) -> None:
        for block in self.blocks:
            for name, bias in block.rnn.named_parameters():
                if name.startswith("bias_"):  # torch's gate order: input, forget, cell, output
                    with torch.no_grad():
                        bias[block.rnn.hidden_size:2 * block.rnn.hidden_size] = 1.0 if "_ih_" in name else 0.0


class GRU(Recurrent):
    """Gated recurrent unit: update and reset gates, no separate cell state."""

    cell = nn.GRU
    name = "gru"


__all__ = ["GRU", "LSTM", "RNN", "Read", "Recurrent", "as_steps"]

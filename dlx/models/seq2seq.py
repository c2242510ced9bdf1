"""Recurrent encoder-decoder (Sutskever et al. 2014; Cho et al. 2014) with optional attention: additive
(Bahdanau et al. 2015) or dot-product (Luong et al. 2015).

The encoder reads the token input; the decoder writes `target_len` tokens, one per step, starting from a
start symbol of its own (embedding row num_classes). Without attention the decoder sees the input only
through the encoder's final state, the bottleneck that makes long sequences hard; with attention each
step reads a weighted mean of all encoder outputs. Training feeds the true previous token with
probability `teacher_forcing` (Williams & Zipser 1989), else the decoder's own previous guess; evaluation
always decodes greedily from its own guesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Annotated

import torch
from torch import nn

from dlx.models.layers import Dropout, Width, check_io, checked_options, choice, member
from dlx.options import Range
from dlx.tasks import IGNORE, PAD, Target


class Cell(str, Enum):
    gru = "gru"
    lstm = "lstm"


class Attention(str, Enum):
    none = "none"  # the encoder's final state only
    additive = "additive"  # Bahdanau: score v^T tanh(W s_{t-1} + U h_j), read before the decoder step
    dot = "dot"  # Luong: score s_t . h_j, read after the decoder step


class Seq2Seq(nn.Module):
    targets = (Target.sequence,)  # the kinds of target it serves (dlx.build checks)

    @checked_options
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        vocab: int | None = None,
        target: Target | str = Target.sequence,
        target_len: int | None = None,
        cell: Cell = Cell.gru,
        hidden: Width = 128,
        layers: Annotated[int, Range(ge=1)] = 1,
        embedding: Width = 64,
        dropout: Dropout = 0.0,  # on embeddings, between layers and before the head
        attention: Attention = Attention.additive,
        teacher_forcing: Annotated[float, Range(ge=0, le=1)] = 1.0,  # chance of feeding the true previous token
    ):
        super().__init__()
        check_io(input_shape, num_classes)
        if member(Target, "target", target) is not Target.sequence:
            raise ValueError(f"model=seq2seq produces an output sequence and the dataset's target is "
                             f"{choice(target)}: use model=lstm, model=gru or model=rnn")
        if vocab is None:
            raise ValueError("model=seq2seq reads token inputs and the dataset has no vocabulary: "
                             "use model=lstm, model=gru or model=rnn")
        if target_len is None or target_len < 1:
            raise ValueError(f"model=seq2seq needs the output length (target_len >= 1), got {target_len!r}")
        self.cell = member(Cell, "model.cell", cell)
        self.attention = member(Attention, "model.attention", attention)
        self.num_classes, self.target_len = num_classes, int(target_len)
        self.teacher_forcing = float(teacher_forcing)
        rnn = nn.LSTM if self.cell is Cell.lstm else nn.GRU
        between = float(dropout) if layers > 1 else 0.0  # torch's dropout acts between layers only
        self.drop = nn.Dropout(float(dropout))
        self.embed = nn.Embedding(vocab, embedding, padding_idx=PAD)
        self.encoder = rnn(embedding, hidden, num_layers=layers, batch_first=True, dropout=between)
        # the start symbol is one more row beyond the output ids
        self.dec_embed = nn.Embedding(num_classes + 1, embedding)
        reads = hidden if self.attention is Attention.additive else 0
        self.decoder = rnn(embedding + reads, hidden, num_layers=layers, batch_first=True, dropout=between)
        if self.attention is Attention.additive:
            self.query = nn.Linear(hidden, hidden, bias=False)
            self.key = nn.Linear(hidden, hidden)
            self.score = nn.Linear(hidden, 1, bias=False)
        elif self.attention is Attention.dot:
            self.combine = nn.Linear(2 * hidden, hidden)  # Luong's attentional hidden state tanh(W[c; s])
        features = 2 * hidden if self.attention is Attention.additive else hidden
        self.head = nn.Linear(features, num_classes)
        self.blocks = nn.ModuleList([self.encoder, self.decoder])
        self.num_layers = 2 * layers

    # ------------------------------------------------------------------ pieces
    def encode(self, x: torch.Tensor):
        """(encoder outputs (N, T_in, H), final state, padding mask (N, T_in): True at PAD). The encoder reads the
        whole padded input, so with variable lengths the final state has also read each sequence's trailing
        padding (the attention variants give padding no weight); copy and reverse are of one length by default."""
        out, state = self.encoder(self.drop(self.embed(x)))
        return out, state, x == PAD

    def _attend(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pad: torch.Tensor):
        """(context (N, H), weights (N, T_in)) of one decoder step; padding gets no weight."""
        if self.attention is Attention.additive:
            scores = self.score(torch.tanh(self.query(query).unsqueeze(1) + keys)).squeeze(-1)
        else:
            scores = torch.einsum("nh,nth->nt", query, keys)
        # a finite floor rather than -inf: an all-padding input then attends uniformly instead of giving NaN
        scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("nt,nth->nh", weights, values), weights

    def _top(self, state) -> torch.Tensor:
        return (state[0] if self.cell is Cell.lstm else state)[-1]

    def decode(self, x: torch.Tensor, target: torch.Tensor | None = None, *, keep_weights: bool = False):
        """(logits (N, T_out, num_classes), attention weights (N, T_out, T_in) or None)."""
        enc, state, pad = self.encode(x)
        keys = self.key(enc) if self.attention is Attention.additive else enc  # precomputed once per sequence
        n, steps = len(x), self.target_len
        token = torch.full((n,), self.num_classes, dtype=torch.long, device=x.device)
        teach = None
        if target is not None and self.teacher_forcing > 0:
            # one draw per sample and step; an IGNORE position feeds the start symbol, a harmless input
            truth = target.masked_fill(target == IGNORE, self.num_classes)
            teach = torch.rand(n, steps, device=x.device) < self.teacher_forcing
        logits, weights = [], []
        for t in range(steps):
            emb = self.drop(self.dec_embed(token)).unsqueeze(1)
            if self.attention is Attention.additive:
                context, w = self._attend(self._top(state), keys, enc, pad)
                out, state = self.decoder(torch.cat([emb, context.unsqueeze(1)], dim=-1), state)
                features = torch.cat([out.squeeze(1), context], dim=-1)
            elif self.attention is Attention.dot:
                out, state = self.decoder(emb, state)
                context, w = self._attend(out.squeeze(1), keys, enc, pad)
                features = torch.tanh(self.combine(torch.cat([context, out.squeeze(1)], dim=-1)))
            else:
                out, state = self.decoder(emb, state)
                features, w = out.squeeze(1), None
            step = self.head(self.drop(features))
            logits.append(step)
            if keep_weights and w is not None:
                weights.append(w)
            token = step.argmax(-1)
            if teach is not None:
                token = torch.where(teach[:, t], truth[:, t], token)
        return torch.stack(logits, dim=1), (torch.stack(weights, dim=1) if weights else None)

    # ------------------------------------------------------------------ the model contract
    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Training passes the targets (teacher forcing); evaluation decodes greedily from x alone."""
        return self.decode(x, target if self.training else None)[0]

    def attention_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"attention": (N, T_out, T_in)}: where each output step of greedy decoding reads the input."""
        if self.attention is Attention.none:
            return {}
        return {"attention": self.decode(x, keep_weights=True)[1]}

"""The two self-supervised methods as modules around an encoder (the model the `model` group builds, with
`ssl.features` outputs): its output is the representation; a projector (and for SimSiam a predictor) sits on top
and is used only by the loss.

SimSiam (Chen & He 2021, Exploring simple Siamese representation learning): a 3-layer projector with batch norm
after every layer and a bottleneck predictor; the loss is the negative cosine similarity of one view's prediction
with the other view's projection, symmetrised. The stop-gradient on the projection is what keeps it from
collapsing; `stop_grad=False` removes it. SimCLR (Chen et al. 2020, A simple framework for contrastive learning of
visual representations): a 2-layer projector and the NT-Xent loss, where each view must pick its partner out of
the other 2N - 2 views of the batch at a temperature. SimCLR has no predictor; `stop_grad` there detaches the
second view's projection as SimSiam does (Chen & He 2021, Table 4: the negatives, not the stop-gradient, keep
SimCLR from collapsing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def simsiam_loss(p1, p2, z1, z2, *, stop_grad: bool) -> torch.Tensor:
    """-(cos(p1, z2) + cos(p2, z1)) / 2, with the projections z detached when stop_grad: in [-1, 1]."""
    if stop_grad:
        z1, z2 = z1.detach(), z2.detach()
    return -(F.cosine_similarity(p1, z2, dim=-1).mean() + F.cosine_similarity(p2, z1, dim=-1).mean()) / 2


def nt_xent(z1, z2, *, temperature: float, stop_grad: bool = False) -> torch.Tensor:
    """The normalised temperature-scaled cross entropy over the 2N views of N pairs: view i's positive is its
    pair, every other view of the batch a negative."""
    n = z1.shape[0]
    if stop_grad:
        z2 = z2.detach()
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    with torch.autocast(z.device.type, enabled=False):  # logits / temperature in full precision, also under AMP
        sim = z @ z.T / temperature
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        partner = (torch.arange(2 * n, device=z.device) + n) % (2 * n)  # made on the device: no copy, no sync
        return F.cross_entropy(sim, partner)


def _mlp(sizes: list[int], *, norm_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(a, b, bias=last and not norm_last))  # no bias before a batch norm
        if not last:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        elif norm_last:
            layers.append(nn.BatchNorm1d(b))
    return nn.Sequential(*layers)


class _Method(nn.Module):
    """An encoder with the heads of a method. Calling it on a batch gives the encoder's output (the
    representation), so evaluation, checkpoints and diagnostics see one module; calling it on two views gives the
    method's loss, so a training step goes through `forward` and whatever wraps it (torch.compile,
    DistributedDataParallel). `blocks` and `head` are the encoder's, for the depth diagnostics."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x, x2=None):
        return self.encoder(x) if x2 is None else self.loss(x, x2)

    def __getattr__(self, name):
        if name in ("blocks", "head"):
            return getattr(self.encoder, name)
        return super().__getattr__(name)

    def project(self, x) -> torch.Tensor:
        return self.projector(self.encoder(x))


class SimSiam(_Method):
    def __init__(self, encoder: nn.Module, *, features: int, proj_dim: int, hidden: int, pred_hidden: int,
                 stop_grad: bool = True):
        super().__init__(encoder)
        self.stop_grad = stop_grad
        self.projector = _mlp([features, hidden, hidden, proj_dim], norm_last=True)
        self.predictor = _mlp([proj_dim, pred_hidden, proj_dim], norm_last=False)

    def loss(self, x1, x2) -> torch.Tensor:
        z1, z2 = self.project(x1), self.project(x2)
        return simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2, stop_grad=self.stop_grad)


class SimCLR(_Method):
    def __init__(self, encoder: nn.Module, *, features: int, proj_dim: int, hidden: int, temperature: float,
                 stop_grad: bool = False):
        super().__init__(encoder)
        self.temperature, self.stop_grad = temperature, stop_grad
        self.projector = _mlp([features, hidden, proj_dim], norm_last=False)

    def loss(self, x1, x2) -> torch.Tensor:
        return nt_xent(self.project(x1), self.project(x2), temperature=self.temperature, stop_grad=self.stop_grad)

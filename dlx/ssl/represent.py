"""How good a representation is, measured with the labels the objective did not see.

- k-nearest neighbours (Wu et al. 2018, the monitor of the SimSiam and MoCo code): each query votes with its k
  most cosine-similar training samples, weighted by exp(similarity / 0.1), on the encoder's frozen features.
- A linear probe: a linear classifier trained on the frozen, standardised features of the training split.
- The collapse monitor of SimSiam (Chen & He 2021, Fig. 2): the standard deviation of the L2-normalised projector
  output per dimension, averaged over dimensions. Outputs spread over the unit sphere give about 1/sqrt(d);
  collapsed ones (every input mapped to one point) give 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlx.data.batches import eval_bounds

KNN_TEMPERATURE = 0.1  # the vote's temperature in Wu et al. 2018 and the SimSiam code's monitor
PROBE_BATCH = 1024


@torch.no_grad()
def encode(fn, split, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), y) over a whole split, in batches; the caller sets eval mode."""
    outs, ys = [], []
    for x, y in split.batches(eval_bounds(len(split), batch_size)):
        outs.append(fn(x).float())
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def output_std(z: torch.Tensor) -> tuple[float, float]:
    """(std per dimension of the L2-normalised z averaged over dimensions, its reference 1/sqrt(d))."""
    return F.normalize(z.float(), dim=-1).std(dim=0).mean().item(), 1 / math.sqrt(z.shape[-1])


@torch.no_grad()
def knn_accuracy(bank: torch.Tensor, bank_y: torch.Tensor, query: torch.Tensor, query_y: torch.Tensor, *,
                 k: int, num_classes: int, exclude_self: bool = False, chunk: int = 1024) -> float:
    """Weighted k-NN accuracy of query against bank (features, rows = samples). exclude_self: the query is
    the bank itself, and a sample may not vote for itself (leave-one-out)."""
    bank = F.normalize(bank.float(), dim=-1)
    query = F.normalize(query.float(), dim=-1)
    k = min(k, len(bank) - int(exclude_self))
    correct = 0
    for start in range(0, len(query), chunk):
        sim = query[start:start + chunk] @ bank.T
        if exclude_self:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, bank_y[idx], (top / KNN_TEMPERATURE).exp())
        correct += (votes.argmax(1) == query_y[start:start + chunk]).sum().item()
    return correct / max(1, len(query))


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], *,
                 num_classes: int, epochs: int, seed: int, lr: float = 0.01) -> float:
    """Test accuracy of a linear classifier trained with Adam on frozen features (standardised with the
    training split's statistics). Its own generator: the probe changes nothing the run's RNG state holds."""
    x, y = train
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own initialisation draws from the global generator
        probe = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        bound = 1 / math.sqrt(x.shape[1])
        probe.weight.copy_(torch.empty(probe.weight.shape).uniform_(-bound, bound, generator=gen))
        probe.bias.zero_()
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen).to(x.device)
            for start in range(0, len(x), PROBE_BATCH):
                i = order[start:start + PROBE_BATCH]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(probe(x[i]), y[i]).backward()
                opt.step()
    with torch.no_grad():
        xt, yt = test
        return (probe((xt - mean) / std).argmax(1) == yt).float().mean().item()


class Representation:
    """The encoder's output measured each epoch (k-NN on the validation split) and at the end (k-NN and the
    linear probe on the test split). The bank of training features is re-encoded whenever the weights may have
    changed: once per evaluation round."""

    def __init__(self, *, k: int, probe_epochs: int, num_classes: int, seed: int):
        self.k, self.probe_epochs, self.num_classes, self.seed = k, probe_epochs, num_classes, seed

    def knn(self, trainer, split) -> float:
        bank, bank_y = encode(trainer.forward, trainer.data.train, trainer.opt.eval_batch_size)
        if split is trainer.data.train:
            return knn_accuracy(bank, bank_y, bank, bank_y, k=self.k, num_classes=self.num_classes, exclude_self=True)
        query, query_y = encode(trainer.forward, split, trainer.opt.eval_batch_size)
        return knn_accuracy(bank, bank_y, query, query_y, k=self.k, num_classes=self.num_classes)

    @torch.no_grad()
    def probe(self, trainer) -> dict[str, float]:
        was = trainer.model.training
        trainer.model.eval()
        try:
            train = encode(trainer.forward, trainer.data.train, trainer.opt.eval_batch_size)
            test = encode(trainer.forward, trainer.data.test, trainer.opt.eval_batch_size)
        finally:
            trainer.model.train(was)
        acc = linear_probe(train, test, num_classes=self.num_classes, epochs=self.probe_epochs, seed=self.seed)
        return {"probe/acc": acc}

"""The training loop's own bookkeeping: the accuracy it reports is the accuracy of the steps it took."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from dlx.build import build
from dlx.compose import compose
from dlx.engine import Callback, TrainState, _hits


def test_window_hits_match_a_per_step_count():
    torch.manual_seed(0)
    window, expected = [], 0.0
    for lam, n in [(1.0, 8), (0.3, 8), (1.0, 5), (1.0, 8), (0.75, 3)]:
        logits, y, y_b = torch.randn(n, 4), torch.randint(0, 4, (n,)), torch.randint(0, 4, (n,))
        window.append((logits, y, y_b if lam < 1 else y, lam))
        pred = logits.argmax(-1)
        expected += lam * (pred == y).sum().item() + (1 - lam) * (pred == (y_b if lam < 1 else y)).sum().item()
    hits, counted = _hits(window, on_host=True)
    assert hits == pytest.approx(expected) and counted == 32
    assert isinstance(hits, float)
    assert torch.is_tensor(_hits(window, on_host=False)[0])
    assert float(_hits(window, on_host=False)[0]) == pytest.approx(expected)
    assert _hits([], on_host=True) == (0, 0)


class Seen(Callback):
    def __init__(self):
        self.logged = []

    def on_step_log(self, trainer, state, metrics):
        self.logged.append((state.step, metrics["train/acc_step"], metrics["train/loss_step"]))


@pytest.mark.parametrize("log_every", [1, 3, 50])
def test_reported_train_accuracy_is_that_of_the_steps_taken(log_every):
    """Every step's predictions, recounted from the logits the loss saw, give the per-window and per-epoch
    accuracies the loop reports, whether or not the windows divide the epoch."""
    cfg = compose(["tracking=off", "trainer.progress=none", "model.width=32", "trainer.batch_size=128",
                   f"trainer.log_every_n_steps={log_every}"])
    built = build(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    trainer = built.trainer
    steps = []  # (hits, n, loss) per step, from what the loss function was given
    loss_fn = trainer.loss_fn

    def recording(logits, y):
        loss = loss_fn(logits, y)
        steps.append(((logits.argmax(-1) == y).sum().item(), len(y), loss.item()))
        return loss

    trainer.loss_fn = recording
    seen = Seen()
    trainer.callbacks = [seen]
    state = TrainState()
    metrics = trainer.train_epoch(state)
    assert len(steps) == trainer.steps_per_epoch == state.step and trainer.steps_per_epoch % 3 != 0
    assert metrics["train/acc"] == pytest.approx(sum(h for h, _, _ in steps) / sum(n for _, n, _ in steps))
    assert metrics["train/loss"] == pytest.approx(sum(loss * n for _, n, loss in steps) / sum(n for _, n, _ in steps))
    assert [s for s, _, _ in seen.logged] == list(range(log_every, state.step + 1, log_every))
    for end, acc, loss in seen.logged:
        window = steps[end - log_every:end]
        assert acc == pytest.approx(sum(h for h, _, _ in window) / sum(n for _, n, _ in window))
        assert loss == pytest.approx(sum(v * n for _, n, v in window) / sum(n for _, n, _ in window))


class ConstantLR:
    """The loop's view of a schedule: a fixed learning rate, nothing monitored."""

    monitor, lr = None, 0.1

    def step_batch(self, step):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def fit_digits(stream: str) -> tuple[list[dict], dict, nn.Module]:
    from dlx.data import digits, prepare
    from dlx.engine import FitOptions, Trainer

    data = prepare(digits(), stream=stream, workers=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), schedule=ConstantLR(),
                      loss_fn=F.cross_entropy, eval_loss_fn=F.cross_entropy, data=data,
                      options=FitOptions(epochs=2, batch_size=100, eval_batch_size=256, log_every_n_steps=5))
    state = trainer.fit()
    return state.history, trainer.evaluate(data.test), model


def test_a_streamed_run_trains_as_the_in_memory_one():
    """The same seed draws the same epoch order on either path, so the batches, steps and metrics agree; the
    last training batch of 94 samples (1294 = 12 x 100 + 94) and evaluation read through the loader too."""
    held, held_test, held_model = fit_digits("off")
    streamed, streamed_test, streamed_model = fit_digits("on")
    keys = ("train/loss", "train/acc", "val/loss", "val/acc")
    for a, b in zip(held, streamed, strict=True):
        assert {k: pytest.approx(a[k], abs=1e-4) for k in keys} == {k: b[k] for k in keys}
    assert streamed_test == {k: pytest.approx(v, abs=1e-4) for k, v in held_test.items()}
    for p, q in zip(held_model.parameters(), streamed_model.parameters()):
        assert torch.allclose(p, q, atol=1e-4)


def test_a_streamed_run_resumed_after_an_epoch_ends_as_an_uninterrupted_one():
    """The epoch order comes from torch's global generator, whose state a checkpoint keeps: restoring it and the
    trainer's state after epoch 1 gives epoch 2 the batches the uninterrupted run had."""
    from dlx.data import digits, prepare
    from dlx.engine import FitOptions, Trainer

    data = prepare(digits(), stream="on", workers=0)

    def trainer(epochs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        return Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), schedule=ConstantLR(),
                       loss_fn=F.cross_entropy, eval_loss_fn=F.cross_entropy, data=data,
                       options=FitOptions(epochs=epochs, batch_size=128))

    whole = trainer(2)
    whole.fit()
    first = trainer(1)
    state = first.fit()
    saved, rng = copy.deepcopy(first.state_dict()), torch.get_rng_state()
    torch.manual_seed(123)  # whatever ran between the kill and the resume
    resumed = trainer(2)
    resumed.load_state_dict(saved)
    torch.set_rng_state(rng)
    resumed.fit(state)
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)

"""Recurrent models (rnn, lstm, gru), the seq2seq encoder-decoder and the gradient through time, called
directly with tiny sizes; tests/test_seq_diagnostics.py runs them through `dlx train`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlx.diagnostics.sequence import attention_maps, first_last, grad_through_time, unroll
from dlx.models.recurrent import GRU, LSTM, RNN
from dlx.models.seq2seq import Seq2Seq
from dlx.tasks import IGNORE, PAD

RECURRENT = [RNN, LSTM, GRU]


def _mse(out, y):
    return F.mse_loss(out.squeeze(-1), y)


def _ce(out, y):  # per-position cross-entropy, IGNORE skipped
    return F.cross_entropy(out.flatten(0, -2), y.flatten(), ignore_index=IGNORE)


# (input shape, sample, extra constructor arguments, output shape of 3 samples)
CASES = {
    "value, real sequence (2, 20)": ((2, 20), lambda: torch.randn(3, 2, 20), {"target": "value"}, (3, 1)),
    "label, image rows": ((1, 8, 8), lambda: torch.randn(3, 1, 8, 8), {}, (3, 10)),
    "label, image pixels, bidirectional, 2 layers": (
        (3, 4, 4), lambda: torch.randn(3, 3, 4, 4), {"read": "pixels", "bidirectional": True, "layers": 2}, (3, 10)),
    "label, tokens": ((9,), lambda: torch.randint(0, 12, (3, 9)), {"vocab": 12}, (3, 10)),
    "steps, tokens": ((9,), lambda: torch.randint(0, 12, (3, 9)), {"vocab": 12, "target": "steps"}, (3, 9, 10)),
    "label, features": ((5,), lambda: torch.randn(3, 5), {}, (3, 10)),
}


@pytest.mark.parametrize("cls", RECURRENT, ids=lambda c: c.name)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_shapes(cls, case):
    shape, sample, extra, out = CASES[case]
    classes = out[-1]
    model = cls(input_shape=shape, num_classes=classes, hidden=8, embedding=4, **extra)
    assert tuple(model(sample()).shape) == out
    assert model.num_layers == len(model.blocks) == extra.get("layers", 1)
    assert isinstance(model.head, nn.Linear)
    assert all(isinstance(b(torch.randn(2, 3, b.rnn.input_size)), torch.Tensor) for b in model.blocks)


def test_read_orders_an_image_by_rows_or_by_pixels():
    # the sequence a model reads: rows give T = H steps of C*W features, pixels T = H*W steps of C features
    seen = {}
    for read in ("rows", "pixels"):
        model = LSTM(input_shape=(3, 4, 5), num_classes=2, hidden=4, read=read)
        model.blocks[0].rnn.register_forward_hook(lambda m, i, o, read=read: seen.__setitem__(read, i[0].shape))
        model(torch.randn(2, 3, 4, 5))
    assert seen == {"rows": (2, 4, 15), "pixels": (2, 20, 3)}


def test_vanilla_rnn_is_the_plain_tanh_rnn():
    model = RNN(input_shape=(1, 6), num_classes=1, target="value", hidden=4)
    rnn = model.blocks[0].rnn
    assert type(rnn) is nn.RNN and rnn.nonlinearity == "tanh"


def test_a_steps_model_is_causal():
    # output t may depend on inputs 0..t only: changing the last input leaves every earlier output alone
    model = GRU(input_shape=(8,), num_classes=5, vocab=6, target="steps", hidden=8, embedding=4).eval()
    x = torch.randint(1, 6, (2, 8))
    changed = x.clone()
    changed[:, -1] = (x[:, -1] % 5) + 1
    assert torch.equal(model(x)[:, :-1], model(changed)[:, :-1])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_label_is_read_at_the_last_token_not_after_the_padding(bidirectional):
    # text_classification pads each text on the right with PAD: the padding must not move the prediction
    model = LSTM(input_shape=(9,), num_classes=3, vocab=6, hidden=8, embedding=4, bidirectional=bidirectional)
    x = torch.randint(1, 6, (2, 5))
    padded = torch.cat([x, torch.full((2, 4), PAD)], dim=1)
    assert torch.allclose(model.eval()(x), model(padded), atol=1e-6)


@pytest.mark.parametrize(("build", "says"), [
    (lambda: LSTM(input_shape=(5,), num_classes=4, vocab=6, target="sequence"),
     "model=lstm cannot produce a sequence target"),
    (lambda: GRU(input_shape=(5,), num_classes=4, vocab=6, target="steps", bidirectional=True),
     "model.bidirectional=true"),
    (lambda: RNN(input_shape=(2, 5), num_classes=1, hidden=0), "model.hidden=0 is out of range: allowed >= 1"),
    (lambda: LSTM(input_shape=(1, 4, 4), num_classes=2, read="columns"), "model.read='columns' is not valid"),
    (lambda: Seq2Seq(input_shape=(5,), num_classes=4, vocab=6, target="label", target_len=1),
     "model=seq2seq produces an output sequence"),
    (lambda: Seq2Seq(input_shape=(2, 5), num_classes=4, target="sequence", target_len=5), "no vocabulary"),
    (lambda: Seq2Seq(input_shape=(5,), num_classes=4, vocab=6, target="sequence", target_len=5, teacher_forcing=1.5),
     "model.teacher_forcing=1.5 is out of range: allowed in [0, 1]"),
    (lambda: Seq2Seq(input_shape=(5,), num_classes=4, vocab=6, target="sequence", target_len=5, attention="general"),
     "model.attention='general' is not valid: allowed none, additive, dot"),
])
def test_refusals_are_one_line(build, says):
    with pytest.raises(ValueError) as err:
        build()
    assert says in str(err.value) and "\n" not in str(err.value)


def _train(model, x, y, loss_fn, steps=30, lr=0.05):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(x, target=y) if isinstance(model, Seq2Seq) else model(x)
        loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cls", RECURRENT, ids=lambda c: c.name)
def test_a_few_steps_lower_the_loss(cls):
    torch.manual_seed(0)
    x = torch.rand(32, 2, 10)
    y = x.sum(dim=(1, 2)) / 10  # a smooth target of the whole sequence
    losses = _train(cls(input_shape=(2, 10), num_classes=1, target="value", hidden=16), x, y, _mse, lr=0.02)
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------------------------------------ seq2seq
def _copy_task(n=32, length=6, vocab=8):
    x = torch.randint(1, vocab, (n, length))
    return x, x.flip(1) - 1  # reverse; output classes are the non-pad ids


def _seq2seq(attention="additive", teacher_forcing=1.0, cell="gru", length=6, vocab=8):
    return Seq2Seq(input_shape=(length,), num_classes=vocab - 1, vocab=vocab, target="sequence", target_len=length,
                   hidden=16, embedding=8, attention=attention, teacher_forcing=teacher_forcing, cell=cell)


@pytest.mark.parametrize(("cell", "attention"), [("gru", "none"), ("gru", "additive"), ("lstm", "dot")])
def test_seq2seq_learns_and_decodes_on_its_own(cell, attention):
    torch.manual_seed(0)
    x, y = _copy_task()
    model = _seq2seq(attention, cell=cell)
    losses = _train(model, x, y, _ce, steps=25)
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    out = model(x)
    assert out.shape == (32, 6, 7)
    # evaluation decodes from x alone: targets handed over are not looked at
    assert torch.equal(out, model(x, target=torch.zeros_like(y))) and torch.equal(out, model(x, target=y))


def test_teacher_forcing_feeds_the_truth_in_training_only():
    torch.manual_seed(0)
    x, y = _copy_task()
    free, forced = _seq2seq(teacher_forcing=0.0), _seq2seq(teacher_forcing=1.0)
    forced.load_state_dict(free.state_dict())
    free.train(), forced.train()
    # ratio 0 feeds the model's own guesses, as evaluation does; ratio 1 the true previous tokens
    assert torch.allclose(free(x, target=y), free.eval()(x))
    assert not torch.allclose(forced(x, target=y), free.eval()(x))
    # a padded target position (IGNORE) feeds the start symbol instead of an index out of range
    padded = y.clone()
    padded[:, 3:] = IGNORE
    assert torch.isfinite(forced.train()(x, target=padded)).all()


@pytest.mark.parametrize("attention", ["additive", "dot"])
def test_attention_rows_sum_to_one_and_skip_padding(attention):
    torch.manual_seed(0)
    x, _ = _copy_task(n=4)
    x[:, -2:] = PAD
    model = _seq2seq(attention)
    weights = attention_maps(model, x)["attention"]
    assert weights.shape == (4, 6, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(4, 6), atol=1e-5)
    assert float(weights[:, :, -2:].abs().max()) < 1e-6
    assert model.training  # left in the mode it was in
    assert attention_maps(_seq2seq("none"), x) == {}


# ------------------------------------------------------------------------------------------------ gradient through time
@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_unroll_reproduces_torchs_layer(cls):
    torch.manual_seed(0)
    rnn = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 7, 3)
    (out, state), (out2, state2) = rnn(x), unroll(rnn, x)
    assert torch.allclose(out, out2, atol=1e-5)
    for a, b in zip(state if cls is nn.LSTM else (state,), state2 if cls is nn.LSTM else (state2,)):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_plain_rnns_gradient_vanishes_through_time_and_the_lstms_much_less():
    # at initialisation on T=60 (the adding problem's inputs): ||dL/dh_0|| / ||dL/dh_59||; measured with
    # model seeds 0-2: rnn 1e-14..2e-12, lstm 1e-6..5e-6 (its forget gates start open), gru 1e-12..1e-11
    torch.manual_seed(0)
    x, y = torch.rand(32, 2, 60), torch.rand(32)
    ratios = {}
    for cls in RECURRENT:
        torch.manual_seed(1)
        model = cls(input_shape=(2, 60), num_classes=1, target="value", hidden=32)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.eval()
        norms = grad_through_time(model, _mse, x, y)
        assert len(norms) == 60 and all(v >= 0 for v in norms) and norms[-1] > 0
        ratios[cls.name] = first_last(norms)
        # left as found: mode, weights, and no .grad on the parameters
        assert not model.training and all(p.grad is None for p in model.parameters())
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ratios["rnn"] < 1e-3 * ratios["lstm"]
    assert ratios["rnn"] < 1e-2  # and it does vanish


def test_gradient_through_time_reads_the_encoder_of_a_seq2seq_and_skips_models_without_rnn():
    torch.manual_seed(0)
    x, y = _copy_task(n=8)
    norms = grad_through_time(_seq2seq("none"), _ce, x, y)
    assert norms is not None and len(norms) == 6 and norms[0] > 0  # through the encoder's final state only
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert grad_through_time(mlp, F.cross_entropy, torch.randn(4, 2, 6), torch.tensor([0, 1, 2, 0])) is None

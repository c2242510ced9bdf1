"""The diagnostics held to the mathematics: the power-iteration eigenvalue against an exact eigendecomposition
of a tiny model's Hessian, epsilon-sharpness against a brute-force search of its box, the layer statistics
against a forward and backward pass written out by hand, the interpolation endpoints against the two
solutions' own losses; and a real `dlx train` run that logs them all to MLflow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dlx.compose import compose
from dlx.config import ConfigError
from dlx.diagnostics import eps_sharpness, hessian_top_eig, hvp, interpolate, layer_modules, layer_stats
from dlx.diagnostics.common import evaluated, fixed_subset
from dlx.models import CNN, MLP, ResNet
from tests.conftest import QUICK, client_for, run_dlx

ce = F.cross_entropy


def tiny_problem(seed: int = 0, n: int = 24):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def full_hessian(model: nn.Module, x, y) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(theta):
        parts = dict(zip(names, (t.view(s) for t, s in zip(theta.split(sizes), shapes))))
        return ce(functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def test_hvp_is_the_hessian_times_the_vector():
    model, x, y = tiny_problem()
    h = full_hessian(model, x, y)
    v = [torch.randn_like(p) for p in model.parameters()]
    got = torch.cat([t.flatten() for t in hvp(model, ce, x, y, v)])
    want = h @ torch.cat([t.flatten() for t in v])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    # in chunks, the mean loss's Hessian is the size-weighted sum over chunks
    chunked = torch.cat([t.flatten() for t in hvp(model, ce, x, y, v, chunk=5)])
    torch.testing.assert_close(chunked, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_finds_the_exact_top_eigenvalue(seed):
    model, x, y = tiny_problem(seed)
    # train a little towards a minimum, where the top eigenvalue is the largest in magnitude
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        ce(model(x), y).backward()
        opt.step()
    eigs = torch.linalg.eigvalsh(full_hessian(model, x, y))
    exact = float(eigs[eigs.abs().argmax()])
    before = [p.detach().clone() for p in model.parameters()]
    got, iters = hessian_top_eig(model, ce, x, y, iters=1000, tol=1e-10, seed=seed)
    assert got == pytest.approx(exact, rel=1e-4)
    assert exact == pytest.approx(float(eigs.max()), rel=1e-12)  # it is the top one here, not a negative one
    assert 1 < iters <= 1000
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_power_iteration_stops_at_its_iteration_budget():
    model, x, y = tiny_problem()
    _, iters = hessian_top_eig(model, ce, x, y, iters=3, tol=0.0)
    assert iters == 3


def sharpness_problem():
    """Two weights (a 1-in, 2-class linear model without bias): small enough to search its box exhaustively."""
    torch.manual_seed(0)
    model = nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.5], [-0.5]], dtype=torch.float64))
    x = torch.randn(40, 1, dtype=torch.float64)
    y = (x[:, 0] > 0.2).long()
    return model, x, y


def brute_force_sharpness(model, x, y, eps: float, n: int = 201) -> float:
    w = model.weight.detach().clone()
    bound = eps * (w.abs() + 1)
    base = float(ce(x @ w.T, y))
    grid = torch.linspace(-1, 1, n, dtype=torch.float64)
    best = base
    for a in grid:
        za = a * bound[0, 0]
        zb = grid * bound[1, 0]  # all values of the second weight at once
        weights = torch.stack([torch.full_like(zb, float(w[0, 0] + za)), w[1, 0] + zb], dim=1)  # (n, 2)
        logits = x[None, :, 0:1] * weights[:, None, :]  # (n, samples, 2)
        losses = torch.stack([ce(lg, y) for lg in logits])
        best = max(best, float(losses.max()))
    return 100 * (best - base) / (1 + base)


def test_eps_sharpness_is_zero_at_zero_and_grows_with_eps():
    model, x, y = sharpness_problem()
    before = model.weight.detach().clone()
    values = [eps_sharpness(model, ce, x, y, eps=e, steps=20) for e in (0.0, 1e-4, 1e-3, 1e-2, 5e-2, 0.2)]
    assert values[0] == 0.0
    assert all(v >= 0 for v in values)
    assert all(a < b for a, b in zip(values[1:], values[2:])), values
    assert torch.equal(model.weight, before)  # the weights are put back


@pytest.mark.parametrize("eps", [1e-2, 0.1, 0.3])
def test_eps_sharpness_finds_the_maximum_of_its_box(eps):
    model, x, y = sharpness_problem()
    exact = brute_force_sharpness(model, x, y, eps)
    got = eps_sharpness(model, ce, x, y, eps=eps, steps=20)
    assert exact > 0
    assert got <= exact * (1 + 1e-6) + 1e-9  # never more than the true maximum
    assert got >= 0.98 * exact


def test_eps_sharpness_on_a_network_is_positive_and_leaves_it_untouched():
    model = MLP(input_shape=(10,), num_classes=3, width=16, depth=2, norm="batch", dropout=0.2)
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    phi = eps_sharpness(model, ce, x, y, eps=1e-3, steps=5)
    assert phi > 0
    assert model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_layer_stats_match_a_forward_and_backward_pass_by_hand():
    torch.manual_seed(0)
    model = MLP(input_shape=(5,), num_classes=3, width=4, depth=2, activation="relu")
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    act, grad = layer_stats(model, ce, x, y)

    (w1, b1), (w2, b2) = [(b[0].weight.detach().clone(), b[0].bias.detach().clone()) for b in model.blocks]
    w3, b3 = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    leaves = [t.requires_grad_() for t in (w1, b1, w2, b2, w3, b3)]
    h1 = torch.clamp(x @ w1.T + b1, min=0)
    h2 = torch.clamp(h1 @ w2.T + b2, min=0)
    loss = -torch.log_softmax(h2 @ w3.T + b3, dim=1)[torch.arange(16), y].mean()
    g = torch.autograd.grad(loss, leaves)
    by_hand_grad = [math.sqrt(float(g[i].pow(2).sum() + g[i + 1].pow(2).sum())) for i in (0, 2, 4)]
    by_hand_act = [float(h1.detach().std()), float(h2.detach().std())]
    assert act == pytest.approx(by_hand_act, rel=1e-5)
    assert grad == pytest.approx(by_hand_grad, rel=1e-5)


def test_layer_stats_leave_training_as_it_was():
    """BatchNorm's running statistics, dropout's random stream and the mode are as before the call."""
    torch.manual_seed(0)
    model = MLP(input_shape=(6,), num_classes=2, width=8, depth=3, norm="batch", dropout=0.5)
    x, y = torch.randn(32, 6), torch.randint(0, 2, (32,))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    act, grad = layer_stats(model, ce, x, y)
    assert torch.equal(torch.rand(3), expected)
    assert not model.training
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert len(act) == 3 and len(grad) == 4  # three hidden layers, plus the head's gradient
    assert all(p.grad is None for p in model.parameters())


def test_layer_stats_work_on_every_model():
    for cls, shape in ((MLP, (1, 8, 8)), (CNN, (1, 8, 8)), (ResNet, (1, 8, 8))):
        name = cls.__name__
        model = cls(input_shape=shape, num_classes=4, width=8, depth=8 if cls is ResNet else 2)
        act, grad = layer_stats(model, ce, torch.randn(6, *shape), torch.randint(0, 4, (6,)))
        assert len(grad) == len(model.blocks) + 1 and len(act) == len(model.blocks)
        assert all(v > 0 and math.isfinite(v) for v in [*act, *grad]), name


class Tagger(nn.Module):
    """A user's model without `blocks`: the head is defined before the encoder, the encoder is an LSTM (its
    output is a tuple) and a LayerNorm sits between them, so attribute order is not forward order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)
        self.embed = nn.Linear(2, 5)
        self.lstm = nn.LSTM(5, 6, batch_first=True)
        self.norm = nn.LayerNorm(6)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.embed(x)))
        return self.head(self.norm(out[:, -1]))


def test_layer_stats_fall_back_to_the_modules_holding_parameters_in_forward_order():
    torch.manual_seed(0)
    model = Tagger()
    x, y = torch.randn(8, 4, 2), torch.randint(0, 3, (8,))
    assert layer_modules(model, x) == [model.embed, model.lstm, model.norm, model.head]
    act, grad = layer_stats(model, ce, x, y)

    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for m in (model.embed, model.lstm, model.norm)]
    loss = ce(model(x), y)
    for h in hooks:
        h.remove()
    by_hand_grad = [math.sqrt(sum(float(g.pow(2).sum()) for g in torch.autograd.grad(loss, list(m.parameters()),
                                                                                      retain_graph=True)))
                    for m in (model.embed, model.lstm, model.norm, model.head)]
    assert act == pytest.approx([float(o.detach().std()) for o in outputs], rel=1e-5)
    assert grad == pytest.approx(by_hand_grad, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_layer_stats_on_a_plain_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))
    act, grad = layer_stats(model, ce, torch.randn(6, 4, 4), torch.randint(0, 3, (6,)))
    assert len(act) == 2 and len(grad) == 3  # Linear, LayerNorm, then the head
    assert all(v > 0 and math.isfinite(v) for v in [*act, *grad])


def test_interpolation_endpoints_are_the_solutions_own_losses():
    torch.manual_seed(0)
    x, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    xt, yt = torch.randn(30, 6), torch.randint(0, 3, (30,))
    a = MLP(input_shape=(6,), num_classes=3, width=8, depth=1, norm="batch")
    b = MLP(input_shape=(6,), num_classes=3, width=8, depth=1, norm="batch")
    for m in (a, b):  # give the BatchNorm running statistics values of their own
        m.train()
        m(torch.randn(50, 6) * 3 + 1)
        m.eval()
    probe = MLP(input_shape=(6,), num_classes=3, width=8, depth=1, norm="batch")
    own = {k: v.clone() for k, v in probe.state_dict().items()}
    out = interpolate(probe, a.state_dict(), b.state_dict(), ce, {"train": (x, y), "test": (xt, yt)}, [0.0, 0.5, 1.0])
    with torch.no_grad():
        for i, m in ((0, a), (2, b)):
            assert out["train"]["loss"][i] == pytest.approx(float(ce(m(x), y)), rel=1e-6)
            assert out["test"]["loss"][i] == pytest.approx(float(ce(m(xt), yt)), rel=1e-6)
            assert out["test"]["acc"][i] == pytest.approx(float((m(xt).argmax(1) == yt).float().mean()))
    assert all(torch.equal(own[k], v) for k, v in probe.state_dict().items())


def test_fixed_subset_is_the_same_every_time_and_all_when_asked_for_more():
    from dlx.data.batches import TensorSplit

    x, y = torch.arange(100.0)[:, None], torch.arange(100)
    split = TensorSplit(x, y)
    a, b = fixed_subset(split, 10, seed=3), fixed_subset(split, 10, seed=3)
    assert torch.equal(a[0], b[0]) and len(a[0]) == 10
    assert torch.equal(fixed_subset(split, 500)[1], y)


def test_evaluated_restores_mode_buffers_and_random_state():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5))
    model.train()
    state = torch.get_rng_state()
    with evaluated(model, train=True):
        model(torch.randn(8, 3))
    assert model.training and torch.equal(model[1].running_mean, torch.zeros(3))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("override", "key"), [
    ("diagnostics.layers.samples=1", "diagnostics.layers.samples"),
    ("diagnostics.layers.every_n_epochs=0", "diagnostics.layers.every_n_epochs"),
    ("diagnostics.sharpness.hessian_iters=0", "diagnostics.sharpness.hessian_iters"),
    ("diagnostics.sharpness.samples=0", "diagnostics.sharpness.samples"),
    ("diagnostics.target_metric=test/acc", "diagnostics.target_metric"),
])
def test_bad_diagnostics_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override])


def test_a_run_logs_every_diagnostic(workdir):
    run_dlx(["train", *QUICK, "trainer.epochs=3", "model.depth=3", "diagnostics=[layers,sharpness]",
             "diagnostics.target=0.35", "diagnostics.sharpness.samples=256", "diagnostics.sharpness.hessian_iters=5",
             "diagnostics.sharpness.eps_steps=3"], workdir, check=True)
    client = client_for(workdir)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    m = run.data.metrics
    assert m["gap/acc"] == pytest.approx(m["final/train_acc"] - m["test/acc"])
    assert m["gap/loss"] == pytest.approx(m["test/loss"] - m["final/train_loss"])
    assert m["sharpness/hessian_top_eig"] > 0 and m["sharpness/eps"] > 0
    assert 1 <= m["sharpness/hessian_iters"] <= 5
    history = {int(p.step): p.value for p in client.get_metric_history(run.info.run_id, "act_std/layer_2")}
    assert sorted(history) == [0, 1, 2, 3]  # at initialisation and after each epoch
    assert {f"grad_norm/layer_{k}" for k in range(4)} <= set(m)
    assert "init/act_std_ratio" in m and "init/grad_norm_ratio" in m
    val = {int(p.step): p.value for p in client.get_metric_history(run.info.run_id, "val/acc")}
    assert val[1] < 0.35 <= max(val.values())  # so the first epoch at the target is not simply the first
    (reached,) = client.get_metric_history(run.info.run_id, "epochs_to_target")
    assert reached.value == min(e for e, v in val.items() if v >= 0.35)
    assert "plots/depth_profiles.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert run.data.params["diagnostics.sharpness.eps"] == "0.001"


def test_diagnostics_none_logs_no_gap(workdir):
    run_dlx(["train", *QUICK, "trainer.epochs=1", "diagnostics=none"], workdir, check=True)
    client = client_for(workdir)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "test/acc" in run.data.metrics
    assert not any(k.startswith(("gap/", "sharpness/", "act_std/")) for k in run.data.metrics)

import copy
import inspect

import pytest
import torch
from torch import nn

from dlx.optim import create_optimizer, decayed_params, get_optimizer_info, list_optimizers

# An lr at which each optimizer makes visible progress on the tiny problem below in a few steps.
LRS = {"adadelta": 1.0, "adagrad": 0.05, "adam": 0.01, "adamw": 0.01, "momentum": 0.02, "nesterov": 0.02,
       "rmsprop": 0.005, "sgd": 0.05}


def step_in_lockstep(*pairs: tuple[nn.Module, torch.optim.Optimizer], steps: int) -> None:
    """`steps` optimizer steps of each (model, optimizer) on the same batch and loss."""
    x = torch.randn(16, 8)
    for _ in range(steps):
        for model, opt in pairs:
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.Linear(16, 3))


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :3] * 2 - x[:, 3:6]).detach()
    return x, y


def split_names(model: nn.Module):
    """Parameter names expected in the decay / no-decay groups for `make_mlp`."""
    decay = {n for n, p in model.named_parameters() if p.ndim >= 2}
    return decay, {n for n, _ in model.named_parameters()} - decay


def group_names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_list_optimizers():
    assert list_optimizers() == ["adadelta", "adagrad", "adam", "adamw", "momentum", "nesterov", "rmsprop", "sgd"]


@pytest.mark.parametrize("name", list_optimizers())
def test_registry_matches_torch_signature(name):
    # The factory must never pass an argument the torch class rejects.
    info = get_optimizer_info(name)
    accepted = inspect.signature(info.cls).parameters
    for key in [*info.defaults, *info.fixed]:
        assert key in accepted, f"{name}: {key}"
    assert not set(info.defaults) & set(info.fixed)


@pytest.mark.parametrize("name", list_optimizers())
def test_every_optimizer_lowers_the_loss(name, batch):
    x, y = batch
    model = make_mlp()
    opt = create_optimizer(name, model, lr=LRS[name], weight_decay=1e-4)
    assert isinstance(opt, get_optimizer_info(name).cls)

    def eval_loss() -> float:
        # Eval mode on both sides so BatchNorm's running statistics are not mistaken for learning.
        model.eval()
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x), y).item()
        model.train()
        return loss

    before = eval_loss()
    for _ in range(15):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    after = eval_loss()
    assert after < 0.8 * before, (name, before, after)


@pytest.mark.parametrize("name", list_optimizers())
def test_defaults_and_fixed_reach_the_optimizer(name):
    info = get_optimizer_info(name)
    opt = create_optimizer(name, make_mlp(), lr=0.1)
    for group in opt.param_groups:
        assert group["lr"] == 0.1
        for key, value in {**info.defaults, **info.fixed}.items():
            assert group[key] == value, (name, key)


def test_decay_groups(batch):
    model = make_mlp()
    opt = create_optimizer("adamw", model, lr=1e-3, weight_decay=0.05)
    decay, no_decay = split_names(model)
    assert len(decay) == 3 and len(no_decay) == 7  # 3 weights; 3 biases + 2 LayerNorm + 2 BatchNorm
    groups = {g["decay"]: g for g in opt.param_groups}
    assert set(groups) == {True, False}
    assert groups[True]["weight_decay"] == 0.05 and group_names(model, groups[True]) == decay
    assert groups[False]["weight_decay"] == 0.0 and group_names(model, groups[False]) == no_decay
    assert {id(p) for p in decayed_params(opt)} == {id(p) for n, p in model.named_parameters() if n in decay}


def test_decay_norm_and_bias_puts_everything_in_one_decay_group():
    model = make_mlp()
    opt = create_optimizer("sgd", model, lr=0.1, weight_decay=0.01, decay_norm_and_bias=True)
    assert len(opt.param_groups) == 1
    (group,) = opt.param_groups
    assert group["decay"] is True and group["weight_decay"] == 0.01
    assert len(decayed_params(opt)) == len(list(model.parameters()))


def test_frozen_params_skipped_and_empty_group_dropped():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.LayerNorm(4))
    model[1].requires_grad_(False)
    opt = create_optimizer("adam", model, lr=1e-3, weight_decay=0.1)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["decay"] is True
    assert opt.param_groups[0]["params"] == [model[0].weight]

    only_norm = nn.LayerNorm(4)
    opt = create_optimizer("adam", only_norm, lr=1e-3, weight_decay=0.1)
    assert [g["decay"] for g in opt.param_groups] == [False]
    assert decayed_params(opt) == []

    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer("adam", nn.Linear(2, 2).requires_grad_(False), lr=1e-3)


def test_decayed_params_of_untagged_optimizer_counts_everything():
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert len(decayed_params(opt)) == 2


def test_momentum_and_nesterov_really_pass_momentum():
    opt = create_optimizer("momentum", make_mlp(), lr=0.1)
    assert all(g["momentum"] == 0.9 and g["nesterov"] is False and g["dampening"] == 0.0 for g in opt.param_groups)
    opt = create_optimizer("nesterov", make_mlp(), lr=0.1, momentum=0.8)
    assert all(g["momentum"] == 0.8 and g["nesterov"] is True for g in opt.param_groups)
    opt = create_optimizer("sgd", make_mlp(), lr=0.1)
    assert all(g["momentum"] == 0.0 and g["nesterov"] is False for g in opt.param_groups)
    assert get_optimizer_info("nesterov").has_momentum and not get_optimizer_info("sgd").has_momentum
    assert get_optimizer_info("adamw").has_betas and not get_optimizer_info("rmsprop").has_betas


def test_knobs_override_defaults_and_betas_list_becomes_tuple():
    opt = create_optimizer("adam", make_mlp(), lr=1e-3, betas=[0.8, 0.99], eps=1e-6, amsgrad=True)
    for group in opt.param_groups:
        assert group["betas"] == (0.8, 0.99) and isinstance(group["betas"], tuple)
        assert group["eps"] == 1e-6 and group["amsgrad"] is True
    # YAML reads `[0, 0.99]` with an int first; torch alone would refuse mixed int/float betas.
    opt = create_optimizer("adamw", make_mlp(), lr=1e-3, betas=[0, 0.99])
    assert opt.param_groups[0]["betas"] == (0.0, 0.99)


def test_unknown_kwarg_lists_valid_options():
    with pytest.raises(ValueError) as err:
        create_optimizer("adam", make_mlp(), lr=1e-3, momentum=0.9)
    assert str(err.value) == (
        "optimizer 'adam' has no option 'momentum'; valid: betas, eps, amsgrad, lr, weight_decay, decay_norm_and_bias"
    )
    # A knob another SGD flavour fixes is not settable: nesterov without dampening is the point of "nesterov".
    with pytest.raises(ValueError, match="optimizer 'nesterov' has no option 'dampening'; valid: momentum, lr"):
        create_optimizer("nesterov", make_mlp(), lr=1e-3, dampening=0.1)


def test_unknown_name_lists_optimizers():
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'; valid: adadelta, adagrad, adam, adamw, momentum"):
        create_optimizer("lamb", make_mlp(), lr=1e-3)
    with pytest.raises(ValueError, match="unknown optimizer 'Adam'"):
        get_optimizer_info("Adam")


@pytest.mark.parametrize("name", list_optimizers())
def test_fastest_implementation_when_params_share_a_device(name):
    """On CPU the fused kernel where torch has one, else foreach; parameters on several devices (meta stands in
    for a GPU) leave the choice to torch."""
    opt = create_optimizer(name, make_mlp(), lr=1e-3)
    accepted = inspect.signature(get_optimizer_info(name).cls).parameters
    if "fused" in accepted:
        assert opt.defaults["fused"] is True and not opt.defaults.get("foreach")
    else:
        assert opt.defaults["foreach"] is True
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(2, 2))
    model.b = nn.Parameter(torch.zeros(2, 2, device="meta"))
    opt = create_optimizer(name, model, lr=1e-3)
    assert opt.defaults["foreach"] is None and not opt.defaults.get("fused")


def test_without_weight_decay_one_group_steps_exactly_as_two():
    """No decay anywhere: one param group (one fused update), the same step as the split groups, and the
    split still known to L1/L2 penalties."""
    torch.manual_seed(0)
    model = make_mlp()
    twin = copy.deepcopy(model)
    opt = create_optimizer("adam", model, lr=1e-2)
    decay, _ = split_names(model)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in decayed_params(opt)} == {id(p) for n, p in model.named_parameters() if n in decay}
    ref = torch.optim.Adam([{"params": [p for p in twin.parameters() if p.ndim >= 2]},
                            {"params": [p for p in twin.parameters() if p.ndim < 2]}], lr=1e-2, fused=True)
    step_in_lockstep((model, opt), (twin, ref), steps=3)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in list_optimizers()
                                  if "fused" in inspect.signature(get_optimizer_info(n).cls).parameters])
def test_fused_update_is_the_multi_tensor_update(name):
    """The fused kernel dlx picks on CPU computes the same update as torch's foreach one (to float rounding).
    No norm layer here: the bias of a Linear before BatchNorm has a gradient of rounding noise (~1e-9), on
    which Adam's m / (sqrt(v) + eps) turns any rounding difference into a step of the order of lr."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    opt = create_optimizer(name, model, lr=LRS[name], weight_decay=1e-4)
    info = get_optimizer_info(name)
    ref = info.cls([{"params": [p for p in twin.parameters() if p.ndim >= 2], "weight_decay": 1e-4},
                    {"params": [p for p in twin.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                   lr=LRS[name], foreach=True, **info.defaults, **info.fixed)
    assert opt.defaults["fused"] is True
    step_in_lockstep((model, opt), (twin, ref), steps=5)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

import copy
import functools
import inspect
import io
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from torch import nn

from dlx.lion import Lion
from dlx.optim import (
    NOT_OPTIONS,
    create_optimizer,
    decayed_params,
    optimizer_class,
    optimizer_spec,
    option_problems,
    param_group_options,
)
from dlx.options import problems, spec

# Every option dlx ships, discovered: a new conf/optimizer/*.yaml is tested without editing this file.
OPTIONS = sorted(Path(__file__).resolve().parents[1].joinpath("conf", "optimizer").glob("*.yaml"))
NAMES = [p.stem for p in OPTIONS]
EXTRAS = spec(param_group_options)


def read_option(name: str) -> dict:
    """The option's YAML as build sees it: the node without Hydra's defaults list."""
    node = yaml.safe_load(OPTIONS[NAMES.index(name)].read_text())
    node.pop("defaults")
    return node


def factory_of(name: str, **override):
    """What hydra.utils.instantiate(node, _partial_=True) makes of the option, dlx's extras kept apart."""
    node = {k: v for k, v in {**read_option(name), **override}.items() if k not in EXTRAS}
    return instantiate(node, _partial_=True)


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


class SignSGD(torch.optim.Optimizer):
    """A user's optimizer, as one writes it outside dlx: its own defaults, no fused or foreach switch."""

    def __init__(self, params, lr: float = 0.01, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(1 - group["lr"] * group["weight_decay"]).add_(p.grad.sign(), alpha=-group["lr"])


class NoDecay(torch.optim.SGD):
    """A user's subclass of a torch optimizer that takes no weight decay."""

    def __init__(self, params, lr: float = 0.1, rho: float = 2.0):  # rho: a radius here, not torch's decay rate
        super().__init__(params, lr=lr)


# ------------------------------------------------------------------------------ every option dlx ships
@pytest.mark.parametrize("name", NAMES)
def test_option_holds_only_what_differs_from_the_signature(name):
    """One home per default: an option's YAML names its class and holds only dlx's choices, each one a key the
    class (or dlx's extras) takes and a value the class's signature does not already say."""
    text = OPTIONS[NAMES.index(name)].read_text()
    assert text.startswith("# ")
    assert yaml.safe_load(text)["defaults"] == [f"schema_{name}"]
    node = read_option(name)
    cls = optimizer_class(get_object(node.pop("_target_")))
    options = {**EXTRAS, **optimizer_spec(cls)}
    for key, value in node.items():
        assert key in options, f"{name}: {key} is not an option of {cls.__qualname__}"
        assert value != options[key].default, f"{name}: {key}: {value} restates the signature's default"
    assert not problems(options, node, "optimizer") + option_problems(cls, node)


@pytest.mark.parametrize("name", NAMES)
def test_option_builds_and_steps(name, batch):
    """Each option as build makes it, with the YAML's own values: the class it names, its lr, one or more steps
    that lower the loss of a small MLP."""
    x, y = batch
    node = read_option(name)
    model = make_mlp()
    opt = create_optimizer(factory_of(name), model, **{k: v for k, v in node.items() if k in EXTRAS})
    cls = get_object(node["_target_"])
    assert type(opt) is cls
    assert all(g["lr"] == node.get("lr", optimizer_spec(cls)["lr"].default) for g in opt.param_groups)

    def eval_loss() -> float:
        # Eval mode on both sides so BatchNorm's running statistics are not mistaken for learning.
        model.eval()
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x), y).item()
        model.train()
        return loss

    before = eval_loss()
    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    assert eval_loss() < 0.95 * before, name


def test_each_sgd_flavour_means_what_its_name_says():
    """sgd, momentum and nesterov are one torch class; their YAML deltas over its signature make the difference."""
    expect = {"sgd": (0.0, False), "momentum": (0.9, False), "nesterov": (0.9, True)}
    for name, (momentum, nesterov) in expect.items():
        opt = create_optimizer(factory_of(name), make_mlp())
        for g in opt.param_groups:
            assert (g["momentum"], g["nesterov"], g["dampening"]) == (momentum, nesterov, 0), name


# ------------------------------------------------------------------------------ options and their ranges
@pytest.mark.parametrize("name", NAMES)
def test_spec_leaves_out_what_dlx_passes_or_picks(name):
    cls = get_object(read_option(name)["_target_"])
    names = set(optimizer_spec(cls))
    assert "lr" in names and not names & set(NOT_OPTIONS)
    assert set(inspect.signature(cls).parameters) - names <= set(NOT_OPTIONS)


def test_ranges_reach_torch_options_by_name():
    adam, sgd = optimizer_spec(torch.optim.Adam), optimizer_spec(torch.optim.SGD)
    assert problems(adam, {"lr": 0.0, "betas": [0.9, 1.0], "eps": 0.0, "weight_decay": -1}, "optimizer") == [
        "optimizer.lr=0.0 is out of range: allowed > 0",
        "optimizer.betas=[0.9, 1.0] is out of range: allowed 2 numbers in [0, 1)",
        "optimizer.eps=0.0 is out of range: allowed > 0",
        "optimizer.weight_decay=-1 is out of range: allowed >= 0",
    ]
    assert problems(sgd, {"momentum": 1.0, "dampening": 0.5}, "optimizer") == [
        "optimizer.momentum=1.0 is out of range: allowed in [0, 1)"]
    rules = {name: str(optimizer_spec(cls)[name].rule) for cls, name in [
        (torch.optim.Adadelta, "rho"), (torch.optim.RMSprop, "alpha"), (torch.optim.Adagrad, "lr_decay"),
        (torch.optim.Adagrad, "initial_accumulator_value")]}
    assert rules == {"rho": "in [0, 1)", "alpha": "in [0, 1)", "lr_decay": ">= 0",
                     "initial_accumulator_value": ">= 0"}


def test_a_name_has_torch_range_only_where_it_comes_from_torch():
    """A user's subclass keeps torch's range of the lr it passes on; its own rho (SAM's radius) gets none."""
    spec_ = optimizer_spec(NoDecay)
    assert str(spec_["lr"].rule) == "> 0" and spec_["rho"].rule is None
    assert optimizer_spec(SignSGD)["lr"].rule is None


def test_create_optimizer_refuses_out_of_range_options_naming_the_key():
    with pytest.raises(ValueError, match=r"^optimizer.lr=-0.1 is out of range: allowed > 0$"):
        create_optimizer(functools.partial(torch.optim.SGD, lr=-0.1), make_mlp())
    with pytest.raises(ValueError, match=r"optimizer.dampening=0.1 is not allowed with nesterov: allowed 0"):
        create_optimizer(factory_of("nesterov", dampening=0.1), make_mlp())
    with pytest.raises(ValueError, match=r"optimizer.momentum=0.0 is not allowed with nesterov: allowed > 0"):
        create_optimizer(factory_of("nesterov", momentum=0.0), make_mlp())
    # the same rule for the config checks, which hold the dotted target
    assert option_problems("torch.optim.SGD", {**read_option("nesterov"), "dampening": 0.5}) == [
        "optimizer.dampening=0.5 is not allowed with nesterov: allowed 0"]
    with pytest.raises(ValueError, match=r"optimizer.betas=\[0.9\] is out of range"):
        create_optimizer(factory_of("adam", betas=[0.9]), make_mlp())


def test_an_option_the_class_lacks_is_torch_s_type_error():
    with pytest.raises(TypeError, match="momentum"):
        create_optimizer(functools.partial(torch.optim.Adam, momentum=0.9), make_mlp())
    with pytest.raises(TypeError, match="decay_norm_and_bis"):
        create_optimizer(torch.optim.Adam, make_mlp(), decay_norm_and_bis=True)


@pytest.mark.parametrize("factory", [nn.Linear, functools.partial(nn.Linear, 2), len, "torch.optim.Adam",
                                     torch.optim.Optimizer.step])
def test_a_factory_that_makes_no_optimizer_is_refused(factory):
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer subclass or a partial of one; .* is not"):
        create_optimizer(factory, make_mlp())


def test_a_partial_with_parameters_is_refused():
    model = make_mlp()
    with pytest.raises(TypeError, match="dlx passes the parameters itself"):
        create_optimizer(functools.partial(torch.optim.SGD, model.parameters(), lr=0.1), model)


# ------------------------------------------------------------------------------ any optimizer class
def test_a_user_optimizer_gets_the_decay_groups_and_steps():
    model = make_mlp()
    opt = create_optimizer(functools.partial(SignSGD, lr=0.01, weight_decay=0.1), model)
    decay, no_decay = split_names(model)
    groups = {g["decay"]: g for g in opt.param_groups}
    assert groups[True]["weight_decay"] == 0.1 and group_names(model, groups[True]) == decay
    assert groups[False]["weight_decay"] == 0.0 and group_names(model, groups[False]) == no_decay
    before = [p.clone() for p in model.parameters()]
    step_in_lockstep((model, opt), steps=1)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # a bare class: its own signature's defaults, one group without weight decay
    opt = create_optimizer(SignSGD, model)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.01


def test_an_optimizer_without_weight_decay_gets_one_group():
    model = make_mlp()
    opt = create_optimizer(NoDecay, model)
    assert [g["decay"] for g in opt.param_groups] == ["mixed"] and opt.param_groups[0]["weight_decay"] == 0
    opt = create_optimizer(NoDecay, model, decay_norm_and_bias=True)
    assert [g["decay"] for g in opt.param_groups] == [True]
    assert len(decayed_params(opt)) == len(list(model.parameters()))


# ------------------------------------------------------------------------------ decay groups
def test_decay_groups():
    model = make_mlp()
    opt = create_optimizer(factory_of("adamw", weight_decay=0.05), model)
    decay, no_decay = split_names(model)
    assert len(decay) == 3 and len(no_decay) == 7  # 3 weights; 3 biases + 2 LayerNorm + 2 BatchNorm
    groups = {g["decay"]: g for g in opt.param_groups}
    assert set(groups) == {True, False}
    assert groups[True]["weight_decay"] == 0.05 and group_names(model, groups[True]) == decay
    assert groups[False]["weight_decay"] == 0.0 and group_names(model, groups[False]) == no_decay
    assert {id(p) for p in decayed_params(opt)} == {id(p) for n, p in model.named_parameters() if n in decay}
    untagged = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    assert len(decayed_params(untagged)) == 2  # not built by dlx: every group decays, as in torch


def test_weight_decay_of_the_signature_splits_the_groups_too():
    """adamw.yaml leaves weight_decay to torch's signature (0.01): the groups still split on it."""
    opt = create_optimizer(factory_of("adamw"), make_mlp())
    assert sorted((str(g["decay"]), g["weight_decay"]) for g in opt.param_groups) == [("False", 0.0),
                                                                                      ("True", 0.01)]


def test_decay_norm_and_bias_puts_everything_in_one_decay_group():
    model = make_mlp()
    opt = create_optimizer(factory_of("sgd", weight_decay=0.01), model, decay_norm_and_bias=True)
    (group,) = opt.param_groups
    assert group["decay"] is True and group["weight_decay"] == 0.01
    assert len(decayed_params(opt)) == len(list(model.parameters()))


def test_frozen_params_skipped_and_empty_group_dropped():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.LayerNorm(4))
    model[1].requires_grad_(False)
    adam = factory_of("adam", weight_decay=0.1)
    opt = create_optimizer(adam, model)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["decay"] is True
    assert opt.param_groups[0]["params"] == [model[0].weight]

    only_norm = nn.LayerNorm(4)
    opt = create_optimizer(adam, only_norm)
    assert [g["decay"] for g in opt.param_groups] == [False]
    assert decayed_params(opt) == []

    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(adam, nn.Linear(2, 2).requires_grad_(False))


def test_betas_from_a_config_become_a_tuple_of_floats():
    # YAML reads `[0, 0.99]` with an int first, and instantiate without _convert_ passes a ListConfig; torch
    # alone refuses mixed int/float betas.
    for betas in ([0, 0.99], OmegaConf.create([0, 0.99])):
        opt = create_optimizer(functools.partial(torch.optim.AdamW, betas=betas), make_mlp())
        assert all(g["betas"] == (0.0, 0.99) and isinstance(g["betas"], tuple) for g in opt.param_groups)
    opt = create_optimizer(factory_of("adam", betas=[0.8, 0.99], eps=1e-6, amsgrad=True), make_mlp())
    assert all(g["betas"] == (0.8, 0.99) and g["eps"] == 1e-6 and g["amsgrad"] for g in opt.param_groups)


# ------------------------------------------------------------------------------ the update kernel
@pytest.mark.parametrize("name", NAMES)
def test_fastest_implementation_when_params_share_a_device(name):
    """On CPU the fused kernel where torch has one, else foreach, else none; parameters on several devices (meta
    stands in for a GPU) leave the choice to torch."""
    cls = get_object(read_option(name)["_target_"])
    opt = create_optimizer(factory_of(name), make_mlp())
    accepted = inspect.signature(cls).parameters
    if "fused" in accepted:
        assert opt.defaults["fused"] is True and not opt.defaults.get("foreach")
    elif "foreach" in accepted:
        assert opt.defaults["foreach"] is True
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(2, 2))
    model.b = nn.Parameter(torch.zeros(2, 2, device="meta"))
    opt = create_optimizer(factory_of(name), model)
    assert not opt.defaults.get("foreach") and not opt.defaults.get("fused")


def test_a_caller_s_own_kernel_choice_stands():
    opt = create_optimizer(functools.partial(torch.optim.Adam, foreach=True), make_mlp())
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]


def test_without_weight_decay_one_group_steps_exactly_as_two():
    """No decay anywhere: one param group (one fused update), the same step as the split groups, and the
    split still known to L1/L2 penalties."""
    torch.manual_seed(0)
    model = make_mlp()
    twin = copy.deepcopy(model)
    opt = create_optimizer(factory_of("adam", lr=1e-2), model)
    decay, _ = split_names(model)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in decayed_params(opt)} == {id(p) for n, p in model.named_parameters() if n in decay}
    ref = torch.optim.Adam([{"params": [p for p in twin.parameters() if p.ndim >= 2]},
                            {"params": [p for p in twin.parameters() if p.ndim < 2]}], lr=1e-2, fused=True)
    step_in_lockstep((model, opt), (twin, ref), steps=3)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES
                                  if "fused" in inspect.signature(get_object(read_option(n)["_target_"])).parameters])
def test_fused_update_is_the_multi_tensor_update(name):
    """The fused kernel dlx picks on CPU computes the same update as torch's foreach one (to float rounding).
    No norm layer here: the bias of a Linear before BatchNorm has a gradient of rounding noise (~1e-9), on
    which Adam's m / (sqrt(v) + eps) turns any rounding difference into a step of the order of lr."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    factory = factory_of(name, weight_decay=1e-4)
    opt = create_optimizer(factory, model)
    ref = factory([{"params": [p for p in twin.parameters() if p.ndim >= 2], "weight_decay": 1e-4},
                   {"params": [p for p in twin.parameters() if p.ndim < 2], "weight_decay": 0.0}], foreach=True)
    assert opt.defaults["fused"] is True
    step_in_lockstep((model, opt), (twin, ref), steps=5)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ Lion
def test_lion_update_is_the_paper_s_on_two_steps():
    """Chen et al. 2023, Program 1, by hand: c = b1*m + (1-b1)*g; p -= lr*(sign(c) + wd*p); m = b2*m + (1-b2)*g.
    The gradients are chosen so that on the second step sign(c) is the momentum's against the gradient's in one
    coordinate and exactly 0 in another."""
    lr, b1, b2, wd = 0.1, 0.5, 0.75, 0.2
    p = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    grads = [[8.0, -4.0, 4.0], [-1.0, 1.0, -2.0]]
    expect, m = [1.0, -2.0, 0.5], [0.0, 0.0, 0.0]
    for g in grads:
        c = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        sign = [(ci > 0) - (ci < 0) for ci in c]
        expect = [pi * (1 - lr * wd) - lr * si for pi, si in zip(expect, sign)]
        m = [b2 * mi + (1 - b2) * gi for mi, gi in zip(m, g)]
        p.grad = torch.tensor(g)
        opt.step()
    assert sign == [1, 0, -1]  # the second step's c = (0.5, 0, -0.5) against its gradient (-1, 1, -2)
    torch.testing.assert_close(p.detach(), torch.tensor(expect), rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor(m), rtol=0, atol=1e-6)


def test_lion_checks_its_own_options_and_resumes_from_its_state():
    with pytest.raises(ValueError, match=r"optimizer.lr=0 is out of range: allowed > 0"):
        Lion([nn.Parameter(torch.zeros(2))], lr=0)
    model = make_mlp()
    twin = copy.deepcopy(model)
    opt = create_optimizer(factory_of("lion"), model)
    step_in_lockstep((model, opt), steps=2)
    twin.load_state_dict(model.state_dict())
    resumed = create_optimizer(factory_of("lion"), twin)
    saved = io.BytesIO()  # as a checkpoint holds it: torch.load(weights_only=True) takes Lion's state
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    step_in_lockstep((model, opt), (twin, resumed), steps=2)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

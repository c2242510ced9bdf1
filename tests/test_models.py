"""Behaviour of the model zoo: shapes, training steps, init statistics, structure and errors; each
constructor's signature as the one home of its options."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class
from torch import nn

from dlx import options
from dlx.compose import config_dir
from dlx.models import CNN, MLP, NOT_OPTIONS, Activation, Init, Norm, ResNet, check_io
from dlx.models.layers import init_gain, init_weights, make_activation, make_norm

# Every option conf/model/ ships, by its name: a new model file is tested as soon as it exists. The models
# for sequences and attention have test files of their own (their options, targets and refusals differ);
# this file tests the models of images, (C, L) sequences and features.
ALL_MODELS = {p.stem: get_class(yaml.safe_load(p.read_text())["_target_"])
              for p in sorted((config_dir() / "model").glob("*.yaml"))}
TESTED_ELSEWHERE = {"rnn": "test_recurrent.py", "lstm": "test_recurrent.py", "gru": "test_recurrent.py",
                    "seq2seq": "test_recurrent.py", "transformer": "test_transformer.py", "vit": "test_transformer.py"}
MODELS = {name: cls for name, cls in ALL_MODELS.items() if name not in TESTED_ELSEWHERE}

INPUTS = {"image": (1, 8, 8), "sequence": (2, 12), "tabular": (3,)}
# Tiny widths keep the whole cross product fast; resnet depth 8 is its smallest valid depth.
TINY = {
    "mlp": dict(width=8, depth=2),
    "cnn": dict(width=4, depth=2, hidden=8),
    "resnet": dict(width=4, depth=8),
}
CASES = [(m, k) for m in MODELS for k in INPUTS if m == "mlp" or k != "tabular"]
# Each knob is swept on its own; mlp has no feature maps for instance norm (checked in test_errors).
KNOBS = [("norm", n.value) for n in Norm] + [("activation", a.value) for a in Activation] + [
    ("init", i.value) for i in Init]
SWEEP = [(m, k, key, v) for m, k in CASES for key, v in KNOBS if not (m == "mlp" and v == "instance")]
NUM_CLASSES = 3


def build(name: str, kind: str = "image", **overrides) -> nn.Module:
    return MODELS[name](input_shape=INPUTS[kind], num_classes=NUM_CLASSES, **{**TINY[name], **overrides})


def batch(kind: str, n: int = 6) -> torch.Tensor:
    return torch.randn(n, *INPUTS[kind])


def test_conf_names_every_model_and_the_tests_size_each():
    assert MODELS == {"cnn": CNN, "mlp": MLP, "resnet": ResNet}
    assert set(TINY) == set(MODELS)
    here = Path(__file__).parent
    for name, file in TESTED_ELSEWHERE.items():  # each is a model conf/ ships, named by its test file
        assert name in ALL_MODELS and ALL_MODELS[name].__name__ in (here / file).read_text(), (name, file)


@pytest.mark.parametrize("name,kind,key,value", SWEEP)
def test_forward_shape_and_sgd_step(name, kind, key, value):
    torch.manual_seed(0)
    model = build(name, kind, **{key: value})
    x, y = batch(kind), torch.randint(0, NUM_CLASSES, (6,))
    before = [p.detach().clone() for p in model.parameters()]
    first_block = [p.detach().clone() for p in model.blocks[0].parameters()]

    logits = model(x)
    assert logits.shape == (6, NUM_CLASSES)
    loss = nn.functional.cross_entropy(logits, y)
    assert torch.isfinite(loss)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    opt.step()

    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert not torch.equal(before[-1], after[-1]), "head did not move"
    # The gradient must reach the bottom of the network, not just the head.
    assert any(not torch.equal(b, p) for b, p in zip(first_block, model.blocks[0].parameters()))
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name,kind", CASES)
def test_block_hooks_fire_once_and_see_block_outputs(name, kind):
    torch.manual_seed(0)
    model = build(name, kind, norm="batch").eval()
    assert model.num_layers == len(model.blocks) > 0
    assert isinstance(model.head, nn.Linear)
    outputs: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda _m, _inp, out, i=i: outputs[i].append(out))
    x = batch(kind)
    logits = model(x)
    assert [len(o) for o in outputs] == [1] * len(model.blocks)
    outs = [o[0] for o in outputs]
    # Blocks run in list order, each fed by the previous one, and the head reads the last.
    for i in range(1, len(outs)):
        torch.testing.assert_close(model.blocks[i](outs[i - 1]), outs[i])
    last = outs[-1] if outs[-1].dim() == 2 else outs[-1].flatten(2).mean(-1)
    torch.testing.assert_close(model.head(last), logits)


def test_mlp_depth_zero_is_logistic_regression():
    model = MLP(input_shape=(4, 5), num_classes=3, depth=0)
    assert len(model.blocks) == 0 and model.num_layers == 0
    assert [type(m) for m in model.modules()][1:] == [nn.ModuleList, nn.Linear]
    assert model.head.in_features == 20
    assert model(torch.randn(2, 4, 5)).shape == (2, 3)


@pytest.mark.parametrize(
    "input_shape,depth,conv_type",
    [
        ((1, 8, 8), 2, nn.Conv2d),
        ((3, 32, 32), 3, nn.Conv2d),
        ((1, 40), 2, nn.Conv1d),
        ((1, 8, 8), 4, nn.Conv2d),
    ],
)
def test_cnn_input_kinds(input_shape, depth, conv_type):
    # Depth 4 on 8x8 digits runs out of map to pool (8->4->2->1) and must skip the last pool.
    model = CNN(input_shape=input_shape, num_classes=10, width=4, depth=depth, hidden=8)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert len(convs) == depth and all(type(c) is conv_type for c in convs)
    assert [c.out_channels for c in convs] == [4 * 2**i for i in range(depth)]
    assert model.num_layers == depth + 1
    assert model(torch.randn(2, *input_shape)).shape == (2, 10)


@pytest.mark.parametrize("depth,blocks", [(8, 4), (14, 7), (20, 10)])
def test_resnet_depth_sets_block_count(depth, blocks):
    model = ResNet(input_shape=(1, 8, 8), num_classes=10, depth=depth, width=4)
    assert model.num_layers == len(model.blocks) == blocks  # stem + 3 stages of (depth - 2) / 6
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # the paper's count: 3x3 convs plus the head
    assert model.head.in_features == 16
    # 8x8 digits: stages 2 and 3 halve the map, 8 -> 4 -> 2.
    assert model.blocks[0](torch.randn(2, 1, 8, 8)).shape == (2, 4, 8, 8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_resnet_on_sequences_uses_conv1d():
    model = ResNet(input_shape=(1, 40), num_classes=10, depth=8, width=4, norm="batch")
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)


def test_resnet_plain_has_no_shortcut_and_differs_from_residual():
    torch.manual_seed(0)
    plain = build("resnet", skip=False, norm="batch").eval()
    residual = build("resnet", skip=True, norm="batch").eval()
    assert not any("shortcut" in n for n, _ in plain.named_parameters())
    assert any("shortcut" in n for n, _ in residual.named_parameters())
    # Same weights everywhere except the projection shortcuts, which only the residual net has.
    missing, unexpected = residual.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all("shortcut" in k for k in missing)
    x = batch("image")
    assert not torch.allclose(plain(x), residual(x))


def _first_weight(model: nn.Module) -> torch.Tensor:
    return next(m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))).detach()


@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu"])
def test_normal_init_std(activation):
    torch.manual_seed(0)
    fan_in, fan_out = 1024, 512
    kw = dict(input_shape=(fan_in,), num_classes=2, width=fan_out, depth=1, activation=activation)
    xavier = _first_weight(MLP(init="xavier_normal", **kw))
    assert xavier.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03)
    he = _first_weight(MLP(init="he_normal", **kw))
    assert he.std().item() == pytest.approx(init_gain(activation) / math.sqrt(fan_in), rel=0.03)
    if activation == "relu":
        assert he.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)


def test_conv_init_uses_receptive_field_fan_in():
    torch.manual_seed(0)
    model = CNN(input_shape=(16, 8, 8), num_classes=2, width=64, depth=1, init="he_normal")
    fan_in = 16 * 3 * 3
    assert _first_weight(model).std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)


def test_uniform_and_orthogonal_init():
    torch.manual_seed(0)
    kw = dict(input_shape=(256,), num_classes=2, width=128, depth=1)
    w = _first_weight(MLP(init="xavier_uniform", **kw))
    bound = math.sqrt(6 / (256 + 128))
    assert 0.95 * bound < w.abs().max().item() <= bound
    w = _first_weight(MLP(init="he_uniform", **kw))
    bound = math.sqrt(2) * math.sqrt(3 / 256)
    assert 0.95 * bound < w.abs().max().item() <= bound
    w = _first_weight(MLP(init="orthogonal", activation="tanh", **kw))
    gain = nn.init.calculate_gain("tanh")
    torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(128), atol=1e-4, rtol=0)


def _block_stds(init: str) -> tuple[float, list[float]]:
    torch.manual_seed(0)
    width = 256
    model = MLP(input_shape=(width,), num_classes=10, width=width, depth=20, init=init)
    stds: list[float] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: stds.append(out.std().item()))
    x = torch.randn(512, width)
    with torch.no_grad():
        model(x)
    return x.std().item(), stds


def test_he_keeps_relu_activations_while_xavier_shrinks_them():
    x_std, he = _block_stds("he_normal")
    assert len(he) == 20
    assert all(x_std / 2 < s < x_std * 2 for s in he), he
    x_std, xavier = _block_stds("xavier_normal")
    assert xavier[-1] < x_std / 10, xavier
    assert xavier[-1] < xavier[0] / 10  # the shrinking compounds across depth


@pytest.mark.parametrize("init", [i.value for i in Init if i is not Init.default])
@pytest.mark.parametrize("name,kind", [("mlp", "tabular"), ("cnn", "image"), ("resnet", "sequence")])
def test_non_default_init_zeroes_biases_and_resets_norms(name, kind, init):
    for norm in ("none", "group"):
        model = build(name, kind, init=init, norm=norm)
        biases = [m.bias for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
        biases = [b for b in biases if b is not None]
        assert biases and all(torch.count_nonzero(b) == 0 for b in biases)
        norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
        assert (norm == "group") == bool(norms)
        assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


def test_default_init_is_pytorch_own():
    torch.manual_seed(0)
    model = build("mlp", "tabular")
    torch.manual_seed(0)
    reference = nn.Linear(3, 8)
    torch.testing.assert_close(model.blocks[0][0].weight, reference.weight)
    assert torch.count_nonzero(model.head.bias) > 0


@pytest.mark.parametrize(
    "norm,spatial,expected",
    [
        ("batch", "image", nn.BatchNorm2d),
        ("batch", "sequence", nn.BatchNorm1d),
        ("instance", "image", nn.InstanceNorm2d),
        ("instance", "sequence", nn.InstanceNorm1d),
        ("layer", "image", nn.GroupNorm),
        ("group", "image", nn.GroupNorm),
    ],
)
def test_conv_norm_layers(norm, spatial, expected):
    model = CNN(input_shape=INPUTS[spatial], num_classes=2, width=12, depth=2, norm=norm)
    found = [m for m in model.modules() if isinstance(m, expected)]
    assert len(found) == 2
    if norm == "instance":
        assert all(m.affine for m in found)
    if norm in ("layer", "group"):
        # width 12 then 24 channels: layer norm is one group; group norm takes the largest of 8/4/2/1 dividing C.
        assert [m.num_groups for m in found] == ([1, 1] if norm == "layer" else [4, 8])


@pytest.mark.parametrize("width,groups", [(6, 2), (8, 4), (16, 8), (128, 8)])
def test_mlp_norm_layers(width, groups):
    layer = build("mlp", "tabular", norm="layer", width=width)
    assert isinstance(layer.blocks[0][1], nn.LayerNorm)
    # A one-feature group would normalise to a constant 0, so feature vectors keep >= 2 per group.
    group = build("mlp", "tabular", norm="group", width=width).blocks[0][1]
    assert isinstance(group, nn.GroupNorm) and group.num_groups == groups


@pytest.mark.parametrize("name,kind", CASES)
def test_deterministic_under_manual_seed(name, kind):
    outs, states = [], []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        model = build(name, kind, dropout=0.5)
        x = batch(kind)
        outs.append(model(x))  # train mode: dropout masks must repeat too
        states.append(model.state_dict())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.allclose(outs[0], outs[2])


def test_accepts_list_like_input_shape():
    model = CNN(input_shape=[1, 8, 8], num_classes=4, width=4, hidden=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize("name", MODELS)
def test_autocast_forward(name):
    kind = "tabular" if name == "mlp" else "image"
    model = build(name, kind, norm="batch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch(kind))
    assert out.shape == (6, NUM_CLASSES) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    "name,input_shape,kwargs,expected",
    [
        ("mlp", (3,), {"norm": "bogus"}, ["model.norm", "'bogus'", "none, batch, layer, group, instance"]),
        ("cnn", (1, 8, 8), {"activation": "swish"}, ["model.activation", "leaky_relu", "tanh"]),
        ("resnet", (1, 8, 8), {"init": "lecun"}, ["model.init", "xavier_uniform", "orthogonal"]),
        ("mlp", (3,), {"dropout": 1.0}, ["model.dropout", "[0, 1)"]),
        ("cnn", (1, 8, 8), {"dropout": -0.1}, ["model.dropout", "[0, 1)"]),
        ("resnet", (1, 8, 8), {"depth": 10}, ["model.depth", "6n+2", "8, 14, 20"]),
        ("mlp", (3,), {"depth": -1}, ["model.depth", ">= 0"]),
        ("cnn", (1, 8, 8), {"pool": "min"}, ["model.pool", "max, avg, none"]),
        ("cnn", (2,), {}, ["model 'cnn' needs image (C,H,W) or sequence (C,L)", "(2,)", "model=mlp"]),
        ("resnet", (2,), {}, ["model 'resnet' needs image", "(2,)", "model=mlp"]),
        ("mlp", (3,), {"norm": "instance"}, ["model.norm=instance", "mlp has none", "layer", "model=cnn"]),
        ("cnn", (1, 8, 8), {"norm": "instance", "depth": 4}, ["model.norm=instance", "model.depth"]),
        ("cnn", (1, 8, 8), {"depth": 3, "padding": 0}, ["model.depth", "padding"]),
    ],
)
def test_errors_name_the_key_and_valid_values(name, input_shape, kwargs, expected):
    with pytest.raises(ValueError) as err:
        MODELS[name](input_shape=input_shape, num_classes=2, **kwargs)
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize("name", MODELS)
def test_torch_compile_captures_whole_graph(name):
    # aot_eager traces forward and backward like the real compiler but skips code generation,
    # which keeps the check quick on CPU; fullgraph=True fails on any graph break.
    torch.manual_seed(0)
    kind = "tabular" if name == "mlp" else "image"
    model = build(name, kind, norm="batch").eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = batch(kind)
    torch.testing.assert_close(compiled(x), model(x))
    model.train()
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- the signature as the one home of the options
# Today's values (the conf/model/*.yaml of before, and validate.py's model ranges), pinned once here so that
# moving them into the signatures changed none of them.
SHARED = {"norm": "none", "activation": "relu", "init": "default", "dropout": 0.0}
DEFAULTS = {
    "mlp": {"width": 256, "depth": 2, **SHARED},
    "cnn": {"width": 32, "depth": 2, "kernel_size": 3, "stride": 1, "padding": 1, "pool": "max", "hidden": 128,
            **SHARED},
    "resnet": {**SHARED, "depth": 8, "width": 16, "skip": True, "norm": "batch", "init": "he_normal"},
}
RANGES = {"width": ">= 1", "dropout": "in [0, 1)", "kernel_size": ">= 1", "stride": ">= 1", "padding": ">= 0",
          "hidden": ">= 1", "norm": "none, batch, layer, group, instance", "pool": "max, avg, none",
          "activation": "relu, leaky_relu, elu, selu, gelu, sigmoid, tanh", "skip": "",
          "init": "default, xavier_uniform, xavier_normal, he_uniform, he_normal, orthogonal"}
DEPTHS = {"mlp": ">= 0", "cnn": ">= 1 (depth 0 is an mlp)", "resnet": ">= 8 (6n+2: 8, 14, 20, 32, 44, 56, ...)"}


def _outside(opt: options.Option):
    """A value its rule refuses: just past a bound of its Range, or a name that is not a choice."""
    rule = opt.rule
    if not isinstance(rule, options.Range):
        return "bogus"
    return next(v for v in (rule.ge - 1 if rule.ge is not None else None, rule.gt, rule.lt,
                            rule.le + 1 if rule.le is not None else None) if v is not None)


@pytest.mark.parametrize("name", MODELS)
def test_signature_holds_todays_defaults_and_ranges_and_the_yaml_only_deltas(name):
    spec = options.spec(MODELS[name], skip=NOT_OPTIONS)
    assert {k: getattr(o.default, "value", o.default) for k, o in spec.items()} == DEFAULTS[name]
    assert {k: o.allowed() for k, o in spec.items()} == {k: DEPTHS[name] if k == "depth" else RANGES[k] for k in spec}
    # what the constructor uses when an option is left out is what the spec reports
    model = MODELS[name](input_shape=(1, 8, 8), num_classes=2)
    assert model.num_layers == {"mlp": 2, "cnn": 3, "resnet": 4}[name]
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert getattr(first, "out_features", getattr(first, "out_channels", None)) == DEFAULTS[name]["width"]
    assert {k: v for k, v in yaml.safe_load((config_dir() / "model" / f"{name}.yaml").read_text()).items()
            if k not in ("defaults", "_target_")} == {"dropout": "${regularization.dropout}"}


@pytest.mark.parametrize("name,key", [(m, k) for m in MODELS for k, o in
                                      options.spec(MODELS[m], skip=NOT_OPTIONS).items() if o.rule is not None])
def test_a_direct_call_refuses_a_bad_value_as_the_config_check_does(name, key):
    spec = options.spec(MODELS[name], skip=NOT_OPTIONS)
    bad = {key: _outside(spec[key])}
    (expected,) = options.problems(spec, bad, "model")
    assert expected.startswith(f"model.{key}=") and "allowed" in expected
    with pytest.raises(ValueError) as err:
        MODELS[name](input_shape=(1, 8, 8), num_classes=2, **bad)
    assert str(err.value) == expected


@pytest.mark.parametrize("name,bad,expected", [
    ("resnet", {"depth": 10}, "model.depth=10 is not valid for resnet: allowed 6n+2: 8, 14, 20, 32, 44, 56, ..."),
    ("mlp", {"norm": Norm.instance}, "model.norm=instance needs feature maps and mlp has none: allowed none, "
                                     "batch, layer, group (or model=cnn / model=resnet)"),
])
def test_rules_joining_options_live_once_on_the_class(name, bad, expected):
    assert MODELS[name].option_problems(bad) == [expected]
    assert MODELS[name].option_problems({"depth": 14, "norm": "batch"}) == []
    with pytest.raises(ValueError) as err:
        MODELS[name](input_shape=(1, 8, 8), num_classes=2, **bad)
    assert str(err.value) == expected


def test_unknown_option_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="kernal"):
        CNN(input_shape=(1, 8, 8), num_classes=2, kernal=3)


@pytest.mark.parametrize("shape,classes,expected", [
    ((), 2, "input_shape=() is not valid; it must be a non-empty sequence"),
    ("abc", 2, "input_shape='abc' is not valid"),
    (5, 2, "input_shape=5 is not valid"),
    ((1, 0, 8), 2, "input_shape=(1, 0, 8) is not valid; every size must be an integer >= 1"),
    ((1, 2.5), 2, "input_shape=(1, 2.5) is not valid; every size must be an integer"),
    ((3,), 0, "num_classes=0 is not valid; it must be an integer >= 1"),
    ((3,), True, "num_classes=True is not valid"),
])
def test_check_io_refuses_what_no_model_can_take(shape, classes, expected):
    with pytest.raises(ValueError) as err:
        check_io(shape, classes)
    assert str(err.value).startswith(expected)
    with pytest.raises(ValueError, match="input_shape|num_classes"):
        MLP(input_shape=shape, num_classes=classes)


def test_check_io_returns_a_tuple_of_ints():
    import numpy as np

    assert check_io([1, np.int64(8), 8], 3) == (1, 8, 8)
    assert NOT_OPTIONS == ("input_shape", "num_classes", "vocab", "target", "target_len")


def test_building_blocks_take_a_name_or_a_member():
    assert type(make_norm("group", 8, spatial_dims=2)) is type(make_norm(Norm.group, 8, spatial_dims=2))
    assert isinstance(make_activation(Activation.tanh), nn.Tanh) and isinstance(make_activation("elu"), nn.ELU)
    torch.manual_seed(0)
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    init_weights(a, init="orthogonal", activation="tanh")
    init_weights(b, init=Init.orthogonal, activation=Activation.tanh)
    assert torch.count_nonzero(a.bias) == 0 == torch.count_nonzero(b.bias)
    with pytest.raises(ValueError, match="^model.activation='swish' is not valid: allowed relu, leaky_relu"):
        make_activation("swish")

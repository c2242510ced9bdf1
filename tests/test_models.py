"""Behaviour of the model zoo: shapes, training steps, init statistics, structure and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlx.models import ACTIVATIONS, INITS, NORMS, create_model, list_models
from dlx.models.layers import init_gain

INPUTS = {"image": (1, 8, 8), "sequence": (2, 12), "tabular": (3,)}
# Tiny widths keep the whole cross product fast; resnet depth 8 is its smallest valid depth.
TINY = {
    "mlp": dict(width=8, depth=2),
    "cnn": dict(width=4, depth=2, hidden=8),
    "resnet": dict(width=4, depth=8),
}
CASES = [(m, k) for m in list_models() for k in INPUTS if m == "mlp" or k != "tabular"]
# Each knob is swept on its own; mlp has no feature maps for instance norm (checked in test_errors).
KNOBS = [("norm", n) for n in NORMS] + [("activation", a) for a in ACTIVATIONS] + [("init", i) for i in INITS]
SWEEP = [(m, k, key, v) for m, k in CASES for key, v in KNOBS if not (m == "mlp" and v == "instance")]
NUM_CLASSES = 3


def build(name: str, kind: str = "image", **overrides) -> nn.Module:
    return create_model(
        name, input_shape=INPUTS[kind], num_classes=NUM_CLASSES, **{**TINY[name], **overrides}
    )


def batch(kind: str, n: int = 6) -> torch.Tensor:
    return torch.randn(n, *INPUTS[kind])


def test_list_models():
    assert list_models() == ["cnn", "mlp", "resnet"]


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
    model = create_model("mlp", input_shape=(4, 5), num_classes=3, depth=0)
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
    model = create_model("cnn", input_shape=input_shape, num_classes=10, width=4, depth=depth, hidden=8)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert len(convs) == depth and all(type(c) is conv_type for c in convs)
    assert [c.out_channels for c in convs] == [4 * 2**i for i in range(depth)]
    assert model.num_layers == depth + 1
    assert model(torch.randn(2, *input_shape)).shape == (2, 10)


@pytest.mark.parametrize("depth,blocks", [(8, 4), (14, 7), (20, 10)])
def test_resnet_depth_sets_block_count(depth, blocks):
    model = create_model("resnet", input_shape=(1, 8, 8), num_classes=10, depth=depth, width=4)
    assert model.num_layers == len(model.blocks) == blocks  # stem + 3 stages of (depth - 2) / 6
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # the paper's count: 3x3 convs plus the head
    assert model.head.in_features == 16
    # 8x8 digits: stages 2 and 3 halve the map, 8 -> 4 -> 2.
    assert model.blocks[0](torch.randn(2, 1, 8, 8)).shape == (2, 4, 8, 8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_resnet_on_sequences_uses_conv1d():
    model = create_model("resnet", input_shape=(1, 40), num_classes=10, depth=8, width=4, norm="batch")
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
    xavier = _first_weight(create_model("mlp", init="xavier_normal", **kw))
    assert xavier.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03)
    he = _first_weight(create_model("mlp", init="he_normal", **kw))
    assert he.std().item() == pytest.approx(init_gain(activation) / math.sqrt(fan_in), rel=0.03)
    if activation == "relu":
        assert he.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)


def test_conv_init_uses_receptive_field_fan_in():
    torch.manual_seed(0)
    model = create_model("cnn", input_shape=(16, 8, 8), num_classes=2, width=64, depth=1, init="he_normal")
    fan_in = 16 * 3 * 3
    assert _first_weight(model).std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)


def test_uniform_and_orthogonal_init():
    torch.manual_seed(0)
    kw = dict(input_shape=(256,), num_classes=2, width=128, depth=1)
    w = _first_weight(create_model("mlp", init="xavier_uniform", **kw))
    bound = math.sqrt(6 / (256 + 128))
    assert 0.95 * bound < w.abs().max().item() <= bound
    w = _first_weight(create_model("mlp", init="he_uniform", **kw))
    bound = math.sqrt(2) * math.sqrt(3 / 256)
    assert 0.95 * bound < w.abs().max().item() <= bound
    w = _first_weight(create_model("mlp", init="orthogonal", activation="tanh", **kw))
    gain = nn.init.calculate_gain("tanh")
    torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(128), atol=1e-4, rtol=0)


def _block_stds(init: str) -> tuple[float, list[float]]:
    torch.manual_seed(0)
    width = 256
    model = create_model("mlp", input_shape=(width,), num_classes=10, width=width, depth=20, init=init)
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


@pytest.mark.parametrize("init", [i for i in INITS if i != "default"])
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
    model = create_model("cnn", input_shape=INPUTS[spatial], num_classes=2, width=12, depth=2, norm=norm)
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
    model = create_model("cnn", input_shape=[1, 8, 8], num_classes=4, width=4, hidden=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize("name", list_models())
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
        ("cnn", (1, 8, 8), {"kernal": 3}, ["model 'cnn' has no option 'kernal'", "kernel_size", "pool"]),
        ("transformer", (3,), {}, ["'transformer'", "cnn, mlp, resnet"]),
        ("cnn", (2,), {}, ["model 'cnn' needs image (C,H,W) or sequence (C,L)", "(2,)", "model=mlp"]),
        ("resnet", (2,), {}, ["model 'resnet' needs image", "(2,)", "model=mlp"]),
        ("mlp", (3,), {"norm": "instance"}, ["model.norm=instance", "mlp has none", "norm=layer"]),
        ("cnn", (1, 8, 8), {"norm": "instance", "depth": 4}, ["model.norm=instance", "model.depth"]),
        ("cnn", (1, 8, 8), {"depth": 3, "padding": 0}, ["model.depth", "padding"]),
    ],
)
def test_errors_name_the_key_and_valid_values(name, input_shape, kwargs, expected):
    with pytest.raises(ValueError) as err:
        create_model(name, input_shape=input_shape, num_classes=2, **kwargs)
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize("name", list_models())
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

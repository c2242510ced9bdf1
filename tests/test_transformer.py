"""The attention models: transformer for every kind of target and input, vit on images, and the attention
block they share (its explicit-weights path against SDPA, masks, pre- and post-LN)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dlx.models.attention import Attention, heads_problems
from dlx.models.transformer import Transformer
from dlx.models.vit import ViT
from dlx.tasks import IGNORE, PAD

TINY = dict(width=16, depth=2, heads=2, mlp_ratio=2.0)
VOCAB, T, T_OUT, CLASSES = 7, 9, 5, 4

# (target, constructor arguments from the data, one batch of inputs, the output shape)
CASES = {
    "label-tokens": ("label", dict(input_shape=(T,), vocab=VOCAB), lambda: torch.randint(1, VOCAB, (3, T)),
                     (3, CLASSES)),
    "label-image": ("label", dict(input_shape=(1, 8, 6)), lambda: torch.randn(3, 1, 8, 6), (3, CLASSES)),
    "value-sequence": ("value", dict(input_shape=(2, 12)), lambda: torch.randn(3, 2, 12), (3, 1)),
    "steps-tokens": ("steps", dict(input_shape=(T,), vocab=VOCAB, target_len=T), lambda: torch.randint(0, VOCAB, (3, T)),
                     (3, T, CLASSES)),
    "steps-sequence": ("steps", dict(input_shape=(2, T)), lambda: torch.randn(3, 2, T), (3, T, CLASSES)),
    "sequence-tokens": ("sequence", dict(input_shape=(T,), vocab=VOCAB, target_len=T_OUT),
                        lambda: torch.randint(1, VOCAB, (3, T)), (3, T_OUT, CLASSES)),
}


def transformer(case: str, **options) -> Transformer:
    target, data, _, shape = CASES[case]
    return Transformer(num_classes=shape[-1], target=target, **data, **{**TINY, **options})


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_transformer_shapes_and_attention_maps(case, placement):
    torch.manual_seed(0)
    model = transformer(case, placement=placement, positions="learned" if placement == "post" else "sinusoidal")
    x = CASES[case][2]()
    assert model(x).shape == CASES[case][3]
    assert len(model.blocks) == model.num_layers == (4 if case.startswith("sequence") else 2)
    (name, maps), = model.eval().attention_maps(x).items()
    t_in = x.shape[-1] if x.dim() < 4 else x.shape[2]
    rows = T_OUT if case.startswith("sequence") else t_in
    assert name == ("cross_attention" if case.startswith("sequence") else "self_attention")
    assert maps.shape == (3, rows, t_in)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, rows))


@pytest.mark.parametrize("case", ["steps-tokens", "steps-sequence"])
def test_a_language_model_is_causal(case):
    """Changing the input at position t changes no output before t."""
    torch.manual_seed(0)
    model = transformer(case).eval()
    x = CASES[case][2]()
    changed = x.clone()
    if x.dtype == torch.long:
        changed[:, 5] = (x[:, 5] + 1) % VOCAB
    else:
        changed[:, :, 5] += 1.0
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    maps = model.attention_maps(x)["self_attention"]
    assert torch.all(maps.triu(1) == 0)


def test_encoder_decoder_teacher_forcing_and_greedy_decoding():
    """Training reads y (teacher forcing); evaluation decodes on its own, and its logits are those the decoder
    gives when fed its own greedy choices."""
    torch.manual_seed(0)
    model = transformer("sequence-tokens").eval()
    x = CASES["sequence-tokens"][2]()
    greedy = model(x)
    torch.testing.assert_close(model(x, target=greedy.argmax(-1)), greedy)
    other = (greedy.argmax(-1) + 1) % CLASSES
    assert not torch.allclose(model(x, target=other)[:, 1:], greedy[:, 1:])  # output t reads y before t
    torch.testing.assert_close(model(x, target=other)[:, 0], greedy[:, 0])  # ... and nothing else of it
    torch.testing.assert_close(model(x), greedy)  # evaluation is the same whatever y trained it
    padded = other.clone()
    padded[:, 3:] = IGNORE  # padding of the target reads as PAD, not an index out of the embedding
    torch.testing.assert_close(model(x, target=padded)[:, :4], model(x, target=other)[:, :4])


def test_padding_counts_for_nothing_in_a_token_classifier():
    torch.manual_seed(0)
    model = transformer("label-tokens").eval()
    x = torch.randint(1, VOCAB, (3, 4))
    padded = torch.cat([x, torch.full((3, T - 4), PAD)], dim=1)
    torch.testing.assert_close(model(padded), model(x))
    assert torch.isfinite(model(torch.full((2, T), PAD))).all()  # all padding: still defined


@pytest.mark.parametrize("kind", ["self", "causal", "masked", "cross"])
def test_explicit_weights_path_equals_sdpa(kind):
    """The path that returns weights computes what scaled_dot_product_attention does, for the same block."""
    torch.manual_seed(0)
    attn = Attention(16, 4, dropout=0.0).eval()
    x, context = torch.randn(3, 6, 16), torch.randn(3, 8, 16)
    args = {"self": dict(), "causal": dict(causal=True),
            "masked": dict(mask=torch.rand(3, 1, 1, 6) > 0.3), "cross": dict(context=context)}[kind]
    if kind == "masked":
        args["mask"][:, ..., 0] = True
    fast = attn(x, **args)
    slow, weights = attn(x, **args, need_weights=True)
    torch.testing.assert_close(slow, fast)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


@pytest.mark.parametrize("placement", ["pre", "post"])
def test_pre_and_post_ln_both_train(placement):
    """A few Adam steps on one batch lower the loss, with either placement of LayerNorm."""
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (16, T))
    labels = torch.randint(0, 3, (16,))
    images = torch.randn(16, 1, 8, 8) * 0.5
    images += labels[:, None, None, None] - 1.0  # class c: brightness c - 1
    for model, x, y in [
        (ViT(input_shape=(1, 8, 8), num_classes=3, placement=placement, **TINY), images, labels),
        (transformer("steps-tokens", placement=placement), tokens, tokens % CLASSES),
    ]:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(15):
            loss = F.cross_entropy(model(x).flatten(0, -2), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.6 * losses[0], (type(model).__name__, losses)


def test_vit_shapes_blocks_and_class_token_map():
    torch.manual_seed(0)
    model = ViT(input_shape=(3, 8, 12), num_classes=5, patch=4, **TINY).eval()
    x = torch.randn(2, 3, 8, 12)
    assert model(x).shape == (2, 5)
    hooked = []
    handles = [b.register_forward_hook(lambda m, i, o: hooked.append(o)) for b in model.blocks]
    model(x)
    for h in handles:
        h.remove()
    assert model.num_layers == len(hooked) == 2 and all(o.shape == (2, 1 + 6, 16) for o in hooked)
    maps = model.attention_maps(x)["cls_attention"]
    assert maps.shape == (2, 2, 3)
    # the class token's weights over the patches: with its weight on itself, they make one
    assert torch.all(maps > 0) and torch.all(maps.sum((1, 2)) < 1)


def test_the_defaults_size_a_vit_like_the_default_cnn_on_digits():
    from dlx.models import CNN

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    vit, cnn = count(ViT(input_shape=(1, 8, 8), num_classes=10)), count(CNN(input_shape=(1, 8, 8), num_classes=10))
    assert 0.8 < vit / cnn < 1.25, (vit, cnn)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: ViT(input_shape=(1, 8, 8), num_classes=3, width=30, heads=4),
     "model.heads=4 does not divide model.width=30: allowed heads for this width 1, 2, 3, 5, 6, 10, 15, 30"),
    (lambda: ViT(input_shape=(1, 8, 8), num_classes=3, patch=3),
     "model.patch=3 does not divide the 8x8 images of this dataset: allowed 1, 2, 4, 8"),
    (lambda: ViT(input_shape=(64,), num_classes=3),
     "model=vit needs images (C, H, W); the dataset gives samples of shape (64,): use model=transformer or "
     "model=mlp"),
    (lambda: ViT(input_shape=(1, 8, 8), num_classes=3, placement="middle"),
     "model.placement='middle' is not valid: allowed pre, post"),
    (lambda: Transformer(input_shape=(64,), num_classes=3),
     "model=transformer needs tokens, sequences (C, L) or images (C, H, W); the dataset gives samples of shape "
     "(64,): use model=mlp"),
    (lambda: Transformer(input_shape=(2, 9), num_classes=3, heads=0),
     "model.heads=0 is out of range: allowed >= 1"),
    (lambda: Transformer(input_shape=(2, 9), num_classes=3, positions="rotary"),
     "model.positions='rotary' is not valid: allowed sinusoidal, learned"),
])
def test_refusals_are_one_line(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_heads_rule_is_the_configs_too():
    assert heads_problems({"width": 64, "heads": 4}) == []
    assert heads_problems({"width": 6, "heads": 4}) == [
        "model.heads=4 does not divide model.width=6: allowed heads for this width 1, 2, 3, 6"]


@pytest.mark.parametrize("make", [
    lambda: (ViT(input_shape=(1, 8, 8), num_classes=3, **TINY), torch.randn(4, 1, 8, 8)),
    lambda: (transformer("label-tokens"), CASES["label-tokens"][2]()),
])
def test_classifiers_compile_to_one_graph(make):
    torch.manual_seed(0)
    model, x = make()
    model.eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))


def test_dlx_trains_a_vit_on_digits_and_a_transformer_on_copy(tmp_path):
    """Both models through the real command line, the store read back: the ViT on images, the encoder-decoder
    on a sequence target with its token and sequence metrics (evaluation decodes greedily)."""
    from conftest import all_runs, run_cli_batch

    common = ["trainer.epochs=2", "trainer.progress=none", "model.width=16", "model.heads=2"]
    cases = [["train", *common, "model=vit", "model.placement=post"],
             ["train", *common, "model=transformer", "dataset=copy", "dataset.n_train=400", "model.depth=1",
              "model.positions=learned"]]
    results = run_cli_batch(cases, tmp_path)
    for i, args in enumerate(cases):
        code, err, _ = results[json.dumps(args)]
        assert code == 0, err[-3000:]
        (run,) = all_runs(tmp_path / f"case{i}")
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert 0 <= metrics["test/acc"] <= 1 and math.isfinite(metrics["test/loss"])
        if i == 0:
            assert run.data.params["model._target_"] == "dlx.models.vit.ViT"
            assert run.data.params["model.placement"] == "post"
        else:
            assert run.data.params["model.positions"] == "learned"
            assert metrics["test/token_acc"] == metrics["test/acc"] and 0 <= metrics["test/seq_acc"] <= 1

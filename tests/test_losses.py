"""The loss group: every conf/loss/ option built the way build makes it, the maths of each, and a user's loss."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dlx import losses
from dlx.losses import create_loss, label_smoothing_problems
from dlx.options import spec

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
YAMLS = sorted(CONF.glob("*.yaml"))
K = 5


def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, K, generator=gen), torch.randint(0, K, (8,), generator=gen)


def smoothed(y, s):
    return F.one_hot(y, K).float() * (1 - s) + s / K


# Today's maths, written out independently of dlx.losses: option -> loss(logits, y, label_smoothing).
MATHS = {
    "ce": lambda x, y, s: F.cross_entropy(x, y, label_smoothing=s),
    "bce": lambda x, y, s: F.binary_cross_entropy_with_logits(x, smoothed(y, s)),
    "mse": lambda x, y, s: ((x - smoothed(y, s)) ** 2).mean(),
    "mae": lambda x, y, s: (x - smoothed(y, s)).abs().mean(),
    "huber": lambda x, y, s: F.huber_loss(x, smoothed(y, s), delta=1.0),
    "hinge": lambda x, y, s: torch.stack([
        sum(torch.clamp(1 - x[n, y[n]] + x[n, i], min=0) for i in range(K) if i != y[n]) / K
        for n in range(len(y))]).mean(),
}


def factory(path: Path, label_smoothing: float):
    """The loss node of one conf/loss/ file, made the way build makes it, under a regularization setting."""
    node = yaml.safe_load(path.read_text())
    node.pop("defaults")
    cfg = OmegaConf.create({"regularization": {"label_smoothing": label_smoothing}, "loss": node})
    return instantiate(cfg.loss, _partial_=True, _convert_="all")


def test_every_option_is_in_maths():
    assert sorted(p.stem for p in YAMLS) == sorted(MATHS)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_yaml_option_builds_and_computes_todays_loss(path):
    node = yaml.safe_load(path.read_text())
    assert node["defaults"] == [f"schema_{path.stem}"]
    cls = getattr(losses, node["_target_"].removeprefix("dlx.losses."))
    options = spec(cls)
    deltas = {k: v for k, v in node.items() if k not in ("defaults", "_target_")}
    assert all(k in options and options[k].default != v for k, v in deltas.items()), "the YAML restates a default"
    smoothing = "label_smoothing" in options
    assert deltas == ({"label_smoothing": "${regularization.label_smoothing}"} if smoothing else {})

    x, y = batch()
    s = 0.2 if smoothing else 0.0
    train = create_loss(factory(path, s))
    evaluate = create_loss(factory(path, s), evaluation=True)
    assert isinstance(train, cls)
    got = train(x, y)
    assert got.shape == () and torch.isfinite(got)
    assert got.item() == pytest.approx(MATHS[path.stem](x, y, s).item(), rel=1e-6)
    # validation and test losses measure the model without the regularizer
    assert evaluate(x, y).item() == pytest.approx(MATHS[path.stem](x, y, 0.0).item(), rel=1e-6)
    if smoothing:
        assert got.item() != pytest.approx(evaluate(x, y).item())


def test_label_smoothing_out_of_range_names_the_key():
    with pytest.raises(ValueError) as err:
        losses.CrossEntropy(label_smoothing=1.0)
    assert str(err.value) == "loss.label_smoothing=1.0 is out of range: allowed in [0, 1)"
    with pytest.raises(ValueError, match=r"allowed in \[0, 1\)"):
        losses.SquaredError(label_smoothing=-0.1)
    with pytest.raises(TypeError):
        losses.Hinge(label_smoothing=0.1)  # no such option: it takes hard labels


def test_label_smoothing_that_no_loss_option_takes_is_one_rule():
    hinge = ["regularization.label_smoothing must be 0 with loss=hinge (it takes hard labels)"]
    assert label_smoothing_problems("dlx.losses.Hinge", {}, 0.1) == hinge
    assert label_smoothing_problems(losses.Hinge, {}, 0.1) == hinge
    assert label_smoothing_problems("dlx.losses.Hinge", {}, 0.0) == []
    assert label_smoothing_problems("dlx.losses.CrossEntropy", {"label_smoothing": 0.1}, 0.1) == []
    (user,) = label_smoothing_problems("torch.nn.MSELoss", {}, 0.1)
    assert user.startswith("regularization.label_smoothing must be 0 with loss._target_=torch.nn.MSELoss")


@pytest.mark.parametrize("target", ["torch.nn.CrossEntropyLoss", "torch.nn.functional.cross_entropy"])
def test_a_users_loss_class_or_function_with_its_options(target):
    x, y = batch()
    node = {"_target_": target, "label_smoothing": 0.1}
    train = create_loss(instantiate(node, _partial_=True))
    evaluate = create_loss(instantiate(node, _partial_=True), evaluation=True)
    assert train(x, y).item() == pytest.approx(F.cross_entropy(x, y, label_smoothing=0.1).item())
    assert evaluate(x, y).item() == pytest.approx(F.cross_entropy(x, y).item())
    plain = create_loss(instantiate({"_target_": "torch.nn.MSELoss"}, _partial_=True), evaluation=True)
    assert plain(x, F.one_hot(y, K).float()).item() == pytest.approx(MATHS["mse"](x, y, 0.0).item())


def test_a_factory_that_makes_no_callable_is_refused():
    with pytest.raises(TypeError, match="not a callable"):
        create_loss(functools.partial(list, [1]))

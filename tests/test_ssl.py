"""The objective group: SimSiam and SimCLR (dlx.ssl) on their own parts, and through the real `dlx train`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dlx.ssl import SimCLR, SimSiam, TwoViews, knn_accuracy, linear_probe, nt_xent, output_std, simsiam_loss
from tests.conftest import QUICK, client_for, run_cli_batch, run_dlx

VIEWS = dict(crop_scale=0.5, flip=0.5, jitter=0.4, cutout=0.25, noise_std=0.1)


# ------------------------------------------------------------------------------------------------ views
@pytest.mark.parametrize("channels", [1, 3])
def test_two_views_differ_keep_the_shape_and_follow_the_global_seed(channels):
    x = torch.randn(16, channels, 8, 8)
    views = TwoViews(**VIEWS)
    torch.manual_seed(0)
    a, b = views(x)
    assert a.shape == b.shape == x.shape
    assert not torch.allclose(a, b) and not torch.allclose(a, x)
    torch.manual_seed(0)
    again, _ = views(x)
    assert torch.equal(a, again)  # drawn from torch's global generator, which runs seed and checkpoint


def test_views_without_any_op_are_the_images():
    x = torch.randn(4, 1, 8, 8)
    a, b = TwoViews(crop_scale=1.0, flip=0.0, jitter=0.0, cutout=0.0, noise_std=0.0)(x)
    # a full crop (aspect ratio may still squeeze it) with no flip, noise or cutout keeps most pixels
    assert torch.allclose(a.mean(), x.mean(), atol=0.2)
    assert (a - x).abs().mean() < (torch.randn_like(x) - x).abs().mean()


def test_flip_one_mirrors_every_full_crop():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    views = TwoViews(crop_scale=1.0, flip=1.0, jitter=0.0, cutout=0.0, noise_std=0.0)
    out = views.view(x)
    # the left column of a mirrored image is larger than its right one (the ramp runs the other way)
    assert (out[..., 0] > out[..., -1]).all()


def test_views_refuse_samples_that_are_not_images():
    with pytest.raises(ValueError, match=r"objective=simsiam: .*shape \(2,\)"):
        TwoViews(**VIEWS).check_input((2,), "simsiam")


# ------------------------------------------------------------------------------------------------ losses
def test_simsiam_loss_is_minus_one_for_aligned_outputs_and_stop_grad_cuts_the_projection():
    z1, z2 = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    p1, p2 = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True)
    assert simsiam_loss(z2, z1, z1, z2, stop_grad=True).item() == pytest.approx(-1.0)
    simsiam_loss(p1, p2, z1, z2, stop_grad=True).backward()
    assert z1.grad is None and z2.grad is None and p1.grad is not None
    simsiam_loss(p1, p2, z1, z2, stop_grad=False).backward()
    assert z1.grad is not None and z2.grad is not None


def test_nt_xent_matches_its_definition():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(5, 3), torch.randn(5, 3), 0.5
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / t
    expected = 0.0
    for i in range(10):
        j = (i + 5) % 10
        others = [k for k in range(10) if k != i]
        expected += -sim[i, j] + torch.logsumexp(sim[i, others], 0)
    assert nt_xent(z1, z2, temperature=t).item() == pytest.approx(expected.item() / 10, rel=1e-5)
    # pairs that are each other's nearest views give a loss below that of random pairs
    assert nt_xent(z1, z1 + 0.01 * z2, temperature=t) < nt_xent(z1, z2, temperature=t)
    # under bf16 autocast the logits stay in full precision (at temperature 0.1 bf16 logits are off by ~0.04)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = nt_xent(z1, z2, temperature=0.1)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(nt_xent(z1, z2, temperature=0.1).item(), abs=1e-5)


@pytest.mark.parametrize("method", ["simsiam", "simclr"])
def test_methods_wrap_an_encoder_and_train_every_part(method):
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))
    common = dict(features=16, proj_dim=8, hidden=32, stop_grad=True)
    model = (SimSiam(encoder, pred_hidden=4, **common) if method == "simsiam"
             else SimCLR(encoder, temperature=0.5, **common))
    x = torch.randn(12, 1, 8, 8)
    assert model(x).shape == (12, 16)  # calling it gives the representation
    x2 = x + 0.1 * torch.randn_like(x)
    model.eval()  # batch norm on its running statistics: the two calls below see the same function
    assert torch.equal(model(x, x2), model.loss(x, x2))  # and on two views the loss, through forward (DDP, compile)
    model.train()
    model(x, x2).backward()
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------------------ measures
def test_output_std_is_the_reference_when_spread_and_zero_when_collapsed():
    torch.manual_seed(0)
    spread, ref = output_std(torch.randn(4096, 64))
    assert ref == pytest.approx(1 / 8) and spread == pytest.approx(ref, rel=0.05)
    collapsed, _ = output_std(torch.ones(100, 64) + 1e-6 * torch.randn(100, 64))
    assert collapsed < 1e-5


def test_knn_votes_by_neighbours_and_leaves_each_sample_out_of_its_own_vote():
    centres = torch.eye(3) * 10
    bank = torch.cat([centres + 0.1 * torch.randn(3, 3) for _ in range(5)])
    labels = torch.arange(3).repeat(5)
    assert knn_accuracy(bank, labels, centres, torch.arange(3), k=3, num_classes=3) == 1.0
    # leave-one-out: with k=1 every sample is its own nearest neighbour unless it is left out of its vote
    bank, labels = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]), torch.tensor([0, 1, 1])
    assert knn_accuracy(bank, labels, bank, labels, k=1, num_classes=2) == 1.0
    assert knn_accuracy(bank, labels, bank, labels, k=1, num_classes=2, exclude_self=True) == pytest.approx(1 / 3)


def test_linear_probe_separates_separable_features_and_is_seeded():
    torch.manual_seed(0)
    x = torch.randn(400, 8)
    y = (x[:, 0] > 0).long()
    train, test = (x[:300], y[:300]), (x[300:], y[300:])
    acc = linear_probe(train, test, num_classes=2, epochs=50, seed=3)
    assert acc > 0.95
    assert linear_probe(train, test, num_classes=2, epochs=50, seed=3) == acc


# ------------------------------------------------------------------------------------------------ dlx train
SSL_QUICK = [*QUICK, "model=cnn", "model.width=8", "model.hidden=32", "ssl.hidden=32", "ssl.features=16",
             "ssl.proj_dim=16", "ssl.pred_hidden=8", "objective.probe_epochs=5"]


def _metrics(workdir):
    client = client_for(workdir)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    return client, run


def test_dlx_train_runs_each_objective_and_logs_the_representation_metrics(tmp_path):
    cases = [["train", "objective=simsiam", *SSL_QUICK], ["train", "objective=simclr", *SSL_QUICK],
             ["train", "objective=simsiam", "ssl.stop_grad=false", *SSL_QUICK],
             ["train", "objective.represent=true", *QUICK]]
    out = run_cli_batch(cases, tmp_path)
    for i, args in enumerate(cases):
        code, err, _ = out[json.dumps(args)]
        assert code == 0, err[-3000:]
        client, run = _metrics(tmp_path / f"case{i}")
        m = run.data.metrics
        assert run.info.status == "FINISHED"
        assert {"val/knn_acc", "test/knn_acc", "probe/acc"} <= set(m), sorted(m)
        assert 0.0 <= m["test/knn_acc"] <= 1.0 and 0.0 <= m["probe/acc"] <= 1.0
        if "objective=supervised" in args or not any(a.startswith("objective=") for a in args):
            assert "train/acc" in m and "ssl/output_std" not in m
            continue
        # a self-supervised run: its headline accuracy is the k-NN accuracy; it counts no training hits
        assert "train/acc" not in m and m["val/acc"] == m["val/knn_acc"] and m["test/acc"] == m["test/knn_acc"]
        assert m["ssl/output_std_ref"] == pytest.approx(1 / math.sqrt(16))
        history = client.get_metric_history(run.info.run_id, "ssl/output_std")
        assert [p.step for p in history] == [1, 2]  # every epoch
        assert run.data.params["objective.name"] in ("simsiam", "simclr")


def test_a_resumed_self_supervised_run_ends_as_an_uninterrupted_one(tmp_path):
    """Views, evaluation views (a forked RNG) and the probe leave the training stream as it was: 2 epochs and a
    resume to 3 log what 3 epochs in one go log (a constant rate, so the schedule does not depend on the end)."""
    args = ["train", "objective=simsiam", *SSL_QUICK, "scheduler=constant"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir()
    part.mkdir()
    run_dlx([*args, "trainer.epochs=3"], whole, check=True)
    run_dlx(args, part, check=True)
    client, run = _metrics(part)
    proc = run_dlx([*args, f"trainer.resume={run.info.run_id}", "trainer.epochs=3"], part)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = client.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert [p.step for p in client.get_metric_history(run.info.run_id, "ssl/output_std")] == [1, 2, 3]
    _, straight = _metrics(whole)
    for key in ("train/loss", "val/loss", "val/knn_acc", "ssl/output_std", "test/knn_acc", "probe/acc"):
        assert resumed.data.metrics[key] == pytest.approx(straight.data.metrics[key], abs=1e-6), key


@pytest.mark.parametrize(("objective", "stop_grad"), [("simsiam", True), ("simclr", False)])
def test_each_method_has_its_own_stop_gradient_unless_set_and_no_divergence_guard(objective, stop_grad):
    from omegaconf import OmegaConf

    from dlx.build import build
    from dlx.components import fill_extras
    from dlx.compose import compose

    for given in (None, not stop_grad):
        extra = [] if given is None else [f"ssl.stop_grad={str(given).lower()}"]
        cfg = OmegaConf.to_container(compose([f"objective={objective}", "model=cnn", "model.width=8",
                                              "dataset.train_subset=64", *extra]), resolve=True, enum_to_str=True)
        fill_extras(cfg)
        built = build(cfg)
        assert built.trainer.model.stop_grad is (stop_grad if given is None else given)
        # a bounded loss that starts near 0 of either sign: nothing to compare a divergence with
        assert built.trainer.opt.divergence_factor is None


def test_the_collapse_monitor_is_maximised():
    from dlx.tasks import metric_mode

    assert metric_mode("ssl/output_std") == "max" and metric_mode("val/knn_acc") == "max"


BAD = [
    (["objective=simsiam", "augmentation=mixup"], "augmentation (mixup_alpha): objective=simsiam makes its two views"),
    (["objective=simclr", "diagnostics=sharpness"], "diagnostics.sharpness: needs a supervised loss"),
    (["objective=simsiam", "regularization=label_smoothing"], "regularization.label_smoothing=0.1: objective=simsiam"),
    (["objective=simsiam", "regularization=early_stopping"], "regularization.early_stopping.monitor=val/loss: a self-"),
    (["objective=simclr", "regularization=early_stopping", "regularization.early_stopping.monitor=train/acc"],
     "regularization.early_stopping.monitor=train/acc is not a metric dlx logs per epoch: allowed val/loss, val/acc, "
     "val/knn_acc, train/loss, ssl/output_std"),
    (["trainer.checkpoint.monitor=val/knn_acc"], "trainer.checkpoint.monitor=val/knn_acc is not a metric dlx logs"),
    (["objective.represent=true", "dataset=adding", "model=lstm", "loss=mse"],
     "objective.represent=true: measures a representation by its class labels, and dataset adding has value"),
    (["objective=simsiam", "dataset=adding", "model=rnn"], "objective=simsiam: needs images with class labels"),
    (["objective=simclr", "dataset=copy", "model=transformer"], "objective=simclr: needs images with class labels"),
    (["objective=simsiam", "dataset=moons"], "objective=simsiam: needs images with class labels (its views crop and "
     "flip images; the labels only measure the representation), and dataset moons has no images: allowed "
     "objective=supervised, or dataset=cifar10, digits, fashion_mnist, image_folder, mnist"),
    (["objective=simclr", "ssl.temperature=0"], "ssl.temperature=0.0 is out of range: allowed > 0"),
    (["objective=simsiam", "ssl.crop_scale=1.5"], "ssl.crop_scale=1.5 is out of range"),
    (["objective=byol"], "objective=byol: no such option of group 'objective'; valid: simclr, simsiam, supervised"),
]


def test_bad_objective_settings_exit_2_with_one_line_and_no_run(tmp_path):
    cases = [["train", *args, "trainer.epochs=1", "trainer.progress=plain"] for args, _ in BAD]
    out = run_cli_batch(cases, tmp_path)
    for (args, message), case in zip(BAD, cases):
        code, err, left = out[json.dumps(case)]
        assert code == 2, (args, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (args, err)
        assert "Traceback" not in err
        assert not any(f.endswith("mlflow.db") for f in left), (args, left)


# ------------------------------------------------------------------------------------------------ data that is not images
def _declared_images():
    from dlx.components import builtin, locate

    return {name: getattr(locate(target, "dataset._target_"), "images", None)
            for name, target in builtin()["dataset"].items()}


@pytest.mark.parametrize("option", sorted(o for o, images in _declared_images().items() if images is not None))
def test_what_a_dataset_option_declares_decides_while_composing(option, tmp_path):
    """What a dataset option's loader declares (dlx.data.source.loader, images=) decides before any data loads;
    tests/test_options.py checks each declaration against the data the option loads."""
    import dataclasses

    from dlx.components import builtin, locate
    from dlx.compose import compose
    from dlx.config import ConfigError
    from dlx.options import spec

    fn = locate(builtin()["dataset"][option], "dataset._target_")
    (tmp_path / "file").touch()  # a path that exists, as the config checks a file dataset's path (a folder or a file)
    required = [f"dataset.{k}={tmp_path / 'file' if k == 'path' and option != 'image_folder' else tmp_path}"
                for k, o in spec(fn).items() if o.default is dataclasses.MISSING]
    args = [f"dataset={option}", "objective=simclr", *required]
    if _declared_images()[option]:
        compose(args, check=True)
        return
    with pytest.raises(ConfigError, match=rf"^objective=simclr: needs images with class labels .* dataset {option} "
                                          r"has .*: allowed objective=supervised, or dataset=cifar10, digits"):
        compose(args, check=True)


def test_data_that_is_not_images_is_refused_before_it_loads_in_every_command(tmp_path):
    """mnist1d writes its generated data to a cache when it loads: nothing at all is left behind."""
    cases = [["train", "objective=simsiam", "dataset=mnist1d", "trainer.epochs=1"],
             ["cv", "objective=simsiam", "dataset=moons", "cv.folds=2", "trainer.progress=plain"],
             ["ensemble", "objective=simclr", "dataset=spirals", "ensemble.members=1"],
             ["sweep", "objective=simsiam", "dataset=mnist1d", "seed=0,1"]]
    out = run_cli_batch(cases, tmp_path)
    for case in cases:
        code, err, left = out[json.dumps(case)]
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, (case, err)
        data = case[2].removeprefix("dataset=")
        assert lines[0].startswith(f"dlx: error: {case[1]}: needs images") and f"dataset {data} has no images" in \
            lines[0], (case, err)
        assert left == [], (case, left)


def test_a_users_arrays_that_are_not_images_end_each_trial_with_one_line(tmp_path):
    """npz's arrays show their shape once read: dlx train refuses them then, and a sweep's trials (dlx cv here)
    each fail with that one line, no traceback."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "points.npz", x_train=rng.normal(size=(60, 4)).astype("float32"), y_train=np.arange(60) % 2,
             x_test=rng.normal(size=(20, 4)).astype("float32"), y_test=np.arange(20) % 2)
    args = ["objective=simsiam", "dataset=npz", "dataset.path=points.npz", "model=mlp", "trainer.epochs=1"]
    message = "objective=simsiam: makes its views by cropping and flipping images of shape (channels, height, width), " \
              "and the data's samples have shape (4,)"
    train = run_dlx(["train", *args], tmp_path)
    assert train.returncode == 2 and train.stderr.strip() == f"dlx: error: {message}: allowed objective=supervised, " \
        "or image data (dataset=cifar10, digits, fashion_mnist, image_folder, mnist)", train.stderr
    # trainer.progress set by the user: the trials log to the console too, where a traceback once followed the line
    cv = run_dlx(["cv", *args, "cv.folds=2", "hydra.launcher.n_jobs=1", "trainer.progress=plain"], tmp_path)
    failed = [line for line in cv.stdout.splitlines() if line.startswith("trial ")]
    assert cv.returncode == 1 and len(failed) == 2 and all("failed cv.fold" in f and message in f for f in failed)
    assert "Traceback" not in cv.stdout + cv.stderr

"""Faults of the training loop: a last batch of one sample under batch norm, a device this machine does not
have, and a run that diverges with a finite loss.

End-to-end cases run the real `python -m dlx train` against a temporary SQLite store; the engine cases
compose the real config with Hydra and build it with `dlx.build.build`. Norms and models come from the
schema and conf/, so a new option is covered as soon as it exists.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import QUICK, all_runs, client_for, run_dlx
from omegaconf import OmegaConf

from dlx.build import build
from dlx.compose import compose, list_options
from dlx.config import ConfigError, TrainerConfig
from dlx.engine import Diverged, NonFiniteLoss, TrainState, train_batches
from dlx.models import Norm

BASE = ["tracking=off", "trainer.progress=none", "trainer.device=cpu", "trainer.epochs=1", "model.width=8"]
MERGED = "joins the batch before it"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def built(overrides: list[str]):
    cfg = compose([*BASE, *overrides])
    return build(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def combos():
    """(model, norm, extra overrides) for every model and every norm a model takes. The cnn runs 4 conv
    blocks, so 8x8 digits reach 1x1 maps where BatchNorm2d sees one value per channel, as BatchNorm1d does
    (instance norm refuses 1x1 maps when it is built, so it keeps the default depth)."""
    for model in list_options("model"):
        for norm in (n.value for n in Norm):
            try:
                compose([*BASE, f"model={model}", f"model.norm={norm}"], check=True)
            except ConfigError:
                continue  # a combination refused before any data loads (instance norm on an mlp)
            deep = model == "cnn" and norm != "instance"
            yield model, norm, ["model.depth=4"] if deep else []


COMBOS = list(combos())


# ------------------------------------------------------------------------ a last batch of one sample
@pytest.mark.parametrize(("model", "norm", "extra"), COMBOS, ids=[f"{m}-{n}" for m, n, _ in COMBOS])
def test_a_last_batch_of_one_sample_trains_with_every_norm(model, norm, extra, caplog):
    # 7 training samples in batches of 3: 3 + 3 + 1
    with caplog.at_level(logging.INFO, logger="dlx.engine"):
        b = built([f"model={model}", f"model.norm={norm}", "dataset.train_subset=7", "trainer.batch_size=3", *extra])
    assert len(b.data.x_train) == 7
    state = TrainState()
    metrics = b.trainer.train_epoch(state)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    batch_norm = norm == "batch"
    sizes = [stop - start for start, stop in b.trainer.batches]
    assert sizes == ([3, 4] if batch_norm else [3, 3, 1])  # every sample still trains in the epoch
    assert state.step == b.trainer.steps_per_epoch == b.trainer.schedule.steps_per_epoch == len(sizes)
    said = [r for r in caplog.records if MERGED in r.getMessage()]
    assert len(said) == (1 if batch_norm else 0)


@pytest.mark.parametrize(("model", "norm", "extra"), COMBOS, ids=[f"{m}-{n}" for m, n, _ in COMBOS])
def test_evaluation_batches_of_one_sample_are_fine_in_eval_mode(model, norm, extra):
    b = built([f"model={model}", f"model.norm={norm}", "trainer.eval_batch_size=1", "dataset.train_subset=8",
               "trainer.batch_size=4", *extra])
    b.trainer.train_epoch(TrainState())
    one = b.trainer.evaluate(b.data.x_val[:3], b.data.y_val[:3])
    whole = b.trainer.evaluate(b.data.x_val, b.data.y_val)  # in one batch per sample, as eval_batch_size says
    assert 0 <= one["acc"] <= 1 and torch.isfinite(torch.tensor(whole["loss"]))
    assert b.model.training, "evaluation puts the model back in training mode"


def test_train_batches_merge_only_a_last_batch_too_small():
    assert train_batches(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert train_batches(7, 3, 2) == [(0, 3), (3, 7)]
    assert train_batches(8, 3, 2) == [(0, 3), (3, 6), (6, 8)]
    assert train_batches(2, 5, 2) == [(0, 2)]
    with pytest.raises(ValueError, match="trainer.batch_size=1"):
        train_batches(10, 1, 2)
    with pytest.raises(ValueError, match="dataset.train_subset"):
        train_batches(1, 4, 2)


def test_batch_size_one_with_batch_norm_is_refused_before_data_loads():
    with pytest.raises(ConfigError, match=r"trainer\.batch_size=1 .*model\.norm=batch"):
        compose([*BASE, "model.norm=batch", "trainer.batch_size=1"], check=True)
    compose([*BASE, "model.norm=layer", "trainer.batch_size=1"], check=True)


def test_batch_norm_run_with_a_last_batch_of_one_finishes(workdir):
    # digits: 1294 training samples, 1294 = 3 * 431 + 1
    proc = run_dlx(["train", *QUICK, "trainer.epochs=1", "trainer.batch_size=3", "model.norm=batch",
                    "trainer.checkpoint.enabled=false"], workdir, timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    [run] = all_runs(workdir)
    assert run.info.status == "FINISHED"
    log = client_for(workdir).download_artifacts(run.info.run_id, "logs/train.log", str(workdir / "dl"))
    text = open(log).read()
    assert text.count(MERGED) == 1, text


# ------------------------------------------------------------------------------- unavailable devices
def _unavailable_devices() -> list[str]:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = [f"cuda:{n}"]  # one past the last device, on any machine
    if not n:
        devices.append("cuda")
    if not torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.parametrize("device", _unavailable_devices())
def test_an_unavailable_device_is_one_line_and_exit_2_before_data_loads(device, workdir):
    # dataset=mnist has no files here: a device check that came after loading would say so instead
    proc = run_dlx(["train", f"trainer.device={device}", "dataset=mnist"], workdir, timeout=120)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "download" not in proc.stderr, proc.stderr
    problem = [line for line in proc.stderr.splitlines() if f"trainer.device={device}" in line]
    assert len(problem) == 1 and "allowed" in problem[0] and "cpu" in problem[0], proc.stderr
    assert not (workdir / "outputs").exists() and not (workdir / "data").exists()


# ---------------------------------------------------------------------------------- divergence guard
def test_a_run_whose_loss_explodes_fails_with_the_reason(workdir):
    # adam at lr 1e9 keeps the loss finite (~1e31): only the divergence guard stops it
    proc = run_dlx(["train", *QUICK, "optimizer=adam", "optimizer.lr=1e9", "trainer.checkpoint.enabled=false"],
                   workdir, timeout=240)
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "diverged" in proc.stderr and "trainer.divergence_factor" in proc.stderr, proc.stderr
    [run] = all_runs(workdir)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["dlx.error"] and "trainer.divergence_factor" in run.data.tags["dlx.error"]


EXPLODING = ["optimizer=adam", "optimizer.lr=1e9", "trainer.log_every_n_steps=5", "dataset.train_subset=200",
             "trainer.batch_size=10"]


@pytest.mark.parametrize("on_device", [False, True], ids=["read-every-step", "read-per-window"])
def test_divergence_is_caught_at_the_first_window_on_either_path(on_device):
    b = built(EXPLODING)
    if on_device:  # the accelerator path (sums kept as tensors, read once per window), run on the CPU
        b.trainer.check_every = b.trainer.opt.log_every_n_steps
    with pytest.raises(Diverged, match="steps 1-5") as caught:
        b.trainer.train_epoch(TrainState())
    assert isinstance(caught.value, NonFiniteLoss)  # dlx.run fails the run as for a non-finite loss
    assert b.trainer.opt.divergence_factor == TrainerConfig.divergence_factor


@pytest.mark.parametrize("off", ["null", "0"])
def test_divergence_guard_can_be_turned_off(off):
    b = built([*EXPLODING, f"trainer.divergence_factor={off}"])
    metrics = b.trainer.train_epoch(TrainState())
    assert metrics["train/loss"] > 1e6  # exploded, and nothing stopped it


def test_the_first_loss_travels_with_the_checkpoint_state():
    # a resumed run compares with the run's first loss, not with its (much lower) loss at the resume
    a = built(["dataset.train_subset=40", "trainer.batch_size=10"])
    a.trainer.train_epoch(TrainState())
    first = a.trainer.first_loss
    assert isinstance(first, float) and first > 0
    b = built(["dataset.train_subset=40", "trainer.batch_size=10"])
    b.trainer.load_state_dict(a.trainer.state_dict())
    assert b.trainer.first_loss == first


@pytest.mark.parametrize(("value", "ok"), [("null", True), ("0", True), ("1.5", True), ("1e6", True),
                                           ("1", False), ("0.5", False), ("-3", False)])
def test_divergence_factor_range(value, ok):
    overrides = [*BASE, f"trainer.divergence_factor={value}"]
    if ok:
        compose(overrides, check=True)
    else:
        with pytest.raises(ConfigError, match=r"trainer\.divergence_factor=.*null or 0 \(no guard\), or > 1"):
            compose(overrides, check=True)

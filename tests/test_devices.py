"""Device, mixed precision and torch.compile paths of the trainer (CUDA cases skip without a GPU)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from dlx.build import build
from dlx.compose import compose
from dlx.engine import TrainState


def built(overrides: list[str]):
    cfg = compose(["tracking=off", "trainer.progress=none", "model.width=32", *overrides])
    return build(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def one_epoch(b) -> dict:
    before = [p.detach().clone() for p in b.model.parameters()]
    metrics = b.trainer.train_epoch(TrainState())
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(p0, p.detach()) for p0, p in zip(before, b.model.parameters()))
    return metrics


@pytest.mark.slow  # inductor compiles C++ for the CPU: ~25 s of CPU time
def test_compile_trains_like_eager():
    torch.set_num_threads(1)
    eager = one_epoch(built(["trainer.deterministic=true"]))
    compiled_run = built(["trainer.deterministic=true", "trainer.compile=true"])
    assert compiled_run.trainer.forward is not compiled_run.model  # the compiled module is what runs
    compiled = one_epoch(compiled_run)
    assert compiled["train/loss"] == pytest.approx(eager["train/loss"], rel=1e-4)


@pytest.mark.cuda
def test_cuda_device_keeps_data_and_model_on_the_gpu():
    b = built(["trainer.device=cuda"])
    assert b.data.x_train.is_cuda and next(b.model.parameters()).is_cuda
    one_epoch(b)


@pytest.mark.cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda_trains(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    b = built(["trainer.device=cuda", f"trainer.amp={amp}", "model=cnn"])
    assert (b.trainer.scaler is not None) == (amp == "fp16")  # fp16 needs loss scaling, bf16 does not
    one_epoch(b)
    val = b.trainer.evaluate(b.data.x_val, b.data.y_val)
    assert 0.0 <= val["acc"] <= 1.0

"""The one place that turns a resolved config (a plain dict) into data, model, optimizer and schedule."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlx.config import TrainerConfig
from dlx.data import DataSplits, create_augmentation, create_dataset
from dlx.engine import EarlyStopping, FitOptions, Trainer, metric_mode, smallest_train_batch, train_batches
from dlx.losses import create_loss
from dlx.models import create_model
from dlx.optim import create_optimizer
from dlx.schedule import create_scheduler


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    if deterministic:
        # cuBLAS needs this workspace setting to be deterministic (PyTorch reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False


def build_data(cfg: dict, device: torch.device) -> DataSplits:
    options = {k: v for k, v in cfg["dataset"].items() if k != "name"}
    return create_dataset(cfg["dataset"]["name"], **options).to(device)


def build_model(cfg: dict, data: DataSplits) -> nn.Module:
    options = {k: v for k, v in cfg["model"].items() if k != "name"}
    return create_model(cfg["model"]["name"], input_shape=data.input_shape, num_classes=data.num_classes, **options)


@dataclass
class Built:
    data: DataSplits
    model: nn.Module
    trainer: Trainer
    device: torch.device
    num_params: int


def build(cfg: dict[str, Any], *, callbacks=()) -> Built:
    """Data, model, optimizer, schedule and trainer for a resolved config (enums as strings)."""
    t = cfg["trainer"]
    device = select_device(t["device"])
    seed_everything(int(t["seed"]), bool(t["deterministic"]))
    data = build_data(cfg, device)
    augment = create_augmentation(**cfg["augmentation"])
    if augment is not None:
        augment.check_input(data.input_shape)
    model = build_model(cfg, data).to(device)
    forward = torch.compile(model) if t["compile"] else model

    o = dict(cfg["optimizer"])
    optimizer = create_optimizer(o.pop("name"), model, **o)
    s = dict(cfg["scheduler"])
    if s.get("mode") == "auto":  # as for early stopping: max for accuracies, min for losses
        s["mode"] = metric_mode(s["monitor"])
    steps_per_epoch = len(train_batches(len(data.x_train), t["batch_size"], smallest_train_batch(model)))
    schedule = create_scheduler(s.pop("name"), optimizer, steps_per_epoch=steps_per_epoch,
                                epochs=max(1, t["epochs"]), **s)

    r = cfg["regularization"]
    es = r["early_stopping"]
    early = None
    if es["enabled"]:
        early = EarlyStopping(monitor=es["monitor"], mode=es["mode"], patience=es["patience"],
                              min_delta=es["min_delta"], restore_best=es["restore_best"])
    options = FitOptions(
        epochs=t["epochs"], batch_size=t["batch_size"], eval_batch_size=t["eval_batch_size"],
        log_every_n_steps=t["log_every_n_steps"], l1=r["l1"], l2=r["l2"], input_noise=r["input_noise"],
        clip_type=r["grad_clip"]["type"], clip_threshold=r["grad_clip"]["threshold"], amp=t["amp"],
        # a checkpoint written before the key existed resumes with the schema's default
        divergence_factor=t.get("divergence_factor", TrainerConfig.divergence_factor),
    )
    trainer = Trainer(
        model=model, optimizer=optimizer, schedule=schedule, data=data, options=options, augment=augment,
        loss_fn=create_loss(t["loss"], label_smoothing=r["label_smoothing"]), eval_loss_fn=create_loss(t["loss"]),
        early_stopping=early, forward=forward, callbacks=list(callbacks),
    )
    num_params = sum(p.numel() for p in model.parameters())
    return Built(data=data, model=model, trainer=trainer, device=device, num_params=num_params)

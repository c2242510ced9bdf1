"""The one place that turns a resolved config (a plain dict) into data, model, optimizer and schedule."""

from __future__ import annotations

import inspect
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dlx.components import call, factory, locate
from dlx.config import ConfigError, TrainerConfig
from dlx.data import DataSplits, create_augmentation, prepare
from dlx.data.eda import config_problems as eda_problems
from dlx.data.resample import Resample, member_seed
from dlx.diagnostics.common import evaluated
from dlx.engine import (
    Callback,
    EarlyStopping,
    FitOptions,
    Trainer,
    metric_mode,
    smallest_train_batch,
    takes_target,
    train_batches,
)
from dlx.ensemble import check_member
from dlx.losses import LABELS_ONLY, create_loss
from dlx.models import check_io
from dlx.models.layers import DATA_ARGUMENTS
from dlx.optim import create_optimizer
from dlx.schedule import create_scheduler
from dlx.ssl.objective import create_objective
from dlx.ssl.objective import outputs as ssl_outputs
from dlx.tasks import Target


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
    make, split = factory("dataset", cfg["dataset"])
    source = call("dataset", cfg["dataset"]["_target_"], make)
    return prepare(source, device=device, resample=Resample.of(cfg), **split)


def pairing_problems(cfg: dict, data: str, target: Target, tokens: bool) -> list[str]:
    """What the data's kind rules out: a model that reads only real-valued inputs on token ids, a model with
    one output per sample for targets with one per position, a classification loss on real-valued targets.
    Checked on the declared kind of a built-in dataset before any data loads (dlx.components.problems), and
    on the data itself once loaded."""
    model = cfg["model"]["_target_"]
    named = _parameters(model)
    out = []
    kinds = {"vocab": "token ids for inputs", "target_len": f"{target.value} targets (one per position)"}
    needed = [arg for arg in _needs(target, tokens) if arg not in named]
    serves = getattr(locate(model, "model._target_"), "targets", None)  # a model may say which kinds it serves
    if needed or (serves is not None and target not in serves):
        what = [kinds[a] for a in needed] or [f"{target.value} targets"]
        allowed = ", ".join(_models_serving(target, tokens)) or "none of dlx's models"
        out.append(f"model._target_={model}: cannot serve dataset {data}, which has {' and '.join(what)}: "
                   f"allowed {allowed}")
    noise = (cfg.get("regularization") or {}).get("input_noise")
    if tokens and noise:
        out.append(f"regularization.input_noise={noise} adds Gaussian noise to real-valued inputs, and dataset {data} "
                   "gives token ids: allowed 0 (augmentation=eda edits token sequences)")
    if target is Target.value and locate(cfg["loss"]["_target_"], "loss._target_") in LABELS_ONLY:
        out.append(f"loss._target_={cfg['loss']['_target_']}: takes class labels, and dataset {data} has "
                   "real-valued targets: allowed loss=mse, mae or huber")
    return out


def _parameters(target: str) -> dict:
    """The parameters of a target's signature (every data argument for one taking **kwargs)."""
    fn = locate(target, "_target_")
    try:
        named = dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        named = {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in named.values()):
        named.update(dict.fromkeys(DATA_ARGUMENTS))
    return named


def _models_serving(target: Target, tokens: bool) -> list[str]:
    """The built-in model options that can serve data of this kind, read from their signatures and targets."""
    from dlx.components import builtin

    return [f"model={name}" for name, fn in sorted(builtin()["model"].items())
            if set(_needs(target, tokens)) <= set(_parameters(fn))
            and target in getattr(locate(fn, "model._target_"), "targets", Target)]


def _needs(target: Target, tokens: bool) -> list[str]:
    """The data arguments a model must take to serve data of this kind."""
    return [arg for arg, need in (("vocab", tokens), ("target_len", target in (Target.steps, Target.sequence)))
            if need]


def data_arguments(cfg: dict, data: DataSplits) -> dict[str, Any]:
    """What the data tells a model beside input_shape and num_classes (models.DATA_ARGUMENTS), for a model whose
    signature names them."""
    task = data.task
    found = pairing_problems(cfg, data.name, task.target, task.vocab is not None)
    if found:
        raise ConfigError(found[0])
    named = _parameters(cfg["model"]["_target_"])
    given = {"vocab": task.vocab, "target": task.target.value, "target_len": task.target_len}
    return {k: v for k, v in given.items() if k in named}


def build_model(cfg: dict, data: DataSplits, outputs: int | None = None) -> nn.Module:
    """The model group's model; `outputs` replaces the class count as its num_classes (a self-supervised encoder's
    features)."""
    make, _ = factory("model", cfg["model"])
    outputs = data.num_classes if outputs is None else outputs
    shape = check_io(data.input_shape, outputs)
    target = cfg["model"]["_target_"]
    model = call("model", target, make, input_shape=shape, num_classes=outputs, **data_arguments(cfg, data))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={cfg['model']['_target_']}: returned a {type(model).__name__}, not a "
                          "torch.nn.Module")
    return model


def check_sample(cfg: dict, model: nn.Module, loss_fn, data: DataSplits, outputs: int | None = None) -> None:
    """One forward pass and one loss on two training samples, before any run starts: a user's model that
    returns the wrong shape, or a loss that does not return a scalar, is a configuration error (exit 2).
    `outputs`: a self-supervised encoder's features, which no loss of the loss group reads."""
    x, y = data.train.take(torch.arange(min(2, len(data.train))))
    target = cfg["model"]["_target_"]
    want = data.task.output_shape(len(x), data.num_classes if outputs is None else outputs)
    names = "(batch, target_len, num_classes)" if data.task.per_position else "(batch, num_classes)"
    # evaluation's call, and a teacher-forced model's training call too (dlx.engine.takes_target), each leaving
    # the model's mode, buffers and random state as they were
    calls = [("forward", False, {})] + ([("a training forward with targets", True, {"target": y})]
                                        if takes_target(model) else [])
    for what, train, kwargs in calls:
        try:
            with evaluated(model, train=train), torch.no_grad():
                logits = model(x, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's forward: any failure is reported, not raised
            raise ConfigError(f"model._target_={target}: {what} on a sample batch of shape {tuple(x.shape)} failed: "
                              f"{type(exc).__name__}: {exc}") from None
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ConfigError(f"model._target_={target}: returned {got} ({what}) for a sample batch of shape "
                              f"{tuple(x.shape)}; a model must return logits of shape {names} = {want}")
    if outputs is not None:
        return
    try:
        value = loss_fn(logits, y)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"loss._target_={cfg['loss']['_target_']}: failed on a sample batch: "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        raise ConfigError(f"loss._target_={cfg['loss']['_target_']}: returned "
                          f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}, "
                          "not a scalar tensor; a loss maps (logits, target) to a scalar")


def build_loss(cfg: dict):
    """(training loss, evaluation loss): validation and test losses are computed without label smoothing."""
    make, _ = factory("loss", cfg["loss"])
    target = cfg["loss"]["_target_"]
    return call("loss", target, create_loss, make), call("loss", target, create_loss, make, evaluation=True)


HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


def build_callbacks(cfg: dict) -> list[Callback]:
    """trainer.callbacks: each a {_target_: ..., options} instantiated by Hydra, with Callback's hooks."""
    out = []
    for i, node in enumerate(cfg["trainer"].get("callbacks") or []):
        key = f"trainer.callbacks[{i}]"
        target = node.get("_target_") if isinstance(node, dict) else None
        locate(target, f"{key}._target_")
        from hydra.utils import instantiate

        try:
            cb = instantiate(node, _convert_="all")
        except Exception as exc:  # noqa: BLE001 - the user's constructor
            raise ConfigError(f"{key}._target_={target}: {type(exc).__name__}: {exc}") from None
        if not any(callable(getattr(cb, hook, None)) for hook in HOOKS):
            raise ConfigError(f"{key}._target_={target}: has none of the hooks of dlx.engine.Callback "
                              f"({', '.join(HOOKS)})")
        out.append(cb if isinstance(cb, Callback) else _Hooks(cb))
    return out


class _Hooks(Callback):
    """A callback that has some of Callback's hooks without subclassing it: the others do nothing."""

    def __init__(self, inner):
        self.inner = inner
        for hook in HOOKS:
            if callable(getattr(inner, hook, None)):
                setattr(self, hook, getattr(inner, hook))


@dataclass
class Built:
    data: DataSplits
    model: nn.Module
    trainer: Trainer
    device: torch.device
    num_params: int
    user_callbacks: list[Callback]  # trainer.callbacks, run after dlx's own


def build(cfg: dict[str, Any], *, callbacks=()) -> Built:
    """Data, model, optimizer, schedule and trainer for a resolved config (enums as strings)."""
    t = cfg["trainer"]
    device = select_device(t["device"])
    seed_everything(member_seed(t["seed"], (cfg.get("ensemble") or {}).get("member")), bool(t["deterministic"]))
    # before the data loads (EDA itself needs the data's vocabulary), with what a built-in dataset declares it holds
    dataset = cfg["dataset"]["_target_"]
    declared = getattr(locate(dataset, "dataset._target_"), "declared", None)
    found = eda_problems(cfg["augmentation"], dataset=dataset.rpartition(".")[2], declared=declared)
    if found:
        raise ConfigError(found[0])
    data = build_data(cfg, device)
    check_member(cfg, data)  # a user's data whose targets an ensemble cannot average, before it trains
    augment = create_augmentation(**cfg["augmentation"], task=data.task)
    if augment is not None:
        augment.check_input(data.input_shape)
    outputs = ssl_outputs(cfg, data)
    encoder = build_model(cfg, data, outputs).to(device)
    loss_fn, eval_loss_fn = build_loss(cfg)
    check_sample(cfg, encoder, loss_fn, data, None if outputs == data.num_classes else outputs)
    # the objective: the model itself on labels, or a self-supervised method's module around it (dlx.ssl)
    model, objective, represent = create_objective(cfg, encoder, data, seed=int(t["seed"]))
    model = model.to(device)
    forward = torch.compile(model) if t["compile"] else model

    make, extras = factory("optimizer", cfg["optimizer"])
    optimizer = call("optimizer", cfg["optimizer"]["_target_"], create_optimizer, make, model, **extras)
    steps_per_epoch = len(train_batches(len(data.train), t["batch_size"], smallest_train_batch(model)))
    make, warmup = factory("scheduler", cfg["scheduler"])
    schedule = call("scheduler", cfg["scheduler"]["_target_"], create_scheduler, make, optimizer,
                    steps_per_epoch=steps_per_epoch, epochs=max(1, t["epochs"]), mode_for=metric_mode, **warmup)

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
        # a checkpoint written before the key existed resumes with the schema's default; a self-supervised loss is
        # bounded (SimSiam's in [-1, 1], from a first step near 0 of either sign) and has no divergence to guard
        divergence_factor=None if objective is not None else t.get("divergence_factor", TrainerConfig.divergence_factor),
    )
    trainer = Trainer(
        model=model, optimizer=optimizer, schedule=schedule, data=data, options=options, augment=augment,
        loss_fn=loss_fn, eval_loss_fn=eval_loss_fn, early_stopping=early, forward=forward, callbacks=list(callbacks),
        objective=objective, represent=represent,
    )
    num_params = sum(p.numel() for p in model.parameters())
    return Built(data=data, model=model, trainer=trainer, device=device, num_params=num_params,
                 user_callbacks=build_callbacks(cfg))

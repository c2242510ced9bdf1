"""The training objective (`objective` config group) as the trainer sees it.

`supervised` is the trainer's own loop on labels. A self-supervised method replaces what a training step computes
(the method's loss on two views of the batch) and what evaluation measures: `loss` is the method's loss on views
drawn from a fixed seed (the same every epoch), and `acc`, the headline accuracy that checkpoints, early stopping,
sweeps and reports read, is the k-NN accuracy (also logged as `knn_acc`). Each epoch adds the collapse monitor.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

from dlx.data.batches import eval_bounds
from dlx.engine import amp_context
from dlx.ssl.represent import Representation, encode, output_std

METHODS = ("simsiam", "simclr")  # the self-supervised options of the objective group
SUPERVISED_METRICS = ("val/loss", "val/acc", "train/loss", "train/acc")
# a self-supervised run counts no training hits; its val/acc is the k-NN accuracy
SELF_SUPERVISED_METRICS = ("val/loss", "val/acc", "val/knn_acc", "train/loss", "ssl/output_std")
EVAL_VIEWS_SEED = 0  # evaluation's views: fixed, so val/loss compares across epochs and runs
# what a self-supervised run cannot combine with, and why (checked while the config is composed)
_DIAGNOSTICS = {"layers": "a supervised loss", "sharpness": "a supervised loss", "sequence": "sequence models"}


def epoch_metrics(objective: Mapping) -> tuple[str, ...]:
    """The metrics a run with this objective config logs every epoch: what monitors and targets may name."""
    if str(objective.get("name", "supervised")) in METHODS:
        return SELF_SUPERVISED_METRICS
    return SUPERVISED_METRICS + (("val/knn_acc",) if objective.get("represent") else ())


@functools.cache
def image_data() -> str:
    """The built-in dataset options of images with class labels (their loaders declare it), for the messages."""
    from dlx.components import builtin, locate

    names = [name for name, target in sorted(builtin()["dataset"].items())
             if getattr(fn := locate(target, "dataset._target_"), "images", None) and fn.declared[0].value == "label"]
    return "dataset=" + ", ".join(names)


def config_problems(cfg: Mapping, declared=None, images: bool | None = None) -> list[str]:
    """What a self-supervised objective rules out, found before any data loads. declared: the (target, tokens)
    a built-in dataset says it holds; images: whether its samples are images (None: known once loaded)."""
    objective = cfg.get("objective") or {}
    name = str(objective.get("name", "supervised"))
    target = None if declared is None else str(getattr(declared[0], "value", declared[0]))
    if name not in METHODS:
        if objective.get("represent") and target not in (None, "label"):
            data = str((cfg.get("dataset") or {}).get("_target_", "")).rpartition(".")[2]
            return [f"objective.represent=true: measures a representation by its class labels, and dataset {data} "
                    f"has {target} targets: allowed false"]
        return []
    out = []
    augmentation = cfg.get("augmentation") or {}
    on = sorted(k for k, v in augmentation.items() if v and not isinstance(v, (str, type(None))))
    if on:
        out.append(f"augmentation ({', '.join(on)}): objective={name} makes its two views itself, set by ssl.* "
                   "(crop_scale, flip, jitter, cutout, noise_std): allowed augmentation=none")
    smoothing = (cfg.get("regularization") or {}).get("label_smoothing")
    if smoothing:
        out.append(f"regularization.label_smoothing={smoothing}: objective={name} trains without labels: allowed 0")
    diagnostics = cfg.get("diagnostics") or {}
    for key, needs in _DIAGNOSTICS.items():
        if (diagnostics.get(key) or {}).get("enabled"):
            out.append(f"diagnostics.{key}: needs {needs}, and objective={name} has none: allowed with "
                       "objective=supervised; diagnostics=basic measures the gap of the k-NN accuracy")
    stopping = (cfg.get("regularization") or {}).get("early_stopping") or {}
    if stopping.get("enabled") and stopping.get("monitor") in ("val/loss", "train/loss"):
        out.append(f"regularization.early_stopping.monitor={stopping['monitor']}: a self-supervised loss is lowest "
                   f"when the outputs collapse, so objective={name} would keep a collapsed model: allowed val/acc "
                   "(the k-NN accuracy), val/knn_acc, ssl/output_std")
    if declared is not None and (declared[1] or target != "label" or images is False):
        data = str((cfg.get("dataset") or {}).get("_target_", "")).rpartition(".")[2]
        held = "token ids" if declared[1] else f"{target} targets" if target != "label" else "no images"
        out.append(f"objective={name}: needs images with class labels (its views crop and flip images; the labels "
                   f"only measure the representation), and dataset {data} has {held}: allowed objective=supervised, "
                   f"or {image_data()}")
    return out


class SelfSupervised:
    def __init__(self, *, name: str, views, representation: Representation):
        self.name, self.views, self.representation = name, views, representation

    def loss(self, model, x: torch.Tensor) -> torch.Tensor:
        return model(*self.views(x))  # the method's loss, through forward (dlx.ssl.methods)

    @torch.no_grad()
    def evaluate(self, trainer, split) -> dict[str, float]:
        model, device = trainer.model, trainer.device
        was = model.training
        model.eval()
        try:
            total, n = torch.zeros((), device=device), 0
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                    amp_context(device, trainer.opt.amp):
                torch.manual_seed(EVAL_VIEWS_SEED)
                # batches of the training size: SimCLR's loss grows with the negatives a batch holds
                for x, _ in split.batches(eval_bounds(len(split), trainer.opt.batch_size)):
                    total += trainer.forward(*self.views(x)).float() * len(x)
                    n += len(x)
            knn = self.representation.knn(trainer, split)
        finally:
            model.train(was)
        return {"loss": total.item() / max(1, n), "acc": knn, "knn_acc": knn}

    @torch.no_grad()
    def epoch_metrics(self, trainer) -> dict[str, float]:
        """The collapse monitor on the validation split (the training split when there is none)."""
        split = trainer.data.val if len(trainer.data.val) else trainer.data.train
        model = trainer.model
        was = model.training
        model.eval()
        try:
            z, _ = encode(model.project, split, trainer.opt.eval_batch_size)
        finally:
            model.train(was)
        std, ref = output_std(z)
        return {"ssl/output_std": std, "ssl/output_std_ref": ref}


def create_objective(cfg: dict, encoder: torch.nn.Module, data, *, seed: int):
    """(model, objective, representation) for a resolved config: the model the trainer trains (the encoder itself,
    or the method's module around it), the SelfSupervised objective or None for supervised training, and the
    Representation that measures it, or None for a supervised run that does not ask for it."""
    from dlx.ssl.methods import SimCLR, SimSiam
    from dlx.ssl.views import TwoViews

    obj = cfg.get("objective") or {}  # a checkpoint written before the group existed: supervised
    name = str(obj.get("name", "supervised"))
    representation = None
    if name not in METHODS and obj.get("represent") and data.task.target.value != "label":  # a user's own data
        raise ValueError(f"objective.represent=true: measures a representation by its class labels, and dataset "
                         f"{data.name} has {data.task.target.value} targets: allowed false")
    if name in METHODS or obj.get("represent"):
        representation = Representation(k=obj["knn_k"], probe_epochs=obj["probe_epochs"],
                                        num_classes=data.num_classes, seed=seed)
    if name not in METHODS:
        return encoder, None, representation
    s = cfg["ssl"]
    views = TwoViews(crop_scale=s["crop_scale"], flip=s["flip"], jitter=s["jitter"], cutout=s["cutout"],
                     noise_std=s["noise_std"])
    views.check_input(tuple(data.input_shape), name)
    if data.task.target.value != "label":
        raise ValueError(f"objective={name}: needs class labels to measure the representation, and dataset "
                         f"{data.name} has {data.task.target.value} targets: allowed objective=supervised")
    # ssl.stop_grad null: the method's own (its signature: SimSiam has one, SimCLR not)
    switch = {} if s["stop_grad"] is None else {"stop_grad": s["stop_grad"]}
    if name == "simsiam":
        model = SimSiam(encoder, features=s["features"], proj_dim=s["proj_dim"], hidden=s["hidden"],
                        pred_hidden=s["pred_hidden"], **switch)
    else:
        model = SimCLR(encoder, features=s["features"], proj_dim=s["proj_dim"], hidden=s["hidden"],
                       temperature=s["temperature"], **switch)
    return model, SelfSupervised(name=name, views=views, representation=representation), representation


def outputs(cfg: dict, data) -> int:
    """How many outputs the model group's model gets: the classes, or ssl.features for an encoder."""
    name = str((cfg.get("objective") or {}).get("name", "supervised"))
    return int(cfg["ssl"]["features"]) if name in METHODS else data.num_classes

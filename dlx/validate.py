"""Range and combination checks of a composed config: everything a type cannot say, checked right
after composition and before any data is loaded. All problems are reported at once."""

from __future__ import annotations

import dataclasses
import math
import re
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlx.components import problems as component_problems
from dlx.config import Config, ConfigError
from dlx.distributed import problems as ddp_problems
from dlx.options import problems as option_problems
from dlx.options import spec
from dlx.store_check import problems as store_problems

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_PROGRESS = ("auto", "bar", "plain", "none")

# key -> (predicate, what is allowed); keys that an option lacks are skipped
_RULES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: v >= 0, ">= 0"),
    "regularization.l1": (lambda v: v >= 0, ">= 0"),
    "regularization.l2": (lambda v: v >= 0, ">= 0"),
    "regularization.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "regularization.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "regularization.input_noise": (lambda v: v >= 0, ">= 0"),
    "regularization.early_stopping.patience": (lambda v: v >= 0, ">= 0"),
    "regularization.early_stopping.min_delta": (lambda v: v >= 0, ">= 0"),
    "regularization.grad_clip.threshold": (lambda v: v >= 0, ">= 0 (0 disables clipping)"),
    "augmentation.crop_padding": (lambda v: v >= 0, ">= 0"),
    "augmentation.cutout_size": (lambda v: v >= 0, ">= 0"),
    "augmentation.mixup_alpha": (lambda v: v >= 0, ">= 0"),
    "augmentation.cutmix_alpha": (lambda v: v >= 0, ">= 0"),
    "augmentation.noise_std": (lambda v: v >= 0, ">= 0"),
    "trainer.epochs": (lambda v: v >= 0, ">= 0"),
    "trainer.batch_size": (lambda v: v >= 1, ">= 1"),
    "trainer.eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "trainer.seed": (lambda v: v >= 0, ">= 0"),
    "trainer.log_every_n_steps": (lambda v: v >= 1, ">= 1"),
    "trainer.divergence_factor": (lambda v: v is None or v == 0 or v > 1, "null or 0 (no guard), or > 1"),
    "trainer.checkpoint.every_n_epochs": (lambda v: v >= 1, ">= 1"),
    "trainer.checkpoint.max_overhead": (lambda v: 0 <= v < 1, "in [0, 1) (0 writes every checkpoint at once)"),
    "trainer.device": (lambda v: bool(_DEVICE_RE.match(v)), "auto, cpu, mps, cuda or cuda:N"),
    "trainer.progress": (lambda v: v in _PROGRESS, ", ".join(_PROGRESS)),
    "diagnostics.target": (lambda v: v is None or math.isfinite(v), "null or a finite number"),
    "diagnostics.layers.every_n_epochs": (lambda v: v >= 1, ">= 1"),
    "diagnostics.layers.samples": (lambda v: v >= 2, ">= 2"),
    "diagnostics.sharpness.samples": (lambda v: v >= 1, ">= 1"),
    "diagnostics.sharpness.hessian_iters": (lambda v: v >= 1, ">= 1"),
    "diagnostics.sharpness.hessian_tol": (lambda v: v >= 0, ">= 0"),
    "diagnostics.sharpness.eps": (lambda v: v >= 0, ">= 0"),
    "diagnostics.sharpness.eps_steps": (lambda v: v >= 0, ">= 0"),
}

_METRIC_KEYS = ("scheduler.monitor", "regularization.early_stopping.monitor", "trainer.checkpoint.monitor",
                "diagnostics.target_metric")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every value outside its allowed range (all at once)."""
    problems, reported = [], {}
    for key in sorted(OmegaConf.missing_keys(cfg)):  # ??? in a schema: an option without a default
        problems.append(f"{key} is required: add {key}=VALUE")
    for key, (ok, allowed) in _RULES.items():
        value = OmegaConf.select(cfg, key, default="__absent__")
        if value == "__absent__":
            continue
        if isinstance(value, DictConfig) or not _safe(ok, value):
            source = _FOLLOWS.get(key)
            if source in reported and reported[source] == value:
                continue  # follows the reported key through an interpolation: one message is enough
            reported[key] = value
            what = "is not valid" if isinstance(value, str) else "is out of range"
            problems.append(f"{key}={_show(value)} {what}: allowed {allowed}")
    from dlx.ssl.objective import epoch_metrics  # what a run logs per epoch follows its objective

    logged = epoch_metrics(OmegaConf.to_container(cfg.objective, enum_to_str=True) if "objective" in cfg else {})
    for key in _METRIC_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in logged:
            problems.append(f"{key}={value} is not a metric dlx logs per epoch: allowed {', '.join(logged)}")
    if cfg.regularization.early_stopping.enabled and OmegaConf.select(cfg, "dataset.val_fraction") == 0:
        problems.append("regularization.early_stopping needs a validation split: dataset.val_fraction must be > 0")
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    problems += _annotated_problems(Config, plain)
    from dlx.data.resample import problems as resample_problems  # a fold and a repeat within what is dealt

    problems += resample_problems(plain)
    found = component_problems(plain)
    problems += found
    if not found and isinstance(plain.get("loss"), dict):
        from dlx.losses import label_smoothing_problems  # imports torch: only once a config gets here

        loss = {k: v for k, v in plain["loss"].items() if k != "_target_"}
        problems += label_smoothing_problems(plain["loss"]["_target_"], loss, plain["regularization"]["label_smoothing"])
    problems += _device_problems(cfg)
    problems += _batch_norm_problems(cfg)
    problems += ddp_problems(cfg)  # trainer.devices, nodes and the rendezvous (dlx.distributed)
    problems += store_problems(cfg.tracking) if "tracking" in cfg else []  # address and experiment name
    problems = list(dict.fromkeys(problems))  # a range two checks read (a dataclass's and EDA's own) tells once
    if problems:
        # one problem, one line; several, one line each under a header
        raise ConfigError(problems[0] if len(problems) == 1 else
                          f"{len(problems)} problems in the configuration:\n  " + "\n  ".join(problems))


def _annotated_problems(schema: type, values: dict, prefix: str = "") -> list[str]:
    """Values outside a Range that a field of dlx/config.py's dataclasses states in its annotation, the one home
    of that range (the fields without one are checked by _RULES)."""
    out = []
    if prefix:
        out += option_problems(spec(schema), values, prefix.rstrip("."))
    for f in dataclasses.fields(schema):
        inner = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(inner) and isinstance(values.get(f.name), dict):
            out += _annotated_problems(inner, values[f.name], f"{prefix}{f.name}.")
    return out


# keys whose default is an interpolation of another key (conf/): report the source only
_FOLLOWS = {"trainer.seed": "seed"}


def _enum(value) -> str:
    return value.value if isinstance(value, Enum) else str(value)


def _device_problems(cfg: DictConfig) -> list[str]:
    device = str(cfg.trainer.device)
    amp = cfg.trainer.amp.value if isinstance(cfg.trainer.amp, Enum) else str(cfg.trainer.amp)
    if device in ("auto", "cpu") and amp == "off":
        return []
    import torch  # only here: a config without accelerator requests never pays for the import

    problems = []
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    available = _available_devices(n, torch.backends.mps.is_available())
    if _DEVICE_RE.match(device) and device not in available:  # a malformed name is reported by its _RULES entry
        kind = "CUDA" if device.startswith("cuda") else "MPS"
        why = f"only {n} CUDA device(s) exist" if device.startswith("cuda:") and n else f"no {kind} device is available"
        problems.append(f"trainer.device={device} but {why}: allowed {', '.join(available[:-1])} or {available[-1]} here")
    if amp != "off" and n == 0:
        problems.append(f"trainer.amp={amp} needs a CUDA device and none is available: allowed off here")
    if amp == "bf16" and n > 0 and not torch.cuda.is_bf16_supported():
        problems.append("trainer.amp=bf16 is not supported by this GPU: allowed off or fp16")
    return problems


def _available_devices(cuda_count: int, mps: bool) -> list[str]:
    cuda = ["cuda", *(f"cuda:{i}" for i in range(cuda_count))] if cuda_count else []
    return ["auto", "cpu", *cuda, *(["mps"] if mps else [])]


def _batch_norm_problems(cfg: DictConfig) -> list[str]:
    """Batch norm cannot normalise a batch of one sample in training mode (dlx.engine.train_batches merges
    a last batch of one; a batch size of one leaves nothing to merge)."""
    if _enum(OmegaConf.select(cfg, "model.norm")) != "batch" or cfg.trainer.batch_size != 1:
        return []
    return ["trainer.batch_size=1 is too small for model.norm=batch, which needs 2 samples per batch in training "
            "mode: allowed trainer.batch_size >= 2, or a model.norm other than batch"]


def _safe(pred, value) -> bool:
    try:
        return bool(pred(value))
    except (TypeError, ValueError):
        return False


def _show(value) -> str:
    return value.value if isinstance(value, Enum) else repr(value) if isinstance(value, str) else str(value)

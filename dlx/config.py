"""Typed schema of every config group, stored in Hydra's ConfigStore.

Each YAML option under conf/<group>/ starts from one of these dataclasses (its defaults list names
`schema_<option>`), so OmegaConf rejects unknown keys and wrong types while the config is composed.
Ranges that a type cannot express (lr > 0, 0 <= dropout < 1, ...) are checked by `validate`, which
runs right after composition and before any data is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A bad value, key or option in the composed configuration (exit code 2)."""


class Norm(Enum):
    none = "none"
    batch = "batch"
    layer = "layer"
    group = "group"
    instance = "instance"


class Activation(Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    elu = "elu"
    selu = "selu"
    gelu = "gelu"
    sigmoid = "sigmoid"
    tanh = "tanh"


class Init(Enum):
    default = "default"
    xavier_uniform = "xavier_uniform"
    xavier_normal = "xavier_normal"
    he_uniform = "he_uniform"
    he_normal = "he_normal"
    orthogonal = "orthogonal"


class Pool(Enum):
    max = "max"
    avg = "avg"
    none = "none"


class Loss(Enum):
    ce = "ce"
    bce = "bce"
    mse = "mse"
    mae = "mae"
    huber = "huber"
    hinge = "hinge"


class Amp(Enum):
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


class Mode(Enum):
    auto = "auto"  # max for accuracy-like metrics, min for losses
    min = "min"
    max = "max"


class ClipType(Enum):
    norm = "norm"
    value = "value"


class Anneal(Enum):
    cos = "cos"
    linear = "linear"


# ---------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"
    download: bool = False
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int | None = None
    normalize: bool = True


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    n_samples: int = 2000
    noise: float = 0.1


@dataclass
class DownloadDatasetConfig(DatasetConfig):
    mirror: str | None = None


# ---------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING
    width: int = 128
    depth: int = 2
    norm: Norm = Norm.none
    activation: Activation = Activation.relu
    init: Init = Init.default
    dropout: float = 0.0


@dataclass
class CNNConfig(ModelConfig):
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    pool: Pool = Pool.max
    hidden: int = 128


@dataclass
class ResNetConfig(ModelConfig):
    skip: bool = True


# ---------------------------------------------------------------- optimizer
@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = 0.1
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False


@dataclass
class MomentumConfig(OptimizerConfig):
    momentum: float = 0.9
    dampening: float = 0.0


@dataclass
class NesterovConfig(OptimizerConfig):
    momentum: float = 0.9


@dataclass
class AdagradConfig(OptimizerConfig):
    lr_decay: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0


@dataclass
class AdadeltaConfig(OptimizerConfig):
    rho: float = 0.9
    eps: float = 1e-6


@dataclass
class RMSpropConfig(OptimizerConfig):
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False


@dataclass
class AdamConfig(OptimizerConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False


# ---------------------------------------------------------------- scheduler
@dataclass
class SchedulerConfig:
    name: str = MISSING
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.0


@dataclass
class StepSchedulerConfig(SchedulerConfig):
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class MultiStepSchedulerConfig(SchedulerConfig):
    milestones: list[int] = field(default_factory=lambda: [10, 15])
    gamma: float = 0.1


@dataclass
class ExponentialSchedulerConfig(SchedulerConfig):
    gamma: float = 0.9


@dataclass
class CosineSchedulerConfig(SchedulerConfig):
    min_lr_ratio: float = 0.0


@dataclass
class CosineRestartsSchedulerConfig(SchedulerConfig):
    t0_epochs: int = 5
    t_mult: int = 2
    min_lr_ratio: float = 0.0


@dataclass
class OneCycleSchedulerConfig(SchedulerConfig):
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: Anneal = Anneal.cos


@dataclass
class PlateauSchedulerConfig(SchedulerConfig):
    monitor: str = "val/loss"
    mode: Mode = Mode.auto
    factor: float = 0.1
    patience: int = 3
    threshold: float = 1e-4
    min_lr_ratio: float = 0.0


# ---------------------------------------------------------------- regularization
@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: str = "val/loss"
    mode: Mode = Mode.auto
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class GradClipConfig:
    type: ClipType = ClipType.norm
    threshold: float = 0.0  # 0 disables clipping


@dataclass
class RegularizationConfig:
    l2: float = 0.0  # coupled weight decay: l2 * w added to the gradient of every decayed weight
    l1: float = 0.0  # l1 * sum |w| added to the loss
    dropout: float = 0.0  # the model's dropout probability (models read it through an interpolation)
    label_smoothing: float = 0.0
    input_noise: float = 0.0  # std of Gaussian noise added to training inputs
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    grad_clip: GradClipConfig = field(default_factory=GradClipConfig)


# ---------------------------------------------------------------- augmentation
@dataclass
class AugmentationConfig:
    flip: bool = False
    crop_padding: int = 0
    cutout_size: int = 0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    noise_std: float = 0.0


# ---------------------------------------------------------------- trainer
@dataclass
class CheckpointConfig:
    enabled: bool = True
    every_n_epochs: int = 1
    monitor: str = "val/acc"  # decides which checkpoint is "best"
    mode: Mode = Mode.auto


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 64
    eval_batch_size: int = 1024
    loss: Loss = Loss.ce
    device: str = "auto"
    amp: Amp = Amp.off
    compile: bool = False
    seed: int = "${seed}"  # type: ignore[assignment]  # follows the top-level seed unless set
    deterministic: bool = False
    log_every_n_steps: int = 10
    progress: str = "auto"  # auto (bars on a TTY, lines otherwise), bar, plain, none
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    resume: str | None = None


# ---------------------------------------------------------------- tracking
@dataclass
class TrackingConfig:
    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI if set, else an SQLite store at outputs/mlflow.db
    uri: str | None = None
    # where a new experiment keeps artifacts; None: outputs/mlartifacts for the default store
    artifact_location: str | None = None
    experiment: str = "dlx"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # set by `dlx sweep` on every trial: the trial's MLflow run nests under this run, in any process
    parent_run_id: str | None = None


@dataclass
class TrialConfig:
    """Set by the sweeper on each trial of a Bayesian search, so the trial can report its per-epoch
    objective to the Optuna study and stop when the pruner says so. Empty for a plain run."""

    study: str | None = None
    storage: str | None = None
    number: int | None = None
    objective: str = "val/acc"
    direction: str = "maximize"
    prune: bool = False


@dataclass
class Config:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    # groups whose options only change values share one schema; options merge into it, so several
    # can combine (regularization=[l2,dropout])
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    seed: int = 0


# (group, option) -> schema; each conf/<group>/<option>.yaml names `schema_<option>` in its defaults.
SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
        "digits": DatasetConfig,
        "mnist1d": DatasetConfig,
        "moons": SyntheticDatasetConfig,
        "spirals": SyntheticDatasetConfig,
        "mnist": DownloadDatasetConfig,
        "fashion_mnist": DownloadDatasetConfig,
        "cifar10": DownloadDatasetConfig,
    },
    "model": {"mlp": ModelConfig, "cnn": CNNConfig, "resnet": ResNetConfig},
    "optimizer": {
        "sgd": OptimizerConfig,
        "momentum": MomentumConfig,
        "nesterov": NesterovConfig,
        "adagrad": AdagradConfig,
        "adadelta": AdadeltaConfig,
        "rmsprop": RMSpropConfig,
        "adam": AdamConfig,
        "adamw": AdamConfig,
    },
    "scheduler": {
        "constant": SchedulerConfig,
        "step": StepSchedulerConfig,
        "multistep": MultiStepSchedulerConfig,
        "exponential": ExponentialSchedulerConfig,
        "cosine": CosineSchedulerConfig,
        "cosine_restarts": CosineRestartsSchedulerConfig,
        "onecycle": OneCycleSchedulerConfig,
        "plateau": PlateauSchedulerConfig,
    },
}
def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, options in SCHEMAS.items():
        for option, schema in options.items():
            cs.store(group=group, name=f"schema_{option}", node=schema)


# ---------------------------------------------------------------- range checks
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
_PROGRESS = ("auto", "bar", "plain", "none")

# key -> (predicate, what is allowed); keys that an option lacks are skipped
_RULES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: v >= 0, ">= 0"),
    "dataset.val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "dataset.train_subset": (lambda v: v is None or v >= 1, "null or >= 1"),
    "dataset.n_samples": (lambda v: v >= 10, ">= 10"),
    "dataset.noise": (lambda v: v >= 0, ">= 0"),
    "model.width": (lambda v: v >= 1, ">= 1"),
    "model.depth": (lambda v: v >= 0, ">= 0"),
    "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.kernel_size": (lambda v: v >= 1, ">= 1"),
    "model.stride": (lambda v: v >= 1, ">= 1"),
    "model.padding": (lambda v: v >= 0, ">= 0"),
    "model.hidden": (lambda v: v >= 1, ">= 1"),
    "optimizer.lr": (lambda v: v > 0, "> 0"),
    "optimizer.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optimizer.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.dampening": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optimizer.eps": (lambda v: v > 0, "> 0"),
    "optimizer.rho": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.alpha": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optimizer.lr_decay": (lambda v: v >= 0, ">= 0"),
    "optimizer.initial_accumulator_value": (lambda v: v >= 0, ">= 0"),
    "scheduler.warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "scheduler.warmup_start_factor": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "scheduler.step_size": (lambda v: v >= 1, ">= 1"),
    "scheduler.gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "scheduler.milestones": (lambda v: all(m >= 1 for m in v) and list(v) == sorted(v), "increasing epochs >= 1"),
    "scheduler.min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "scheduler.t0_epochs": (lambda v: v >= 1, ">= 1"),
    "scheduler.t_mult": (lambda v: v >= 1, ">= 1"),
    "scheduler.pct_start": (lambda v: 0 < v < 1, "in (0, 1)"),
    "scheduler.div_factor": (lambda v: v >= 1, ">= 1"),
    "scheduler.final_div_factor": (lambda v: v >= 1, ">= 1"),
    "scheduler.factor": (lambda v: 0 < v < 1, "in (0, 1)"),
    "scheduler.patience": (lambda v: v >= 0, ">= 0"),
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
    "trainer.checkpoint.every_n_epochs": (lambda v: v >= 1, ">= 1"),
    "trainer.device": (lambda v: bool(_DEVICE_RE.match(v)), "auto, cpu, mps, cuda or cuda:N"),
    "trainer.progress": (lambda v: v in _PROGRESS, ", ".join(_PROGRESS)),
}

METRIC_NAMES = ("val/loss", "val/acc", "train/loss", "train/acc")
_METRIC_KEYS = ("scheduler.monitor", "regularization.early_stopping.monitor", "trainer.checkpoint.monitor")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every value outside its allowed range (all at once)."""
    problems, reported = [], {}
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
    for key in _METRIC_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in METRIC_NAMES:
            problems.append(f"{key}={value} is not a metric dlx logs per epoch: allowed {', '.join(METRIC_NAMES)}")
    if cfg.regularization.early_stopping.enabled and cfg.dataset.val_fraction == 0:
        problems.append("regularization.early_stopping needs a validation split: dataset.val_fraction must be > 0")
    problems += _combination_problems(cfg)
    problems += _device_problems(cfg)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


# keys whose default is an interpolation of another key (conf/): report the source only
_FOLLOWS = {"model.dropout": "regularization.dropout", "trainer.seed": "seed"}


def _enum(value) -> str:
    return value.value if isinstance(value, Enum) else str(value)


def _combination_problems(cfg: DictConfig) -> list[str]:
    """Rules that join two keys or depend on the chosen option: checked before any data loads."""
    problems = []
    model, depth = cfg.model.name, cfg.model.depth
    if model == "resnet" and (depth < 8 or (depth - 2) % 6):
        problems.append(f"model.depth={depth} is not valid for resnet: allowed 6n+2 (8, 14, 20, 32, 44, 56, ...)")
    if model == "cnn" and depth < 1:
        problems.append(f"model.depth={depth} is out of range for cnn: allowed >= 1 (depth 0 is an mlp)")
    if model == "mlp" and _enum(cfg.model.norm) == "instance":
        problems.append("model.norm=instance needs feature maps and mlp has none: allowed none, batch, layer, "
                        "group (or model=cnn / model=resnet)")
    if _enum(cfg.trainer.loss) == "hinge" and cfg.regularization.label_smoothing:
        problems.append("regularization.label_smoothing must be 0 with trainer.loss=hinge (it takes hard labels)")
    if cfg.scheduler.name == "onecycle" and cfg.scheduler.warmup_epochs:
        problems.append("scheduler.warmup_epochs must be 0 with scheduler=onecycle (pct_start is its warmup)")
    return problems


def _device_problems(cfg: DictConfig) -> list[str]:
    device = str(cfg.trainer.device)
    amp = cfg.trainer.amp.value if isinstance(cfg.trainer.amp, Enum) else str(cfg.trainer.amp)
    wants_cuda = device.startswith("cuda")
    if not (wants_cuda or amp != "off"):
        return []
    import torch  # only here: a config without CUDA requests never pays for the import

    problems = []
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wants_cuda and n == 0:
        problems.append(f"trainer.device={device} but no CUDA device is available: allowed auto or cpu here")
    elif device.startswith("cuda:") and int(device.split(":")[1]) >= n:
        problems.append(f"trainer.device={device} but only {n} CUDA device(s) exist: allowed cuda:0..cuda:{n - 1}")
    if amp != "off" and n == 0:
        problems.append(f"trainer.amp={amp} needs a CUDA device and none is available: allowed off here")
    if amp == "bf16" and n > 0 and not torch.cuda.is_bf16_supported():
        problems.append("trainer.amp=bf16 is not supported by this GPU: allowed off or fp16")
    return problems


def _safe(pred, value) -> bool:
    try:
        return bool(pred(value))
    except (TypeError, ValueError):
        return False


def _show(value) -> str:
    return value.value if isinstance(value, Enum) else repr(value) if isinstance(value, str) else str(value)

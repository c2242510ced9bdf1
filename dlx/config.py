"""Typed schema of every config group, stored in Hydra's ConfigStore.

Each YAML option under conf/<group>/ starts from one of these dataclasses (its defaults list names
`schema_<option>`), so OmegaConf rejects unknown keys and wrong types while the config is composed.
Ranges that a type cannot express (lr > 0, 0 <= dropout < 1, ...) are checked by dlx.validate, which
runs right after composition and before any data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    max_overhead: float = 0.05  # share of the run's time writes may take; 0: every due checkpoint at once


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
    # a run whose mean training loss over a log window passes this multiple of its first step's loss stops
    # FAILED; null or 0: no guard. On digits every shipped option, model knob and study grid point peaks
    # below 2x (adagrad 1.85x); runs that blow up pass 100x within ten epochs (adam lr 1e9: ~1e31)
    divergence_factor: float | None = 100.0
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


# ---------------------------------------------------------------- diagnostics
@dataclass
class LayerStatsConfig:
    enabled: bool = False
    every_n_epochs: int = 1  # and once at initialisation (epoch 0)
    samples: int = 256  # a fixed, seeded batch of training samples


@dataclass
class SharpnessConfig:
    enabled: bool = False
    samples: int = 1024  # a fixed, seeded subset of the training split
    hessian_iters: int = 20  # power iterations, each about two backward passes over the samples
    hessian_tol: float = 1e-3  # stop when the eigenvalue estimate changes by less than this, relatively
    eps: float = 1e-3  # the box radius of epsilon-sharpness: eps * (|w| + 1) per weight
    eps_steps: int = 10  # projected gradient-ascent steps of epsilon-sharpness


@dataclass
class DiagnosticsConfig:
    gap: bool = True  # gap/acc and gap/loss: the training split re-evaluated on the final weights
    target: float | None = None  # epochs_to_target: the first epoch where target_metric reaches this value
    target_metric: str = "val/acc"
    layers: LayerStatsConfig = field(default_factory=LayerStatsConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)


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
class StudyConfig:
    """What a ready-made study (conf/study/<name>.yaml, run with `dlx study <name>`) tests and expects;
    its sweep tags the parent MLflow run with it so reports can state the finding. Empty otherwise."""

    name: str | None = None
    statement: str = ""  # one line: the effect the study tests
    factor: str = ""  # the swept key, e.g. optimizer
    levels: list[str] = field(default_factory=list)  # the factor's values, in the order to report them
    metrics: list[str] = field(default_factory=list)  # the metrics that show the effect, most telling first
    expected: str = ""  # the published effect, with the paper


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
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
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

"""Typed schema of the groups dlx itself reads (trainer, tracking, regularization, augmentation,
diagnostics), stored in Hydra's ConfigStore: each dataclass holds its group's defaults, and a YAML option
under conf/<group>/ holds only what it changes, so OmegaConf rejects unknown keys and wrong types while the
config is composed. Ranges that a type cannot express are checked by dlx.validate right after composition.

The component groups (dataset, model, optimizer, scheduler, loss) have no dataclass here: each option's
schema is derived from its `_target_`'s signature (dlx.components).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dlx.options import Range


class ConfigError(ValueError):
    """A bad value, key or option in the composed configuration (exit code 2)."""


class Amp(Enum):
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


class Mode(str, Enum):  # also the plateau schedule's (dlx.schedule)
    auto = "auto"  # max for accuracy-like metrics, min for losses
    min = "min"
    max = "max"


class ClipType(Enum):
    norm = "norm"
    value = "value"


class Strategy(Enum):
    auto = "auto"  # one process, or DDP when trainer.devices x trainer.nodes > 1
    ddp = "ddp"  # DistributedDataParallel through torchrun, even with one process


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
    # EDA (Wei & Zou 2019; dlx/data/eda.py) on token inputs: each training sequence gets one of the operations
    # whose rate is > 0, chosen at random; the rate is the share of its tokens that operation touches
    swap_rate: Annotated[float, Range(ge=0, le=1)] = 0.0
    delete_rate: Annotated[float, Range(ge=0, lt=1)] = 0.0
    insert_rate: Annotated[float, Range(ge=0, le=1)] = 0.0
    replace_rate: Annotated[float, Range(ge=0, le=1)] = 0.0
    synonyms: str | None = None  # a UTF-8 file: one group of synonyms per line, words separated by commas or tabs


# ---------------------------------------------------------------- objective
class ObjectiveName(str, Enum):
    supervised = "supervised"  # the labels' loss (the loss group)
    simsiam = "simsiam"  # Chen & He 2021 (dlx.ssl)
    simclr = "simclr"  # Chen et al. 2020


@dataclass
class ObjectiveConfig:
    name: ObjectiveName = ObjectiveName.supervised
    # the representation metrics (dlx.ssl.represent): val/knn_acc every epoch, test/knn_acc and probe/acc at the
    # end; always on for a self-supervised objective; on a supervised run they measure the model's output
    represent: bool = False
    knn_k: Annotated[int, Range(ge=1)] = 20  # neighbours that vote
    probe_epochs: Annotated[int, Range(ge=1)] = 100  # epochs of the linear probe on frozen features


@dataclass
class SSLConfig:
    """The self-supervised objectives' settings (dlx.ssl); a supervised run ignores them."""

    features: Annotated[int, Range(ge=1)] = 64  # the encoder's outputs: the model group's num_classes
    proj_dim: Annotated[int, Range(ge=1)] = 64  # the projector's output, where the loss and ssl/output_std look
    hidden: Annotated[int, Range(ge=1)] = 256  # the projector's hidden layers
    pred_hidden: Annotated[int, Range(ge=1)] = 32  # SimSiam's predictor bottleneck (the paper's is a quarter of its 2048)
    # the stop-gradient on the projections (SimSiam's; for SimCLR on the second view's); null: the method's own
    # (dlx.ssl.methods: SimSiam on, SimCLR off)
    stop_grad: bool | None = None
    temperature: Annotated[float, Range(gt=0)] = 0.5  # SimCLR's NT-Xent temperature
    # the two views (dlx.ssl.views), drawn on the device for each training batch
    crop_scale: Annotated[float, Range(gt=0, le=1)] = 0.5  # smallest area share of the random resized crop
    flip: Annotated[float, Range(ge=0, le=1)] = 0.0  # probability of a horizontal flip (digits are not symmetric)
    jitter: Annotated[float, Range(ge=0, le=1)] = 0.4  # colour jitter strength, images with 3 channels only
    cutout: Annotated[float, Range(ge=0, lt=1)] = 0.25  # side of the cutout square, as a share of the image's
    noise_std: Annotated[float, Range(ge=0)] = 0.1  # Gaussian noise on the standardised pixels


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
    # objects with the hooks of dlx.engine.Callback, each given as {_target_: ..., options}
    callbacks: list[Any] = field(default_factory=list)
    # one training over several processes (dlx.distributed): torchrun starts devices x nodes ranks, each with its
    # share of every batch (trainer.batch_size is the global batch)
    devices: Annotated[int, Range(ge=1)] = 1  # processes on this node, one device each: gloo on CPU, NCCL on CUDA
    nodes: Annotated[int, Range(ge=1)] = 1
    strategy: Strategy = Strategy.auto
    rdzv_endpoint: str | None = None  # host:port on one of the nodes, where they meet (torchrun --rdzv-endpoint)
    node_rank: Annotated[int | None, Range(ge=0)] = None  # null: the c10d rendezvous numbers the nodes


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
class SequenceConfig:
    enabled: bool = False
    samples: Annotated[int, Range(ge=1)] = 64  # a fixed, seeded batch of training samples: gradient through time
    maps: Annotated[int, Range(ge=0)] = 4  # validation samples whose attention maps are drawn


@dataclass
class DiagnosticsConfig:
    gap: bool = True  # gap/acc and gap/loss: the training split re-evaluated on the final weights
    target: float | None = None  # epochs_to_target: the first epoch where target_metric reaches this value
    target_metric: str = "val/acc"
    layers: LayerStatsConfig = field(default_factory=LayerStatsConfig)
    sharpness: SharpnessConfig = field(default_factory=SharpnessConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)


# ---------------------------------------------------------------- cross-validation and ensembles
@dataclass
class CvConfig:
    """`dlx cv` (dlx/cv.py): the samples outside the test split are dealt into `folds` stratified folds, one
    dealing per repeat; a run with `fold` set validates on that fold and trains on the others."""

    folds: Annotated[int, Range(ge=2)] = 5
    repeats: Annotated[int, Range(ge=1)] = 1  # dealings of the folds, each seeded by its repeat
    fold: Annotated[int | None, Range(ge=0)] = None  # set per child run by dlx cv; None: the usual val split
    repeat: Annotated[int, Range(ge=0)] = 0


@dataclass
class EnsembleConfig:
    """`dlx ensemble` (dlx/ensemble.py): `members` runs whose test-split probabilities are averaged."""

    members: Annotated[int, Range(ge=1)] = 5
    bootstrap: bool = True  # each member trains on a resample (with replacement) of the training split
    member: Annotated[int | None, Range(ge=0)] = None  # set per child run by dlx ensemble; None: a plain run


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
    # component groups (dlx.components): a `_target_` and its options; a built-in option's schema is derived
    # from its target's signature when the config is composed
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    # groups whose options only change values share one schema; options merge into it, so several
    # can combine (regularization=[l2,dropout])
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    seed: int = 0


def register_configs() -> None:
    from dlx.components import register

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    register()

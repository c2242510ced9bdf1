"""The training loop: fit, train_epoch and evaluate. Knows nothing of Hydra or MLflow.

Batches come from the data's splits (dlx.data.batches): index views of tensors held on the device, or
batches a DataLoader streams there. Everything the loop touches per step lives on the device; the only
reads back to the host are the finiteness check (on CPU every step, where it costs nothing; on CUDA once per log window, since
`.item()` is a device sync) and the metric reads every `log_every_n_steps` and at the end of an epoch,
where the divergence guard also looks.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dlx.data.batches import TensorSplit, eval_bounds
from dlx.early_stopping import EarlyStopping  # noqa: F401 - part of the loop's interface
from dlx.losses import LossFn
from dlx.optim import decayed_params
from dlx.tasks import LABELS, Target, Task, metric_mode  # noqa: F401 - metric_mode: as above

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Steps count from 1 like MLflow's step axis: step n is the n-th optimizer step of the run."""

    def __init__(self, epoch: int, step: int, last_step: int | None = None):
        where = f"step {step}" if last_step is None else f"a step between {step} and {last_step}"
        super().__init__(f"non-finite training loss at epoch {epoch}, {where}; training stopped")
        self.epoch, self.step = epoch, step


class Diverged(NonFiniteLoss):
    """The training loss of a log window rose above divergence_factor times the run's first loss: the
    run is as lost as with a non-finite loss (optimizer.lr=1e9 with adam reaches ~1e31, finite), and
    fails the same way."""

    def __init__(self, epoch: int, step: int, last_step: int, loss: float, first: float, factor: float):
        RuntimeError.__init__(
            self, f"training loss diverged at epoch {epoch}, steps {step}-{last_step}: their mean {loss:.3g} is above "
                  f"trainer.divergence_factor={factor:g} times the first step's loss {first:.3g}; training stopped")
        self.epoch, self.step = epoch, step


@dataclass
class FitOptions:
    epochs: int
    batch_size: int
    eval_batch_size: int = 1024
    log_every_n_steps: int = 10
    l1: float = 0.0
    l2: float = 0.0
    input_noise: float = 0.0
    clip_type: str = "norm"
    clip_threshold: float = 0.0
    amp: str = "off"
    divergence_factor: float | None = None  # None or 0: no divergence guard


# Batch statistics of one sample are undefined (BatchNorm1d raises) or only spatial (BatchNorm2d): in
# training mode a batch-norm model needs batches of at least two samples.
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def smallest_train_batch(model: nn.Module) -> int:
    return 2 if any(isinstance(m, _BATCH_NORMS) for m in model.modules()) else 1


def train_batches(n: int, batch_size: int, smallest: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of each training batch of an epoch over n samples. A last batch smaller than
    `smallest` joins the batch before it (every sample still trains each epoch; one step fewer)."""
    if batch_size < smallest:
        raise ValueError(f"trainer.batch_size={batch_size} is too small for the model's batch norm, which needs "
                         f"{smallest} samples per batch in training mode: allowed trainer.batch_size >= {smallest}")
    if n < smallest:
        raise ValueError(f"the training split holds {n} sample(s) and the model's batch norm needs {smallest} in "
                         f"training mode: raise dataset.train_subset or lower dataset.val_fraction")
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < smallest:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def takes_target(model: nn.Module) -> bool:
    """A model whose forward names a `target` parameter is given the batch's targets in training steps (teacher
    forcing); evaluation calls it on x alone."""
    import inspect

    try:
        return "target" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)  # per-epoch metrics


class Callback:
    """Hooks called by Trainer.fit; every method is optional."""

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None: ...

    def on_step_log(self, trainer: Trainer, state: TrainState, metrics: dict) -> None: ...

    def on_epoch_end(self, trainer: Trainer, state: TrainState, metrics: dict) -> None: ...

    def on_step(self, trainer: Trainer, state: TrainState) -> None: ...


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector waits while an epoch runs; it catches up between epochs. A
    step's tensors and autograd graph are freed by reference counting, not by the collector, but its
    allocations trigger it: in a run that has imported MLflow (~700k tracked objects) a digits MLP
    epoch (~25 ms) met a young-generation collection of ~3 ms every third epoch, and now and then a
    full one of ~0.4 s."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def amp_context(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    def __init__(self, *, model: nn.Module, optimizer, schedule, loss_fn: LossFn, eval_loss_fn: LossFn,
                 data, options: FitOptions, augment=None, early_stopping: EarlyStopping | None = None,
                 forward: nn.Module | None = None, callbacks: list[Callback] = (), objective=None, represent=None):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.loss_fn, self.eval_loss_fn = loss_fn, eval_loss_fn
        self.data, self.opt, self.augment = data, options, augment
        self.early_stopping = early_stopping
        self.forward = forward if forward is not None else model  # the torch.compile'd module
        self.callbacks = list(callbacks)
        # a self-supervised objective (dlx.ssl) computes the step's loss and the evaluation; None: labels and loss_fn
        self.objective, self.represent = objective, represent
        self.device = data.train.device
        self.task: Task = getattr(data, "task", None) or LABELS
        self.teacher = takes_target(model)
        self.scaler = torch.amp.GradScaler(self.device.type) if options.amp == "fp16" else None
        self.decayed = decayed_params(optimizer) if (options.l1 or options.l2) else []
        self.batches = train_batches(len(data.train), options.batch_size, smallest_train_batch(model))
        self.steps_per_epoch = len(self.batches)
        last = self.batches[-1][1] - self.batches[-1][0]
        if last > options.batch_size:
            log.info("the last training batch of each epoch would hold %d sample(s), too few for batch norm in "
                     "training mode: it joins the batch before it (%d samples)", last - options.batch_size, last)
        self.first_loss = None  # the run's first training loss, the divergence guard's reference
        # on CPU reading a scalar is free; on an accelerator it stalls the pipeline, so check per window
        self.check_every = 1 if self.device.type == "cpu" else options.log_every_n_steps
        self.dist = None  # dlx.distributed.Ranks when this is one rank of a training over several processes

    # ------------------------------------------------------------------ state for checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "early_stopping": self.early_stopping.state_dict() if self.early_stopping else None,
            "first_loss": None if self.first_loss is None else float(self.first_loss),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.early_stopping and state.get("early_stopping"):
            self.early_stopping.load_state_dict(state["early_stopping"])
        self.first_loss = state.get("first_loss")  # a resumed run keeps its reference; older checkpoints lack it

    # ------------------------------------------------------------------ loop
    def fit(self, state: TrainState | None = None) -> TrainState:
        state = state or TrainState()
        for cb in self.callbacks:
            cb.on_fit_start(self, state)
        while state.epoch < self.opt.epochs and not state.stopped_early:
            t0 = time.perf_counter()
            with gc_paused():
                metrics = self.train_epoch(state)
                if len(self.data.val):  # with several ranks: rank 0's, so that every rank decides alike
                    val = self.dist.from_lead(self.evaluate, self.data.val) if self.dist else self.evaluate(self.data.val)
                    metrics.update(_prefix("val", val))
                if self.objective is not None:  # the collapse monitor of a self-supervised objective, likewise
                    metrics.update(self.dist.from_lead(self.objective.epoch_metrics, self) if self.dist
                                   else self.objective.epoch_metrics(self))
            state.epoch += 1
            if self.schedule.monitor is not None:
                self.schedule.step_epoch(state.epoch, metrics.get(self.schedule.monitor))
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # once per epoch, so the epoch time is real
            seconds = time.perf_counter() - t0
            metrics.update({"epoch": state.epoch, "epoch_time": seconds,
                            "samples_per_sec": len(self.data.train) / seconds})
            if self.early_stopping is not None:
                state.stopped_early = self.early_stopping.update(state.epoch, metrics, self.model)
            state.history.append(metrics)
            for cb in self.callbacks:
                cb.on_epoch_end(self, state, metrics)
        return state

    def restore_best(self) -> bool:
        """Load the early-stopping best weights, when kept; True if restored."""
        es = self.early_stopping
        if es is None or not es.restore_best or es.best_state is None:
            return False
        self.model.load_state_dict(es.best_state)
        return True

    def train_epoch(self, state: TrainState) -> dict[str, float]:
        opt, data, model = self.opt, self.data, self.forward if self.dist is None else self.dist.forward
        self.model.train()
        perm = data.train.permutation()  # torch's global generator, as every RNG state is in a checkpoint
        if self.dist is not None:  # every rank drew the same one: each takes its share
            perm = self.dist.shard(perm)
        # On CPU the step's loss is read as a Python number (that read is the finiteness check) and the
        # sums stay Python floats: cheaper than a handful of tiny tensor ops per step. On an accelerator
        # the sums stay on the device and are read once per log window.
        on_host = self.check_every == 1
        zero = (lambda: 0.0) if on_host else (lambda: torch.zeros((), device=self.device))
        loss_sum, correct, seen, counted = zero(), zero(), 0, 0
        win_loss, win_seen, win_start = zero(), 0, state.step
        window = []  # the steps since the last log: accuracy is counted per window
        by_window = self.task.target is Target.label
        counts = self.objective is None  # a self-supervised step has no labels to count hits on
        bad = zero()
        amp = amp_context(self.device, opt.amp)
        for x, y in data.train.batches(self.batches, perm):
            y_b, lam = y, 1.0
            if self.augment is not None:
                x, y, y_b, lam = self.augment(x, y)
            if opt.input_noise:
                x = x + opt.input_noise * torch.randn_like(x)
            with amp:
                if not counts:
                    loss = self.objective.loss(model, x)
                else:
                    logits = model(x, target=y) if self.teacher else model(x)
                    loss = self.loss_fn(logits, y)
                if lam < 1.0:  # mixup/cutmix: the loss mixes exactly as the inputs did
                    loss = lam * loss + (1 - lam) * self.loss_fn(logits, y_b)
            if opt.l1:
                loss = loss + opt.l1 * sum(p.abs().sum() for p in self.decayed)
            if on_host:
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise NonFiniteLoss(state.epoch + 1, state.step + 1)
            else:
                loss_value = loss.detach().float()
                bad += ~torch.isfinite(loss_value)
            if self.first_loss is None:  # a float on CPU; on a device a tensor, read at the first window
                self.first_loss = loss_value
            self._step(loss, state.step)
            # class labels are counted per window (see _hits); other targets per step, keeping two numbers
            # rather than the step's (N, T, V) logits until the window ends
            if counts:
                window.append((logits.detach(), y, y_b, lam) if by_window else self.task.hits(logits.detach(), y))
            win_loss += loss_value * len(y)
            win_seen += len(y)
            state.step += 1
            for cb in self.callbacks:
                cb.on_step(self, state)
            if state.step % opt.log_every_n_steps == 0:
                if not on_host and bad.item():
                    raise NonFiniteLoss(state.epoch + 1, win_start + 1, state.step)
                win_correct, win_counted = _hits(window, on_host, self.task)
                if self.dist is not None:  # the window over every rank's share
                    win_loss, win_seen, win_correct, win_counted = self.dist.sum(win_loss, win_seen, win_correct,
                                                                                 win_counted)
                win_mean = float(win_loss) / win_seen
                self._check_divergence(win_mean, state.epoch + 1, win_start + 1, state.step)
                metrics = {"train/loss_step": win_mean, "lr": self.schedule.lr}
                if counts:
                    metrics["train/acc_step"] = float(win_correct) / max(1, win_counted)
                for cb in self.callbacks:
                    cb.on_step_log(self, state, metrics)
                loss_sum, correct, seen = loss_sum + win_loss, correct + win_correct, seen + win_seen
                counted += win_counted
                win_loss, win_seen, win_start, window = zero(), 0, state.step, []
        if not on_host and bad.item():
            raise NonFiniteLoss(state.epoch + 1, win_start + 1, state.step)
        win_correct, win_counted = _hits(window, on_host, self.task)
        if self.dist is not None:
            win_loss, win_seen, win_correct, win_counted = self.dist.sum(win_loss, win_seen, win_correct, win_counted)
        if win_seen:
            self._check_divergence(float(win_loss) / win_seen, state.epoch + 1, win_start + 1, state.step)
        loss_sum, correct, seen = loss_sum + win_loss, correct + win_correct, seen + win_seen
        counted += win_counted
        out = {"train/loss": float(loss_sum) / seen, "lr": self.schedule.lr}
        if counts:
            out["train/acc"] = float(correct) / max(1, counted)
        return out

    def _check_divergence(self, mean: float, epoch: int, first_step: int, last_step: int) -> None:
        """Raise Diverged when a window's mean loss passes divergence_factor x the run's first loss. Called
        where the window's loss is read anyway, so it adds no host-device sync to the steps."""
        factor = self.opt.divergence_factor
        if not factor or self.first_loss is None:
            return
        if isinstance(self.first_loss, torch.Tensor):
            self.first_loss = self.first_loss.item()  # once: a device sync beside the window's own read
        if self.first_loss > 0 and mean > factor * self.first_loss:
            raise Diverged(epoch, first_step, last_step, mean, self.first_loss, factor)

    def _step(self, loss: torch.Tensor, step: int) -> None:
        opt, optimizer = self.opt, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if opt.l2:  # coupled L2: the gradient of (l2/2)*|w|^2, for every optimizer alike
            params = [p for p in self.decayed if p.grad is not None]
            torch._foreach_add_([p.grad for p in params], params, alpha=opt.l2)
        if opt.clip_threshold:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            if opt.clip_type == "norm":
                torch.nn.utils.clip_grad_norm_(params, opt.clip_threshold)
            else:
                torch.nn.utils.clip_grad_value_(params, opt.clip_threshold)
        self.schedule.step_batch(step)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    @torch.no_grad()
    def evaluate(self, split, y: torch.Tensor | None = None) -> dict[str, float]:
        """Mean loss (without label smoothing), accuracy and the task's other metrics (dlx.tasks) over a split
        (or tensors x, y), in eval mode."""
        split = TensorSplit(split, y) if y is not None else split
        if self.objective is not None:
            return self.objective.evaluate(self, split)
        was_training = self.model.training
        self.model.eval()
        zero = lambda: torch.zeros((), device=self.device)  # noqa: E731
        loss_sum, weight, correct, counted, sums = zero(), zero(), zero(), zero(), {}
        with amp_context(self.device, self.opt.amp):
            for xb, yb in split.batches(eval_bounds(len(split), self.opt.eval_batch_size)):
                logits = self.forward(xb)
                hits, count = self.task.hits(logits, yb)
                # a loss per position is a mean over the batch's counted positions: weigh it by their number,
                # so perplexity and bpc are per token whatever the batches
                w = count if self.task.per_position else len(yb)
                loss_sum += self.eval_loss_fn(logits, yb).float() * w
                weight += w
                correct += hits
                counted += count
                for k, v in self.task.sums(logits, yb).items():
                    sums[k] = sums.get(k, 0) + v
        n = max(1, len(split))
        metrics = self.task.metrics(loss_sum.item() / max(1, weight.item()), correct.item() / max(1, counted.item()),
                                    {k: float(v) for k, v in sums.items()}, n)
        if self.represent is not None:  # the model's output as a representation (objective.represent)
            metrics["knn_acc"] = self.represent.knn(self, split)
        self.model.train(was_training)
        return metrics


@torch.no_grad()
def _hits(window: list, on_host: bool, task: Task = LABELS):
    """(correct, counted) over a window of steps, each (logits, y, y_b, lam); a mixed batch counts lam of
    its hits on y and 1 - lam on y_b. The unmixed steps are counted in one go: argmax, compare and sum
    once per window instead of once per step (on a small model on CPU those three ops were 3% of a step).
    For targets other than class labels the window holds each step's (hits, counted) from its task."""
    if task.target is not Target.label:  # the window holds each step's (hits, counted)
        if not window:
            return 0.0, 0
        correct, counted = sum(h for h, _ in window), int(sum(c for _, c in window))
        return (correct.item() if on_host else correct), counted
    counted = sum(len(y) for _, y, _, _ in window)
    plain = [(logits, y) for logits, y, _, lam in window if lam == 1.0]
    if plain:
        hits = (torch.cat([p[0] for p in plain]).argmax(-1) == torch.cat([p[1] for p in plain])).sum()
    else:
        hits = torch.zeros((), device=window[0][0].device if window else None)
    for logits, y, y_b, lam in window:
        if lam != 1.0:
            pred = logits.argmax(-1)
            hits = hits + lam * (pred == y).sum() + (1 - lam) * (pred == y_b).sum()
    return (hits.item() if on_host else hits), counted


def _prefix(prefix: str, metrics: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}

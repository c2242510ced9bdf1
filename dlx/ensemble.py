"""Ensembles of runs (`dlx ensemble`, the ensembles study): each member run saves its test-split class
probabilities; the ensemble averages them (Breiman 1996, bagging; Lakshminarayanan et al. 2017, deep
ensembles) and is measured as one model: accuracy, NLL of the averaged probabilities, expected calibration
error, and the accuracy of the members' majority vote."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("dlx")

PREDICTIONS = "predictions/test.npz"  # each member's artifact (and the parent's averaged one)
ECE_BINS = 15  # Guo et al. 2017's equal-width confidence bins
MEMBER_TAG = "ensemble.member"


# ---------------------------------------------------------------------------------------------- a member
def config_problems(cfg: Mapping, declared=None) -> list[str]:
    """What keeps a member (ensemble.member set, by dlx ensemble or the ensembles study) from saving the class
    probabilities its ensemble averages, found before any data loads; declared: the (target, tokens) a built-in
    dataset says it holds (a user's dataset is checked once loaded, check_member)."""
    from dlx.ssl.objective import METHODS

    if (cfg.get("ensemble") or {}).get("member") is None:
        return []
    name = str((cfg.get("objective") or {}).get("name", "supervised"))
    if name in METHODS:
        return [f"objective={name}: an ensemble averages its members' test-split class probabilities, and a "
                f"self-supervised run has none (its model outputs a representation): allowed objective=supervised"]
    target = None if declared is None else str(getattr(declared[0], "value", declared[0]))
    if target not in (None, "label"):
        data = str((cfg.get("dataset") or {}).get("_target_", "")).rpartition(".")[2]
        return [f"dataset={data}: an ensemble averages its members' test-split class probabilities, and dataset "
                f"{data} has {target} targets: allowed {label_data()}"]
    return []


def check_member(cfg: Mapping, data) -> None:
    """config_problems for a user's dataset, whose targets are known once it has loaded: ValueError."""
    target = data.task.target.value
    if (cfg.get("ensemble") or {}).get("member") is not None and target != "label":
        raise ValueError(f"dataset: an ensemble averages its members' test-split class probabilities, and dataset "
                         f"{data.name} has {target} targets: allowed a dataset with class labels ({label_data()})")


def label_data() -> str:
    """The built-in dataset options with class labels (their loaders declare it), for the messages."""
    from dlx.components import builtin, locate

    return "dataset=" + ", ".join(name for name, target in sorted(builtin()["dataset"].items())
                                  if locate(target, "dataset._target_").declared[0].value == "label")


def test_probabilities(trainer) -> tuple[np.ndarray, np.ndarray] | None:
    """(probabilities (N, C) float32, labels (N,)) of the trained model on the test split; None for targets
    other than class labels and for self-supervised objectives, which have no class probabilities to average."""
    import torch

    from dlx.data.batches import eval_bounds
    from dlx.engine import amp_context
    from dlx.tasks import Target

    if trainer.task.target is not Target.label or trainer.objective is not None:
        return None  # a self-supervised member's output is a representation, not class scores
    was_training = trainer.model.training
    trainer.model.eval()
    probs, labels = [], []
    with torch.no_grad(), amp_context(trainer.device, trainer.opt.amp):
        for xb, yb in trainer.data.test.batches(eval_bounds(len(trainer.data.test), trainer.opt.eval_batch_size)):
            probs.append(torch.softmax(trainer.forward(xb).float(), dim=-1).cpu())
            labels.append(yb.cpu())
    trainer.model.train(was_training)
    return torch.cat(probs).numpy().astype(np.float32), torch.cat(labels).numpy().astype(np.int64)


def save_predictions(trainer, tracker, run_dir: Path) -> Path | None:
    """The member's test probabilities as predictions/test.npz in its run folder, logged as an artifact."""
    found = test_probabilities(trainer)
    if found is None:
        return None
    path = Path(run_dir) / PREDICTIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, probs=found[0], y=found[1])
    tracker.log_artifact(path, str(Path(PREDICTIONS).parent))
    return path


def load_predictions(run, client=None) -> tuple[np.ndarray, np.ndarray] | None:
    """A run's (probs, y): from its run folder (tag dlx.run_dir) when it is on this machine, else its artifact
    through `client` (a remote store, or a run folder since removed)."""
    tags = run.data.tags if hasattr(run, "data") else run.tags
    run_id = run.info.run_id if hasattr(run, "info") else run.run_id
    path = Path(tags["dlx.run_dir"]) / PREDICTIONS if tags.get("dlx.run_dir") else None
    if path is not None and path.is_file():
        return _read_predictions(path)
    if client is None:
        return None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dlx-pred-") as tmp:
        try:
            path = Path(client.download_artifacts(run_id, PREDICTIONS, tmp))
        except Exception:  # noqa: BLE001 - a member without predictions is left out, and said so by the caller
            return None
        return _read_predictions(path)


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["probs"], f["y"]


# ---------------------------------------------------------------------------------------------- metrics
def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: over equal-width bins of the top-class confidence, the share of samples
    in the bin times |accuracy - mean confidence| in it (Naeini et al. 2015; Guo et al. 2017)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    hit = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] as Guo et al.
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - conf[inside].mean())
    return float(total)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (probabilities floored at 1e-12)."""
    return float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12)).mean())


def vote_accuracy(members: Sequence[np.ndarray], y: np.ndarray) -> float:
    """Accuracy of the members' majority vote; a tie goes to the lowest class index."""
    votes = np.zeros_like(members[0], dtype=np.int64)
    for p in members:
        votes[np.arange(len(y)), p.argmax(axis=1)] += 1
    return float((votes.argmax(axis=1) == y).mean())


def ensemble_metrics(members: Sequence[np.ndarray], y: np.ndarray, prefix: str = "ensemble/test/") -> dict[str, float]:
    """The averaged members as one model: acc, loss (NLL of the average), ece, vote_acc."""
    mean = np.mean(np.stack(members), axis=0)
    return {f"{prefix}acc": float((mean.argmax(axis=1) == y).mean()), f"{prefix}loss": nll(mean, y),
            f"{prefix}ece": ece(mean, y), f"{prefix}vote_acc": vote_accuracy(members, y)}


def member_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"acc": float((probs.argmax(axis=1) == y).mean()), "loss": nll(probs, y), "ece": ece(probs, y)}


# ---------------------------------------------------------------------------------------------- a parent
def member_of(run) -> int | None:
    value = run.data.tags.get(MEMBER_TAG)
    return int(value) if value is not None and value.isdigit() else None


def aggregate(parent, runs: dict[int, Any]) -> tuple[dict[str, float], list[Path]]:
    """The parent's metrics from its finished member runs, and the averaged predictions to log with them."""
    from dlx.report.stats import mean_ci

    members = sorted((r for r in runs.values() if r.info.status == "FINISHED" and member_of(r) is not None),
                     key=member_of)
    loaded = [(r, p) for r in members if (p := load_predictions(r, parent.client)) is not None]
    if not loaded:
        log.warning("no finished member left test predictions: the ensemble is not evaluated")
        return {}, []
    y = loaded[0][1][1]
    probs = [p for _, (p, _) in loaded]
    out = ensemble_metrics(probs, y)
    out["ensemble/members"] = float(len(probs))
    for name in ("acc", "loss", "ece"):
        s = mean_ci([member_metrics(p, y)[name] for p in probs])
        out[f"members/test/{name}_mean"] = s.mean
        if s.half_width is not None:
            out[f"members/test/{name}_ci95"] = s.half_width
    folder = Path(parent.tracker.spool_dir) / "ensemble"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "test.npz"
    np.savez_compressed(path, probs=np.mean(np.stack(probs), axis=0).astype(np.float32), y=y)
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}, [path]

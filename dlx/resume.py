"""Continuing a run: finding its checkpoint and the configuration it keeps."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from dlx.errors import RunError

# keys a resumed run may change; everything else is the configuration the run started with
RESUME_MUTABLE = ("trainer.epochs", "trainer.device", "trainer.progress", "trainer.resume", "tracking.")


def find_checkpoint(resume: str, tracking_cfg: dict, run_dir: Path) -> Path:
    """A checkpoint path, or the last checkpoint of an MLflow run given by its id."""
    path = Path(resume).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "last.pt").is_file():
        return path / "last.pt"
    if not tracking_cfg["enabled"] or os.sep in resume or resume.endswith(".pt"):
        raise RunError(f"trainer.resume={resume}: no such checkpoint file", 2)
    from dlx.tracking import open_store, resolve_uri

    uri, _ = resolve_uri(tracking_cfg["uri"], tracking_cfg["artifact_location"])
    client, _ = open_store(uri, tracking_cfg["experiment"])
    try:
        run = client.get_run(resume)
    except Exception:
        raise RunError(f"trainer.resume={resume}: neither a checkpoint file nor a run id in {uri}", 2) from None
    found = last_checkpoint_of(run, uri, run_dir)
    if found is None:
        raise RunError(f"trainer.resume={resume}: run {resume} has no checkpoint to resume from", 2)
    return found


def last_checkpoint_of(run, tracking_uri: str, dst: Path | None = None) -> Path | None:
    """The last.pt of an MLflow run: where the run wrote it (its dlx.checkpoint_dir tag, or its local
    artifact directory), else downloaded from its artifacts into `dst` (a new temporary folder when
    None); None when it has none."""
    from dlx.tracking import local_path

    candidates = [Path(run.data.tags["dlx.checkpoint_dir"]) / "last.pt"] if "dlx.checkpoint_dir" in run.data.tags else []
    local = local_path(run.info.artifact_uri)
    if local is not None:
        candidates.append(local / "checkpoints" / "last.pt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    try:
        import tempfile

        from mlflow.artifacts import download_artifacts

        return Path(download_artifacts(run_id=run.info.run_id, artifact_path="checkpoints/last.pt",
                                       dst_path=str(dst or tempfile.mkdtemp(prefix="dlx-checkpoint-")),
                                       tracking_uri=tracking_uri))
    except Exception:  # noqa: BLE001 - MLflow raises its own errors for a missing artifact
        return None


def resumed_config(saved: dict, current: dict, overrides: list[str]) -> dict:
    """The saved config, with the few keys a resumed run may change taken from this command."""
    bad = [o for o in overrides if not o.lstrip("+~").startswith(RESUME_MUTABLE)]
    if bad:
        raise RunError(
            f"a resumed run keeps the configuration it started with; only trainer.epochs, trainer.device, "
            f"trainer.progress and tracking.* may change (got: {' '.join(bad)})", 2)
    cfg = OmegaConf.create(saved)
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        OmegaConf.update(cfg, key, OmegaConf.select(OmegaConf.create(current), key), force_add=True)
    return OmegaConf.to_container(cfg)

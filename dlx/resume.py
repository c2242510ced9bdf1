"""Continuing a run: finding its checkpoint, checking that the file, the run and the store belong
together, and the configuration the run keeps.

Nothing read back is trusted: a checkpoint is checked to be one dlx wrote, its configuration goes
through the checks of a new run, and the run it names must be in this store, keep its checkpoints where
the file is, and not be finished unless it is asked to train longer. Each failure is a user error (exit 2)
raised before any data loads and before the run is reopened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dlx.config import ConfigError
from dlx.errors import RunError

log = logging.getLogger("dlx")

# the keys a resumed run may change, each with everything below it; the rest is the configuration the
# run started with
# the processes a run trains on may change too: with trainer.batch_size the global batch and each rank taking
# every world-th sample of the same order, 1, 2 or 4 ranks step through the same batches (dlx.distributed)
RESUME_MUTABLE = ("trainer.epochs", "trainer.device", "trainer.progress", "trainer.resume", "tracking",
                  "trainer.devices", "trainer.nodes", "trainer.strategy", "trainer.rdzv_endpoint", "trainer.node_rank")
MAX_CHANGES_SHOWN = 6  # a changed group lists many keys: the message names this many, then counts
_ABSENT = object()


def may_change(key: str) -> bool:
    return any(key == m or key.startswith(m + ".") for m in RESUME_MUTABLE)


def prepare_resume(current: dict, overrides: list[str], run_dir: Path, composed: dict) -> tuple[dict, dict]:
    """(the configuration to train with, the checkpoint) for `trainer.resume` in `current`, the resolved
    configuration this command composed (`composed`: the same before its interpolations were resolved);
    RunError (exit 2) when anything does not add up."""
    from dlx.checkpoint import CheckpointError, read_checkpoint

    resume = current["trainer"]["resume"]
    where = f"trainer.resume={resume}"
    path, run = find_checkpoint(resume, current["tracking"], run_dir)
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as exc:
        raise RunError(f"{where}: {path} is not a dlx checkpoint: {exc}; resume from the last.pt or best.pt "
                       "that a dlx run wrote, or from its run id", 2) from None
    try:
        checkpoint["config"] = _plain(typed(checkpoint["config"], current))
        config = resumed_config(checkpoint["config"], current, overrides, follows=interpolated(composed))
    except ConfigError as exc:
        raise RunError(f"{where}: {one_line(str(exc))}", 2) from None
    if config["trainer"]["epochs"] < checkpoint["epoch"]:
        raise RunError(f"{where}: the checkpoint is at epoch {checkpoint['epoch']}, past trainer.epochs="
                       f"{config['trainer']['epochs']}: allowed trainer.epochs >= {checkpoint['epoch']}", 2)
    if config["tracking"]["enabled"] and checkpoint["run_id"] is not None:
        check_run(where, path, checkpoint, run, config)
    log.info("resuming from %s (epoch %d, step %d)", path, checkpoint["epoch"], checkpoint["step"])
    return config, checkpoint


def find_checkpoint(resume: str, tracking_cfg: dict, run_dir: Path):
    """(checkpoint path, MLflow run or None): a checkpoint file or folder, or the last checkpoint of the
    run whose id `resume` is."""
    path = Path(resume).expanduser()
    if path.is_file():
        return path, None
    if path.is_dir() and (path / "last.pt").is_file():
        return path / "last.pt", None
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
    return found, run


def checkpoint_dirs(run) -> list[Path]:
    """Where a run writes its checkpoints: its dlx.checkpoint_dir tag, its local artifact directory, and
    the run folder of a run whose artifacts are remote."""
    from dlx.tracking import local_path

    tags = run.data.tags
    dirs = [Path(tags["dlx.checkpoint_dir"])] if "dlx.checkpoint_dir" in tags else []
    local = local_path(run.info.artifact_uri)
    if local is not None:
        dirs.append(local / "checkpoints")
    if "dlx.run_dir" in tags:
        dirs.append(Path(tags["dlx.run_dir"]) / "checkpoints")
    return dirs


def last_checkpoint_of(run, tracking_uri: str, dst: Path | None = None) -> Path | None:
    """The last.pt of an MLflow run: where the run wrote it, else downloaded from its artifacts into
    `dst` (a new temporary folder when None); None when it has none."""
    for directory in checkpoint_dirs(run):
        if (directory / "last.pt").is_file():
            return directory / "last.pt"
    try:
        import tempfile

        from mlflow.artifacts import download_artifacts

        return Path(download_artifacts(run_id=run.info.run_id, artifact_path="checkpoints/last.pt",
                                       dst_path=str(dst or tempfile.mkdtemp(prefix="dlx-checkpoint-")),
                                       tracking_uri=tracking_uri))
    except Exception:  # noqa: BLE001 - MLflow raises its own errors for a missing artifact
        return None


def check_run(where: str, path: Path, checkpoint: dict, run, config: dict) -> None:
    """The run a checkpoint names is in this store, is the run that wrote the file, and is not FINISHED
    unless this command trains it longer. `run` is the run `trainer.resume` named by id, or None for a
    path (the run is then looked up by the id inside the file)."""
    from mlflow.exceptions import MlflowException

    from dlx.tracking import open_store, resolve_uri

    named = checkpoint["run_id"]
    if run is None:
        uri, _ = resolve_uri(config["tracking"]["uri"], config["tracking"]["artifact_location"])
        client, _ = open_store(uri, config["tracking"]["experiment"])
        try:
            run = client.get_run(named)
        except MlflowException:
            raise RunError(f"{where}: the checkpoint belongs to run {named}, which is not in the store {uri}; "
                           "resume in the store the run was tracked in (tracking.uri=...)", 2) from None
        homes = checkpoint_dirs(run)
        if path.resolve().parent not in {d.resolve() for d in homes}:
            raise RunError(f"{where}: the checkpoint names run {named}, which keeps its checkpoints in "
                           f"{homes[0] if homes else 'none of its folders'}, not beside this file (a copy, or an "
                           f"edited run id); resume with trainer.resume={named}", 2)
    elif named != run.info.run_id:
        raise RunError(f"{where}: the checkpoint {path} of run {run.info.run_id} names run {named} (a copy, or an "
                       "edited run id); resume only from a checkpoint its own run wrote", 2)
    if run.info.lifecycle_stage == "deleted":
        raise RunError(f"{where}: run {named} is deleted; restore it first (mlflow runs restore)", 2)
    if run.info.status == "FINISHED":
        done = max(checkpoint["config"]["trainer"]["epochs"], checkpoint["epoch"])
        if config["trainer"]["epochs"] <= done:
            raise RunError(f"{where}: run {named} is FINISHED (trainer.epochs={done}); resuming it only trains "
                           f"it longer: add trainer.epochs=N with N > {done}", 2)


# ---------------------------------------------------------------------------------------------- config
def resumed_config(saved: dict, current: dict, overrides: list[str], follows: set[str] = frozenset()) -> dict:
    """The configuration a resumed run trains with: the saved one, checked like a new run's, with the keys
    of RESUME_MUTABLE that this command names taken from `current`.

    Naming any other key is fine while its value stays what the run started with, so the original command
    can be repeated with `trainer.resume=...` appended; a different value raises ConfigError with each
    changed key, old -> new. A group (`optimizer=sgd`) names every key below it, except those in `follows`,
    which take their value from another key (model.dropout: ${regularization.dropout}) that is compared
    where this command names it."""
    kept = _plain(typed(saved, current))
    changes = []
    for override in overrides:
        key = _named_key(override)
        old, new = _leaves(kept, key), _leaves(current, key)
        changed = [(override, leaf, old.get(leaf, _ABSENT), new.get(leaf, _ABSENT))
                   for leaf in sorted(old.keys() | new.keys())
                   if not (may_change(leaf) or leaf in follows) and old.get(leaf, _ABSENT) != new.get(leaf, _ABSENT)]
        # another option of a group (optimizer=sgd on an adam run): its name says it, not each of its keys
        changes += [c for c in changed if c[1] == f"{key}._target_"] or changed
    if changes:
        raise ConfigError(f"a resumed run keeps the configuration it started with; only {_mutable_text()} may "
                          f"change, and this command changes {_describe(changes)}")
    cfg, now = OmegaConf.create(kept), OmegaConf.create(current)
    for override in overrides:
        key = _named_key(override)
        for name in [key] if may_change(key) else [m for m in RESUME_MUTABLE if m.startswith(key + ".")]:
            OmegaConf.update(cfg, name, OmegaConf.select(now, name), force_add=True)
    final = typed(_plain(cfg), current)
    from dlx.compose import check_config

    check_config(final)
    return _plain(final)


def typed(config: dict, named: Mapping | None = None) -> DictConfig:
    """`config`, resolved, merged into dlx's schema (dlx.config), each component group's into the schema of its
    `_target_`: the type and key checks that composing a new run's configuration applies. A `_target_` that dlx
    does not ship is refused unless `named` (this command's configuration) names the same one: a
    configuration read back from a file or a store never chooses the code that runs."""
    from omegaconf.errors import OmegaConfBaseException

    from dlx.components import GROUPS, group_spec, trusted_targets, untrusted
    from dlx.config import Config
    from dlx.options import schema as option_schema

    held = sorted(interpolated(config))
    if held:  # a run stores its configuration resolved: ${oc.env:...} in a file would read this machine's secrets
        raise ConfigError(f"invalid configuration: {held[0]}={_leaves(config, held[0])[held[0]]} is an interpolation; "
                          "a stored configuration holds resolved values only")
    foreign = untrusted(config, named or {})
    if foreign:
        raise ConfigError(f"the stored configuration names code that this command does not: {', '.join(foreign)}; "
                          "name it on the command line or in --config-dir to run it")
    structured = OmegaConf.structured(Config)
    for group in GROUPS:
        node = config.get(group)
        target = node.get("_target_") if isinstance(node, dict) else None
        if not isinstance(target, str):
            raise ConfigError(f"invalid configuration: {group}._target_ is missing")
        if target in trusted_targets():
            structured[group] = OmegaConf.structured(option_schema(group_spec(group, target), target=target,
                                                                   name=group))
    try:
        return OmegaConf.merge(structured, config)
    except OmegaConfBaseException as exc:
        detail = one_line(str(exc).split("\n    full_key")[0])
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"invalid configuration: {key}: {detail}" if key else f"invalid configuration: {detail}") \
            from None


def interpolated(config: dict) -> set[str]:
    """The dotted keys of an unresolved configuration whose values are interpolations."""
    from dlx.tracking import flatten

    return {k for k, v in flatten(config).items() if isinstance(v, str) and "${" in v}


def one_line(message: str) -> str:
    """A message of several lines (dlx.validate lists every problem) as one."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) < 2:
        return lines[0] if lines else message
    return f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"


def _mutable_text() -> str:
    names = [m if "." in m else f"{m}.*" for m in RESUME_MUTABLE]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _describe(changes: list[tuple]) -> str:
    shown, parts = changes[:MAX_CHANGES_SHOWN], []
    for override in dict.fromkeys(c[0] for c in shown):
        leaves = ", ".join(f"{leaf}: {_show(old)} -> {_show(new)}" for o, leaf, old, new in shown if o == override)
        parts.append(f"{override} ({leaves})")
    more = len(changes) - len(shown)
    return "; ".join(parts) + (f"; and {more} more keys" if more else "")


def _show(value) -> str:
    return "(absent)" if value is _ABSENT else "null" if value is None else str(value)


def _named_key(override: str) -> str:
    """The config key an override names: `+a.b=1` -> a.b, `~a` -> a, `model=cnn` -> model."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def _leaves(tree: dict, key: str) -> dict:
    """{dotted key: value} of every leaf at or below `key` in `tree`; {} when it has no such key."""
    from dlx.tracking import flatten

    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return flatten(node, key)


def _plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else cfg


# ---------------------------------------------------------------------------------------------- the run
def record_resumed(tracker, cfg: dict, saved: dict, run_dir: Path) -> None:
    """Record in the reopened run what it trains with now.

    MLflow params are write-once (its stores refuse "Changing param values", and no public API deletes
    one), so a key this resume changed (trainer.epochs 200 -> 25) keeps its first value as a param and gets
    its new one in the tag `dlx.param.<key>`; keys the run lacks as params are logged as params; and
    config.yaml is logged again, resolved as the run now trains."""
    from dlx.redact import redact
    from dlx.tracking import flatten

    old, new = flatten(saved), flatten(cfg)
    changed = {f"dlx.param.{k}": "null" if v is None else v for k, v in new.items()
               if may_change(k) and old.get(k, _ABSENT) != v}
    if changed:
        tracker.set_tags(changed)
    logged = tracker.client.get_run(tracker.run_id).data.params
    missing = {k: v for k, v in new.items() if k not in logged}
    if missing:
        tracker.log_params(missing)
    config_path = run_dir / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(OmegaConf.create(redact(cfg))))
    tracker.log_artifact(config_path)

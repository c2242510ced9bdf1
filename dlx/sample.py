"""`dlx sample <run id>`: text from a character language model run (dataset=text), from its best checkpoint.

The run's data.json (logged by every run) says what the model was built for and spells each token id; the
checkpoint's configuration names the model, which is rebuilt only when dlx ships it: a configuration read back
from a store never chooses the code that runs. Generation is autoregressive: the last input_shape[0] tokens go
in, the output at the last position is the next token's logits, divided by the temperature and sampled
(temperature 0: the most likely token), with a seeded generator. Id 0 (unknown, padding) is never generated.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dlx.errors import RunError


@dataclass(frozen=True)
class Data:
    """What build.build_model reads of a run's data, rebuilt from its data.json."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    task: object  # dlx.tasks.Task


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlx sample", description="Generate text from a character language model "
                                "run (dataset=text) with its best checkpoint.")
    p.add_argument("run_id", help="the MLflow run id of a dlx train run with dataset=text")
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a new line)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="divides the logits before sampling; 0 takes the most likely character (default 0.8)")
    p.add_argument("--length", type=int, default=300, help="characters to generate (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling: the same seed gives the same text "
                   "(default 0)")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or outputs/mlflow.db)")
    return p


def sample_main(args: list[str]) -> int:
    ns = parser().parse_args(args)
    try:
        text = sample(ns.run_id, prompt=ns.prompt, temperature=ns.temperature, length=ns.length, seed=ns.seed,
                      uri=ns.uri)
    except RunError as exc:
        print(f"dlx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    sys.stdout.write(text + "\n")
    return 0


def sample(run_id: str, *, prompt: str, temperature: float, length: int, seed: int, uri: str | None = None) -> str:
    """The prompt and `length` generated characters; RunError (exit 2) for a run that cannot be sampled."""
    if not 0 <= temperature < math.inf:
        raise RunError(f"--temperature={temperature}: allowed a finite number >= 0 (0 takes the most likely "
                       "character)", 2)
    if length < 0:
        raise RunError(f"--length={length}: allowed >= 0", 2)
    if not prompt:
        raise RunError("--prompt is empty: give at least one character to continue", 2)
    import torch

    model, data = load(run_id, uri)
    tokens = data.task.tokens
    ids = {token: i for i, token in enumerate(tokens) if i != 0}
    unknown = sorted({ch for ch in prompt if ch not in ids})
    if unknown:
        shown = ", ".join(repr(ch) for ch in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        print(f"dlx sample: warning: the prompt's {shown} are not in the run's vocabulary: read as id 0 (unknown)",
              file=sys.stderr)
    context = [ids.get(ch, 0) for ch in prompt]
    window = data.input_shape[0]
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(length):
            x = torch.tensor([context[-window:]], dtype=torch.int64)
            logits = model(x)[0, -1].float()
            logits[0] = -torch.inf  # unknown or padding: not a character to print
            if temperature == 0:
                token = int(logits.argmax())
            else:
                token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
            context.append(token)
            out.append(tokens[token])
    return prompt + "".join(out)


def load(run_id: str, uri: str | None = None):
    """(the run's model in eval mode on the CPU with its best weights, Data); RunError (exit 2) when the run does
    not exist, is not a character language model, or has no checkpoint."""
    from dlx.checkpoint import CheckpointError, read_checkpoint
    from dlx.tracking import resolve_uri

    uri, _ = resolve_uri(uri)
    run = _run(run_id, uri)
    with tempfile.TemporaryDirectory(prefix="dlx-sample-") as tmp:
        data = _data(run, uri, Path(tmp))
        path = _best_checkpoint(run, uri, Path(tmp))
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as exc:
            raise RunError(f"run {run_id}: {path} is not a dlx checkpoint: {exc}", 2) from None
    return _model(run_id, checkpoint, data), data


def _run(run_id: str, uri: str):
    from mlflow.exceptions import MlflowException

    from dlx.store import open_client, sqlite_file

    db = sqlite_file(uri)
    if db is not None and not db.exists():
        raise RunError(f"run {run_id}: no MLflow store at {uri}; give the store the run is in with --uri", 2)
    try:
        return open_client(uri).get_run(run_id)
    except MlflowException:
        raise RunError(f"run {run_id}: no such run in {uri} (dlx runs lists them)", 2) from None


def _artifact(run, uri: str, name: str, dst: Path) -> Path | None:
    """A run's artifact as a local file, where the run wrote it or downloaded into dst; None when it has none."""
    import os

    from dlx.tracking import local_path

    local = local_path(run.info.artifact_uri)
    if local is not None:
        return local / name if (local / name).is_file() else None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is for dlx's one line
    try:
        from mlflow.artifacts import download_artifacts

        return Path(download_artifacts(run_id=run.info.run_id, artifact_path=name, dst_path=str(dst),
                                       tracking_uri=uri))
    except Exception:  # noqa: BLE001 - MLflow raises its own errors for a missing artifact
        return None


def _data(run, uri: str, dst: Path) -> Data:
    from dlx.tasks import Target, Task

    run_id = run.info.run_id
    path = _artifact(run, uri, "data.json", dst)
    if path is None:
        raise RunError(f"run {run_id} has no data.json: it was trained by a dlx that did not record its data; "
                       "train it again to sample from it", 2)
    record = json.loads(path.read_text(encoding="utf-8"))
    target, tokens = record.get("target"), record.get("tokens")
    if target != Target.steps.value or not tokens or not record.get("vocab"):
        raise RunError(f"run {run_id} is not a character language model (its dataset {record.get('name')} has "
                       f"{target} targets{'' if tokens else ' and no tokens'}): dlx sample needs a run with "
                       "dataset=text", 2)
    task = Task(target=Target.steps, vocab=int(record["vocab"]), tokens=tuple(tokens),
                target_len=record.get("target_len"))
    return Data(name=record.get("name") or "dataset", input_shape=tuple(record["input_shape"]),
                num_classes=int(record["num_classes"]), task=task)


def _best_checkpoint(run, uri: str, dst: Path) -> Path:
    """best.pt where the run wrote its checkpoints (dlx.resume.checkpoint_dirs), else from its artifacts."""
    from dlx.resume import checkpoint_dirs

    for directory in checkpoint_dirs(run):
        if (directory / "best.pt").is_file():
            return directory / "best.pt"
    found = _artifact(run, uri, "checkpoints/best.pt", dst)
    if found is None:
        raise RunError(f"run {run.info.run_id} has no checkpoint to sample from (checkpoints/best.pt); train with "
                       "trainer.checkpoint.enabled=true", 2)
    return found


def _model(run_id: str, checkpoint: dict, data: Data):
    """The model the checkpoint's configuration names, built as dlx train builds it, with the checkpoint's weights."""
    from dlx.build import build_model
    from dlx.components import untrusted
    from dlx.config import ConfigError

    cfg = checkpoint["config"]
    foreign = untrusted({"model": cfg.get("model") or {}}, {})
    if foreign:
        raise RunError(f"run {run_id}: its configuration names {foreign[0]}, which dlx does not ship; dlx sample "
                       "builds dlx's own models only (a configuration read back from a store never chooses the code "
                       "that runs)", 2)
    try:
        model = build_model(cfg, data)
        model.load_state_dict(checkpoint["trainer"]["model"])
    except (ConfigError, RuntimeError) as exc:
        raise RunError(f"run {run_id}: its model cannot be rebuilt from the checkpoint: {str(exc).splitlines()[0]}",
                       2) from None
    return model.eval()

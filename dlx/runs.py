"""`dlx runs` and `dlx ui`: looking at what the tracking store holds."""

from __future__ import annotations

import sys
from pathlib import Path

from dlx.tracking import resolve_uri

KEY_PARAMS = ("dataset.name", "model.name", "optimizer.name", "optimizer.lr", "trainer.epochs", "trainer.seed")
KEY_METRICS = ("val/acc", "test/acc", "test/loss")


def list_runs(*, uri: str | None, experiment: str | None, limit: int) -> int:
    from rich.console import Console
    from rich.table import Table

    uri, _ = resolve_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"dlx runs: no MLflow store at {uri}; `dlx train` creates it", file=sys.stderr)
        return 1
    client = _client(uri)
    experiments = client.search_experiments()
    if experiment:
        known = sorted(e.name for e in experiments)
        experiments = [e for e in experiments if e.name == experiment]
        if not experiments:
            print(f"dlx runs: no experiment '{experiment}' in {uri}; experiments: {', '.join(known) or 'none'}",
                  file=sys.stderr)
            return 1
    names = {e.experiment_id: e.name for e in experiments}
    runs = client.search_runs(list(names), order_by=["attributes.start_time DESC"], max_results=limit)
    table = Table(title=f"runs in {uri}", title_justify="left")
    for col in ("run id", "name", "experiment", "status", *[k.split(".")[0] if k.endswith(".name") else k
                                                          for k in KEY_PARAMS], *KEY_METRICS):
        table.add_column(col, no_wrap=col == "run id")
    for r in runs:
        p, m = r.data.params, r.data.metrics
        metrics = [f"{m[k]:.4f}" if k in m else "" for k in KEY_METRICS]
        table.add_row(r.info.run_id, r.info.run_name or "", names.get(r.info.experiment_id, ""), r.info.status,
                      *[p.get(k, "") for k in KEY_PARAMS], *metrics)
    if not runs:
        print(f"no runs in {uri}", file=sys.stderr)
        return 0
    console = Console()
    if console.is_terminal:
        width = max(160, console.width)
    else:  # piped or redirected: never cut a run id, name or header
        width = max(console.width, Console(width=100_000).measure(table).maximum)
    Console(width=width).print(table)
    return 0


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ui_command(*, uri: str | None, host: str, port: int, workers: int = 1) -> list[str]:
    """The `mlflow ui` command line for the store; the default store serves outputs/mlartifacts.

    One server worker: MLflow's default of 4 took 36-47 s to answer on 2 cores, one about 12 s.
    """
    uri, artifacts = resolve_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    return cmd

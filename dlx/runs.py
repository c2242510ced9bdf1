"""`dlx runs` and `dlx ui`: looking at what the tracking store holds."""

from __future__ import annotations

import sys

from dlx.tracking import resolve_uri

KEY_PARAMS = ("dataset.name", "model.name", "optimizer.name", "optimizer.lr", "trainer.epochs", "trainer.seed")
KEY_METRICS = ("val/acc", "test/acc", "test/loss")


def list_runs(*, uri: str | None, experiment: str | None, limit: int) -> int:
    from rich.console import Console
    from rich.table import Table

    from dlx.tracking import open_store

    uri, _ = resolve_uri(uri)
    client, _ = open_store(uri, experiment or "dlx") if experiment else (_client(uri), None)
    experiments = client.search_experiments()
    if experiment:
        experiments = [e for e in experiments if e.name == experiment]
    if not experiments:
        print(f"no experiments in {uri}", file=sys.stderr)
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
    Console(width=max(160, Console().width)).print(table)
    return 0


def _client(uri: str):
    from mlflow import MlflowClient

    from dlx.tracking import open_store

    if uri.startswith("sqlite:///"):  # creates the schema on first use, like a training run would
        return open_store(uri, "dlx")[0]
    return MlflowClient(tracking_uri=uri)


def ui_command(*, uri: str | None, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for the store; the default store serves outputs/mlartifacts."""
    uri, artifacts = resolve_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    return cmd

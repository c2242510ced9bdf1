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
    from dlx.spool import replay_pending
    from dlx.store import open_client

    client = open_client(uri)  # the schema checked under the store's lock
    replay_pending(uri, client)  # what runs could not write to this store before: listed complete
    return client


# addresses that serve this machine only; anything else needs --expose
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def ui_command(*, uri: str | None, host: str, port: int, workers: int = 1, expose: bool = False,
               auth: bool = False, allowed_hosts: str | None = None) -> list[str]:
    """The `mlflow ui` command line for the store; the default store serves outputs/mlartifacts.
    Raises ConfigError for a host beyond loopback without `expose`, or `auth` without what it needs.

    The UI reads and changes every run (search, tags, deletes) without a login: on 127.0.0.1 only this
    machine's users reach it. `auth` runs MLflow's own basic-auth app (`--app-name basic-auth`), which
    needs the Flask-WTF package and a static secret key (MLFLOW_FLASK_SERVER_SECRET_KEY).
    One server worker: MLflow's default of 4 took 36-47 s to answer on 2 cores, one about 12 s.
    """
    check_serving(host, expose, auth)
    uri, artifacts = resolve_uri(uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def add_serving_arguments(p, *, auth_help: str, allowed_help: str) -> None:
    """The options `dlx ui` and `dlx server` share: where the server listens, who may reach it, its workers."""
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: only this machine; another "
                   "address needs --expose)")
    p.add_argument("--expose", action="store_true", help="allow a --host beyond this machine, e.g. 0.0.0.0: "
                   "whoever reaches the port can read and change every run")
    p.add_argument("--auth", action="store_true", help=auth_help)
    p.add_argument("--allowed-hosts", default=None, help=allowed_help)
    # one worker serves many clients (each request runs in a thread of it); MLflow's default of 4 took 36-47 s
    # to start on 2 cores
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default: 1)")


def check_serving(host: str, expose: bool, auth: bool) -> None:
    """Raise ConfigError for a host beyond loopback without `expose`, or `auth` without what it needs (`dlx ui`
    and `dlx server`)."""
    from dlx.config import ConfigError

    if not is_loopback(host) and not expose:
        raise ConfigError(f"--host {host}: serving the store beyond this machine needs --expose (whoever reaches "
                          f"the port can read and change every run; --auth adds MLflow's login): allowed without "
                          f"--expose: {', '.join(LOOPBACK_HOSTS)}")
    if auth:
        from importlib.util import find_spec

        if find_spec("flask_wtf") is None:
            raise ConfigError("--auth: MLflow's basic-auth app needs the Flask-WTF package, which is not "
                              "installed: pip install 'mlflow[auth]'")


def exposure_warning(host: str, port: int, auth: bool, prog: str = "dlx ui") -> str | None:
    """What `dlx ui` or `dlx server` says before serving beyond loopback; None on loopback."""
    if is_loopback(host):
        return None
    if auth:
        return (f"{prog}: warning: serving the store to the network on {host}:{port}, behind MLflow's basic-auth "
                f"login (first start: set MLFLOW_AUTH_ADMIN_PASSWORD)")
    return (f"{prog}: warning: serving the store to the network on {host}:{port} WITHOUT a login: whoever reaches "
            f"it can read, tag and delete every run (add --auth for MLflow's basic-auth login, --allowed-hosts to "
            f"limit the Host names it answers)")

"""`dlx server`: a team's tracking store, MLflow's own `mlflow server` with a database backend and proxied
artifacts, so clients need nothing but its HTTP address (`tracking=server tracking.uri=http://HOST:PORT`).

dlx only checks what it is given (the backend's address and driver, the artifact folder, the port, the
exposure) so that a mistake is one line and exit 2 instead of a traceback from the server's workers, then
hands the process to `mlflow server`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from dlx.config import ConfigError
from dlx.runs import add_serving_arguments

SERVER_ROOT = Path("outputs") / "server"  # the default store of `dlx server`: outputs/server/{mlflow.db,mlartifacts}
DEFAULT_PORT = 5000
# the databases `mlflow server` runs on (through SQLAlchemy)
DATABASES = ("sqlite", "postgresql", "mysql", "mssql")
# the package that installs each driver module SQLAlchemy imports; its default for postgresql:// is psycopg
# (version 3) since SQLAlchemy 2.1
DRIVER_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                   "pymysql": "PyMySQL", "pyodbc": "pyodbc", "pg8000": "pg8000", "asyncpg": "asyncpg"}


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line."""

    def error(self, message: str):
        print(f"dlx: error: {message} (dlx server --help lists the options)", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dlx server", description="Start an MLflow tracking server for a team: runs in a database, "
                "artifacts uploaded through the server. Log to it with: dlx train tracking=server "
                "tracking.uri=http://HOST:PORT")
    p.add_argument("--backend-store-uri", default=None, help="where runs are kept: sqlite:///PATH, "
                   "postgresql://USER:PASSWORD@HOST:PORT/DB, mysql://... or mssql://... (default: "
                   f"sqlite:///{SERVER_ROOT}/mlflow.db)")
    p.add_argument("--artifacts-destination", default=None, help="where the server keeps uploaded artifacts: "
                   f"a folder or a URI such as s3://bucket/path (default: {SERVER_ROOT}/mlartifacts)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    add_serving_arguments(p, auth_help="MLflow's basic-auth login (needs mlflow[auth]; set MLFLOW_AUTH_ADMIN_PASSWORD "
                          "on the first start)", allowed_help="Host headers the server answers, comma-separated "
                          "(MLflow's default: localhost and private addresses)")
    return p


def backend_problem(uri: str) -> str | None:
    """What keeps `uri` from being the server's database, without changing anything; None when it may be."""
    from dlx.store_check import probe_backend

    scheme = urlparse(uri).scheme.lower()
    dialect = scheme.split("+")[0]
    if dialect not in DATABASES or (dialect == "sqlite" and not uri.startswith("sqlite:///")):
        return ("not a database MLflow's server runs on: allowed sqlite:///PATH, postgresql://USER:PASSWORD@HOST:"
                "PORT/DB, mysql://..., mssql://... (a driver may follow the name: postgresql+psycopg://)")
    if dialect != "sqlite":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(uri).get_dialect().import_dbapi()
        except (ArgumentError, NoSuchModuleError) as exc:
            return f"not a database address SQLAlchemy reads ({exc})"
        except ImportError as exc:
            module = (exc.name or "").split(".")[0]
            return f"its driver is not installed ({exc}): pip install {DRIVER_PACKAGES.get(module, module)}"
    problem = probe_backend(uri)
    if problem or dialect == "sqlite":
        return problem
    return _login_problem(uri)


def _login_problem(uri: str) -> str | None:
    """Log in once (the database server answered): a wrong database, user or password is said here, in one
    line, rather than in the traceback of a server that failed to start."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    engine = create_engine(uri, poolclass=NullPool)
    try:
        with engine.connect():
            return None
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        said = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
        return f"cannot log in to the database ({said[:300] or type(cause).__name__})"
    finally:
        engine.dispose()


def server_command(*, backend_store_uri: str | None, artifacts_destination: str | None, host: str, port: int,
                   workers: int = 1, expose: bool = False, auth: bool = False,
                   allowed_hosts: str | None = None) -> list[str]:
    """The `mlflow server` command line; raises ConfigError naming the option at fault."""
    from dlx.redact import redact_text
    from dlx.runs import check_serving
    from dlx.tracking import default_store

    check_serving(host, expose, auth)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: allowed 1 to 65535")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: allowed 1 or more")
    default_uri, default_artifacts = default_store(SERVER_ROOT)
    uri = backend_store_uri or default_uri
    problem = backend_problem(uri)
    if problem:
        raise ConfigError(f"--backend-store-uri {redact_text(uri)}: {problem}")
    artifacts = artifacts_destination or default_artifacts
    if "://" not in artifacts:  # a folder: MLflow's server needs it absolute, whatever its working directory
        artifacts = Path(artifacts).resolve().as_uri()
    local = urlparse(artifacts)
    if local.scheme == "file":
        problem = _folder_problem(Path(local.path))
        if problem:
            raise ConfigError(f"--artifacts-destination {artifacts_destination or local.path}: {problem}")
    problem = _port_problem(host, port)
    if problem:
        raise ConfigError(f"--port {port}: {problem}")
    db = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else None
    if db:
        Path(db).parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--serve-artifacts",
           "--artifacts-destination", artifacts, "--host", host, "--port", str(port), "--workers", str(workers)]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def _folder_problem(folder: Path) -> str | None:
    from dlx.store_check import creatable

    if folder.exists() and not folder.is_dir():
        return "is a file: allowed a folder or a URI (s3://bucket/path)"
    return creatable(folder)


def _port_problem(host: str, port: int) -> str | None:
    """Whether the port is taken, asked by binding it once: mlflow server would fail later, in a worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: closed connections
            s.bind((host.strip("[]"), port))  # of a server just stopped do not count, a listening one does
    except OSError as exc:
        return f"cannot serve on {host}:{port} ({exc.strerror or exc}): choose another --port"
    return None


def client_address(host: str, port: int) -> str:
    """The address clients use: a wildcard bind is reached through this machine's name."""
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def ensure_auth_secret() -> None:
    """MLflow's basic-auth app needs a static CSRF key shared by its workers: one per server start."""
    if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        import secrets

        os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(32)


def server_main(args: list[str]) -> int:
    from dlx.redact import redact_text
    from dlx.runs import exposure_warning

    try:
        ns = parser().parse_args(args)
    except SystemExit as exc:  # --help, or a usage error already said in one line
        return exc.code if isinstance(exc.code, int) else 2
    try:
        cmd = server_command(backend_store_uri=ns.backend_store_uri, artifacts_destination=ns.artifacts_destination,
                             host=ns.host, port=ns.port, workers=ns.workers, expose=ns.expose, auth=ns.auth,
                             allowed_hosts=ns.allowed_hosts)
    except ConfigError as exc:
        print(f"dlx: error: {exc}", file=sys.stderr)
        return 2
    if ns.auth:
        ensure_auth_secret()
    warning = exposure_warning(ns.host, ns.port, ns.auth, prog="dlx server")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    address = client_address(ns.host, ns.port)
    backend = cmd[cmd.index("--backend-store-uri") + 1]
    artifacts = cmd[cmd.index("--artifacts-destination") + 1]
    print(f"dlx server: MLflow tracking server at {address}: runs in {redact_text(backend)}, artifacts in "
          f"{artifacts} (Ctrl-C stops it)\nlog to it with: dlx train tracking=server tracking.uri={address}",
          flush=True)
    # MLflow's job runner (GenAI scoring and trace archival, none of it used by training runs) is eight more
    # processes that import MLflow; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true brings it back
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execvp(cmd[0], cmd)
    return 0  # not reached

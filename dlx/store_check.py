"""Can the tracking store be used? Checked before any data loads, so a wrong address costs seconds.

`problems` judges the address and the experiment name without touching anything (dlx.validate runs it
with every other rule); `probe` asks the store itself, within a few seconds, just before a run or a
sweep starts. Without the probe, a dead server at http://127.0.0.1:9 cost 251 s of MLflow's retries
and a 117-line traceback, after the data had loaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from dlx.config import ConfigError
from dlx.redact import redact_text

# MLflow's MAX_EXPERIMENT_NAME_LENGTH (mlflow.utils.validation, 3.17.2); importing it here would load
# all of MLflow (~4 s) before the pre-flight could answer, so a test holds the two equal instead
MAX_EXPERIMENT_NAME = 500
PROBE_TIMEOUT_S = 5.0

# the schemes MLflow 3 opens as a tracking store, with the form each takes. MLflow also reads a bare
# path or file: as its file store, which it refuses ("maintenance mode") unless MLFLOW_ALLOW_FILE_STORE
# is true: so does dlx, and it names the sqlite:/// form to use instead
SCHEMES = {"sqlite": "sqlite:///PATH", "http": "http://HOST:PORT", "https": "https://HOST",
           "postgresql": "postgresql://...", "mysql": "mysql://...", "mssql": "mssql://...",
           "databricks": "databricks"}
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def allowed() -> str:
    plugins = sorted(ep.name for ep in _plugin_stores())
    return ", ".join([*SCHEMES.values(), *(f"{p}:// (plugin)" for p in plugins)])


def _plugin_stores():
    """Stores that installed MLflow plugins add (MLflow's documented `mlflow.tracking_store` entry point)."""
    from importlib.metadata import entry_points

    return entry_points(group="mlflow.tracking_store")


def tracking_address(tracking) -> tuple[str, str]:
    """(the key to name in messages, the URI dlx will open) for a tracking config node or dict."""
    from dlx.tracking import resolve_uri

    uri = tracking["uri"]
    key = "tracking.uri" if uri or not os.environ.get("MLFLOW_TRACKING_URI") else \
        "tracking.uri (from $MLFLOW_TRACKING_URI)"
    return key, resolve_uri(uri, tracking["artifact_location"])[0]


def problems(tracking) -> list[str]:
    """What is wrong with the store address and the experiment name, without touching either."""
    if not tracking["enabled"]:
        return []
    from dlx.tracking import StoreUnavailable, store_patience

    out = []
    try:
        store_patience()
    except StoreUnavailable as exc:  # an environment variable, checked with the config it governs
        out.append(str(exc))
    name = tracking["experiment"]
    if not name:
        out.append("tracking.experiment='' is not valid: allowed a name of 1 to "
                   f"{MAX_EXPERIMENT_NAME} characters (MLflow's limit)")
    elif len(name) > MAX_EXPERIMENT_NAME:
        out.append(f"tracking.experiment is {len(name)} characters long: allowed 1 to {MAX_EXPERIMENT_NAME} "
                   "(MLflow's limit)")
    key, uri = tracking_address(tracking)
    shown = redact_text(uri)
    scheme = urlparse(uri).scheme.lower().split("+")[0]
    if scheme in SCHEMES and scheme != "sqlite" or uri == "databricks":
        return out
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///") or uri == "sqlite:///":
            out.append(f"{key}={shown!r} is not valid: allowed sqlite:///PATH (a file, three slashes before a "
                       "relative path, four before an absolute one)")
        return out
    if scheme in {ep.name for ep in _plugin_stores()}:
        return out
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a letter: a Windows drive)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1"):  # MLflow's own opt-in
            return out
        out.append(f"{key}={shown!r} is a path, which MLflow 3 opens as its retired file store and refuses: "
                   f"allowed {allowed()} (for a local file: sqlite:///{Path(urlparse(uri).path).name or 'mlflow.db'})")
    else:
        out.append(f"{key}={shown!r}: no MLflow tracking store uses the scheme '{scheme}': allowed {allowed()}")
    return out


def probe(tracking, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise ConfigError naming tracking.uri unless the store can be reached (or, for SQLite, created)
    within `timeout` seconds. Nothing is created: a directory is tried with a temporary one."""
    if not tracking["enabled"]:
        return
    key, uri = tracking_address(tracking)
    scheme = urlparse(uri).scheme.lower().split("+")[0]
    problem = _http_problem(uri, timeout) if scheme in ("http", "https") else probe_backend(uri, timeout)
    if problem:
        raise ConfigError(f"{key}={redact_text(uri)!r}: {problem}")


def probe_backend(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """What keeps a database address (sqlite, postgresql, mysql, mssql) from being opened, else None."""
    scheme = urlparse(uri).scheme.lower().split("+")[0]
    if scheme == "sqlite":
        return _sqlite_problem(Path(uri[len("sqlite:///"):].split("?")[0]))
    parsed = urlparse(uri)
    if scheme in _DB_PORTS and parsed.hostname:  # else a local socket, which the driver finds
        return _tcp_problem(parsed.hostname, parsed.port or _DB_PORTS[scheme], timeout)
    return None


def _sqlite_problem(db: Path) -> str | None:
    if db.is_dir():
        return "is a directory: allowed sqlite:///PATH of a file"
    if db.exists():
        return None if os.access(db, os.R_OK | os.W_OK) else "the database file is not readable and writable"
    problem = creatable(db.absolute().parent)
    return f"cannot create the database's directory: {problem}" if problem else None


def creatable(folder: Path) -> str | None:
    """Whether `folder` exists or can be made, tried without leaving anything behind; None when it can."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:  # os.access says yes to root on read-only or virtual file systems such as /proc: try it
        os.rmdir(tempfile.mkdtemp(prefix=".dlx-probe-", dir=existing))
    except OSError as exc:
        return f"nothing can be made under {existing} ({exc.strerror or exc})"
    return None


def _http_problem(uri: str, timeout: float) -> str | None:
    parsed = urlparse(uri)
    if parsed.hostname is None:
        return "no host in the address: allowed http://HOST:PORT or https://HOST"
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    netloc = host + (f":{parsed.port}" if parsed.port else "")  # without user:password@, which urllib rejects
    url = urlunparse((parsed.scheme, netloc, parsed.path.rstrip("/") + "/health", "", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:  # an answer (auth required, a path prefix...): something serves there
        return None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):  # it answered; MLflow applies its own TLS settings
            return None
        reason = exc.reason
    except (TimeoutError, OSError) as exc:
        reason = exc
    what = f"no answer within {timeout:g} s" if isinstance(reason, (TimeoutError, socket.timeout)) else \
        getattr(reason, "strerror", None) or str(reason)
    return (f"no MLflow server answers there ({what}); start one (dlx server --port PORT) or "
            "choose another tracking.uri")


def _tcp_problem(host: str, port: int, timeout: float) -> str | None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"the database server {host}:{port} does not answer ({exc.strerror or exc})"
    return None


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def safe_dirname(experiment: str) -> str:
    """A directory name for an experiment's artifacts that cannot leave the artifact root and needs no
    quoting in a URI: the name itself when it is plain, else a slug of it and a hash of the whole name
    (`../../tmp/x` -> `tmp-x-` and 8 hex digits), so distinct names never share a directory. Percent-encoding
    would not do: MLflow decodes a file URI, and `..%2F..` becomes `../..` again."""
    if _SAFE_NAME.fullmatch(experiment) and ".." not in experiment:
        return experiment
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment).strip("._-")
    slug = re.sub(r"\.{2,}", ".", slug)[:64].rstrip("._-")
    digest = hashlib.sha256(experiment.encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else f"experiment-{digest}"

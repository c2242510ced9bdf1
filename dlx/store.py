"""Opening a tracking store: for SQLite, creating or upgrading the schema under a file lock beside it, after
repairing what an interrupted migration left."""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from dlx.errors import StoreUnavailable

log = logging.getLogger(__name__)


def sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?")[0])


@contextmanager
def store_lock(db: Path):
    """An exclusive flock on `<db>.lock` beside the SQLite file, across processes: MLflow creates and
    migrates the schema in the first client call, and two processes doing that at once left the store
    unusable (alembic errors, `_alembic_tmp_*` tables: 7 of 8 processes started together failed)."""
    try:
        f = open(db.with_name(db.name + ".lock"), "a")  # noqa: SIM115 - held across the yield
    except OSError:  # a read-only folder: nobody can create or migrate the schema there either
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _repair(db: Path) -> None:
    """Finish or undo what a migration cut short: alembic's batch mode copies table X into _alembic_tmp_X,
    drops X and renames the copy. A copy beside its table is dropped; a copy whose table is gone is the
    table. Runs under store_lock."""
    if not db.is_file():
        return
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for tmp in sorted(n for n in names if n.startswith("_alembic_tmp_")):
            table = tmp[len("_alembic_tmp_"):]
            log.warning("the MLflow store %s holds %s, left by a schema migration that was cut short: %s", db,
                        tmp, "dropping the partial copy" if table in names else f"renaming it back to {table}")
            con.execute(f'DROP TABLE "{tmp}"' if table in names else f'ALTER TABLE "{tmp}" RENAME TO "{table}"')
    finally:
        con.close()


def _made_by_mlflow(db: Path) -> bool:
    if not db.is_file():
        return False
    con = sqlite3.connect(db, timeout=60)
    try:
        return bool(con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchall())
    except sqlite3.DatabaseError:  # not a SQLite file at all: not for dlx to touch
        return False
    finally:
        con.close()


def _upgrade(uri: str, db: Path, cause: Exception) -> None:
    """Bring a store whose schema is behind to the current one with MLflow's own `mlflow db upgrade`, after
    copying the file aside; raises StoreUnavailable with where the copy is when that fails."""
    backup = db.with_name(f"{db.name}.backup-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(db, backup)
    log.warning("the MLflow store %s could not be opened (%s); upgrading its schema (a copy is kept at %s)",
                db, str(cause).splitlines()[0][:200], backup)
    done = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["?"]
        last = next((line for line in reversed(lines) if "Error" in line), lines[-1])[:300]
        raise StoreUnavailable(f"the MLflow store {db} cannot be opened and `mlflow db upgrade` failed ({last}); "
                               f"its runs are untouched in {backup}") from cause


def open_client(uri: str):
    """An MlflowClient on `uri` whose schema exists and is current. For SQLite, creating or checking the
    schema happens under store_lock, after repairing what an interrupted migration left."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    # after the import: mlflow sets its own loggers up when imported. Its SQL error log repeats every
    # failed call with a full traceback (~1,600 lines for one run on a locked store): dlx reports them itself
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db = sqlite_file(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(db):
        _repair(db)
        try:  # MLflow creates or checks the schema when the client makes its store
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except MlflowException as exc:
            # a locked file is waited for by the caller; a file MLflow made whose schema it refuses is upgraded
            if exc.error_code == "TEMPORARILY_UNAVAILABLE" or not _made_by_mlflow(db):
                raise
            _upgrade(uri, db, exc)
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    return client

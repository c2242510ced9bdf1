"""A run's local journal of everything the tracking store has not confirmed yet.

Every batch of metric points `Tracker.flush` hands over is appended here first, as one JSON line written
with a single `write` (tens of microseconds; in the page cache it outlives a SIGKILL of the process), then
written to the store; a later line acknowledges what the store took. Tags, params, artifacts and the final
status that the store would not take within the patience are recorded too. A run that closes cleanly
deletes its spool; any other spool is replayed into its run by `replay`: when dlx next opens that store
(each store keeps a small index of the spools made for it), on resume, or with `dlx sync`.

The owner holds an exclusive flock on its spool for as long as it lives, so nobody replays the journal of a
run that is still training; the kernel drops the lock when the owner dies, SIGKILL included.

Lines: {"h": {"uri", "run_id"}} once, then {"m": [[key, value, timestamp ms, step], ...], "n": seq},
{"a": seq} (batches up to seq are in the store), {"t": tags}, {"p": params}, {"f": [path, artifact_path]},
{"s": status}, {"c": n} (the tags, params and artifacts recorded before it reached the store when it came back
mid-run).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".spool"
INDEX_NAME = "dlx-pending-spools.txt"


def index_path(uri: str) -> Path:
    """The index of a store's spools: beside a SQLite file, else under outputs/ of the working directory."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):].split("?")[0]).resolve().parent / INDEX_NAME
    return Path("outputs").resolve() / INDEX_NAME


@contextmanager
def _locked_index(uri: str):
    path = index_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        yield f


def _register(uri: str, spool: Path) -> None:
    with _locked_index(uri) as f:
        f.write(f"{spool}\n")


def _unregister(uri: str, spool: Path) -> None:
    with _locked_index(uri) as f:
        lines = [line for line in f.read().splitlines() if line and line != str(spool)]
        f.seek(0)
        f.truncate()
        f.write("".join(f"{line}\n" for line in lines))


def pending(uri: str) -> list[Path]:
    """The spools listed in the store's index (some may belong to runs still training)."""
    path = index_path(uri)
    if not path.is_file():
        return []
    with _locked_index(uri) as f:
        return [Path(line) for line in dict.fromkeys(f.read().splitlines()) if line]


class Spool:
    """The journal of one run, owned (and flock-ed) by the process that trains it."""

    def __init__(self, path: Path, uri: str, run_id: str):
        self.path, self.uri, self.run_id = Path(path).resolve(), uri, run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._seq = 0
        self._append({"h": {"uri": uri, "run_id": run_id}})
        _register(uri, self.path)

    def _append(self, record: dict) -> None:
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def append_metrics(self, points: list) -> int:
        """Journal a batch of (key, value, timestamp, step) points; returns its sequence number."""
        self._seq += 1
        self._append({"m": points, "n": self._seq})
        return self._seq

    def ack(self, seq: int) -> None:
        self._append({"a": seq})

    def record(self, kind: str, payload) -> None:
        """What the store would not take: "t" tags, "p" params, "f" [path, artifact_path], "s" status."""
        self._append({kind: payload})

    def close(self, *, keep: bool) -> None:
        """Let go of the spool; without `keep` (everything reached the store) delete it."""
        if self._fd is None:
            return
        if not keep:
            self.path.unlink(missing_ok=True)
            _unregister(self.uri, self.path)
        os.close(self._fd)  # releases the flock: from now on anyone may replay what is left
        self._fd = None


def read(path: Path) -> dict:
    """A spool's content: uri, run_id, the points not acknowledged, and what else is left to set."""
    out = {"uri": None, "run_id": None, "points": [], "tags": {}, "params": {}, "artifacts": [], "status": None}
    batches: dict[int, list] = {}
    acked = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:  # the last line of a process killed mid-write
                continue
            if "h" in rec:
                out["uri"], out["run_id"] = rec["h"]["uri"], rec["h"]["run_id"]
            elif "m" in rec:
                batches[rec["n"]] = rec["m"]
            elif "a" in rec:
                acked = max(acked, rec["a"])
            elif "t" in rec:
                out["tags"].update(rec["t"])
            elif "p" in rec:
                out["params"].update(rec["p"])
            elif "f" in rec:
                out["artifacts"].append(rec["f"])
            elif "s" in rec:
                out["status"] = rec["s"]
            elif "c" in rec:
                out["tags"], out["params"], out["artifacts"] = {}, {}, []
    out["points"] = [p for n in sorted(batches) if n > acked for p in batches[n]]
    return out


class Busy(Exception):
    """The spool's run is still training in a live process."""


def replay(path: Path, client=None) -> dict:
    """Write what a spool holds into its run, then delete it; returns its content. Raises Busy when its owner
    still lives, and the store's error when the store does not take it (the spool is then kept)."""
    from dlx.metric_writer import write_points

    path = Path(path).resolve()
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(str(path)) from None
        content = read(path)
        if content["run_id"] is None:
            raise ValueError(f"{path} is not a dlx spool (no header line)")
        if client is None:
            from dlx.store import open_client

            client = open_client(content["uri"])
        run_id = content["run_id"]
        _set_params(client, run_id, content["params"])
        if content["tags"]:
            from mlflow.entities import RunTag

            from dlx.tracking import tag_value

            client.log_batch(run_id, tags=[RunTag(k, tag_value(v)) for k, v in content["tags"].items()])
        for file, artifact_path in content["artifacts"]:
            if Path(file).exists():
                client.log_artifact(run_id, file, artifact_path)
        # a batch may have reached the store just before its acknowledgement was cut off: dedupe
        content["written"] = write_points(client, run_id, content["points"], dedupe=True)
        if content["status"]:
            client.set_terminated(run_id, status=content["status"])
        path.unlink(missing_ok=True)
        _unregister(content["uri"], path)
        return content
    finally:
        os.close(fd)


def _set_params(client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    from dlx.tracking import MAX_PARAMS_PER_BATCH

    logged = client.get_run(run_id).data.params
    items = [Param(k, v) for k, v in params.items() if k not in logged]  # a param is written once in MLflow
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])


def _header_uri(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.loads(f.readline())["h"]["uri"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def replay_pending(uri: str, client) -> None:
    """Replay every spool of this store whose run no longer trains; never raises (a spool that cannot be
    replayed now stays listed for the next time)."""
    for path in pending(uri):
        if not path.exists():
            _unregister(uri, path)
            continue
        if _header_uri(path) != uri:  # another store that shares the index under outputs/
            continue
        try:
            content = replay(path, client)
        except Busy:
            continue
        except Exception as exc:  # noqa: BLE001 - the store or the file: try again next time
            log.warning("could not replay %s yet: %s", path, exc)
            continue
        log.warning("replayed %d metric points%s of run %s from %s", content["written"],
                    f" and status {content['status']}" if content["status"] else "", content["run_id"], path)


def sync(paths: list[str], uri: str | None = None) -> int:
    """`dlx sync`: replay the given spools (files, or run folders holding them), else every pending spool of
    the store; one line per spool; exit 0 when all reached their store, 1 when one could not, 2 for a path
    that holds no spool."""
    import sys

    from dlx.tracking import patiently, resolve_uri, store_patience

    if paths:
        spools = []
        for p in map(Path, paths):
            found = [p] if p.is_file() else sorted(p.rglob(f"*{SUFFIX}")) if p.is_dir() else []
            if not found:
                print(f"dlx: error: {p}: no spool there; give a spool file (*{SUFFIX}) or a run folder "
                      "that holds one", file=sys.stderr)
                return 2
            spools += found
    else:
        uri = resolve_uri(uri)[0]
        spools = [p for p in pending(uri) if p.exists() and _header_uri(p) == uri]
        if not spools:
            print(f"dlx sync: nothing to replay for {uri}")
            return 0
    code = 0
    for path in spools:
        try:
            content = patiently(lambda path=path: replay(path), store_patience())
        except Busy:
            print(f"dlx sync: {path}: its run is still training; it replays its spool itself")
            continue
        except Exception as exc:  # noqa: BLE001 - the store or the file: one line, the spool is kept
            lines = str(exc).strip().splitlines()
            print(f"dlx: error: {path}: not replayed ({type(exc).__name__}: {lines[0][:200] if lines else ''}); "
                  "the spool is kept", file=sys.stderr)
            code = 1
            continue
        status = f", status {content['status']}" if content["status"] else ""
        print(f"dlx sync: run {content['run_id']}: {content['written']} metric points{status} replayed "
              f"into {content['uri']} from {path}")
    return code

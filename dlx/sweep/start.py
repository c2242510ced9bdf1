"""How the pool's worker processes start.

On Linux they are forked from a zygote (dlx.sweep.zygote) that imported torch, MLflow and dlx once:
a pool of n workers pays those imports (seconds of CPU) once instead of n times, and a replacement for a
dead worker is ready at once. Elsewhere, or with DLX_WORKER_START=spawn, each worker is a fresh
interpreter (`python -m dlx.sweep.worker`) that imports everything itself.

Either way the pool gets (process, send connection, receive connection); the process answers pid,
poll, wait, send_signal and kill like subprocess.Popen, returncode included (-N: killed by signal N),
which the pool turns into each dead worker's reason.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

log = logging.getLogger("dlx.sweep.launcher")

Started = tuple  # (process, send Connection, receive Connection)


def worker_threads(n: int, threads: int | None = None) -> int:
    """torch threads of each of n workers: as asked, else the usable cores shared out."""
    return threads or max(1, len(os.sched_getaffinity(0)) // n)


def forks_workers() -> bool:
    return sys.platform == "linux" and os.environ.get("DLX_WORKER_START", "fork") != "spawn"


def worker_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            # a killed worker leaves its multiprocessing semaphores to its resource tracker, which
            # frees them and would warn about each "leak" in the sweep's output
            "PYTHONWARNINGS": ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"),
                                                     "ignore::UserWarning:multiprocessing.resource_tracker"]))}


# Libraries that start threads when imported, kept from doing so in the zygote: it forks only while
# it has one thread. OpenBLAS (numpy) starts one per core unless told otherwise; pyarrow (through
# MLflow's pandas) starts jemalloc's background thread. Each worker sets torch's own threads itself.
ZYGOTE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "JE_ARROW_MALLOC_CONF": "background_thread:false"}


def _python(module: str, fds: tuple[int, ...], env: dict[str, str]) -> subprocess.Popen:
    # a session of its own: a Ctrl-C at the terminal reaches only the sweep, which then stops each
    # worker with one SIGTERM (two signals could interrupt a trial's run while it is being closed)
    return subprocess.Popen([sys.executable, "-m", module, *map(str, fds)], pass_fds=fds,
                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def spawn_worker(threads: int) -> Started:
    """A worker as a fresh interpreter; it imports torch, MLflow and dlx and then waits for its set-up."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    proc = _python("dlx.sweep.worker", (to_child_r, from_child_w), worker_env(threads))
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)


class ZygoteGone(RuntimeError):
    """The zygote process ended: no more workers can be forked from it."""


class Zygote:
    """The sweep's end of the zygote: starts it, asks it for workers, hears of their pids and ends.

    Asking does not wait: the pipes are the sweep's own, so the pool can send a worker its set-up and
    wait for its "ready" while the zygote is still importing, and the sweep goes on setting itself up."""

    def __init__(self, threads: int):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = _python("dlx.sweep.zygote", (theirs.fileno(),), {**worker_env(threads), **ZYGOTE_ENV})
        theirs.close()
        self.sock = ours
        self.changed = threading.Condition()
        self.ready = self.gone = False
        self.zygote_threads = 0  # threads the zygote had when it began to fork: 1, or forking is unsafe
        self.forked: dict[int, int] = {}  # request token -> worker pid
        self.pidfds: dict[int, int] = {}  # worker pid -> pidfd
        self.exits: dict[int, int] = {}  # worker pid -> returncode
        self.pending: dict[int, int] = {}  # request token -> signal to send once the worker exists
        self.tokens = itertools.count()
        threading.Thread(target=self._listen, name="dlx-zygote", daemon=True).start()

    def _listen(self) -> None:
        while True:
            try:
                message = self.sock.recv(1 << 16)
            except OSError:
                message = b""
            with self.changed:
                if message:
                    self._note(*pickle.loads(message))
                else:
                    self.gone = True
                self.changed.notify_all()
            if not message:
                return

    def _note(self, kind: str, *rest) -> None:
        if kind == "ready":
            self.ready, self.zygote_threads = True, len(rest[1])
            if self.zygote_threads > 1:
                log.warning("the zygote process %d has %d threads (%s) after its imports; forking from it "
                            "may hang a worker: DLX_WORKER_START=spawn starts them as processes of their own",
                            rest[0], self.zygote_threads, ", ".join(rest[1]))
        elif kind == "forked":
            token, pid = rest
            self.forked[token] = pid
            try:  # at once, before the worker can end and its pid be reused
                self.pidfds[pid] = os.pidfd_open(pid)
            except (AttributeError, OSError):  # no pidfd (old kernel), or the worker has already ended
                pass
            if token in self.pending:
                self.signal(pid, self.pending.pop(token))
        elif kind == "exit":
            self.exits[rest[0]] = rest[1]

    def fork(self, threads: int) -> Started:
        """Ask for a new worker; it is forked once the zygote has its imports."""
        if self.gone:
            raise ZygoteGone(f"the zygote process {self.proc.pid} has ended")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        token = next(self.tokens)
        request = pickle.dumps({"token": token, "cwd": os.getcwd(), "env": worker_env(threads)})
        try:
            socket.send_fds(self.sock, [request], [to_child_r, from_child_w])
        except OSError as exc:
            os.close(to_child_w)
            os.close(from_child_r)
            raise ZygoteGone(f"the zygote process {self.proc.pid} has ended ({exc})") from None
        finally:  # the zygote has its own copies now (or never will)
            os.close(to_child_r)
            os.close(from_child_w)
        return Forked(self, token), Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)

    def signal(self, pid: int, sig: int) -> None:
        """Send `sig` to a worker that has not been reaped yet (call with self.changed held)."""
        if pid in self.exits:
            return
        try:
            if pid in self.pidfds:
                signal.pidfd_send_signal(self.pidfds[pid], sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def alive(self, pid: int) -> bool:
        """Whether a worker the zygote can no longer report on (it died) is still running."""
        if pid in self.pidfds:
            return not select.select([self.pidfds[pid]], [], [], 0)[0]  # readable once the process ends
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        """Close the socket: the zygote leaves; wait for it. One still importing is killed: it reads
        its socket only once it has its imports, and a sweep that fails its checks should end at once."""
        with self.changed:
            if not self.ready:
                self.proc.kill()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with self.changed:
            for fd in self.pidfds.values():
                os.close(fd)
            self.pidfds.clear()


class Forked:
    """A worker asked of the zygote, as the sweep sees it: like subprocess.Popen, except that its pid
    and exit status come from the zygote (its parent), and that a signal sent before the fork is
    delivered when it happens. Signals go through a pidfd where there is one, so they never reach
    another process that got the pid after the worker was reaped."""

    def __init__(self, zygote: Zygote, token: int):
        self.zygote, self.token, self.returncode = zygote, token, None

    @property
    def args(self) -> list[str]:
        return [f"worker of the zygote process {self.zygote.proc.pid}"]

    @property
    def pid(self) -> int | None:
        """The worker's pid; None while the zygote has not forked it yet, or if it never will."""
        with self.zygote.changed:
            return self.zygote.forked.get(self.token)

    def forked_pid(self) -> int | None:
        """The worker's pid once forked (waits for the zygote's imports); None if it never will be."""
        z = self.zygote
        with z.changed:
            z.changed.wait_for(lambda: self.token in z.forked or z.gone)
            return z.forked.get(self.token)

    def _code(self) -> int | None:
        z = self.zygote
        pid = z.forked.get(self.token)
        if pid is None:
            return 1 if z.gone else None  # never forked: the zygote died first
        code = z.exits.get(pid)
        if code is None and z.gone and not z.alive(pid):
            code = 1  # the zygote died before it could say how the worker ended: unknown
        return code

    def poll(self) -> int | None:
        if self.returncode is None:
            with self.zygote.changed:
                self._set(self._code())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        z = self.zygote
        deadline = None if timeout is None else time.monotonic() + timeout
        with z.changed:
            while self.returncode is None:
                self._set(self._code())
                if self.returncode is not None:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                # with the zygote gone nothing will notify: look again every 50 ms
                z.changed.wait(min(0.05, left or 0.05) if z.gone else left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        z = self.zygote
        with z.changed:
            if self.returncode is not None:
                return
            pid = z.forked.get(self.token)
            if pid is not None:
                z.signal(pid, sig)
            elif not z.gone:
                self.zygote.pending[self.token] = sig

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _set(self, code: int | None) -> None:
        """Record the exit (call with the zygote's lock held) and let go of the pidfd."""
        if code is None:
            return
        self.returncode = code
        fd = self.zygote.pidfds.pop(self.zygote.forked.get(self.token), None)
        if fd is not None:
            os.close(fd)


class WorkerStarter:
    """Starts one pool's workers: from a zygote (its own, or the one `dlx sweep` started ahead), or as
    fresh interpreters; falls back to the latter for good if the zygote dies."""

    def __init__(self, threads: int):
        self.threads = threads
        self.zygote = None
        if forks_workers():
            self.zygote = _take_zygote() or Zygote(threads)

    def start(self) -> Started:
        if self.zygote is not None:
            try:
                return self.zygote.fork(self.threads)
            except ZygoteGone as exc:
                log.warning("%s; workers start as processes of their own from now on", exc)
                self.zygote.close()
                self.zygote = None
        return _take_spawned(self.threads) or spawn_worker(self.threads)

    def stop_starting(self) -> None:
        """The pool is stopping: a zygote still importing would fork its workers only to see them
        killed; stop it now (its workers that never were end as unknown failures) instead of waiting."""
        if self.zygote is not None and not self.zygote.ready:
            self.close()

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


# ---------------------------------------------------------------------------------------------- ahead
# `dlx sweep` starts the zygote (or, spawning, the workers themselves) before it composes and checks
# every trial, which takes seconds: the imports run meanwhile instead of after. The pool takes what
# was started; what it does not take is stopped when the process exits.
_AHEAD: dict = {"zygote": None, "spawned": []}


def prespawn(n: int, threads: int | None = None) -> None:
    t = worker_threads(n, threads)
    if forks_workers():
        if _AHEAD["zygote"] is None:
            _AHEAD["zygote"] = Zygote(t)
    else:
        while len(_AHEAD["spawned"]) < n:
            _AHEAD["spawned"].append((t, spawn_worker(t)))
    atexit.register(discard_prespawned)


def discard_prespawned() -> None:
    """Stop what was started ahead and no pool took (the sweep failed its checks, or wants another count)."""
    zygote, _AHEAD["zygote"] = _AHEAD["zygote"], None
    if zygote is not None:
        zygote.close()
    while _AHEAD["spawned"]:
        _, (proc, send_conn, recv_conn) = _AHEAD["spawned"].pop()
        proc.kill()  # it has only been importing: nothing to close, and a bad sweep should fail at once
        proc.wait()
        for conn in (send_conn, recv_conn):
            conn.close()


def _take_zygote() -> Zygote | None:
    zygote, _AHEAD["zygote"] = _AHEAD["zygote"], None
    return zygote


def _take_spawned(threads: int) -> Started | None:
    for i, (t, spawned) in enumerate(_AHEAD["spawned"]):
        if t == threads and spawned[0].poll() is None:
            del _AHEAD["spawned"][i]
            return spawned
    return None

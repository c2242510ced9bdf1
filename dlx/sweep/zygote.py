"""The zygote of a sweep's workers: `python -m dlx.sweep.zygote FD`, Linux only.

It imports torch, MLflow and dlx once (dlx.sweep.worker.warm_up) and then forks one worker per request
of the sweep process, so a pool of n workers pays those imports (seconds of CPU) once instead of n times;
the forked workers share the imported modules' memory with the zygote until they write to it.

The zygote talks to the sweep over one Unix SEQPACKET socket (FD), a pickle per message:
  sweep -> zygote: {"token", "cwd", "env"} with two file descriptors attached (SCM_RIGHTS):
                   the worker's inbox and outbox pipes
  zygote -> sweep: ("ready", pid, names of the zygote's threads) once its imports are done,
                   ("forked", token, pid), ("exit", pid, returncode) when a worker ends, as
                   subprocess.Popen.returncode reads (-N: killed by signal N)
It forks only while it has a single thread (a fork copies just the forking thread, and a lock held by
another one would stay locked in the child for good); it never initialises CUDA, so every worker can.
It exits when the sweep closes the socket or dies; its workers notice and stop (dlx.sweep.worker).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path

MAX_MESSAGE = 1 << 20


def threads_of_this_process() -> list[str]:
    """The names of this process's threads (the kernel's: those that C libraries start, too)."""
    try:
        return [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: what Python knows of
        return [t.name for t in threading.enumerate()]


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    from dlx.sweep.worker import freeze_heap, warm_up

    warm_up()
    freeze_heap(collect=False)  # the first workers wait for this
    _send(sock, ("ready", os.getpid(), threads_of_this_process()))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd hears of it
    signal.set_wakeup_fd(wake_w)
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock in ready:
            try:
                message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 2)
            except OSError:
                message, fds = b"", []
            if not message:  # the sweep closed its end or died: its workers follow us
                os._exit(0)
            request = pickle.loads(message)
            pid = os.fork()
            if pid == 0:
                _child(request, fds, sock, (wake_r, wake_w))
            for fd in fds:
                os.close(fd)
            _send(sock, ("forked", request["token"], pid))


def _send(sock: socket.socket, message: tuple) -> None:
    try:
        sock.send(pickle.dumps(message))
    except OSError:  # the sweep is gone
        os._exit(0)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, ("exit", pid, os.waitstatus_to_exitcode(status)))


def _child(request: dict, fds: list[int], sock: socket.socket, wake_fds: tuple[int, int]) -> None:
    """The forked worker: forget the zygote's socket and signals, take the sweep's working directory
    and environment, then serve trials. Never returns into the zygote's loop."""
    code, zygote = 1, os.getppid()
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in wake_fds:
            os.close(fd)
        # a session of its own, as a spawned worker has: Ctrl-C at the terminal reaches only the sweep
        os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from dlx.sweep.worker import serve

        serve(fds[0], fds[1], zygote)
        code = 0
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not run the zygote's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Trial hygiene shared by dlx_local's in-process launcher and the pool's workers: a trial starts from
the same process-wide state as the one before it, an interrupted trial stops the sweep, a failure
crosses a process boundary recognisably and is classified by its type, and a trial's config is composed
as Hydra's launchers do. Also the sweep's own guards: the signals it holds off while it records how it
ended, and the resident memory it reports per trial."""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import pickle
import signal
from contextlib import contextmanager

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, open_dict

from dlx.errors import Pruned, RunError, Terminated

# the exit codes of a run stopped by Ctrl-C or SIGTERM (a shell's 128 + the signal's number), which dlx.run
# gives its RunError, and the interrupt each stands for
INTERRUPTS = {130: KeyboardInterrupt, 143: Terminated}


def interrupt_from(ret: JobReturn) -> BaseException | None:
    """The interrupt to re-raise when an in-process trial ended because of Ctrl-C or SIGTERM:
    dlx.run closes the run KILLED and raises RunError(130 or 143), which Hydra's run_job records as an
    ordinary failure; the sweep must stop there, not go on to the next trial."""
    code = interrupt_code(job_error(ret))
    return INTERRUPTS[code]() if code else None


def interrupt_code(exc: BaseException | None) -> int | None:
    """130 or 143 when `exc` says its trial was stopped by Ctrl-C or SIGTERM, from its type: the
    interrupt itself, or a RunError whose exit code says so (dlx.run's after it closed the run KILLED,
    dlx.sweep.pool's WorkerDied for a worker that died of the signal); else None."""
    if isinstance(exc, KeyboardInterrupt):
        return 143 if isinstance(exc, Terminated) else 130
    if isinstance(exc, RunError) and exc.exit_code in INTERRUPTS:
        return exc.exit_code
    return None


def classify(exc: BaseException | None) -> tuple[str, str, int | None]:
    """(outcome, reason, exit code of an interrupt) of a failed job, from its exception's type (never its
    text, which may quote anything a user typed): dlx.errors.Pruned is pruned; an interrupt, or a
    RunError with the exit code of one (a run closed KILLED, a worker that died of the signal), is
    interrupted, to be run again on resume; anything else failed. Launchers that run trials in other
    processes send the exception back pickled (portable_exception keeps its kind)."""
    if exc is None:
        return "failed", "the job failed without an exception", None
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if isinstance(exc, Pruned):
        return "pruned", lines[0] if lines else "", None
    code = interrupt_code(exc)
    return ("interrupted", text, code) if code else ("failed", text, None)


def job_error(ret: JobReturn | None) -> BaseException | None:
    """The exception a failed job ended with. JobReturn's public `return_value` raises it, after writing
    "Error executing job with overrides" to stderr, which the sweep's own trial line replaces."""
    if ret is None or ret.status != JobStatus.FAILED:
        return None
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            ret.return_value  # noqa: B018 - the property raises the job's exception
        except BaseException as exc:  # noqa: BLE001 - whatever the job raised is the answer
            return exc
    return None


@contextmanager
def isolated_trial(threads: int | None = None):
    """Undo what one trial changes in process-wide state, so the next trial in the same process starts
    from the same place: environment variables and torch's global switches (a trial with
    trainer.deterministic=true turns deterministic algorithms on for the whole process). `threads`:
    torch's intra-op threads during the trial (None: leave them)."""
    try:
        import torch  # every dlx trial imports it; here it is imported once, before the first trial
    except ImportError:
        torch = None
    saved_env = dict(os.environ)
    saved = _torch_switches(torch) if torch is not None else None
    if threads and torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if os.environ != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)
        if saved is not None:
            _restore_torch_switches(torch, saved)
        # a finished trial's model, data and optimizer sit in reference cycles: free them now, not at
        # some later collection, so the next trial does not stack its tensors on top of them
        gc.collect()


def _torch_switches(torch) -> dict:
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "threads": torch.get_num_threads(),
            "dtype": torch.get_default_dtype(),
            "grad": torch.is_grad_enabled()}


def _restore_torch_switches(torch, s: dict) -> None:
    torch.use_deterministic_algorithms(s["deterministic"], warn_only=s["warn_only"])
    torch.backends.cudnn.benchmark = s["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    if torch.get_num_threads() != s["threads"]:
        torch.set_num_threads(s["threads"])
    torch.set_default_dtype(s["dtype"])
    torch.set_grad_enabled(s["grad"])


class traced:
    """The task function, first writing which process runs the trial into the trial's own log."""

    def __init__(self, task_function, idx: int):
        self.task_function, self.idx = task_function, idx

    def __call__(self, cfg: DictConfig):
        logging.getLogger("dlx").info("trial %d running in pid %d", self.idx, os.getpid())
        return self.task_function(cfg)


def portable_exception(exc: BaseException) -> BaseException:
    """`exc` when it survives a pickle round trip (dlx's own exceptions do), else one of the same kind
    that keeps its type name and message: an interrupt or a pruned trial stays one (the sweeper tells
    them apart by type), anything else becomes a RuntimeError, e.g. "ValueError: bad shape"."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception that does not round-trip is replaced
        text = f"{type(exc).__name__}: {exc}"
        code = interrupt_code(exc)
        if code:
            return RunError(text, code)
        return Pruned(text) if isinstance(exc, Pruned) else RuntimeError(text)


def compose_trial(config_loader, config: DictConfig, idx: int, overrides: list[str]) -> DictConfig:
    """The config of trial `idx`, as Hydra's BasicLauncher composes it: the sweep's config with the
    trial's overrides, job id and number set (hydra.sweep.subdir interpolates the number)."""
    sweep_config = config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = idx
        sweep_config.hydra.job.num = idx
    return sweep_config


@contextmanager
def signals_ignored():
    """Ctrl-C and SIGTERM wait while the sweep records how it ended (a few database writes)."""
    try:
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def rss_mb() -> float | None:
    """Resident memory of the sweeping process (in-process trials must not make it grow)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None

"""The exceptions that end a run, shared by dlx.run, dlx.resume and the sweep."""

from __future__ import annotations


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


class Pruned(RuntimeError):
    """A sweep's pruner stopped this trial: not a failure, not a finished result."""


class RunError(RuntimeError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):
        # pickle rebuilds an exception from self.args, which lacks exit_code: a sweep worker could not
        # send a RunError back with its exit code
        return type(self), (str(self), self.exit_code)


class StoreUnavailable(RuntimeError):
    """The store did not take what the run had for it within the patience: it is kept in the spool."""

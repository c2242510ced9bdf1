"""Which CUDA devices each worker of a sweep's pool trains on (hydra.launcher.gpus_per_trial).

The pool sets CUDA_VISIBLE_DEVICES in each worker before its trial initialises CUDA (the forkserver the
workers come from never does), so a trial's `cuda` is its own device; several workers may share one
when there are fewer devices than workers. Each trial records its devices as the run tag `gpus`.
"""

from __future__ import annotations

import os


def visible_devices(environ: dict[str, str] | None = None, count: int | None = None) -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs):
    its list when it is set, else 0..count-1 (count: torch's device count)."""
    environ = os.environ if environ is None else environ
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [d.strip() for d in value.split(",") if d.strip()]
    if count is None:
        import torch

        count = torch.cuda.device_count()  # without a CUDA context: this process forks nothing after it
    return [str(i) for i in range(count)]


def trial_devices(devices: list[str], worker: int, gpus_per_trial: int | None) -> list[str] | None:
    """The devices of the pool's worker number `worker`: gpus_per_trial of `devices` (None: one where
    there are any), handed out round-robin, so workers 0, 1, 2 on two devices get 0, 1 and 0 again.
    gpus_per_trial=0 hides every device (trials on the CPU). None: leave CUDA_VISIBLE_DEVICES alone."""
    if gpus_per_trial is None:
        if not devices:
            return None
        gpus_per_trial = 1
    if not 0 <= gpus_per_trial <= len(devices):
        raise ValueError(f"hydra.launcher.gpus_per_trial={gpus_per_trial}: {len(devices)} CUDA device(s) visible "
                         f"({','.join(devices) or 'none'}); allowed: 0 (trials on the CPU) to {len(devices)}, "
                         "or null (one each where there are any)")
    first = worker * gpus_per_trial
    return [devices[(first + j) % len(devices)] for j in range(gpus_per_trial)]

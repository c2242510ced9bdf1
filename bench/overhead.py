"""Training-loop overhead of dlx against a minimal hand-written PyTorch loop, measured in one process.

    python bench/overhead.py [--epochs N] [--repeats R] [--models mlp cnn] [--threads T] [--strict]

For each model the same network (dlx.build.build_model, same config, same seed), the same data tensors
(dlx.build.build_data), the same batch size and torch.optim.Adam with the same lr are trained three times:

* dlx: a real `dlx train` run, composed from conf/ with `model=<name>` and run by dlx.run.train, the
  function the command calls: an MLflow run in a temporary SQLite store with params, per-step and
  per-epoch metrics, checkpoints (the default), a plain progress callback, the learning-curve plot and
  the summary. The per-epoch `epoch_time` is read back from the MLflow store, which also proves that the
  metrics arrived.
* baseline: what one writes by hand: torch.optim.Adam(model.parameters(), lr), per epoch shuffle with
  randperm, forward/backward/step over the batches, then loss and accuracy on the validation split;
  timed per epoch with perf_counter. The target is about this comparison.
* same_kernel: the same loop with the Adam kernel dlx picks (torch's fused one on CPU, which torch does
  not choose by default there): dlx over it is dlx's own cost, without the faster step dlx brings.

Each loop runs first in turn from repeat to repeat, so that drift in the load of the machine falls on all;
the first epoch of every run is warm-up and dropped. A ratio compares median epoch times; its target is
<= 1.10. `epoch_time` is what dlx reports and covers training plus validation; the callbacks at the end
of an epoch (checkpoint files, journaling metrics in the spool for the MLflow writer) run outside it, so the wall time per
epoch is reported too: the mean spacing of the epoch ends, for dlx taken from the MLflow metric
timestamps (millisecond resolution), for the baselines from perf_counter.

Measurements and their history: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TARGET = 1.10


@dataclass
class Side:
    """Epoch times (seconds, warm-up dropped) and per-run wall time per epoch of one loop."""

    epochs: list[float] = field(default_factory=list)
    per_run: list[float] = field(default_factory=list)  # median epoch time of each run
    wall: list[float] = field(default_factory=list)  # mean spacing of epoch ends of each run, callbacks included


@dataclass
class Comparison:
    dlx: Side = field(default_factory=Side)
    baseline: Side = field(default_factory=Side)
    same_kernel: Side = field(default_factory=Side)
    params: int = 0
    steps_per_epoch: int = 0


@contextlib.contextmanager
def working_directory(path: Path):
    """Run inside `path`: whatever a run writes relative to the working directory stays out of the checkout."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def resolved_config(overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from dlx.compose import compose

    return OmegaConf.to_container(compose(overrides), resolve=True, enum_to_str=True)


def run_dlx(model: str, epochs: int, store: Path, run_name: str) -> tuple[list[float], float]:
    """One `dlx train` run of `model`; (epoch_time per epoch, mean wall seconds per epoch after the first)."""
    return dlx_run([f"model={model}", f"trainer.epochs={epochs}", "trainer.progress=plain"], store, run_name,
                   "overhead")


def dlx_run(args: list[str], store: Path, run_name: str, experiment: str, *,
            step_metrics: bool = True) -> tuple[list[float], float]:
    """One `dlx train` run of the overrides `args`, tracked in an SQLite store under `store`; (epoch_time per
    epoch, mean wall seconds per epoch after the first), read back from MLflow, which also proves that the
    metrics arrived (the per-step ones too, with `step_metrics`, for runs of at least one log window)."""
    from mlflow import MlflowClient

    from dlx.compose import compose
    from dlx.run import train

    cfg = compose([*args, f"tracking.uri='sqlite:///{store / 'mlflow.db'}'",
                   f"tracking.artifact_location='{(store / 'artifacts').as_uri()}'",
                   f"tracking.experiment={experiment}", f"tracking.run_name={run_name}"])
    # dlx.run.train is what `dlx train` calls once Hydra has composed the config; outside Hydra it keeps
    # its run directory under ./outputs, here inside the temporary store
    with working_directory(store), contextlib.redirect_stdout(io.StringIO()):
        train(cfg)

    epochs = cfg.trainer.epochs
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    found = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'")
    if len(runs) != 1 or runs[0].info.status != "FINISHED":
        raise RuntimeError(f"dlx run {run_name}: expected one FINISHED run, found {[r.info.status for r in runs]}")
    run_id = runs[0].info.run_id
    history = sorted(client.get_metric_history(run_id, "epoch_time"), key=lambda m: m.step)
    if [m.step for m in history] != list(range(1, epochs + 1)):
        raise RuntimeError(f"dlx run {run_name}: epoch_time logged for steps {[m.step for m in history]}")
    if step_metrics and not client.get_metric_history(run_id, "train/loss_step"):
        raise RuntimeError(f"dlx run {run_name}: no per-step metrics in the store")
    wall = (history[-1].timestamp - history[0].timestamp) / 1000 / (epochs - 1)
    return [m.value for m in history], wall


def hand_loop_parts(cfg: dict, same_kernel: bool):
    """What a hand-written loop trains for a resolved config: (data, model, optimizer) on the config's device,
    seeded as dlx seeds a run; torch.optim.Adam as one writes it, or with the update kernel dlx picks for it."""
    import torch

    from dlx.build import build_data, build_model, select_device
    from dlx.optim import fastest_implementation

    device = select_device(cfg["trainer"]["device"])
    torch.manual_seed(cfg["trainer"]["seed"])
    data = build_data(cfg, device)
    net = build_model(cfg, data).to(device)
    kernel = fastest_implementation(torch.optim.Adam, {device}) if same_kernel else {}
    return data, net, torch.optim.Adam(net.parameters(), lr=cfg["optimizer"]["lr"], **kernel)


def hand_loop(cfg: dict, same_kernel: bool, loss_fn) -> tuple[list[float], float, int, int, int]:
    """The hand-written loop, as one writes it, over what hand_loop_parts builds for cfg: `loss_fn(logits, y)`
    per batch, then the validation loss and accuracy each epoch.

    Returns (epoch times, mean wall seconds per epoch after the first, parameters, steps per epoch, numbers in
    the training inputs).
    """
    import torch

    data, net, optimizer = hand_loop_parts(cfg, same_kernel)
    device = data.train.device
    epochs, batch_size = cfg["trainer"]["epochs"], cfg["trainer"]["batch_size"]
    x_train, y_train, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    n = len(x_train)
    amp = hand_autocast(cfg, device)

    times, ends = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, device=device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            with amp:
                loss = loss_fn(net(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad(), amp:
            logits = net(x_val)
            val_loss = loss_fn(logits, y_val).item()
            val_acc = (logits.argmax(-1) == y_val).float().mean().item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        times.append(end - t0)
        ends.append(end)
    if not (math.isfinite(val_loss) and 0.0 <= val_acc <= 1.0):
        raise RuntimeError(f"baseline: bad validation metrics {val_loss}, {val_acc}")
    params = sum(p.numel() for p in net.parameters())
    return times, (ends[-1] - ends[0]) / (epochs - 1), params, -(-n // batch_size), x_train.numel()


def hand_autocast(cfg: dict, device):
    """The mixed precision the config's trainer.amp asks for, as one writes it by hand: bf16 autocast (fp16 would
    need a gradient scaler, which no benchmark here uses)."""
    import torch

    amp = cfg["trainer"]["amp"]
    if amp == "off":
        return contextlib.nullcontext()
    if amp != "bf16":
        raise ValueError(f"the hand-written loop takes trainer.amp=off or bf16, not {amp}")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def run_baseline(model: str, epochs: int, same_kernel: bool = False) -> tuple[list[float], float, int, int]:
    """The hand-written loop on the same device, data, model and optimizer: torch.optim.Adam as one writes it,
    or, with `same_kernel`, with the update kernel dlx picks for it (fused on CPU).

    Returns (epoch times, mean wall seconds per epoch after the first, parameters, steps per epoch).
    """
    import torch.nn.functional as F

    cfg = resolved_config([f"model={model}", "tracking.enabled=false", f"trainer.epochs={epochs}"])
    return hand_loop(cfg, same_kernel, F.cross_entropy)[:4]


def common_arguments(p, *, epochs: int, repeats: int) -> None:
    """The options every benchmark here takes."""
    p.add_argument("--epochs", type=int, default=epochs, help=f"epochs per run, the first one dropped (default {epochs})")
    p.add_argument("--repeats", type=int, default=repeats, help=f"runs of each loop (default {repeats})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for every loop; 0 keeps torch's default (default 1: on a small "
                        "shared machine several threads turn epoch times into a measure of the load)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses the target")


def start(p, args):
    """Check the common options and set torch's threads; returns torch."""
    if args.epochs < 3 or args.repeats < 1:
        p.error("need --epochs >= 3 and --repeats >= 1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return torch


BASELINES = {"baseline": "the minimal loop (torch.optim.Adam as one writes it)",
             "same_kernel": "the same loop with dlx's Adam kernel (fused on CPU): dlx's own cost"}


def measure(models: list[str], epochs: int, repeats: int, store: Path) -> dict[str, Comparison]:
    results = {m: Comparison() for m in models}
    sides = ("dlx", *BASELINES)
    for r in range(repeats):
        order = sides[r % len(sides):] + sides[:r % len(sides)]  # each loop runs first in turn
        for model in models:
            c = results[model]
            for side in order:
                if side == "dlx":
                    times, wall = run_dlx(model, epochs, store, f"{model}-{r}")
                else:
                    times, wall, c.params, c.steps_per_epoch = run_baseline(model, epochs, side == "same_kernel")
                s = getattr(c, side)
                s.epochs += times[1:]  # the first epoch of every run is warm-up
                s.per_run.append(statistics.median(times[1:]))
                s.wall.append(wall)
            print(f"  repeat {r + 1}/{repeats} {model}: median epoch "
                  + ", ".join(f"{side} {getattr(c, side).per_run[-1] * 1e3:.2f} ms" for side in sides), flush=True)
    return results


def report(results: dict[str, Comparison]) -> bool:
    """Print the comparison of every model with each baseline; True when every ratio meets the target."""
    ok = True
    for model, c in results.items():
        d = c.dlx
        print(f"{model} ({c.params:,} parameters, {c.steps_per_epoch} steps per epoch)")
        for name, what in BASELINES.items():
            b = getattr(c, name)
            ratio = statistics.median(d.epochs) / statistics.median(b.epochs)
            low = statistics.quantiles(d.epochs, n=4)[0] / statistics.quantiles(b.epochs, n=4)[0]
            per_repeat = [x / y for x, y in zip(d.per_run, b.per_run)]
            wall_d, wall_b = statistics.median(d.wall), statistics.median(b.wall)
            passed = ratio <= TARGET
            ok &= passed
            print(f"  against {what}")
            print(f"    epoch time, median   dlx {_ms(statistics.median(d.epochs))}  {name} "
                  f"{_ms(statistics.median(b.epochs))}  ratio {ratio:.3f}  n={len(d.epochs)}/{len(b.epochs)}  "
                  f"{'PASS' if passed else 'FAIL'} (target <= {TARGET:.2f})")
            print(f"    noise                per-repeat ratios {min(per_repeat):.3f}..{max(per_repeat):.3f}, "
                  f"IQR/median dlx {_relative_iqr(d.epochs):.0%} {name} {_relative_iqr(b.epochs):.0%}, "
                  f"lower-quartile ratio {low:.3f}")
            print(f"    wall per epoch       dlx {_ms(wall_d)}  {name} {_ms(wall_b)}  ratio {wall_d / wall_b:.3f}  "
                  f"(mean spacing of epoch ends, end-of-epoch callbacks included)")
            if min(per_repeat) <= TARGET < max(per_repeat):
                print(f"    note                 the repeats fall on both sides of {TARGET:.2f}: the verdict is within "
                      f"the noise; run again with more --repeats, on a quieter machine")
    return ok


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f} ms"


def _relative_iqr(values: list[float]) -> float:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / median


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(p, epochs=30, repeats=5)
    p.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    args = p.parse_args(argv)
    torch = start(p, args)
    from dlx.build import select_device
    from dlx.compose import compose

    cfg = compose([])
    device = select_device(cfg.trainer.device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"dlx overhead: dataset {cfg.dataset._target_.rpartition('.')[2]}, batch {cfg.trainer.batch_size}, device {device}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"{args.epochs} epochs x {args.repeats} repeats per loop, first epoch of each run dropped")
    if load:
        print(f"load average at start: {load[0]:.2f}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlx-overhead-") as tmp:
        results = measure(args.models, args.epochs, args.repeats, Path(tmp))
    print()
    ok = report(results)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print("\nratio = dlx / baseline of the median epoch times; the per-repeat ratios, the interquartile ranges "
          "and the lower-quartile ratio show how noisy the machine was"
          + (f"; load average at end {load[0]:.2f}" if load else "") + f"; took {time.perf_counter() - t0:.0f}s")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())

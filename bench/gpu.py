"""Epoch time of `dlx train` on a GPU against a hand-written PyTorch loop and PyTorch Lightning, in one process.

    python bench/gpu.py                           # CUDA, ResNet-20, 50,000 images, batch 512, bf16: ~2-3 minutes
    python bench/gpu.py --sides hand dlx-compile  # the hand loop and dlx with trainer.compile=true only
    python bench/gpu.py --quick --device cpu      # tiny sizes: shows that it runs, measures nothing

The same network (`model=resnet model.depth=20`, built by dlx.build.build_model with the same seed), the same
CIFAR-10-shaped random data (--train images of 3x32x32 in 10 classes, plus --holdout each for validation and test,
written once as uint8 arrays to an .npz that `dataset=npz` reads, normalised and held on the device), the same
batch size, torch.optim.Adam with the same lr and bf16 autocast are trained by:

* dlx: a real `dlx train` run (overhead.dlx_run): composed from conf/, MLflow in a temporary SQLite store with
  params, per-step and per-epoch metrics, checkpoints and plots; its per-epoch `epoch_time` (training plus
  validation, after a device sync) is read back from MLflow.
* engine: dlx's loop alone (dlx.build.build, then Trainer.fit: no MLflow, no checkpoints, no progress lines), its
  `epoch_time` as dlx logs it: with dlx and hand it tells the loop's own cost from the run's around it.
* hand: overhead.hand_loop, the loop one writes by hand (randperm, index the device tensors, forward and loss
  under autocast, backward, step; then validation loss and accuracy), timed per epoch after a device sync.
* lightning: a LightningModule around the same network and optimizer, Trainer(precision="bf16-mixed") with
  Lightning's default logger and checkpoints, fed the same device-indexed batches (a DataLoader collating single
  samples would measure the loader, not Lightning); an epoch is timed from on_train_epoch_start to the end of
  validation, after a device sync, as dlx times it. Lightning is imported only here; without it the column is
  skipped with a line.
* dlx-compile (only when --sides names it): dlx with trainer.compile=true.

Each loop runs first in turn from repeat to repeat; the first epoch of every run (cuDNN's and the allocator's
warm-up, torch.compile's compilation) is dropped; a ratio compares median epoch times. Target: dlx / hand <= 1.02,
and dlx ahead of Lightning. Measurements: bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from overhead import common_arguments, dlx_run, hand_loop, hand_loop_parts, resolved_config, start

TARGET = 1.02
SIDES = ["dlx", "engine", "hand", "lightning", "dlx-compile"]
QUICK = {"train": 128, "holdout": 32, "batch": 32, "depth": 8, "epochs": 3, "repeats": 1}


def write_data(path: Path, train: int, holdout: int, seed: int = 0) -> None:
    """Random CIFAR-10-shaped uint8 images with random labels: the speed of a step does not depend on what the
    pixels show, and nothing needs downloading."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", train), ("val", holdout), ("test", holdout)):
        arrays[f"x_{split}"] = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, 10, size=n, dtype=np.int64)
    np.savez(path, **arrays)


def overrides(args, data: Path, compile_: bool = False) -> list[str]:
    return ["dataset=npz", f"dataset.path='{data}'", "model=resnet", f"model.depth={args.depth}",
            f"trainer.device={args.device}", f"trainer.amp={args.amp}", f"trainer.batch_size={args.batch}",
            f"trainer.epochs={args.epochs}", "trainer.progress=plain", f"trainer.compile={str(compile_).lower()}"]


def lightning_module():
    """Lightning's package (lightning.pytorch, else pytorch_lightning), or None when neither is installed."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return None
    return pl


class DeviceBatches:
    """(x, y) batches indexed out of tensors on the device, in a fresh random order per pass when `shuffle`: what
    dlx and the hand loop feed their step, handed to Lightning as the iterable it accepts in a DataLoader's place."""

    def __init__(self, x, y, batch_size: int, shuffle: bool):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        import torch

        n = len(self.y)
        order = torch.randperm(n, device=self.x.device) if self.shuffle else None
        for first in range(0, n, self.batch_size):
            if order is None:
                yield self.x[first:first + self.batch_size], self.y[first:first + self.batch_size]
            else:
                idx = order[first:first + self.batch_size]
                yield self.x[idx], self.y[idx]


def lightning_loop(pl, cfg: dict, root: Path) -> tuple[list[float], float]:
    """Lightning's Trainer on the network, data and optimizer the hand loop gets (overhead.hand_loop_parts);
    (epoch times, mean wall seconds per epoch after the first)."""
    import torch
    import torch.nn.functional as F

    data, net, optimizer = hand_loop_parts(cfg, same_kernel=False)
    device = data.train.device
    t = cfg["trainer"]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, _):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train/loss", loss, batch_size=len(y))
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            logits = self.net(x)
            self.log("val/loss", F.cross_entropy(logits, y), batch_size=len(y))
            self.log("val/acc", (logits.argmax(-1) == y).float().mean(), batch_size=len(y))

        def configure_optimizers(self):
            return optimizer

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times, self.ends, self.t0 = [], [], 0.0

        def on_train_epoch_start(self, trainer, module):
            sync()
            self.t0 = time.perf_counter()

        def on_validation_epoch_end(self, trainer, module):
            if not trainer.sanity_checking:
                sync()
                self.times.append(time.perf_counter() - self.t0)

        def on_train_epoch_end(self, trainer, module):
            sync()
            self.ends.append(time.perf_counter())

    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=t["epochs"],
        precision="bf16-mixed" if t["amp"] == "bf16" else "32-true", default_root_dir=str(root),
        log_every_n_steps=t["log_every_n_steps"], enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer])
    trainer.fit(Module(), train_dataloaders=DeviceBatches(data.x_train, data.y_train, t["batch_size"], True),
                val_dataloaders=DeviceBatches(data.x_val, data.y_val, t["eval_batch_size"], False))
    if len(timer.times) != t["epochs"]:
        raise RuntimeError(f"lightning: timed {len(timer.times)} of {t['epochs']} epochs")
    return timer.times, (timer.ends[-1] - timer.ends[0]) / (len(timer.ends) - 1)


def engine_loop(cfg: dict) -> tuple[list[float], float]:
    """dlx's Trainer.fit on what dlx.build.build makes of the config, nothing around it; (epoch_time per epoch,
    mean wall seconds per epoch after the first)."""
    from dlx.build import build
    from dlx.engine import Callback

    class Ends(Callback):
        def __init__(self):
            self.ends = []

        def on_epoch_end(self, trainer, state, metrics):
            self.ends.append(time.perf_counter())

    ends = Ends()
    state = build(cfg, callbacks=[ends]).trainer.fit()
    return [m["epoch_time"] for m in state.history], (ends.ends[-1] - ends.ends[0]) / (len(ends.ends) - 1)


def measure(args, sides: list[str], data: Path, store: Path, pl) -> dict[str, dict[str, list[float]]]:
    """Per side: epochs (all runs' epoch times after the first), per_run (each run's median) and wall."""
    import logging
    import warnings

    import torch.nn.functional as F

    results = {side: {"epochs": [], "per_run": [], "wall": []} for side in sides}
    hand_cfg = resolved_config([*overrides(args, data), "tracking.enabled=false"])
    for r in range(args.repeats):
        order = sides[r % len(sides):] + sides[:r % len(sides)]  # each loop runs first in turn
        for side in order:
            if side in ("dlx", "dlx-compile"):
                times, wall = dlx_run(overrides(args, data, side == "dlx-compile"), store, f"{side}-{r}", "gpu")
            elif side == "engine":
                times, wall = engine_loop(hand_cfg)
            elif side == "hand":
                times, wall = hand_loop(hand_cfg, False, F.cross_entropy)[:2]
            else:
                # Lightning's advice and info lines (devices, tips, logger folders) are not results
                for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
                    logging.getLogger(name).setLevel(logging.ERROR)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    times, wall = lightning_loop(pl, hand_cfg, store / f"lightning-{r}")
            s = results[side]
            s["epochs"] += times[1:]  # the first epoch of every run is warm-up
            s["per_run"].append(statistics.median(times[1:]))
            s["wall"].append(wall)
        print(f"  repeat {r + 1}/{args.repeats}: median epoch "
              + ", ".join(f"{side} {results[side]['per_run'][-1] * 1e3:.1f} ms" for side in sides), flush=True)
    return results


def report(results: dict, samples: int) -> bool:
    """Print every side's epoch times and its ratio to the hand loop; True when dlx meets the targets."""
    hand = results["hand"]
    print(f"{'loop':<12} {'median epoch':>12} {'samples/s':>10} {'wall/epoch':>10}  per-run medians (ms)")
    for side, s in results.items():
        median = statistics.median(s["epochs"])
        print(f"{side:<12} {median * 1e3:>9.1f} ms {samples / median:>10,.0f} {statistics.median(s['wall']) * 1e3:>7.1f} ms  "
              + ", ".join(f"{x * 1e3:.1f}" for x in s["per_run"]))
    ok = True
    for side, s in results.items():
        if side == "hand":
            continue
        ratio = statistics.median(s["epochs"]) / statistics.median(hand["epochs"])
        per_repeat = ", ".join(f"{a / b:.3f}" for a, b in zip(s["per_run"], hand["per_run"]))
        verdict = ""
        if side == "dlx":
            passed = ratio <= TARGET
            ok &= passed
            verdict = f"  target <= {TARGET:.2f} {'PASS' if passed else 'FAIL'}"
        print(f"ratio {side}/hand {ratio:.3f} (per repeat {per_repeat}){verdict}")
    if {"dlx", "lightning"} <= results.keys():
        dlx, lightning = (statistics.median(results[s]["epochs"]) for s in ("dlx", "lightning"))
        ahead = dlx < lightning
        ok &= ahead
        print(f"dlx ahead of lightning: {'yes' if ahead else 'no'} (dlx/lightning {dlx / lightning:.3f})")
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(p, epochs=5, repeats=3)
    p.add_argument("--device", default="cuda", help="trainer.device of every loop (default cuda)")
    p.add_argument("--amp", default=None, choices=["off", "bf16"], help="mixed precision (default bf16 on CUDA, "
                   "off elsewhere)")
    p.add_argument("--train", type=int, default=50_000, help="training images (default 50000)")
    p.add_argument("--holdout", type=int, default=10_000, help="validation images, and as many test (default 10000)")
    p.add_argument("--batch", type=int, default=512, help="batch size (default 512)")
    p.add_argument("--depth", type=int, default=20, help="ResNet depth, 6n+2 (default 20)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=SIDES[:-1],
                   help="the loops to time; hand, the baseline, always runs (default: all but dlx-compile)")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny sizes to check that the script runs: {', '.join(f'{k} {v}' for k, v in QUICK.items())}")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.amp is None:
        args.amp = "bf16" if args.device.startswith("cuda") else "off"
    torch = start(p, args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (try --quick --device cpu)")

    pl = lightning_module()
    sides = [s for s in SIDES if s in {*args.sides, "hand"} and (s != "lightning" or pl)]
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"dlx on a GPU: ResNet-{args.depth}, {args.train:,} random 3x32x32 images of 10 classes (+{args.holdout:,} "
          f"validation), batch {args.batch}, amp {args.amp}, Adam; device {args.device} ({where}); torch "
          f"{torch.__version__}, cuDNN benchmark {torch.backends.cudnn.benchmark}; "
          f"{args.epochs} epochs x {args.repeats} repeats per loop, first epoch of each run dropped")
    if pl is None and "lightning" in args.sides:
        print("lightning: not installed (neither lightning nor pytorch_lightning imports): column skipped")
    elif pl is not None:
        print(f"lightning: {pl.__name__} {pl.__version__}")
    t0, benchmark = time.perf_counter(), torch.backends.cudnn.benchmark
    with tempfile.TemporaryDirectory(prefix="dlx-gpu-") as tmp:
        data = Path(tmp) / "cifar_shaped.npz"
        write_data(data, args.train, args.holdout)
        results = measure(args, sides, data, Path(tmp), pl)
    print()
    if torch.backends.cudnn.benchmark != benchmark:  # one loop changed a setting the others then ran with
        print(f"note: cuDNN benchmark was {benchmark} at the start and is {torch.backends.cudnn.benchmark} now")
    ok = report(results, args.train)
    print(f"\nratio = loop / hand of the median epoch times (training plus validation, after a device sync); "
          f"took {time.perf_counter() - t0:.0f}s")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    sys.exit(main())

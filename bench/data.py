"""The same image folder trained from tensors held in memory and streamed through DataLoader workers.

    python bench/data.py [--images 2000] [--size 32] [--epochs 4] [--repeats 2] [--workers 2] [--threads 1]
                         [--device cpu]

A folder of `--images` PNGs (10 classes, drawn with a seeded generator) is written to a temporary directory
and read by dlx.data.image_folder. Each repeat trains the same small CNN with the same seed, by dlx's own
loop (dlx.engine.Trainer), once per path, in turn:

* tensors: `stream=off`: every image decoded once, up front, and held as a float32 tensor;
* stream: `stream=on`: each batch decoded every epoch by `--workers` DataLoader workers (forkserver) while
  the loop trains, and moved, scaled and normalised per batch.

Printed per path: the one-off preparation time (decoding for the tensor path; the label pass, normalisation
statistics and the workers' start for the stream), the median training samples/s over the epochs after the
first (train and validation, as dlx's samples_per_sec), and the ratio stream / tensors. A ratio below 1 is
what streaming costs per epoch; the preparation times say when it pays back.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlx.data import image_folder, prepare
from dlx.engine import FitOptions, Trainer


class ConstantLR:
    monitor, lr = None, 0.05

    def step_batch(self, step):
        pass

    def state_dict(self):
        return {}


def write_folder(root: Path, images: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        label = i % 10
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        # a class-coloured square at a random place on noise: learnable, and not trivially compressible
        pixels = rng.integers(0, 256, (size * 2, size * 2, 3), dtype=np.uint8)
        at = rng.integers(0, size, 2)
        pixels[at[0]:at[0] + size // 2, at[1]:at[1] + size // 2] = (25 * label, 255 - 25 * label, 128)
        Image.fromarray(pixels).save(folder / f"{i}.png")  # 2x the size: the resize is part of the read


def train(path: str, size: int, stream: str, epochs: int, workers: int, device: str) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    data = prepare(image_folder(path=path, size=size), stream=stream, workers=workers, device=device)
    if stream == "on":  # the workers start with the first pass: count that as preparation too
        next(iter(data.val.batches([(0, 1)])))
    prepared = time.perf_counter() - t0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, data.num_classes)).to(device)
    trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                      schedule=ConstantLR(), loss_fn=F.cross_entropy, eval_loss_fn=F.cross_entropy, data=data,
                      options=FitOptions(epochs=epochs, batch_size=64, eval_batch_size=256))
    history = trainer.fit().history
    return prepared, [h["samples_per_sec"] for h in history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_folder(Path(tmp), args.images, args.size)
        print(f"{args.images} PNGs of {2 * args.size}x{2 * args.size}, read at {args.size}x{args.size}, written in "
              f"{time.perf_counter() - t0:.1f}s; {args.epochs} epochs x {args.repeats} repeats, "
              f"{args.workers} workers, {torch.get_num_threads()} torch thread(s), {args.device}")
        results = {"tensors": ([], []), "stream": ([], [])}
        for repeat in range(args.repeats):
            order = ("tensors", "stream") if repeat % 2 == 0 else ("stream", "tensors")
            for name in order:
                prepared, rates = train(tmp, args.size, "off" if name == "tensors" else "on", args.epochs, args.workers,
                                         args.device)
                results[name][0].append(prepared)
                results[name][1].extend(rates)
    medians = {}
    for name, (prepared, rates) in results.items():
        medians[name] = statistics.median(rates)
        print(f"{name:8s} prepare {statistics.median(prepared):6.2f}s   samples/s median {medians[name]:8.0f} "
              f"(min {min(rates):.0f}, max {max(rates):.0f}, n={len(rates)} epochs)")
    print(f"ratio stream / tensors: {medians['stream'] / medians['tensors']:.2f}")


if __name__ == "__main__":
    main()

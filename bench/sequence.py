"""Tokens per second of a character language model under `dlx train` against a hand-written loop, in one process.

    python bench/sequence.py [--model transformer|lstm] [--epochs N] [--repeats R] [--chars C] [--threads T]

The text is the repository's own: its Markdown and the Python of dlx/, the first --chars characters. The same
char LM (dataset=text, dlx.build.build_model, same config, seed and size), the same windows (dlx.build.build_data),
the same batch size and torch.optim.Adam with the same lr are trained three times per repeat, as bench/overhead.py
does for the digits MLP and CNN, whose comparison and report this script shares:

* dlx: a real `dlx train` run through dlx.run.train, in a temporary SQLite store (params, metrics, checkpoints,
  plots); its per-epoch `epoch_time` is read back from MLflow.
* baseline: what one writes by hand: randperm shuffle, forward, per-token cross-entropy over the flattened
  (N * T, C) logits, backward, step; then the validation loss and token accuracy; timed with perf_counter.
* same_kernel: the same loop with the Adam kernel dlx picks (fused on CPU): dlx's own cost.

Tokens per second are training tokens (windows x context) per median epoch, validation included in the epoch as
dlx's `epoch_time` includes it. Each loop runs first in turn from repeat to repeat; the first epoch of every run
is warm-up and dropped; the ratio compares median epoch times (target <= 1.10). Measurements: bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from overhead import (
    BASELINES,
    Comparison,
    common_arguments,
    dlx_run,
    hand_loop,
    report,
    resolved_config,
    start,
)

REPO = Path(__file__).resolve().parents[1]
# small enough for a 2-core CPU: a few seconds an epoch
MODELS = {
    "transformer": ["model=transformer", "model.width=64", "model.depth=2", "model.heads=4"],
    "lstm": ["model=lstm", "model.hidden=128", "model.embedding=32"],
}


def corpus(path: Path, chars: int) -> int:
    """Write the first `chars` characters of the repository's Markdown and dlx's Python to path; their count."""
    files = sorted(REPO.glob("*.md")) + sorted(REPO.glob("docs/**/*.md")) + sorted(REPO.glob("dlx/**/*.py"))
    text = "\n".join(f.read_text(encoding="utf-8") for f in files)[:chars]
    path.write_text(text, encoding="utf-8")
    return len(text)


def overrides(model: str, text: Path, context: int, epochs: int) -> list[str]:
    return ["dataset=text", f"dataset.path='{text}'", f"dataset.context={context}", *MODELS[model],
            f"trainer.epochs={epochs}", "trainer.progress=plain"]


def run_dlx(args: list[str], store: Path, run_name: str) -> tuple[list[float], float]:
    """One `dlx train` run (overhead.dlx_run); (epoch_time per epoch, mean wall seconds per epoch after the first)."""
    return dlx_run(args, store, run_name, "sequence", step_metrics=False)  # small --chars: under one log window


def run_baseline(args: list[str], same_kernel: bool) -> tuple[list[float], float, int, int, int]:
    """The hand-written loop (overhead.hand_loop) with a per-token cross-entropy; (epoch times, mean wall
    seconds per epoch after the first, parameters, steps per epoch, training tokens per epoch)."""
    import torch.nn.functional as F

    from dlx.tasks import IGNORE

    def per_token(logits, y):
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)

    return hand_loop(resolved_config([*args, "tracking.enabled=false"]), same_kernel, per_token)


def measure(model: str, args: list[str], repeats: int, store: Path) -> tuple[Comparison, int]:
    c, tokens = Comparison(), 0
    sides = ("dlx", *BASELINES)
    for r in range(repeats):
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:  # each loop runs first in turn
            if side == "dlx":
                times, wall = run_dlx(args, store, f"{model}-{r}")
            else:
                times, wall, c.params, c.steps_per_epoch, tokens = run_baseline(args, side == "same_kernel")
            s = getattr(c, side)
            s.epochs += times[1:]  # the first epoch of every run is warm-up
            s.per_run.append(statistics.median(times[1:]))
            s.wall.append(wall)
        print(f"  repeat {r + 1}/{repeats}: median epoch "
              + ", ".join(f"{side} {getattr(c, side).per_run[-1] * 1e3:.1f} ms" for side in sides), flush=True)
    return c, tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="transformer")
    common_arguments(p, epochs=8, repeats=3)
    p.add_argument("--chars", type=int, default=150_000, help="characters of text (default 150000)")
    p.add_argument("--context", type=int, default=64, help="characters per window (default 64)")
    ns = p.parse_args(argv)
    torch = start(p, ns)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dlx-sequence-") as tmp:
        text = Path(tmp) / "corpus.txt"
        chars = corpus(text, ns.chars)
        args = overrides(ns.model, text, ns.context, ns.epochs)
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        print(f"dlx sequence: char LM, model={ns.model}, {chars:,} characters of the repository's text, context "
              f"{ns.context}, torch {torch.__version__} with {torch.get_num_threads()} thread(s), {os.cpu_count()} "
              f"CPUs, {ns.epochs} epochs x {ns.repeats} repeats per loop, first epoch of each run dropped"
              + (f"; load average at start {load[0]:.2f}" if load else ""))
        comparison, tokens = measure(ns.model, args, ns.repeats, Path(tmp))
    print()
    ok = report({f"char LM {ns.model}": comparison})
    rates = ", ".join(f"{side} {tokens / statistics.median(getattr(comparison, side).epochs):,.0f}"
                      for side in ("dlx", *BASELINES))
    print(f"  tokens per second      {rates}  ({tokens:,} training tokens per epoch, validation in the epoch)")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print("\nratio = dlx / baseline of the median epoch times (the inverse of the tokens-per-second ratio)"
          + (f"; load average at end {load[0]:.2f}" if load else "") + f"; took {time.perf_counter() - t0:.0f}s")
    return 0 if ok or not ns.strict else 1


if __name__ == "__main__":
    sys.exit(main())

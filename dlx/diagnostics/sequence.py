"""Diagnostics of sequence models: the gradient through time and attention maps.

Gradient through time (Bengio et al. 1994; Pascanu et al. 2013): on a fixed batch, the norm of the loss
gradient with respect to the top recurrent layer's output at each step t, ||dL/dh_t||, over the batch and
the features. A plain tanh RNN's curve falls steeply towards the first steps (the gradient vanishes on its
way back through time); an LSTM's or GRU's stays flatter. The top layer is the last of torch's nn.RNN,
nn.LSTM and nn.GRU modules that one forward pass calls exactly once: it then ran over the whole input (a
decoder called once per output step is not it). The picture speaks for targets read at the end (a label, a
value, a decoded sequence); under a steps target every position has a loss of its own and the curve stays flat.
A padded token batch read through packed sequences is not replayed (no curve).

Attention maps: the weights a model's `attention_maps(x)` returns, (N, rows, cols) each, drawn as heatmaps
for the first few validation samples, with the input image beside a map when the input is an image.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dlx.diagnostics.common import evaluated
from dlx.engine import takes_target
from dlx.losses import LossFn
from dlx.plots import pyplot, save_figure

log = logging.getLogger("dlx")


@contextlib.contextmanager
def _hooked(modules, hook):
    hooks = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _top_recurrent(model: nn.Module, x: torch.Tensor) -> nn.RNNBase | None:
    """The last recurrent module one forward pass of x calls exactly once (over the whole input)."""
    calls: list[nn.Module] = []
    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    with _hooked(rnns, lambda m, _i, _o: calls.append(m)), evaluated(model), torch.no_grad():
        model(x)
    once = [m for m in calls if calls.count(m) == 1]
    return once[-1] if once else None


def _state(hx, index: int, lstm: bool, like: torch.Tensor, size: int):
    if hx is None:
        zero = like.new_zeros(len(like), size)
        return (zero, zero) if lstm else zero
    return (hx[0][index], hx[1][index]) if lstm else hx[index]


def unroll(rnn: nn.RNNBase, x: torch.Tensor, hx=None, keep: list | None = None):
    """torch's recurrence (the equations of the nn.RNN, nn.LSTM and nn.GRU docs) step by step with the module's
    weights, returning what the module returns. Each step's hidden state of the top layer is appended to `keep`
    (one list per direction), so that autograd can take the loss's derivative with respect to it: the fused
    kernel hides the states, and its output sequence carries only their direct use, not the one through the
    next step (with a head on the last step, dL/d(output_t) is 0 for every other t)."""
    lstm, gru = isinstance(rnn, nn.LSTM), isinstance(rnn, nn.GRU)
    act = torch.relu if getattr(rnn, "nonlinearity", "tanh") == "relu" else torch.tanh
    seq = x if rnn.batch_first else x.transpose(0, 1)
    steps, dirs, size = seq.shape[1], 2 if rnn.bidirectional else 1, rnn.hidden_size
    finals_h, finals_c = [], []
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            w_hh = getattr(rnn, "weight_hh" + sfx)
            b_hh = getattr(rnn, "bias_hh" + sfx) if rnn.bias else None
            xs = F.linear(seq, getattr(rnn, "weight_ih" + sfx), getattr(rnn, "bias_ih" + sfx) if rnn.bias else None)
            state = _state(hx, layer * dirs + d, lstm, seq, size)
            states: list[torch.Tensor] = [seq] * steps
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                h = state[0] if lstm else state
                gi, gh = xs[:, t], F.linear(h, w_hh, b_hh)
                if lstm:
                    i, f, g, o = (gi + gh).chunk(4, dim=-1)
                    c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
                    state = (torch.sigmoid(o) * torch.tanh(c), c)
                elif gru:
                    (ir, iz, inn), (hr, hz, hn) = gi.chunk(3, dim=-1), gh.chunk(3, dim=-1)
                    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                    state = (1 - z) * torch.tanh(inn + r * hn) + z * h
                else:
                    state = act(gi + gh)
                states[t] = state[0] if lstm else state
            if keep is not None and layer == rnn.num_layers - 1:
                keep.append(states)
            finals_h.append(state[0] if lstm else state)
            finals_c.append(state[1] if lstm else state)
            outs.append(torch.stack(states, dim=1))
        seq = torch.cat(outs, dim=-1)
        if layer < rnn.num_layers - 1 and rnn.dropout and rnn.training:
            seq = F.dropout(seq, rnn.dropout)
    out = seq if rnn.batch_first else seq.transpose(0, 1)
    h_n = torch.stack(finals_h)
    return out, ((h_n, torch.stack(finals_c)) if lstm else h_n)


def _unrollable(rnn: nn.RNNBase, inputs: tuple) -> bool:
    x = inputs[0] if inputs else None
    return isinstance(x, torch.Tensor) and x.dim() == 3 and not getattr(rnn, "proj_size", 0)


def grad_through_time(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> list[float] | None:
    """||dL/dh_t|| for each step t of the top recurrent layer (both directions together), or None when the
    model has no recurrent layer that reads the whole input. The loss is computed as in training (train mode,
    the targets passed to a forward that takes them); the parameters' .grad, the dropout draws and the model's
    mode and buffers are left as they were."""
    top = _top_recurrent(model, x)
    kept: list[list[torch.Tensor]] = []

    def replay(module, inputs, _out):  # the module's output, recomputed so that its states join the graph
        if not kept and _unrollable(module, inputs):
            return unroll(module, inputs[0], inputs[1] if len(inputs) > 1 else None, keep=kept)
        return None

    if top is None:
        return None
    with _hooked([top], replay), evaluated(model, train=True):
        out = model(x, target=y) if takes_target(model) else model(x)
        if not kept:
            return None
        flat = [h for states in kept for h in states]
        grads = torch.autograd.grad(loss_fn(out, y), flat, allow_unused=True)
    steps = len(kept[0])
    squares = [0.0] * steps
    for k, g in enumerate(grads):
        if g is not None:
            squares[k % steps] += float(g.float().pow(2).sum())
    return [v ** 0.5 for v in squares]


def first_last(norms: Sequence[float]) -> float:
    """||dL/dh_0|| / ||dL/dh_{T-1}||: how much of the last step's gradient reaches the first."""
    return norms[0] / norms[-1] if norms[-1] > 0 else float("nan")


def plot_grad_through_time(curves: dict[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """||dL/dh_t|| against t, one line per label (init, final), on a log axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, norms in curves.items():
        ax.plot(range(len(norms)), norms, "-" if label == "init" else "--", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_ylabel("||dL/dh_t|| (top recurrent layer)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def attention_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's attention_maps(x) in eval mode without gradients, on the host; {} for a model without it."""
    if not callable(getattr(model, "attention_maps", None)):
        return {}
    with evaluated(model), torch.no_grad():
        maps = model.attention_maps(x)
    return {name: w.detach().float().cpu() for name, w in maps.items()}


def _image(x: torch.Tensor):
    """A sample (C, H, W) as something imshow draws: (H, W) or (H, W, 3) scaled to [0, 1]."""
    x = x.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    return x[0] if len(x) != 3 else x.permute(1, 2, 0)


def plot_attention(weights: torch.Tensor, x: torch.Tensor, path: str | Path, *, name: str,
                   tokens: Sequence[str] | None = None) -> Path:
    """One heatmap per sample of weights (N, rows, cols). A token input labels the columns with its tokens
    (short inputs only); an image input is drawn to the left of its map."""
    plt = pyplot()
    n, image = len(weights), x.dim() == 4
    fig, axes = plt.subplots(n, 2 if image else 1, figsize=(8 if image else 6, 3 * n), squeeze=False)
    for i in range(n):
        ax = axes[i, -1]
        shown = ax.imshow(weights[i].numpy(), cmap="viridis", aspect="equal" if image else "auto", vmin=0)
        fig.colorbar(shown, ax=ax, fraction=0.046)
        if image:
            axes[i, 0].imshow(_image(x[i]), cmap="gray")
            axes[i, 0].set_axis_off()
            ax.set_axis_off()  # a map over the patch grid, beside the image it covers
            ax.set_title(f"sample {i}: {name}")
        else:
            ax.set_xlabel("input position")
            ax.set_ylabel("output step")
            ax.set_title(f"sample {i}: {name}")
            ids = x[i].tolist()
            if tokens is not None and len(ids) <= 40:
                ax.set_xticks(range(len(ids)), [tokens[t] if 0 <= t < len(tokens) else "?" for t in ids],
                              fontsize=7)
    return save_figure(fig, path)


class SequenceDiagnostics:
    """diagnostics.sequence of one run: the gradient through time at initialisation and on the final weights,
    and the attention maps of the final weights."""

    def __init__(self, cfg: dict, tracker, run_dir: Path, seed: int = 0):
        self.cfg, self.tracker, self.run_dir, self.seed = cfg, tracker, Path(run_dir), seed
        self.curves: dict[str, list[float]] = {}
        self._batch = None
        self._skipped = False  # the model has no recurrent layer to follow: said once

    def gradients(self, trainer, when: str) -> None:
        """Log bptt/grad_norm_<when> (step = t) and bptt/first_last_<when>; `when` is init or final."""
        from dlx.diagnostics.common import fixed_subset

        if self._batch is None:
            self._batch = fixed_subset(trainer.data.train, self.cfg["samples"], self.seed)
        norms = grad_through_time(trainer.model, trainer.eval_loss_fn, *self._batch)
        if norms is None:
            if not self._skipped:
                self._skipped = True
                log.info("diagnostics.sequence: the model has no recurrent layer over the whole input; "
                         "no gradient through time")
            return
        self.curves[when] = norms
        for t, v in enumerate(norms):
            self.tracker.log_metrics({f"bptt/grad_norm_{when}": v}, step=t)
        ratio = first_last(norms)
        self.tracker.log_metrics({f"bptt/first_last_{when}": ratio}, step=0)
        log.info("gradient through time (%s): ||dL/dh_0|| / ||dL/dh_%d|| = %.3g", when, len(norms) - 1, ratio)

    def finish(self, trainer) -> None:
        """The final gradient through time, its plot with the initial one, and the attention maps."""
        self.gradients(trainer, "final")
        if not self.tracker.enabled:
            return
        if self.curves:
            png = plot_grad_through_time(self.curves, self.run_dir / "grad_through_time.png",
                                         title="gradient norm through time: initialisation and final weights")
            self.tracker.log_artifact(png, "plots")
        data = trainer.data
        split = data.val if len(data.val) else data.test
        count = min(self.cfg["maps"], len(split))
        if count < 1 or not callable(getattr(trainer.model, "attention_maps", None)):
            return
        x, _ = split.take(torch.arange(count))
        tokens = getattr(getattr(data, "task", None), "tokens", None)
        for name, weights in attention_maps(trainer.model, x).items():
            if weights.dim() != 3:
                log.warning("attention map %r has shape %s, not (N, rows, cols): not drawn", name,
                            tuple(weights.shape))
                continue
            png = plot_attention(weights, x, self.run_dir / "attention" / f"{name}.png", name=name, tokens=tokens)
            self.tracker.log_artifact(png, "attention")

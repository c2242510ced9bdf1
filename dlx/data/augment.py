"""Training-time augmentation of whole batches, on whatever device the batch lives on.

Every op is vectorised over the batch (no Python loop over samples) and draws from torch's global
random generators, which the trainer seeds and checkpoints; there are no private generators. Per-
sample draws happen on the batch's device; the few per-batch scalars (mixing weight, CutMix box)
are drawn on the CPU, so the only host-device traffic is that of plain Python numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from dlx.data.eda import EDA

AUGMENTATIONS = ["cutmix", "cutout", "flip", "crop", "mixup", "noise"]
# Ops that move or cut pixels along spatial axes; they need (C, H, W) or (C, L) samples.
_SPATIAL_OPS = ("flip", "crop", "cutout", "cutmix")


def list_augmentations() -> list[str]:
    """Names of the individual augmentation ops."""
    return list(AUGMENTATIONS)


def create_augmentation(
    *,
    flip: bool = False,
    crop_padding: int = 0,
    cutout_size: int = 0,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    noise_std: float = 0.0,
    task=None,
    **text,
) -> BatchAugment | EDA | None:
    """A BatchAugment with the given ops, or None when every op is off (so callers can skip it).

    `text` holds the EDA keys (dlx.data.eda), which act on token inputs only; `task` is the data's
    dlx.tasks.Task, which says whether the inputs are tokens."""
    from dlx.data.eda import create_eda, enabled, settings

    augment = BatchAugment(flip=flip, crop_padding=crop_padding, cutout_size=cutout_size,
                           mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, noise_std=noise_std)
    text = settings(**text)
    if getattr(task, "vocab", None) is not None and augment.ops:
        raise ValueError(f"augmentation ({', '.join(augment.ops)}): these ops move or mix real values, and the "
                         "dataset gives token ids; allowed on token inputs: EDA (augmentation=eda)")
    if enabled(text):
        return create_eda(task=task, **text)
    return augment if augment.ops else None


def _check_number(name: str, value, *, integer: bool) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0 or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"augmentation option '{name}' must be {kind} >= 0, got {value!r}")


def _beta(alpha: float) -> float:
    """One Beta(alpha, alpha) draw from the global CPU generator."""
    concentration = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(concentration, concentration).sample())


class BatchAugment:
    """Random flip, crop, cutout, mixing (MixUp or CutMix) and Gaussian noise, applied in that order.

    Calling it on a batch (x, y) returns (x_aug, y_a, y_b, lam); train with
    lam * loss(out, y_a) + (1 - lam) * loss(out, y_b). Without mixing y_b is y_a and lam is 1.0.
    Samples are (C, H, W) images, (C, L) sequences (flip, crop and cutout act along L) or (F,)
    feature vectors (only mixup and noise apply).
    """

    def __init__(self, *, flip: bool = False, crop_padding: int = 0, cutout_size: int = 0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, noise_std: float = 0.0):
        if not isinstance(flip, bool):
            raise ValueError(f"augmentation option 'flip' must be true or false, got {flip!r}")
        _check_number("crop_padding", crop_padding, integer=True)
        _check_number("cutout_size", cutout_size, integer=True)
        _check_number("mixup_alpha", mixup_alpha, integer=False)
        _check_number("cutmix_alpha", cutmix_alpha, integer=False)
        _check_number("noise_std", noise_std, integer=False)
        self.flip = flip
        self.crop_padding = int(crop_padding)
        self.cutout_size = int(cutout_size)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.noise_std = float(noise_std)

    @property
    def ops(self) -> list[str]:
        """The enabled ops, in the order they are applied."""
        enabled = {"flip": self.flip, "crop": self.crop_padding > 0, "cutout": self.cutout_size > 0,
                   "mixup": self.mixup_alpha > 0, "cutmix": self.cutmix_alpha > 0, "noise": self.noise_std > 0}
        return [op for op in ("flip", "crop", "cutout", "mixup", "cutmix", "noise") if enabled[op]]

    def __repr__(self) -> str:
        settings = {"flip": self.flip, "crop_padding": self.crop_padding, "cutout_size": self.cutout_size,
                    "mixup_alpha": self.mixup_alpha, "cutmix_alpha": self.cutmix_alpha, "noise_std": self.noise_std}
        return f"BatchAugment({', '.join(f'{k}={v}' for k, v in settings.items() if v)})"

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Raise ValueError when an enabled op cannot act on samples of input_shape."""
        if len(input_shape) in (2, 3):
            return
        bad = [op for op in self.ops if op in _SPATIAL_OPS]
        if bad:
            names = ", ".join(f"'{op}'" for op in bad)
            noun, verb = ("augmentation", "needs") if len(bad) == 1 else ("augmentations", "need")
            raise ValueError(f"{noun} {names} {verb} image (C,H,W) or sequence (C,L) inputs; "
                             f"this dataset gives samples of shape {tuple(input_shape)}")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        self.check_input(tuple(x.shape[1:]))
        y_b, lam = y, 1.0
        if x.dim() in (3, 4):
            # Sequences become one-row images, so each op has a single implementation; only the
            # row axis is then left alone (no vertical padding, boxes span the whole row).
            is_image = x.dim() == 4
            x4 = x if is_image else x.unsqueeze(2)
            if self.flip:
                x4 = _flip(x4)
            if self.crop_padding:
                x4 = _crop(x4, padding=self.crop_padding, pad_rows=is_image)
            if self.cutout_size:
                x4 = _cutout(x4, size=self.cutout_size, box_rows=is_image)
            x = x4 if is_image else x4.squeeze(2)

        mixer = self._pick_mixer()
        if mixer is not None:
            perm = torch.randperm(x.shape[0], device=x.device)
            y_b = y[perm]
            if mixer == "mixup":
                lam = _beta(self.mixup_alpha)
                x = lam * x + (1.0 - lam) * x[perm]
            else:
                is_image = x.dim() == 4
                x4, lam = _cutmix(x if is_image else x.unsqueeze(2), perm, alpha=self.cutmix_alpha,
                                  box_rows=is_image)
                x = x4 if is_image else x4.squeeze(2)
        if self.noise_std:
            x = x + self.noise_std * torch.randn_like(x)
        return x, y, y_b, lam

    def _pick_mixer(self) -> str | None:
        if self.mixup_alpha and self.cutmix_alpha:
            return "cutmix" if float(torch.rand(())) < 0.5 else "mixup"
        if self.mixup_alpha:
            return "mixup"
        return "cutmix" if self.cutmix_alpha else None


def _flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each sample along its last axis with probability 1/2."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _crop(x: torch.Tensor, *, padding: int, pad_rows: bool) -> torch.Tensor:
    """Zero-pad by padding on each side, then cut a window of the original size at a random offset
    per sample, by gathering rows and then columns with per-sample index ranges."""
    n, c, h, w = x.shape
    pad_h = padding if pad_rows else 0
    padded = F.pad(x, (padding, padding, pad_h, pad_h))
    top = torch.randint(0, 2 * pad_h + 1, (n, 1), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    rows = top + torch.arange(h, device=x.device)
    cols = left + torch.arange(w, device=x.device)
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def _span(centre: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """(N, length) mask of positions in [centre - size // 2, centre - size // 2 + size)."""
    start = centre - size // 2
    positions = torch.arange(length, device=centre.device)
    return (positions >= start) & (positions < start + size)


def _cutout(x: torch.Tensor, *, size: int, box_rows: bool) -> torch.Tensor:
    """Zero a size x size square (a size-long segment for sequences) at a random centre per sample;
    boxes reaching past a border are clipped there."""
    n, _, h, w = x.shape
    cols = _span(torch.randint(0, w, (n, 1), device=x.device), size, w)
    if box_rows:
        rows = _span(torch.randint(0, h, (n, 1), device=x.device), size, h)
    else:
        rows = torch.ones(n, h, dtype=torch.bool, device=x.device)
    box = rows.unsqueeze(2) & cols.unsqueeze(1)
    return x.masked_fill(box.unsqueeze(1), 0.0)


def _cutmix(x: torch.Tensor, perm: torch.Tensor, *, alpha: float, box_rows: bool) -> tuple[torch.Tensor, float]:
    """Paste one box, taken from the permuted batch, into every sample. The box covers a fraction
    1 - lam0 (lam0 ~ Beta(alpha, alpha)) before clipping at the borders; the returned lam is
    recomputed from the clipped box so that the label weights match the pixels."""
    _, _, h, w = x.shape
    lam0 = _beta(alpha)
    if box_rows:
        ratio = math.sqrt(1.0 - lam0)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy = int(torch.randint(0, h, ()))
    else:
        cut_h, cut_w, cy = h, int(w * (1.0 - lam0)), h // 2
    cx = int(torch.randint(0, w, ()))
    y0, x0 = cy - cut_h // 2, cx - cut_w // 2
    y0, y1 = max(y0, 0), min(y0 + cut_h, h)
    x0, x1 = max(x0, 0), min(x0 + cut_w, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, lam

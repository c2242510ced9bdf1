"""Two random views of every sample of a batch, made on the batch's device with no loop over samples.

A random resized crop (area share in [crop_scale, 1], aspect ratio in [3/4, 4/3], each side clipped to the image's)
and a horizontal flip are one affine map per sample, so one `grid_sample` does both; then colour jitter (brightness,
contrast and saturation on the standardised pixels, images with three channels only; no hue), a cutout square and
Gaussian noise. Draws come from torch's global generators,
which the trainer seeds and checkpoints (`torch.random.fork_rng` gives evaluation fixed views).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dlx.data.augment import _cutout

# ITU-R BT.601 luma weights: the grey an image's saturation moves towards
_LUMA = (0.299, 0.587, 0.114)

# the aspect ratios of a crop, as in torchvision's RandomResizedCrop
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


class TwoViews:
    def __init__(self, *, crop_scale: float, flip: float, jitter: float, cutout: float, noise_std: float):
        self.crop_scale, self.flip, self.jitter = crop_scale, flip, jitter
        self.cutout, self.noise_std = cutout, noise_std

    def check_input(self, input_shape: tuple[int, ...], objective: str) -> None:
        if len(input_shape) != 3:
            from dlx.ssl.objective import image_data

            raise ValueError(f"objective={objective}: makes its views by cropping and flipping images of shape "
                             f"(channels, height, width), and the data's samples have shape {tuple(input_shape)}: "
                             f"allowed objective=supervised, or image data ({image_data()})")

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(x), self.view(x)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        x = self._crop_flip(x)
        if self.jitter and x.shape[1] == 3:
            x = self._colour(x)
        size = round(self.cutout * min(x.shape[-2:]))
        if size:
            x = _cutout(x, size=size, box_rows=True)
        if self.noise_std:
            x = x + self.noise_std * torch.randn_like(x)
        return x

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        area = self.crop_scale + (1 - self.crop_scale) * torch.rand(n, device=device)
        ratio = torch.exp(_LOG_RATIO[0] + (_LOG_RATIO[1] - _LOG_RATIO[0]) * torch.rand(n, device=device))
        # the crop's width and height as shares of the image's, each at most 1
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        # its centre, in grid_sample's [-1, 1] coordinates, anywhere the crop stays inside the image
        cx = (1 - w) * (2 * torch.rand(n, device=device) - 1)
        cy = (1 - h) * (2 * torch.rand(n, device=device) - 1)
        mirror = torch.where(torch.rand(n, device=device) < self.flip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = w * mirror, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """On standardised pixels (about unit spread per channel): brightness as an offset of up to `jitter`
        spreads, contrast as a scale around each image's mean, saturation as a move towards or away from its
        luma, each by a factor in [1 - jitter, 1 + jitter]."""
        n, device, j = x.shape[0], x.device, self.jitter

        def draw():
            return (j * (2 * torch.rand(n, 1, 1, 1, device=device) - 1)).to(x.dtype)

        x = x + draw()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + draw()) + mean  # contrast
        grey = (x * torch.tensor(_LUMA, device=device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return (x - grey) * (1 + draw()) + grey  # saturation

"""uint8 image batches -> normalised model input, with augmentation done per batch on the device.

Loader workers only decode and resize (no randomness, so they need no seeding and can be
persistent). Every random choice is drawn here from an explicit generator, seeded per epoch by
the engine: a resumed run sees exactly the augmentations an uninterrupted one would.

Shapes: images (B, 3, H, W) uint8 in, float32 (B, 3, H, W) out, normalised by mean/std.

On the CPU this runs beside the loader workers, on the same cores, and it is memory-bound: passes
over tens of MB per batch. So each image is flipped (a strided view of its uint8 pixels), converted
and normalised image by image, straight into the batch's one float buffer: no temporaries. That
loop is numpy, single-threaded on purpose: torch's OpenMP-parallel elementwise ops ran 3-4x slower
than one thread when the two cores were shared with the workers (or other jobs).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from retino.config import AugmentConfig


class BatchTransform:
    def __init__(
        self,
        mean: list[float],
        std: list[float],
        device: torch.device,
        augment: AugmentConfig | None = None,
        channels_last: bool = False,
    ) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.device = device
        self.augment = augment
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Random flips, rotation + resized crop (one affine warp), brightness/contrast jitter
        as configured, then (x - mean) / std. Returns a new tensor; `images` is left as is."""
        cfg, u = self.augment, None
        hflip = vflip = [False] * len(images)
        if cfg is not None:
            if generator is None:
                raise ValueError("augmentation needs a generator (seeded per epoch)")
            # One column per random choice, drawn on the CPU generator in a fixed order whatever
            # is enabled: the same seed gives the same batch on any device.
            u = torch.rand(len(images), 8, generator=generator)
            hflip, vflip = (u[:, 0] < cfg.hflip).tolist(), (u[:, 1] < cfg.vflip).tolist()
        warp = cfg is not None and (cfg.rotation > 0 or cfg.scale_min < 1 or cfg.color_jitter > 0)
        images = images.to(self.device, non_blocking=True)
        if u is not None and self.device.type == "cuda":
            u = u.pin_memory().to(self.device, non_blocking=True)  # a pageable copy would block
        # the warp and the jitter work on 0-255 pixels: normalise after them
        x = self._to_float(images, hflip, vflip, normalise=not warp, u=u)
        if warp:
            if cfg.rotation > 0 or cfg.scale_min < 1:
                x = _affine(x, u[:, 2:6], cfg)
            if cfg.color_jitter > 0:
                x = _color_jitter(x, u[:, 6:8], cfg.color_jitter)
            x.sub_(self.mean).div_(self.std)  # in place, the same arithmetic as (x - mean) / std
        return x.contiguous(memory_format=self.memory_format)

    def _to_float(
        self,
        images: torch.Tensor,
        hflip: list[bool],
        vflip: list[bool],
        normalise: bool,
        u: torch.Tensor | None,
    ) -> torch.Tensor:
        """float32 copy of uint8 `images`, image i mirrored left-right if hflip[i] and upside
        down if vflip[i] (exact: flipping before or after the conversion is the same); on a
        GPU the flips come from the draws `u` on the device (the same comparisons)."""
        if images.device.type == "cpu":
            out = torch.empty(images.shape, dtype=torch.float32)
            src, dst = images.numpy(), out.numpy()
            mean, std = self.mean[0].numpy(), self.std[0].numpy()
            for i, (h, v) in enumerate(zip(hflip, vflip, strict=True)):
                pixels = src[i, :, :: -1 if v else 1, :: -1 if h else 1]
                if normalise:
                    np.subtract(pixels, mean, out=dst[i], dtype=np.float32)
                    np.divide(dst[i], std, out=dst[i])
                else:
                    np.copyto(dst[i], pixels, casting="unsafe")
            return out
        out = torch.empty(
            images.shape,
            dtype=torch.float32,
            device=images.device,
            memory_format=self.memory_format,
        )
        if any(hflip) or any(vflip):
            # the same draws as the host's lists, compared on the device: one pass per
            # direction for the whole batch, not two kernels per image
            cfg = self.augment
            h, v = (u[:, 0] < cfg.hflip).view(-1, 1, 1, 1), (u[:, 1] < cfg.vflip).view(-1, 1, 1, 1)
            images = torch.where(h, images.flip(-1), images)
            images = torch.where(v, images.flip(-2), images)
        out.copy_(images)
        return out.sub_(self.mean).div_(self.std) if normalise else out


def _affine(x: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    # Rotation by angle a and zoom to a crop covering `area` of the image at a random offset:
    # the sampling grid is the output grid rotated, scaled by s = sqrt(area) and shifted.
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.rotation)
    scale = torch.sqrt(cfg.scale_min + (1 - cfg.scale_min) * u[:, 1])
    # shifts up to 1 - scale keep the crop inside the image (grid coordinates run -1..1)
    dx, dy = ((u[:, 2:4] * 2 - 1) * (1 - scale).unsqueeze(1)).unbind(1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _color_jitter(x: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    b = x.shape[0]
    brightness = 1 + (u[:, 0] * 2 - 1) * strength
    contrast = 1 + (u[:, 1] * 2 - 1) * strength
    x = x * brightness.view(b, 1, 1, 1)
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - grey) * contrast.view(b, 1, 1, 1) + grey
    return x.clamp(0, 255)

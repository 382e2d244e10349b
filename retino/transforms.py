"""uint8 image batches -> normalised model input, with augmentation done per batch on the device.

Loader workers only decode and resize (no randomness, so they need no seeding and can be
persistent). Every random choice is drawn here from an explicit generator, seeded per epoch by
the engine: a resumed run sees exactly the augmentations an uninterrupted one would.

Shapes: images (B, 3, H, W) uint8 in, float32 (B, 3, H, W) out, normalised by mean/std.
"""

import math

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
        x = images.to(self.device, non_blocking=True).float()
        if self.augment is not None:
            if generator is None:
                raise ValueError("augmentation needs a generator (seeded per epoch)")
            x = augment_batch(x, self.augment, generator)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random flips, rotation + resized crop (one affine warp), brightness/contrast jitter.

    x: float (B, 3, H, W) on a 0-255 scale. Random numbers are drawn on the CPU generator in a
    fixed order whatever is enabled, so the same seed gives the same batch on any device.
    """
    b = x.shape[0]
    u = torch.rand(b, 8, generator=generator).to(x.device)  # one column per random choice
    if cfg.hflip > 0:
        x = torch.where((u[:, 0] < cfg.hflip).view(b, 1, 1, 1), x.flip(-1), x)
    if cfg.vflip > 0:
        x = torch.where((u[:, 1] < cfg.vflip).view(b, 1, 1, 1), x.flip(-2), x)
    if cfg.rotation > 0 or cfg.scale_min < 1:
        x = _affine(x, u[:, 2:6], cfg)
    if cfg.color_jitter > 0:
        x = _color_jitter(x, u[:, 6:8], cfg.color_jitter)
    return x


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

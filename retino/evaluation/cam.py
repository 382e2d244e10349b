"""Grad-CAM (Selvaraju et al., 2017): where in the photograph the evidence for a grade lies.

For a target grade with score y and a layer's activations A (B, C, h, w), the map is
ReLU(sum_c w_c A_c) with w_c the spatial mean of dy/dA_c: channels that raise the score, weighted
by how much, kept where they fire. On a ResNet's last stage (layer4) the map is a size/32 grid;
`overlay` stretches it over the image the model saw (the preprocessed retina square).
"""

import functools

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch import nn

DISPLAY_SIDE = 448  # overlays of smaller model inputs are enlarged to this side
ALPHA = 0.55  # heat opacity at the hottest point; cold regions show the photograph untouched
# cyan -> magenta: the hot end of jet/turbo (dark red) vanishes on an orange-red retina
CMAP = "cool"


class GradCAM:
    """Hooks `layer` of `model` while open; call it with a normalised batch and target grades.

    The forward hook keeps the layer's output; the gradient is taken with torch.autograd.grad
    on that output, so no `.grad` is left on the weights and training state is untouched.
    """

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.model, self.layer = model, layer
        self._activations: torch.Tensor | None = None

    def __enter__(self) -> "GradCAM":
        self.model.eval()  # BatchNorm on running stats: an image's map must not depend on its batch
        self._handle = self.layer.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()
        self._activations = None

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._activations = output

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, h, w) maps in [0, 1] for grade target[i] of x[i]: 1 at the image's hottest cell,
        0 where nothing speaks for the grade (scaled by the maximum only, never stretched: a
        map that is warm all over says the evidence is everywhere)."""
        with torch.enable_grad():
            # an input that needs a gradient builds the graph even if every weight is frozen
            logits = self.model(x.detach().requires_grad_(True))
            score = logits.float().gather(1, target.view(-1, 1).to(logits.device)).sum()
            # samples are independent in eval mode, so one backward gives every sample its own
            (grads,) = torch.autograd.grad(score, self._activations)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        cam = F.relu((weights * self._activations.detach()).sum(1)).float()  # (B, h, w)
        return cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def overlay(image: np.ndarray, heat: torch.Tensor, caption: str) -> Image.Image:
    """The model's input (a preprocessed (S, S, 3) uint8 square, as the cache holds it) with
    `heat` over it and `caption` in the top-left corner, enlarged to at least DISPLAY_SIDE so
    a small input stays readable."""
    side = max(image.shape[0], DISPLAY_SIDE)
    square = Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC)
    heat = F.interpolate(
        heat[None, None].float().cpu(), size=(side, side), mode="bilinear", align_corners=False
    )
    h = heat[0, 0].clamp(0, 1).numpy()[..., None]  # (side, side, 1)
    colours = colormaps[CMAP](h[..., 0])[..., :3]
    pixels = np.asarray(square, np.float32) / 255
    blended = (1 - ALPHA * h) * pixels + ALPHA * h * colours
    out = Image.fromarray(np.round(blended * 255).astype(np.uint8))
    _caption(out, caption)
    return out


def _caption(image: Image.Image, text: str) -> None:
    """White text on a black box: the corners of a fundus photograph are black anyway."""
    px = max(10, image.width // 24)
    font = _font(px)
    draw = ImageDraw.Draw(image)
    pad = max(2, px // 4)
    _, _, right, bottom = draw.multiline_textbbox((pad, pad), text, font=font)
    draw.rectangle((0, 0, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.multiline_text((pad, pad), text, fill=(255, 255, 255), font=font)


@functools.lru_cache(maxsize=4)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()

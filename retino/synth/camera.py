"""The fundus camera, drawn from the camera random stream: where the circular field of view
falls on the square image, then illumination, field stop, rim glare, sensor noise, exposure,
colour tint, gamma and focus blur.  None of it depends on the grade."""

import math

import numpy as np
from PIL import Image, ImageFilter

from retino.synth.canvas import View, pixel_grid

_RNG = np.random.Generator
_F32 = np.float32
_HEADROOM = 2.0  # scene radiance range mapped onto the 12-bit tone-curve lookup table


def aim(rng: _RNG, n: int, eye: str) -> View:
    """Field-of-view radius and centre on the n x n image, camera rotation, eye side."""
    radius = n * rng.uniform(0.43, 0.485)
    cx = n / 2 + rng.uniform(-0.025, 0.025) * n
    cy = n / 2 + rng.uniform(-0.025, 0.025) * n
    angle = math.radians(rng.uniform(-12, 12))
    return View(n, cx, cy, radius, angle, 1 if eye == "left" else -1)


def illuminate(img: np.ndarray, rng: _RNG, view: View, grid: tuple[np.ndarray, np.ndarray]) -> None:
    """Uneven illumination cut to the circular field (sometimes flat at top and bottom), glare
    from the rim, sensor noise; everything outside the field goes black."""
    ug, vg = grid
    r2 = ug * ug + vg * vg
    r = np.sqrt(r2)
    light = 1.0 - rng.uniform(0.2, 0.45) * r2 * r  # vignetting
    edge = np.clip((1.0 - r) * 10.0, 0.0, 1.0)
    light *= 0.55 + 0.45 * edge * (2.0 - edge)  # darker rim
    ga = rng.uniform(0, 2 * math.pi)
    light *= 1.0 + rng.uniform(0.0, 0.22) * (math.cos(ga) * ug + math.sin(ga) * vg)  # tilt
    light *= np.clip(view.r * (1.0 - r) + 0.5, 0.0, 1.0)  # anti-aliased circular field
    if rng.random() < 0.25:  # field stop cut flat at top and bottom
        dy = np.abs(pixel_grid(view.size)[0] - view.cy)
        light *= np.clip(rng.uniform(0.82, 0.95) * view.r - dy + 0.5, 0.0, 1.0)
    if rng.random() < 0.35:
        _add_glare(img, rng, ug, vg)
    n = view.size
    img += rng.standard_normal((n, n, 3), dtype=_F32) * _F32(rng.uniform(0.004, 0.016))
    img *= light[..., None]


def _add_glare(img: np.ndarray, rng: _RNG, ug: np.ndarray, vg: np.ndarray) -> None:
    """Haze from a point on the rim: warm (reflection) or bluish (scatter)."""
    ga = rng.uniform(0, 2 * math.pi)
    gd = (ug - math.cos(ga)) ** 2 + (vg - math.sin(ga)) ** 2
    glare = np.exp(gd * (-1.0 / (2 * rng.uniform(0.2, 0.35) ** 2))) * rng.uniform(0.08, 0.3)
    gcol = (1.0, 0.8, 0.5) if rng.random() < 0.6 else (0.6, 0.7, 0.9)
    img += glare[..., None] * np.asarray(gcol, dtype=_F32)


def develop(img: np.ndarray, rng: _RNG) -> Image.Image:
    """8-bit RGB picture: exposure, colour tint and gamma through per-channel lookup tables on
    12-bit levels, then focus blur (now and then a defocused shot)."""
    n = img.shape[0]
    gain = math.exp(rng.normal(0.0, 0.22))
    tint = (rng.uniform(0.92, 1.08), rng.uniform(0.85, 1.12), rng.uniform(0.7, 1.3))
    gamma = rng.uniform(0.8, 1.2)
    levels = np.arange(4096, dtype=np.float64) * (_HEADROOM / 4095.0)
    idx = np.clip(img * (4095.0 / _HEADROOM), 0.0, 4095.0).astype(np.uint16)
    out = np.empty((n, n, 3), dtype=np.uint8)
    for c in range(3):
        lut = np.clip(levels * (gain * tint[c]), 0.0, 1.0) ** gamma * 255.0 + 0.5
        out[..., c] = lut.astype(np.uint8)[idx[..., c]]
    pic = Image.fromarray(out, mode="RGB")
    blur = rng.uniform(0.0, 0.7) * n / 256
    if rng.random() < 0.1:
        blur += rng.uniform(0.5, 1.5) * n / 256
    if blur > 0.2:
        pic = pic.filter(ImageFilter.GaussianBlur(blur))
    return pic

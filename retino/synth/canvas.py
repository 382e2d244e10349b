"""The drawing surface: anatomical coordinates, supersampled alpha layers, compositing.

Everything is painted into a float32 RGB array of linear scene radiance (about 0..1, with
headroom for glare) that the camera module later turns into 8-bit pixels.
"""

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SS = 3  # supersampling factor of the drawn (anti-aliased) layers

Region = tuple[np.ndarray, slice, slice]  # alpha 0..1 and the output slices it covers
Colour = tuple[float, float, float] | np.ndarray  # linear RGB


class View:
    """Maps anatomical coordinates to pixels of the square render.

    Anatomical coordinates (u, v) are in units of the field-of-view radius, centred on the field
    of view: u points temporally (away from the optic disc), v points down.  The left eye is
    drawn with the disc on the image's left; the right eye is its mirror image.  A small camera
    rotation and an offset of the field-of-view centre are applied on top.
    """

    def __init__(self, size: int, cx: float, cy: float, radius: float, angle: float, mirror: int):
        self.size = size
        self.cx, self.cy, self.r = cx, cy, radius
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.m = mirror

    def px(self, u: float, v: float, ss: int = SS) -> tuple[float, float]:
        x = self.m * u
        xr = self.cos * x - self.sin * v
        yr = self.sin * x + self.cos * v
        return ((self.cx + self.r * xr) * ss, (self.cy + self.r * yr) * ss)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomical (u, v) of every pixel centre, float32 arrays of shape (size, size)."""
        ys, xs = pixel_grid(self.size)
        xr = (xs - self.cx) / self.r
        yr = (ys - self.cy) / self.r
        u = self.m * (self.cos * xr + self.sin * yr)
        v = -self.sin * xr + self.cos * yr
        return u, v

    def window(self, u: float, v: float, rad: float) -> tuple[slice, slice]:
        """Output-pixel slices of a square around anatomical point (u, v) with radius `rad`."""
        x, y = self.px(u, v, ss=1)
        rp = rad * self.r
        n = self.size
        x0, x1 = min(n - 1, max(0, int(x - rp))), max(1, min(n, int(x + rp) + 2))
        y0, y1 = min(n - 1, max(0, int(y - rp))), max(1, min(n, int(y + rp) + 2))
        return slice(y0, y1), slice(x0, x1)


@lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates of the pixel centres (cached, read-only)."""
    c = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(c, c, indexing="ij")
    ys.flags.writeable = False
    xs.flags.writeable = False
    return ys, xs


class Layers:
    """Lazily created supersampled 8-bit drawing layers (one alpha mask per material)."""

    def __init__(self, size: int):
        self.dim = size * SS
        self.size = size
        self.images: dict[str, Image.Image] = {}
        self.draws: dict[str, ImageDraw.ImageDraw] = {}

    def draw(self, name: str) -> ImageDraw.ImageDraw:
        if name not in self.draws:
            im = Image.new("L", (self.dim, self.dim), 0)
            self.images[name] = im
            self.draws[name] = ImageDraw.Draw(im)
        return self.draws[name]

    def region(self, name: str, blur: float = 0.0) -> Region | None:
        """The layer's non-empty part, downsampled to the output size (box filter, i.e.
        anti-aliased), optionally blurred, as float32 alpha 0..1 plus its output slices."""
        im = self.images.get(name)
        bbox = im.getbbox() if im is not None else None
        if bbox is None:
            return None
        m = int(3 * blur) + 2
        n = self.size
        x0, y0 = max(0, bbox[0] // SS - m), max(0, bbox[1] // SS - m)
        x1, y1 = min(n, -(-bbox[2] // SS) + m), min(n, -(-bbox[3] // SS) + m)
        small = im.crop((x0 * SS, y0 * SS, x1 * SS, y1 * SS)).reduce(SS)
        if blur > 0.25:
            small = small.filter(ImageFilter.GaussianBlur(blur))
        return np.asarray(small, dtype=np.float32) * (1.0 / 255.0), slice(y0, y1), slice(x0, x1)


def blend(img: np.ndarray, reg: Region | None, colour: Colour, opacity: float = 1.0) -> None:
    """Alpha-blend towards `colour` (reflecting, pale materials) where the region's alpha is set."""
    if reg is None:
        return
    alpha, ys, xs = reg
    view = img[ys, xs]
    a = (alpha * opacity)[..., None]
    view *= 1.0 - a
    view += a * np.asarray(colour, dtype=np.float32)


def darken(img: np.ndarray, reg: Region | None, factor: Colour, opacity: float = 1.0) -> None:
    """Multiply towards `factor` (per channel) where alpha is set: absorbing (red) materials."""
    if reg is None:
        return
    alpha, ys, xs = reg
    k = np.asarray(factor, dtype=np.float32) - 1.0
    k *= opacity
    mult = alpha[..., None] * k
    mult += 1.0
    img[ys, xs] *= mult

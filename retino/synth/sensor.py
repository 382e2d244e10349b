"""Camera-sized frames: the square render's circular field, scaled to a disc about as tall as
the frame and placed off-centre on a wide frame of dark sensor noise, as in EyePACS photographs
(3888x2592 and 4752x3168 are the commonest frames there)."""

import math

import numpy as np
from PIL import Image

from retino.synth.canvas import View


def expose(
    render: Image.Image, view: View, frame: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """The W x H photograph around `render`, whose field of view `view` describes.

    The disc is 0.9-0.99 of the frame height across, or in 30% of photographs 1.02-1.1 (cut at
    top and bottom); its centre sits left or right of the middle by 20-90% of the spare width.
    """
    width, height = frame
    cut = rng.random() < 0.3
    diameter = min(width, height * (rng.uniform(1.02, 1.1) if cut else rng.uniform(0.9, 0.99)))
    spare = (width - diameter) / 2
    x = width / 2 + rng.choice((-1.0, 1.0)) * rng.uniform(0.2, 0.9) * spare
    y = height / 2 + rng.uniform(-0.01, 0.01) * height
    out = _dark_frame(rng, width, height)
    _add_disc(out, render, view, scale=diameter / (2 * view.r), centre=(x, y))
    return Image.fromarray(out, mode="RGB")


def _dark_frame(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """The black of real photographs: level 1-3 plus per-pixel noise, values 1..11.  Its
    spread sets the file size: about 1 MB per 9 MP at JPEG quality 90, as in EyePACS."""
    level = int(rng.integers(1, 4))
    spread = int(rng.integers(5, 10))
    noise = rng.integers(0, spread, (height, width, 3), dtype=np.uint8)
    noise += np.uint8(level)
    return noise


def _add_disc(
    out: np.ndarray, render: Image.Image, view: View, scale: float, centre: tuple[float, float]
) -> None:
    """Add the render, scaled by `scale` about its field centre onto `centre`, into `out`
    (saturating): its black surround leaves the noise as it was."""
    n = render.width
    left, top = centre[0] - view.cx * scale, centre[1] - view.cy * scale
    height, width = out.shape[:2]
    x0, y0 = max(0, math.ceil(left)), max(0, math.ceil(top))
    x1, y1 = min(width, math.floor(left + n * scale)), min(height, math.floor(top + n * scale))
    box = tuple(
        min(n, max(0.0, (p - o) / scale)) for p, o in ((x0, left), (y0, top), (x1, left), (y1, top))
    )
    up = np.asarray(render.resize((x1 - x0, y1 - y0), Image.Resampling.BICUBIC, box=box))
    region = out[y0:y1, x0:x1]
    np.add(region, np.minimum(up, 255 - region), out=region)

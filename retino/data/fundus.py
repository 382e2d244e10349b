"""From a fundus photograph to the square the model sees: find the retina disc, crop, resize.

A camera photograph is a bright circular retina on a wide black frame, off-centre, with a
radius that differs per camera, sometimes cut off at the top and bottom. A centre crop of the
shorter side would keep black margins and scale the retina differently per camera; like the
Kaggle winner (B. Graham) and Huang et al., we crop a square around the disc and resize it once.

`preprocess_image` is the one function for this: the preprocess stage writes its output to the
cache that training reads, and `retino predict` and the served model apply it to new photographs
(files, or a request's bytes), so a raw photo is graded exactly as its cached twin.
"""

import numpy as np
from PIL import Image, ImageFilter

from retino.data.images import Source, decode_rgb

NORMALIZE = ("none", "graham")
# Decode at least this much more than the output side: the disc is usually 0.9-1.0 of the
# frame height, and a crop resized down stays sharp, one resized up does not.
DECODE_MARGIN = 1.25
PROBE_SIDE = 256  # the disc is found on a copy this size: cheap, and enough for its outline


def preprocess_image(source: Source, size: int, normalize: str, max_pixels: int) -> np.ndarray:
    """(size, size, 3) uint8: the retina disc of the photograph (a file, or an upload's bytes),
    cropped square, resized, and with `normalize="graham"` Graham's local-contrast
    normalisation."""
    image = Image.fromarray(decode_rgb(source, max_pixels, min_side=round(size * DECODE_MARGIN)))
    square = crop_disc(image, size)
    return graham(square) if normalize == "graham" else square


def find_disc(image: Image.Image) -> tuple[float, float, float]:
    """(cx, cy, r) of the retina disc in `image`'s pixels, found on a small copy of it."""
    width, height = image.size
    rgb = np.asarray(image.resize(probe_size(width, height), Image.Resampling.BOX))
    # the channel maximum, two elementwise passes: numpy's max over a last axis of 3 takes ~40x
    lum = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    return disc_in_probe(lum.astype(np.float32), width, height)


def probe_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of the copy the disc is found on: PROBE_SIDE on the longer side."""
    scale = PROBE_SIDE / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def disc_in_probe(lum: np.ndarray, width: int, height: int) -> tuple[float, float, float]:
    """(cx, cy, r) of the disc in the pixels of a width x height image, from `lum` (its probe's
    per-pixel channel maximum, float32) — the one rule for the CPU and the GPU path.

    Threshold: brighter than the dark frame (its noise stays under ~12/255; a dim retina rim is
    still several times that). Rows and columns count as retina when a few per cent of their
    pixels are, so sensor noise and JPEG speckle are ignored. The radius is half the wider
    extent (the disc is often cut at the top and bottom, never at the sides); the centre row is
    where the disc is widest. An image without a dark frame (already cropped) or without any
    bright region is treated as a disc filling the image.
    """
    scale = PROBE_SIDE / max(width, height)
    threshold = max(20.0, 0.15 * float(np.percentile(lum, 99)))
    mask = lum > threshold
    row_fill, col_fill = mask.mean(axis=1), mask.mean(axis=0)
    rows = np.flatnonzero(row_fill > 0.03)
    cols = np.flatnonzero(col_fill > 0.03)
    if len(rows) < 2 or len(cols) < 2:  # nothing bright: keep the whole image
        return width / 2, height / 2, max(width, height) / 2
    left, right = cols[0], cols[-1] + 1
    top, bottom = rows[0], rows[-1] + 1
    widest = np.flatnonzero(row_fill >= 0.98 * row_fill.max())
    cy = (widest[0] + widest[-1] + 1) / 2 if bottom - top < right - left else (top + bottom) / 2
    r = max(right - left, bottom - top) / 2
    return (left + right) / 2 / scale, cy / scale, r / scale


def disc_box(cx: float, cy: float, r: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square around the disc, in whole pixels."""
    return round(cx - r), round(cy - r), round(cx + r), round(cy + r)


def crop_disc(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the square around the disc (black where it leaves the photo)."""
    square = image.crop(disc_box(*find_disc(image)))  # pads with black outside the image
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))


def graham(square: np.ndarray) -> np.ndarray:
    """Graham's normalisation of a disc-filling square: 4 * (image - local average colour) + 128,
    the local average a Gaussian blur at 1/30 of the disc radius; grey outside 0.9 radius.
    Removes lighting and camera colour differences, keeps lesions and vessels."""
    size = square.shape[0]
    radius = size / 2
    blurred = Image.fromarray(square).filter(ImageFilter.GaussianBlur(radius / 30))
    out = 4.0 * square.astype(np.float32) - 4.0 * np.asarray(blurred, np.float32) + 128.0
    yy, xx = np.mgrid[:size, :size]
    outside = (xx + 0.5 - radius) ** 2 + (yy + 0.5 - radius) ** 2 > (0.9 * radius) ** 2
    out[outside] = 128.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

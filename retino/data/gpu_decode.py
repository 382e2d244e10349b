"""The preprocess stage on a GPU (`preprocess.device`): JPEGs decoded in batches by nvJPEG
(`torchvision.io.decode_jpeg(..., device="cuda")`), the retina disc found, cropped and resized
there; the CPU path (retino.data.fundus) is the reference it follows step by step:

- decoding: libjpeg-turbo decodes at a DCT scale n/8 (a 3888 x 2592 photograph needed at 512 px
  at 972 x 648); nvJPEG decodes at full size, which is averaged down (area) to exactly that
  size. This is the one place the paths differ: the cached pixels agree to within a few grey
  levels (the tolerance is stated and tested in tests/data/test_gpu_decode.py);
- the disc: the same `disc_in_probe` on the same probe, Pillow's BOX resize reproduced;
- crop and resize: Pillow's LANCZOS resize reproduced exactly — its filter weights in 22-bit
  fixed point, the horizontal pass, then the vertical, each rounded to 8 bits as Pillow rounds
  — as two matrix products per image in float64, exact for those integers;
- Graham's normalisation: `fundus.graham` itself, on the square brought back.

Given the pixels libjpeg-turbo decodes, this code gives the CPU path's square bit for bit. With
a CPU device (torchvision's libjpeg-turbo `decode_jpeg`) it runs without a GPU: that is how the
tests compare the paths here.
"""

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from retino.data.fundus import DECODE_MARGIN, disc_box, disc_in_probe, graham, probe_size
from retino.data.images import dct_scaled_size

BATCH = 32  # photographs per nvJPEG call: ~1 GB of decoded 10-megapixel frames
PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2 bits
FILTERS: dict[str, tuple[Callable[[float], float], float]] = {
    # Pillow's filters (libImaging/Resample.c) with their support
    "box": (lambda x: 1.0 if -0.5 < x <= 0.5 else 0.0, 0.5),
    "lanczos": (lambda x: _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0, 3.0),
}


def decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | str]:
    """Each JPEG (its bytes as a uint8 tensor) as (3, H, W) uint8 RGB on `device`, or the
    decoder's reason for refusing it. One batched call; only if that fails, one call each."""
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    images: list[torch.Tensor | str] = []
    for one in data:
        try:
            images.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as err:
            images.append(str(err).strip().splitlines()[0] if str(err).strip() else "refused")
    return images


def squares(images: list[torch.Tensor], size: int, normalize: str) -> np.ndarray:
    """(B, size, size, 3) uint8: `preprocess_image` of each full-resolution decoded photograph."""
    min_side = round(size * DECODE_MARGIN)
    return squares_of_scaled([_scale_down(image, min_side) for image in images], size, normalize)


def squares_of_scaled(scaled: list[torch.Tensor], size: int, normalize: str) -> np.ndarray:
    """(B, size, size, 3) uint8 from photographs decoded at the DCT scale (3, h, w) uint8:
    disc, crop, resize and normalisation, as `preprocess_image` does them."""
    if not scaled:
        return np.empty((0, size, size, 3), dtype=np.uint8)
    # the probes of the whole batch come back in one copy: one wait for the GPU, not one each
    shapes = [probe_size(x.shape[2], x.shape[1]) for x in scaled]
    side = max(max(shape) for shape in shapes)
    lums = torch.zeros((len(scaled), side, side), dtype=torch.float32, device=scaled[0].device)
    for lum, x, (width, height) in zip(lums, scaled, shapes, strict=True):
        lum[:height, :width] = resize(x, width, height, "box").amax(0)
    lums = lums.cpu().numpy()
    out = torch.stack([
        resize(_crop(x, disc_box(*disc_in_probe(lum[:h, :w], x.shape[2], x.shape[1]))),
               size, size, "lanczos")
        for x, lum, (w, h) in zip(scaled, lums, shapes, strict=True)
    ])  # fmt: skip
    result = out.permute(0, 2, 3, 1).cpu().numpy()  # (B, S, S, 3), as the cache stores it
    if normalize == "graham":
        result = np.stack([graham(square) for square in result])
    return result


def _scale_down(image: torch.Tensor, min_side: int) -> torch.Tensor:
    """(3, h, w) uint8: the full-size decode averaged down to the size libjpeg-turbo's DCT
    scaling gives for `min_side` (what `decode_rgb` returns on the CPU)."""
    _, height, width = image.shape
    w, h = dct_scaled_size(width, height, min_side)
    if (w, h) == (width, height):
        return image
    x = F.interpolate(image[None].float(), size=(h, w), mode="area")[0]
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """Pillow's `Image.crop(box)` of (3, H, W) uint8: black where the box leaves the image."""
    left, top, right, bottom = box
    _, height, width = x.shape
    inside = x[:, max(top, 0) : min(bottom, height), max(left, 0) : min(right, width)]
    pad = (max(-left, 0), max(right - width, 0), max(-top, 0), max(bottom - height, 0))
    # a box wholly outside the image: nothing inside, all black
    if inside.shape[1] <= 0 or inside.shape[2] <= 0:
        return torch.zeros((3, bottom - top, right - left), dtype=x.dtype, device=x.device)
    return F.pad(inside, pad)


def resize(x: torch.Tensor, width: int, height: int, kind: str) -> torch.Tensor:
    """Pillow's `Image.resize((width, height), BOX or LANCZOS)` of (C, H, W) uint8, exactly:
    the horizontal pass, rounded to 8 bits, then the vertical one (each skipped when that side
    keeps its size, as Pillow skips it)."""
    out = x
    if width != x.shape[2]:
        out = _fixed_point(out.double() @ _weights(x.shape[2], width, kind, x.device).T)
    if height != x.shape[1]:
        out = _fixed_point(_weights(x.shape[1], height, kind, x.device) @ out.double())
    return out.to(torch.uint8)


def _fixed_point(total: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8: (sum + half) >> PRECISION_BITS, clamped to 0..255 (in float64, exact)."""
    one = float(1 << PRECISION_BITS)
    return torch.floor((total + one / 2) / one).clamp_(0, 255)


@functools.lru_cache(maxsize=512)
def _weights(in_size: int, out_size: int, kind: str, device: torch.device) -> torch.Tensor:
    """(out_size, in_size) float64 matrix of Pillow's integer filter weights (precompute_coeffs
    and normalize_coeffs_8bpc, the same double arithmetic in the same order)."""
    kernel, support = FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    ss = 1.0 / filterscale
    weights = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        k = [kernel((x - center + 0.5) * ss) for x in range(xmin, xmax)]
        ww = 0.0
        for w in k:  # summed in order, as the C loop sums
            ww += w
        for i, w in enumerate(k):
            w = w / ww if ww != 0.0 else w
            weights[xx, xmin + i] = int(w * (1 << PRECISION_BITS) + (-0.5 if w < 0 else 0.5))
    return torch.from_numpy(weights).to(device)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def read(path: Path) -> torch.Tensor:
    """A file's bytes as the uint8 tensor `decode_jpeg` takes."""
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)

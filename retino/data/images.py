"""Reading photograph files safely: header checks first, then a bounded, checked decode.

Every path that opens an image — validation, the preprocess stage, `retino predict` — goes
through here, so all of them refuse the same files with the same one-line reasons:

- the header is read before any pixel: an image larger than `max_pixels` (a 1.6 KB JPEG can
  claim 20000 x 20000 and ask for gigabytes) or of a mode that is not 8-bit per channel (16-bit
  PNGs, float TIFFs) is rejected without decoding;
- a decode that fails, stops early or only recovers from corrupt data names the file; a
  partial or patched-up image is never returned. JPEGs are decoded by libjpeg-turbo through
  simplejpeg in strict mode, which turns libjpeg's "Corrupt JPEG data" warnings into errors
  (Pillow hides them and returns the damaged image);
- JPEGs are decoded with libjpeg-turbo's DCT-domain scaling when the caller needs only a
  fraction of the resolution: a 3888 x 2592 photograph needed at 512 px decodes at 972 x 648,
  several times faster, with every byte of its compressed data still read (so truncation and
  corruption are still caught).
"""

import io
import warnings
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from retino.errors import RetinoError

# 8-bit modes, converted to RGB after decoding: grey, palette, RGB, RGBA, CMYK, YCbCr, LA
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})


class ImageError(RetinoError):
    """An image file that cannot be used; the message names the file and what to do."""


def inspect(path: Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header; ImageError if the file is missing, empty, no image, too
    large or not 8-bit. Reads no pixel data."""
    size, _, _ = header(Path(path), max_pixels)
    return size


def decode_rgb(path: Path, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the image as 8-bit RGB, fully decoded and checked.

    min_side: the smallest side the caller can use; a JPEG is decoded at the smallest DCT scale
    (n/8) that keeps both sides at or above it. None: full resolution.
    """
    path = Path(path)
    _, mode, kind = header(path, max_pixels)
    try:
        data = path.read_bytes()
        if is_jpeg(mode, kind):
            side = min_side or 0
            return simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side, strict=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(_unreadable(path, err)) from None


def is_jpeg(mode: str, kind: str) -> bool:
    """Whether a file of this header is decoded as a JPEG (libjpeg-turbo, or nvJPEG on a GPU):
    every JPEG but CMYK ones, which go through Pillow."""
    return kind in ("JPEG", "MPO") and mode != "CMYK"


def dct_scaled_size(width: int, height: int, min_side: int) -> tuple[int, int]:
    """(width, height) `decode_rgb` decodes a width x height JPEG at for `min_side`: the smallest
    DCT scale n/8 keeping both sides at least min_side (libjpeg-turbo rounds up), else full."""
    for n in range(1, 9):
        scaled = -(-width * n // 8), -(-height * n // 8)
        if min(scaled) >= min_side:
            return scaled
    return width, height


def header(path: Path, max_pixels: int) -> tuple[tuple[int, int], str, str]:
    """(size, mode, format) of the image file at `path`, checked (see `inspect`)."""
    if not path.is_file():
        raise ImageError(f"image {path} not found; add it or remove the row")
    if path.stat().st_size == 0:
        raise ImageError(f"image {path} is empty (0 bytes); replace it or remove the row")
    try:
        with _open(path) as image:
            size, mode, kind = image.size, image.mode, image.format
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image; replace it or remove the row") from None
    except Image.DecompressionBombError:  # Pillow's own limit, far above any photograph
        raise ImageError(_too_large(path, "over 178", max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(_unreadable(path, err)) from None
    _check_header(path, size, mode, max_pixels)
    return size, mode, kind


def _open(path: Path) -> Image.Image:
    # our own pixel limit is checked from the header; Pillow's bomb warning would only be noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _check_header(path: Path, size: tuple[int, int], mode: str, max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"image {path} has no pixels ({width}x{height}); replace it")
    if width * height > max_pixels:
        raise ImageError(_too_large(path, f"{width}x{height} = {width * height / 1e6:.3g}",
                                    max_pixels))  # fmt: skip
    if mode not in EIGHT_BIT_MODES:
        raise ImageError(
            f"image {path} has pixel mode {mode} (16-bit or float); save it as 8-bit RGB "
            "JPEG or PNG"
        )


def _too_large(path: Path, megapixels: str, max_pixels: int) -> str:
    return (
        f"image {path} is {megapixels} megapixels, over the limit of {max_pixels / 1e6:g} "
        "(data.max_pixels; camera photographs are under 20); replace the file or raise the limit"
    )


def _unreadable(path: Path, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"image {path} is unreadable ({reason}); replace it or remove the row"

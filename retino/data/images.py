"""Reading photographs safely: header checks first, then a bounded, checked decode.

Every path that opens an image — validation, the preprocess stage, `retino predict`, the served
model (an `Upload`: bytes from a request) — goes through here, so all of them refuse the same
images with the same one-line reasons:

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
  corruption are still caught);
- an upload must be a JPEG or a PNG: files on disk were chosen by their owner, a request's bytes
  were not, and Pillow's other decoders are attack surface the server has no use for.
"""

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from retino.errors import RetinoError

# 8-bit modes, converted to RGB after decoding: grey, palette, RGB, RGBA, CMYK, YCbCr, LA
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
UPLOAD_FORMATS = ("JPEG", "PNG")  # Pillow's JPEG opens a camera's multi-picture (MPO) file too


@dataclass(frozen=True)
class Upload:
    """A photograph's bytes as a request sent them, and the name messages call it by."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


Source = Path | Upload


class ImageError(RetinoError):
    """An image file that cannot be used; the message names the file and what to do."""


def inspect(source: Source, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header; ImageError if the file is missing, empty, no image, too
    large or not 8-bit. Reads no pixel data."""
    size, _, _ = header(_as_source(source), max_pixels)
    return size


def decode_rgb(source: Source, max_pixels: int, min_side: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8: the image (a file, or an upload's bytes) as 8-bit RGB, fully decoded and
    checked.

    min_side: the smallest side the caller can use; a JPEG is decoded at the smallest DCT scale
    (n/8) that keeps both sides at or above it. None: full resolution.
    """
    source = _as_source(source)
    _, mode, kind = header(source, max_pixels)
    try:
        data = source.data if isinstance(source, Upload) else source.read_bytes()
        if is_jpeg(mode, kind):
            side = min_side or 0
            return simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side, strict=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(_unreadable(source, err)) from None


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


def _as_source(source: Source | str) -> Source:
    return source if isinstance(source, Upload) else Path(source)


def header(source: Source, max_pixels: int) -> tuple[tuple[int, int], str, str]:
    """(size, mode, format) of the image (a file, or an upload's bytes), checked (see `inspect`)."""
    upload = isinstance(source, Upload)
    if not upload and not source.is_file():
        raise ImageError(f"image {source} not found; add it or remove the row")
    if (len(source.data) if upload else source.stat().st_size) == 0:
        raise ImageError(f"image {source} is empty (0 bytes); replace it or remove the row")
    try:
        with _open(source) as image:
            size, mode, kind = image.size, image.mode, image.format
    except UnidentifiedImageError:
        what = "a JPEG or PNG image" if upload else "an image"
        raise ImageError(f"{source} is not {what}; replace it or remove the row") from None
    except Image.DecompressionBombError:  # Pillow's own limit, far above any photograph
        raise ImageError(_too_large(source, "over 178", max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(_unreadable(source, err)) from None
    _check_header(source, size, mode, max_pixels)
    return size, mode, kind


def _open(source: Source) -> Image.Image:
    # our own pixel limit is checked from the header; Pillow's bomb warning would only be noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if isinstance(source, Upload):
            return Image.open(io.BytesIO(source.data), formats=UPLOAD_FORMATS)
        return Image.open(source)


def _check_header(path: Source, size: tuple[int, int], mode: str, max_pixels: int) -> None:
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


def _too_large(path: Source, megapixels: str, max_pixels: int) -> str:
    return (
        f"image {path} is {megapixels} megapixels, over the limit of {max_pixels / 1e6:g} "
        "(data.max_pixels; camera photographs are under 20); replace the file or raise the limit"
    )


def _unreadable(path: Source, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"image {path} is unreadable ({reason}); replace it or remove the row"

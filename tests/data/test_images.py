"""Reading image files: header checks before any pixel, bounded and checked decoding, and the
same one-line reasons wherever an image is opened."""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retino.data.images import ImageError, Upload, decode_rgb, inspect

LIMIT = 36_000_000


def jpeg(path: Path, size=(96, 64), quality: int = 90) -> Path:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=quality)
    return path


def claim_size(path: Path, width: int, height: int) -> None:
    """Rewrite a baseline JPEG's frame header (SOF0) to claim another size: a few KB of file
    that asks for width x height pixels, as a decompression bomb does."""
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (60000, 60000)])
def test_a_bomb_is_refused_from_its_header(tmp_path, width, height):
    path = jpeg(tmp_path / "bomb.jpeg")
    claim_size(path, width, height)
    assert path.stat().st_size < 10_000
    for read in (lambda: inspect(path, LIMIT), lambda: decode_rgb(path, LIMIT, 512)):
        with pytest.raises(ImageError, match=r"bomb\.jpeg is .* megapixels, over the limit of 36"):
            read()


def test_the_limit_is_a_parameter(tmp_path):
    path = jpeg(tmp_path / "photo.jpeg", (300, 200))
    assert inspect(path, 60_000) == (300, 200)
    with pytest.raises(ImageError, match=r"0\.06 megapixels, over the limit of 0\.05"):
        inspect(path, 50_000)


def test_sixteen_bit_png_named_jpeg_is_refused(tmp_path):
    path = tmp_path / "deep.jpeg"
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(path, "PNG")
    with pytest.raises(ImageError, match=r"deep\.jpeg has pixel mode I;16.*save it as 8-bit"):
        inspect(path, LIMIT)


@pytest.mark.parametrize("damage", ["truncate", "corrupt"])
def test_damaged_data_is_unreadable_also_when_scaled(tmp_path, damage):
    path = jpeg(tmp_path / "photo.jpeg", (640, 480))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # garbage in the middle of the entropy-coded data
        middle = len(data) // 2
        data[middle : middle + 400] = np.random.default_rng(1).bytes(400)
    path.write_bytes(bytes(data))
    inspect(path, LIMIT)  # the header is intact
    for min_side in (None, 60):  # full size, and the 1/8 DCT scale
        with pytest.raises(ImageError, match=r"photo\.jpeg is unreadable \(.+\); replace it"):
            decode_rgb(path, LIMIT, min_side)


def test_scaled_decoding_keeps_the_shorter_side_at_least_as_asked(tmp_path):
    path = jpeg(tmp_path / "photo.jpeg", (3888, 2592))
    assert decode_rgb(path, LIMIT, 512).shape == (648, 972, 3)  # 1/4: 1/8 would give 324 < 512
    assert decode_rgb(path, LIMIT, 300).shape == (324, 486, 3)  # 1/8
    assert decode_rgb(path, LIMIT).shape == (2592, 3888, 3)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA"])
def test_eight_bit_modes_decode_to_rgb(tmp_path, mode):
    image = Image.new("RGB", (30, 20), (200, 100, 50)).convert(mode)
    path = tmp_path / "x.png"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if mode == "CMYK" else "PNG")
    path.write_bytes(buffer.getvalue())
    decoded = decode_rgb(path, LIMIT)
    assert decoded.shape == (20, 30, 3) and decoded.dtype == np.uint8
    expected = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert np.abs(decoded.astype(int) - expected).max() <= 2  # as Pillow converts it


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), (b"", r"empty \(0 bytes\)"), (b"name,grade\n", "is not an image")],
)
def test_missing_empty_and_foreign_files(tmp_path, content, message):
    path = tmp_path / "x.jpeg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        inspect(path, LIMIT)


def test_an_upload_is_read_as_its_file_is(tmp_path):
    path = jpeg(tmp_path / "photo.jpeg", (640, 480))
    upload = Upload("row 3", path.read_bytes())
    assert inspect(upload, LIMIT) == (640, 480)
    assert np.array_equal(decode_rgb(upload, LIMIT, 60), decode_rgb(path, LIMIT, 60))
    claim_size(path, 20000, 20000)
    with pytest.raises(ImageError, match=r"^image row 3 is .* megapixels, over the limit of 36"):
        decode_rgb(Upload("row 3", path.read_bytes()), LIMIT)
    with pytest.raises(ImageError, match=r"^image row 3 is empty \(0 bytes\)"):
        inspect(Upload("row 3", b""), LIMIT)


def test_an_upload_must_be_a_jpeg_or_a_png(tmp_path):
    for kind in ("GIF", "BMP", "TIFF"):
        buffer = io.BytesIO()
        Image.new("RGB", (30, 20)).save(buffer, kind)
        path = tmp_path / f"x.{kind.lower()}"
        path.write_bytes(buffer.getvalue())
        assert inspect(path, LIMIT) == (30, 20)  # a file its owner chose: read
        with pytest.raises(ImageError, match=r"^row 1 is not a JPEG or PNG image; replace it"):
            inspect(Upload("row 1", buffer.getvalue()), LIMIT)

"""The preprocess stage's batched path (preprocess.device: cuda), run here on the CPU through
torchvision's decoder: Pillow's crop and resize reproduced bit for bit, the square of the CPU
path from the same decoded pixels, the cache within the stated tolerance from a full-size decode,
and every image nvJPEG must not or cannot take routed to the CPU path."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from retino.data import gpu_decode, preprocess
from retino.data.fundus import DECODE_MARGIN, preprocess_image
from retino.data.gpu_decode import resize, squares_of_scaled
from retino.data.images import dct_scaled_size, decode_rgb
from retino.data.preprocess import cache_images, decode_device
from retino.errors import RetinoError
from retino.synth import synthesize

CPU = torch.device("cpu")
# The batched path's cache against the CPU path's, in grey levels over every pixel and channel:
# the decoders differ (a full-size decode averaged down vs libjpeg-turbo's DCT scaling); the disc,
# the crop and the resize do not. Measured on these frames through libjpeg-turbo's full decode:
# mean 0.25-0.30, 99th percentile 1-2, largest 3-8 (at the disc's rim).
MEAN_TOLERANCE, P99_TOLERANCE = 1.0, 4


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    """Six camera frames (1296 x 864, a third of EyePACS' most common 3888 x 2592)."""
    out = tmp_path_factory.mktemp("frames") / "data"
    synthesize(out, n_train=4, n_test=2, size=None, seed=11, frame=(1296, 864))
    return sorted((out / "images").iterdir())


@pytest.mark.parametrize(
    ("shape", "to"),
    [((648, 972), (256, 171)), ((651, 651), (128, 128)), ((200, 300), (37, 91)),
     ((80, 100), (240, 160)), ((64, 64), (64, 32)), ((90, 60), (60, 90))],
)  # fmt: skip
def test_pillows_box_and_lanczos_resize_are_reproduced_exactly(shape, to):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    for kind, pillow in (("box", Image.Resampling.BOX), ("lanczos", Image.Resampling.LANCZOS)):
        expected = np.asarray(Image.fromarray(pixels).resize(to, pillow))
        got = resize(chw(pixels), *to, kind).permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected), kind


@pytest.mark.parametrize("box", [(-20, -30, 90, 80), (10, 5, 40, 50), (50, 40, 130, 120)])
def test_the_crop_is_pillows_black_outside_the_image(box):
    pixels = np.random.default_rng(1).integers(1, 256, (60, 70, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).crop(box))
    assert np.array_equal(gpu_decode._crop(chw(pixels), box).permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("normalize", ["none", "graham"])
def test_from_the_same_decoded_pixels_the_square_is_the_cpu_paths_bit_for_bit(frames, normalize):
    size = 96
    scaled = [chw(decode_rgb(p, 10**8, min_side=round(size * DECODE_MARGIN))) for p in frames]
    got = squares_of_scaled(scaled, size, normalize)
    expected = np.stack([preprocess_image(p, size, normalize, 10**8) for p in frames])
    assert np.array_equal(got, expected)


def test_the_dct_scale_is_the_one_the_cpu_decoder_picks():
    pixels = np.random.default_rng(2).integers(0, 256, (259, 389, 3), dtype=np.uint8)
    data = simplejpeg.encode_jpeg(pixels, quality=85)
    for side in (20, 40, 100, 200, 259, 300):
        decoded = simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side)
        assert dct_scaled_size(389, 259, side) == (decoded.shape[1], decoded.shape[0]), side


def differences(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(mean, 99th percentile) of the absolute differences, in grey levels."""
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    return float(diff.mean()), float(np.percentile(diff, 99))


def batched_cache(paths: list[Path], out: Path, size: int, workers: int, decode_on: str,
                  normalize: str = "none") -> tuple[np.ndarray, list[str]]:  # fmt: skip
    out.mkdir()
    failures = cache_images({"x": paths}, out, size, normalize, 10**8, workers, decode_on)
    return np.load(out / "x.npy"), failures


def test_from_a_full_size_decode_the_cache_is_within_the_tolerance(frames, tmp_path):
    size = 128
    got, failures = batched_cache(frames, tmp_path / "batched", size, 2, "cpu")
    expected = np.stack([preprocess_image(p, size, "none", 10**8) for p in frames])
    mean, p99 = differences(got, expected)
    assert not failures and 0 < mean <= MEAN_TOLERANCE and p99 <= P99_TOLERANCE, (mean, p99)
    # the disc and the crop are the same: the dark corners and the bright middle agree
    assert np.abs(got[:, 56:72, 56:72].astype(int) - expected[:, 56:72, 56:72]).mean() < 2


def test_what_is_no_plain_jpeg_or_broken_takes_the_cpu_path(frames, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    first, second = frames[:2]
    png = data / "a.png"
    Image.open(first).save(png)  # PNG: the CPU path, in a worker
    cmyk = data / "b.jpeg"
    Image.open(second).convert("CMYK").save(cmyk)  # CMYK JPEG: Pillow, in a worker
    cut = data / "c.jpeg"
    cut.write_bytes(first.read_bytes()[: first.stat().st_size // 2])  # truncated: refused
    plain = shutil.copy(second, data / "d.jpeg")
    paths = [png, cmyk, cut, Path(plain)]
    for workers in (1, 2):
        got, failures = batched_cache(paths, tmp_path / f"out{workers}", 64, workers, "cpu")
        assert [png.name in f or cut.name in f for f in failures] == [True]
        assert failures[0].startswith(f"image {cut} is unreadable (")  # as the CPU path says
        for row in (0, 1):
            assert np.array_equal(got[row], preprocess_image(paths[row], 64, "none", 10**8))
        mean, _ = differences(got[3], preprocess_image(paths[3], 64, "none", 10**8))
        assert mean <= MEAN_TOLERANCE
    assert "2 images that are no JPEG nvJPEG decodes (JPEG 1, PNG 1)" in capsys.readouterr().out


def test_a_jpeg_the_decoder_refuses_is_preprocessed_on_the_cpu_and_named(
    frames, tmp_path, monkeypatch, capsys
):
    real = gpu_decode.decode

    def refuse_the_second(data, device):
        decoded = real(data, device)
        return [decoded[0], "nvjpegDecode failed: unsupported", *decoded[2:]]

    monkeypatch.setattr(gpu_decode, "decode", refuse_the_second)
    got, failures = batched_cache(frames[:3], tmp_path / "out", 64, 1, "cpu")
    assert not failures
    assert np.array_equal(got[1], preprocess_image(frames[1], 64, "none", 10**8))
    out = capsys.readouterr().out
    assert f"preprocess: {frames[1]}: nvJPEG refused it (nvjpegDecode failed: unsupported); " \
           "decoded on the CPU" in out  # fmt: skip


def test_the_decode_device(monkeypatch):
    assert decode_device("cpu") == "cpu"
    monkeypatch.setattr(preprocess, "GPU_NODES", ("/nonexistent/nvidia0",))
    assert decode_device("auto") == "cpu"  # no device node: torch is not even imported
    if not torch.cuda.is_available():
        with pytest.raises(RetinoError, match=r"^preprocess.device: cuda, but this machine"):
            decode_device("cuda")


def test_a_corrupt_file_fails_on_the_batched_path_as_on_the_cpus(frames, tmp_path):
    data = bytearray(frames[0].read_bytes())
    start = data.index(b"\xff\xda") + 200  # inside the entropy-coded scan
    data[start : start + 400] = bytes(range(200)) * 2
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(bytes(data))
    try:
        preprocess_image(bad, 64, "none", 10**8)
        pytest.skip("libjpeg-turbo decoded this damage without complaint")
    except RetinoError as err:
        expected = str(err)
    _, failures = batched_cache([bad], tmp_path / "out", 64, 1, "cpu")
    assert failures == [expected]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("size", [128, 512])
def test_nvjpeg_caches_are_within_the_tolerance_of_the_cpu_path(frames, tmp_path, size):
    got, failures = batched_cache(frames, tmp_path / "nvjpeg", size, 2, "cuda")
    expected = np.stack([preprocess_image(p, size, "none", 10**8) for p in frames])
    mean, p99 = differences(got, expected)
    largest = int(np.abs(got.astype(int) - expected).max())
    print(f"nvJPEG vs the CPU path at {size} px: mean {mean:.3f}, 99th percentile {p99:.0f}, "
          f"largest {largest} grey levels")  # fmt: skip
    assert not failures and mean <= MEAN_TOLERANCE and p99 <= P99_TOLERANCE
    # the crop and the resize on the GPU are Pillow's, bit for bit (float64 matrix products)
    pixels = torch.from_numpy(expected[0]).permute(2, 0, 1).contiguous()
    for kind in ("box", "lanczos"):
        on_gpu = resize(pixels.cuda(), 77, 131, kind).cpu()
        assert torch.equal(on_gpu, resize(pixels, 77, 131, kind))

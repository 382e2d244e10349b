"""From a camera photograph to the square the model sees: the retina disc is found on a dark,
noisy frame (also when cut at the top and bottom), cropped, resized; Graham's normalisation."""

import numpy as np
import pytest
from PIL import Image

from retino.data.fundus import crop_disc, find_disc, graham, preprocess_image
from retino.synth import synthesize


def frame(width: int, height: int, cx: float, cy: float, r: float, seed: int = 0) -> Image.Image:
    """A camera-like frame: sensor noise 0-12 on black, an orange-red disc with a darker rim."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 13, (height, width, 3)).astype(np.float64)
    yy, xx = np.mgrid[:height, :width]
    d = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) / r
    inside = d <= 1
    vignette = np.clip(1.1 - 0.7 * d**2, 0.25, 1)[inside][:, None]  # a dim rim, as real ones
    pixels[inside] = np.array([210, 90, 40]) * vignette
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "disc"),
    [
        ((1200, 800), (520, 400, 380)),  # off-centre, whole
        ((1200, 800), (700, 400, 440)),  # cut at the top and bottom
        ((1200, 800), (600, 430, 420)),  # cut, and lower than the frame's middle
        ((900, 900), (450, 450, 300)),  # small disc in a square frame
    ],
)
def test_the_disc_is_found(size, disc):
    cx, cy, r = find_disc(frame(*size, *disc))
    assert abs(cx - disc[0]) < 0.02 * disc[2] and abs(r - disc[2]) < 0.03 * disc[2]
    assert abs(cy - disc[1]) < 0.06 * disc[2]


def test_without_a_dark_frame_or_a_disc_the_whole_image_is_kept():
    bright = Image.new("RGB", (300, 200), (180, 80, 40))  # already cropped tight
    dark = Image.fromarray(np.random.default_rng(1).integers(0, 13, (200, 300, 3), np.uint8))
    for image in (bright, dark):
        assert find_disc(image) == pytest.approx((150, 100, 150), abs=1.5)


def test_the_crop_is_the_disc_square():
    square = crop_disc(frame(1200, 800, 520, 400, 380), 64)
    assert square.shape == (64, 64, 3) and square.dtype == np.uint8
    assert square[32, 32, 0] > 150  # the retina in the middle
    assert square[:3, :3].max() < 30 and square[-3:, -3:].max() < 30  # dark corners: a circle
    assert square[32, 2, 0] > 40 and square[2, 32, 0] > 40  # the disc reaches the square's sides


def test_cut_discs_are_padded_black_not_stretched():
    square = crop_disc(frame(1200, 800, 700, 400, 440), 88)
    assert square[:2].max() < 8 and square[-2:].max() < 8  # black above and below the photograph
    assert square[44, 44, 0] > 150


def test_graham_removes_the_lighting_and_greys_the_rim():
    rng = np.random.default_rng(2)
    lit = np.linspace(60, 220, 128)[None, :, None] * np.array([1.0, 0.45, 0.2])  # a gradient
    square = np.clip(lit + rng.normal(0, 2, (128, 128, 3)), 0, 255).astype(np.uint8)
    out = graham(square)
    yy, xx = np.mgrid[:128, :128]
    d = np.hypot(xx + 0.5 - 64, yy + 0.5 - 64)
    assert (out[d > 0.9 * 64 + 1] == 128).all()  # grey outside 0.9 radius
    centre = out[d < 0.6 * 64].astype(float)
    assert abs(centre.mean() - 128) < 8  # the smooth lighting is gone
    assert centre.std() > 3  # the fine texture stays (amplified x4)


def test_a_camera_frame_is_preprocessed_to_its_disc(tmp_path):
    synthesize(tmp_path / "d", n_train=1, n_test=1, size=None, seed=5, frame=(960, 640))
    path = next((tmp_path / "d" / "images").iterdir())
    square = preprocess_image(path, 96, "none", 10**8)
    assert square.shape == (96, 96, 3)
    assert square[:4, :4].max() < 40 and square[48, 48, 0] > 60  # dark corners, retina inside
    normalised = preprocess_image(path, 96, "graham", 10**8)
    assert normalised[0, 0].tolist() == [128, 128, 128]

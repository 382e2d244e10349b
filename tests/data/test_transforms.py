"""BatchTransform: uint8 batches -> normalised input, flips and crops exactly as configured."""

import numpy as np
import pytest
import torch
from torchvision import transforms

from retino.config import AugmentConfig
from retino.data.transforms import BatchTransform

MEAN, STD = [0.41, 0.28, 0.19], [0.25, 0.18, 0.13]
CPU = torch.device("cpu")
NO_AUGMENT = AugmentConfig(hflip=0, vflip=0, rotation=0, scale_min=1, color_jitter=0)


def normalised(images: torch.Tensor) -> torch.Tensor:
    """What BatchTransform must give for unaugmented uint8 images, computed the plain way."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def test_unaugmented_batch_equals_totensor_then_normalize():
    """The lab report's per-image path, ToTensor -> Normalize, on the same pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)  # HWC, as images are stored
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    expected = torch.stack([reference(p) for p in pixels])
    out = BatchTransform(MEAN, STD, CPU)(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
    assert out.dtype == torch.float32 and out.shape == expected.shape
    # (x - 255 mean) / (255 std) vs (x / 255 - mean) / std: float rounding only, far below 1/255
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hflip, vflip", [(0.5, 0), (0, 0.5), (0.3, 0.8), (1, 0), (0, 0)])
def test_flips_follow_the_configured_probability_and_are_exact(hflip, vflip):
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    before = images.clone()
    cfg = AugmentConfig(hflip=hflip, vflip=vflip, rotation=0, scale_min=1, color_jitter=0)
    transform = BatchTransform(MEAN, STD, CPU, cfg)
    generator = torch.Generator().manual_seed(1)
    variants = normalised(
        torch.stack([images, images.flip(-1), images.flip(-2), images.flip(-1, -2)])
    )
    counts = torch.zeros(4)
    for _ in range(8):
        out = transform(images, generator)
        for i in range(len(images)):
            (which,) = [k for k in range(4) if torch.allclose(out[i], variants[k, i], atol=1e-5)]
            counts[which] += 1
    assert torch.equal(images, before)  # the caller's batch is not modified
    n = counts.sum()
    h_rate, v_rate = (counts[1] + counts[3]) / n, (counts[2] + counts[3]) / n
    assert abs(h_rate - hflip) < 0.08 and abs(v_rate - vflip) < 0.08  # 512 draws: sd <= 0.022
    if hflip in (0, 1):
        assert h_rate == hflip
    if vflip in (0, 1):
        assert v_rate == vflip


def test_no_crop_and_no_rotation_is_the_identity():
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8)
    out = BatchTransform(MEAN, STD, CPU, NO_AUGMENT)(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, BatchTransform(MEAN, STD, CPU)(images))
    torch.testing.assert_close(out, normalised(images), atol=1e-5, rtol=0)


def test_crops_keep_the_configured_area_inside_the_image():
    # a horizontal ramp: a crop of side s (area s^2 >= scale_min) stretched over the output
    # divides the slope between neighbouring columns by 1/s, without reaching outside
    ramp = (torch.arange(64) * 4).view(1, 1, 1, 64).expand(32, 3, 64, 64).to(torch.uint8)
    cfg = AugmentConfig(hflip=0, vflip=0, rotation=0, scale_min=0.36, color_jitter=0)
    out = BatchTransform([0, 0, 0], [1, 1, 1], CPU, cfg)(ramp, torch.Generator().manual_seed(2))
    pixels = out * 255
    slope = pixels[:, 0, 32, 8:56].diff(dim=-1).mean(dim=-1) / 4  # = crop side s
    assert slope.min() >= 0.6 - 1e-3 and slope.max() <= 1 + 1e-3
    assert slope.min() < 0.8  # some crops are well below full size
    columns_constant = pixels[:, :, 8:56, 8:56].std(dim=2).max()
    assert columns_constant < 1e-3  # no rotation: every column stays one value
    constant = torch.full((8, 3, 32, 32), 200, dtype=torch.uint8)
    crops = BatchTransform([0, 0, 0], [1, 1, 1], CPU, cfg)(constant, torch.Generator())
    # inside the image, a crop of a flat photo is flat (the outer pixel blends with the border)
    torch.testing.assert_close(crops[:, :, 1:-1, 1:-1] * 255, torch.full((8, 3, 30, 30), 200.0))


def test_rotation_turns_about_the_centre():
    constant = torch.full((32, 3, 33, 33), 200, dtype=torch.uint8)
    cfg = AugmentConfig(hflip=0, vflip=0, rotation=30, scale_min=1, color_jitter=0)
    out = BatchTransform([0, 0, 0], [1, 1, 1], CPU, cfg)(constant, torch.Generator().manual_seed(3))
    pixels = out * 255
    torch.testing.assert_close(pixels[:, :, 16, 16], torch.full((32, 3), 200.0))
    corners = pixels[:, 0][:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (32 images, 4 corners)
    darkened = (corners.min(dim=1).values < 150).float().mean()
    assert darkened > 0.7  # turned corners come from outside the photo: black

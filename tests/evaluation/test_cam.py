"""Grad-CAM: the maths, where the map points, the overlays `retino predict --cam` and
`retino explain` write."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from retino.cli import main as cli
from retino.evaluation.cam import DISPLAY_SIDE, GradCAM, overlay
from retino.evaluation.predict import gallery_rows, load_predictor
from retino.training.models import build_model
from tests.conftest import prepare_and_cache, tiny_config
from tests.evaluation.test_predict import save_checkpoint


def test_matches_grad_cam_computed_by_hand():
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    x = torch.randn(3, 3, 64, 64)
    target = torch.tensor([0, 3, 4])
    with GradCAM(model, model.layer4) as cam:
        maps = cam(x, target)

    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                         model.layer1, model.layer2, model.layer3, model.layer4)  # fmt: skip
    a = stem(x)  # (3, 512, 2, 2)
    logits = model.fc(a.mean((2, 3)))
    (grads,) = torch.autograd.grad(logits[range(3), target].sum(), a)
    expected = F.relu((grads.mean((2, 3), keepdim=True) * a).sum(1))
    expected = expected / expected.amax((1, 2), keepdim=True)
    assert maps.shape == (3, 2, 2)
    torch.testing.assert_close(maps, expected.detach(), atol=1e-5, rtol=1e-4)
    assert not model.layer4._forward_hooks  # hooks gone on exit
    assert all(p.grad is None for p in model.parameters())  # no training state touched


class Toy(nn.Module):
    """layer4 = the 8x8-pooled image itself; grade g's score = mean of channel g."""

    def __init__(self) -> None:
        super().__init__()
        self.layer4 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(F.avg_pool2d(x, 8)).mean((2, 3))


def test_map_is_hot_where_the_evidence_for_the_grade_is():
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, :8, :8] = 1  # grade 0's evidence: top left
    x[0, 1, 24:, 16:24] = 1  # grade 1's: bottom row, third column
    toy = Toy()
    with GradCAM(toy, toy.layer4) as cam:
        maps = cam(torch.cat([x, x]), torch.tensor([0, 1]))
    assert maps.shape == (2, 4, 4)
    assert maps[0, 0, 0] == 1 and maps[0].sum() == 1
    assert maps[1, 3, 2] == 1 and maps[1].sum() == 1


def test_overlay_paints_the_heat_over_the_models_input():
    square = np.full((112, 112, 3), (90, 40, 20), dtype=np.uint8)  # a preprocessed image
    heat = torch.zeros(4, 4)
    heat[2, 2] = 1
    out = overlay(square, heat, "2 Moderate  91%")
    assert out.size == (DISPLAY_SIDE, DISPLAY_SIDE)  # small inputs are enlarged for viewing
    pixels = np.asarray(out).astype(int)
    cell = DISPLAY_SIDE // 4
    # painted where the heat is (cell row 2, column 2), untouched where it is 0
    assert np.abs(pixels[cell * 5 // 2, cell * 5 // 2] - (90, 40, 20)).sum() > 60
    assert (pixels[-10, 10] == (90, 40, 20)).all()
    assert (pixels[:2, :2] == 0).all()  # the corner of the caption's black box

    big = overlay(np.zeros((512, 512, 3), np.uint8), heat, "x")
    assert big.size == (512, 512)  # an input larger than the display side keeps its size


def test_gallery_picks_the_most_confident_right_and_wrong_per_grade():
    probs = np.array(
        [[0.9, 0.1, 0, 0, 0], [0.6, 0.4, 0, 0, 0], [0.2, 0.8, 0, 0, 0], [0.3, 0.7, 0, 0, 0],
         [0, 0.1, 0.9, 0, 0]]
    )  # fmt: skip
    table = pd.DataFrame(
        {"image": list("abcde"), "label": [0, 0, 0, 0, 2], "predicted": probs.argmax(1)}
    )
    table[[f"p{g}" for g in range(5)]] = probs
    rows = gallery_rows(table)
    assert list(rows.image) == ["a", "c", "e"]
    assert list(rows.correct) == [True, False, True]
    assert list(gallery_rows(table, per_grade=2).image) == ["a", "b", "c", "d", "e"]


def test_a_regression_gallery_ranks_by_how_near_the_score_is():
    table = pd.DataFrame(
        {"image": list("abcd"), "label": [2, 2, 2, 2], "predicted": [2, 2, 3, 3],
         "score": [2.4, 1.9, 3.1, 3.4]}
    )  # fmt: skip
    rows = gallery_rows(table)
    assert list(rows.image) == ["b", "c"] and list(rows.correct) == [True, False]


@pytest.fixture(scope="module")
def workspace(tiny_source, tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    shutil.copytree(tiny_source, root / "data")
    prepare_and_cache(root / "data", root, tiny_config())
    save_checkpoint(root / "best.pt", root / "preprocessed")
    save_checkpoint(root / "regression.pt", root / "preprocessed", thresholds=[0, 0.1, 0.2, 0.3],
                    train__loss="regression", eval__tta="flips")  # fmt: skip
    return root


@pytest.mark.parametrize("model", ["best.pt", "regression.pt"])
def test_predict_writes_a_cam_per_image(workspace, tmp_path, model):
    images = sorted((workspace / "data" / "images").iterdir())[:5]
    twin = tmp_path / "other" / images[0].name  # same file name in another folder
    twin.parent.mkdir()
    shutil.copy(images[0], twin)
    code = cli(["predict", *map(str, images), str(twin), "--model", str(workspace / model),
                "--cam", str(tmp_path / "cam"), "--out", str(tmp_path / "p.csv")])  # fmt: skip
    assert code == 0
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(set(table.cam)) == 6 and table.cam.iloc[-1].endswith(f"{images[0].stem}-2.png")
    photos = load_predictor(str(workspace / model), "cpu").photos(list(table.path))
    for i, cam in enumerate(table.cam):
        # what the model saw, enlarged as the overlay enlarges it
        seen = Image.fromarray(photos.load(i)).resize((DISPLAY_SIDE, DISPLAY_SIDE),
                                                      Image.Resampling.BICUBIC)  # fmt: skip
        with Image.open(cam) as painted:
            assert painted.format == "PNG" and painted.size == (DISPLAY_SIDE, DISPLAY_SIDE)
            drawn = np.asarray(painted.convert("RGB")).astype(int)
        assert drawn.std() > 20  # not blank
        below_caption = np.abs(drawn - np.asarray(seen).astype(int))[DISPLAY_SIDE // 4 :, :]
        assert below_caption.mean() > 2  # heat painted over the image


@pytest.mark.parametrize("model", ["best.pt", "regression.pt"])
def test_explain_writes_a_small_gallery(workspace, tmp_path, capsys, model):
    out = tmp_path / "gallery"
    code = cli(["explain", "--model", str(workspace / model), "--prepared",
                str(workspace / "prepared"), "--preprocessed", str(workspace / "preprocessed"),
                "--out", str(out)])  # fmt: skip
    assert code == 0
    files = sorted(out.iterdir())
    assert (
        1 <= len(files) <= 10 and f"wrote {len(files)} Grad-CAM images" in capsys.readouterr().out
    )
    test_images = set(pd.read_csv(workspace / "prepared" / "test.csv").path)
    for file in files:
        grade, verdict, name = file.stem.split("_", 2)
        assert grade in {f"grade{g}" for g in range(5)} and verdict in {"correct", "wrong"}
        assert f"images/{name}.jpeg" in test_images
        assert Image.open(file).size == (DISPLAY_SIDE, DISPLAY_SIDE)

"""Model construction, and ImageNet weights from the local torchvision cache only."""

import urllib.request

import pytest
import torch
from torchvision.models import resnet18, resnet50

from retino.errors import RetinoError
from retino.training.models import build_model


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def random_imagenet_weights(path, builder=resnet18):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(123)
    state = builder().state_dict()  # random, but with ImageNet's 1000-way head, as the real file
    torch.save(state, path)
    return state


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_five_grade_head(arch):
    model = build_model(arch)
    assert model.fc.out_features == 5
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_pretrained_loads_the_cached_file(torch_home):
    state = random_imagenet_weights(torch_home / "resnet18-f37072fd.pth")
    model = build_model("resnet18", pretrained=True)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[1].bn2.running_mean, state["layer4.1.bn2.running_mean"])
    assert model.fc.out_features == 5  # replaced after loading


def test_v2_weights_pick_their_own_file(torch_home):
    state = random_imagenet_weights(torch_home / "resnet50-11ad3fa6.pth", resnet50)
    model = build_model("resnet50", pretrained=True, weights="IMAGENET1K_V2")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_missing_weights_fail_fast_naming_file_and_folder(torch_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("build_model tried to download weights")

    # every way torchvision fetches weights ends in one of these
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(RetinoError) as err:
        build_model("resnet50", pretrained=True)
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message and str(torch_home) in message
    assert "\n" not in message


def test_local_state_dict_path(tmp_path):
    state = random_imagenet_weights(tmp_path / "mine.pth")
    model = build_model("resnet18", pretrained=str(tmp_path / "mine.pth"))
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_weights_of_another_arch_are_rejected(tmp_path):
    random_imagenet_weights(tmp_path / "r18.pth")
    with pytest.raises(RetinoError, match="weights do not fit resnet50"):
        build_model("resnet50", pretrained=str(tmp_path / "r18.pth"))


def test_missing_local_file_and_garbage_file(tmp_path):
    with pytest.raises(RetinoError, match="not found"):
        build_model("resnet18", pretrained=str(tmp_path / "none.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(RetinoError, match="not a loadable state dict"):
        build_model("resnet18", pretrained=str(tmp_path / "junk.pth"))


def test_unknown_arch_and_weights():
    with pytest.raises(RetinoError, match="unknown architecture 'vgg16'"):
        build_model("vgg16")
    with pytest.raises(RetinoError, match="IMAGENET1K_V3"):
        build_model("resnet18", pretrained=True, weights="IMAGENET1K_V3")

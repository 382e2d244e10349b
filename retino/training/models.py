"""torchvision ResNets with a grading head (5 logits or 1 score), optionally ImageNet-pretrained."""

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import WeightsEnum

from retino.errors import RetinoError
from retino.grades import NUM_CLASSES

# Explicit lookup: a typo is an error listing the choices, not an attribute of torchvision.models.
BUILDERS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights),
    "resnet34": (models.resnet34, models.ResNet34_Weights),
    "resnet50": (models.resnet50, models.ResNet50_Weights),
    "resnet101": (models.resnet101, models.ResNet101_Weights),
    "resnet152": (models.resnet152, models.ResNet152_Weights),
}


def build_model(
    arch: str,
    pretrained: bool | str = False,
    weights: str = "IMAGENET1K_V1",
    outputs: int = NUM_CLASSES,
) -> nn.Module:
    """A ResNet whose `fc` has `outputs` units: the 5 grade logits, or 1 (regression head).

    pretrained: False (random init), True (torchvision ImageNet `weights`, from the local cache
    only), or a path to a state dict (.pth) of the same architecture with its 1000-way head.
    """
    if arch not in BUILDERS:
        raise RetinoError(f"arch: unknown architecture {arch!r}; use one of {', '.join(BUILDERS)}")
    builder, weight_enum = BUILDERS[arch]
    model = builder()
    if pretrained is True:
        path = weights_file(weight_enum, weights)
        if not path.is_file():  # never download: a run must not hang on a missing network
            raise RetinoError(
                f"ImageNet weights not found: place {path.name} in {path.parent} "
                f"(from {weight_enum[weights].url}), or set pretrained: false"
            )
    elif pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise RetinoError(
                f"pretrained: {path} not found; give a .pth state dict, true or false"
            )
    if pretrained:
        try:
            model.load_state_dict(_load_state_dict(path))
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise RetinoError(f"{path}: weights do not fit {arch} ({first})") from None
    # Replace the head after loading: the checkpoints carry ImageNet's 1000-way fc.
    model.fc = nn.Linear(model.fc.in_features, outputs)
    return model


def weights_file(weight_enum: type[WeightsEnum], name: str) -> Path:
    """Where torchvision keeps (and looks for) this weight file: $TORCH_HOME/hub/checkpoints."""
    try:
        url = weight_enum[name].url
    except KeyError:
        choices = ", ".join(w.name for w in weight_enum)
        raise RetinoError(f"train.weights: {name!r} not available; use one of {choices}") from None
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "not weights"
        raise RetinoError(f"{path}: not a loadable state dict ({err})") from None
    if not isinstance(state, dict):
        raise RetinoError(f"{path}: expected a state dict of tensors")
    return state

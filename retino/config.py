"""params.yaml -> frozen dataclasses.

Every key is checked against the dataclass fields: an unknown key, a missing section or a value of
the wrong type is a one-line RetinoError naming the key, never a silent default.
"""

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from retino.errors import RetinoError

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass(frozen=True)
class DataConfig:
    val_fraction: float = 0.2  # share of train patients held out for model selection
    test_fraction: float = 0.2  # share held out as test where the layout has no test labels
    kaggle_usage_split: bool = False  # Kaggle: Public test images = val, Private = test
    max_pixels: int = 36_000_000  # larger images are refused before decoding
    image_size: int = 112  # the square side of the preprocessed images
    num_workers: int = -1  # loader processes; -1 = one per core (capped at 8)
    stats_images: int = 256  # train images sampled for the per-channel mean/std


@dataclass(frozen=True)
class PreprocessConfig:
    normalize: Literal["none", "graham"] = "none"  # graham: local-contrast normalisation
    workers: int = -1  # processes; -1 = one per core


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5  # probability (the lab report's RandomHorizontalFlip)
    vflip: float = 0.5  # probability (the lab report's RandomVerticalFlip)
    rotation: float = 0.0  # max degrees, uniform in [-rotation, rotation]
    scale_min: float = 1.0  # random resized crop: min area fraction kept (1.0 = off)
    color_jitter: float = 0.0  # max relative change of brightness and of contrast


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6
    freeze_epochs: int = 0  # first epochs train the head only (the lab report's feature extraction)
    batch_size: int = 32
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = 0
    step_size: int = 10  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    class_weights: bool = False  # inverse-frequency weighted cross-entropy
    label_smoothing: float = 0.0
    select_metric: Literal["val_qwk", "val_acc", "val_loss"] = "val_qwk"
    track_test: bool = True  # test accuracy per epoch for the lab report's curves (never selects)
    weights: Literal["IMAGENET1K_V1", "IMAGENET1K_V2"] = "IMAGENET1K_V1"
    device: str = "auto"  # auto (cuda when present, else cpu), cpu, cuda, cuda:1 ...
    compile: bool = False  # torch.compile the model (CUDA)
    # Data-parallel (torchrun + DDP). batch_size is per process: the global batch is
    # batch_size x processes; scale_lr multiplies lr by the number of processes (linear rule).
    nproc: int | str = 1  # processes per node; "auto" = one per visible GPU (1 on CPU)
    nnodes: int = 1
    node_rank: int = 0  # this node's index, 0..nnodes-1 (multi-node only)
    master_addr: str = "127.0.0.1"  # rank 0's node (multi-node only)
    master_port: int = 29500
    scale_lr: bool = False
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    dist_timeout: int = 300  # seconds a process waits for its peers before the job fails
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 64


@dataclass(frozen=True)
class Config:
    arch: str = "resnet18"
    pretrained: bool | str = False  # true = torchvision ImageNet weights, or a path to a .pth
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise RetinoError(f"arch: unknown architecture {self.arch!r}; use one of {ARCHS}")
        checks = {
            "data.val_fraction": 0 < self.data.val_fraction < 1,
            "data.test_fraction": 0 < self.data.test_fraction < 1,
            "data.max_pixels": self.data.max_pixels >= 1,
            "data.image_size": self.data.image_size >= 32,
            "train.epochs": self.train.epochs >= 1,
            "train.freeze_epochs": 0 <= self.train.freeze_epochs <= self.train.epochs,
            "train.batch_size": self.train.batch_size >= 1,
            "train.lr": self.train.lr > 0,
            "train.nproc": self.train.nproc == "auto"
            or (isinstance(self.train.nproc, int) and self.train.nproc >= 1),
            "train.nnodes": self.train.nnodes >= 1,
            "train.node_rank": 0 <= self.train.node_rank < self.train.nnodes,
            "train.augment.scale_min": 0 < self.train.augment.scale_min <= 1,
            "eval.batch_size": self.eval.batch_size >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise RetinoError(f"{key}: value out of range; see the comment in params.yaml")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict, the inverse of `from_dict` (stored in checkpoints)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, as logged to MLflow (`train.lr`, `train.augment.hflip`...)."""
        return _flatten(self.to_dict())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_config(path: Path) -> Config:
    """Read params.yaml (or any YAML with the same shape) into a Config."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise RetinoError(f"{path}: not found; run from the project root") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise RetinoError(f"{path}{where}: not valid YAML; fix the syntax") from None
    try:
        return from_dict(raw)
    except RetinoError as err:
        raise RetinoError(f"{path}: {err}") from None


def from_dict(raw: dict[str, Any]) -> Config:
    return _build(Config, raw, "")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise RetinoError(f"{prefix.rstrip('.') or 'params'}: expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise RetinoError(f"{prefix}{unknown[0]}: unknown key; known: {', '.join(sorted(names))}")
    values = {key: _coerce(hints[key], value, f"{prefix}{key}") for key, value in raw.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise RetinoError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(option, value, key)
            except RetinoError:
                continue
        names = " or ".join(t.__name__ for t in typing.get_args(hint))
        raise RetinoError(f"{key}: expected {names}, got {value!r}")
    # bool is an int in Python: keep `epochs: true` and `hflip: yes` from passing as numbers
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise RetinoError(f"{key}: expected {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value

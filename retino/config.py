"""params.yaml -> frozen dataclasses; params.yaml is the one source of values.

Every field is declared with `param(rule, doc)`: the rule is the field's range, and from it come
the check, the error text and the README's parameter table (tests/test_config.py keeps the table
in step). No field has a default: a key missing from params.yaml is an error naming it, as is an
unknown key, a value of the wrong type or out of range, e.g.
`params.yaml: train.lr: must be a finite number > 0, got inf`. The checks run whenever a config
is built, from YAML or in code, so no value reaches the engine unchecked.
"""

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from retino.errors import RetinoError
from retino.yamlfile import load_yaml

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
HOST = re.compile(r"[A-Za-z0-9:]([A-Za-z0-9.:_-]*[A-Za-z0-9])?")  # a name, IPv4 or bare IPv6


class Rule:
    """What one params.yaml value may be."""

    text: str  # completes "must be ...": the error message and the README's range column

    def parse(self, value: Any, section: Any) -> Any:
        """`value` as the field holds it; ValueError if it breaks the rule. `section` is the
        config being built, for bounds that name an earlier field of it."""
        raise NotImplementedError


def _bound(limit: float | str | None, section: Any) -> float | None:
    """A numeric bound, or the value of the sibling field it names (`train.epochs`)."""
    return getattr(section, limit.rsplit(".", 1)[-1]) if isinstance(limit, str) else limit


def _interval(low: Any, high: Any, low_open: bool, high_open: bool) -> str:
    show = lambda v: f"{v:g}" if isinstance(v, float) else str(v)  # noqa: E731
    if high is None:
        return f"{'>' if low_open else '>='} {show(low)}"
    return f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"


@dataclass(frozen=True)
class Number(Rule):
    low: float
    high: float | None = None
    low_open: bool = False  # > low rather than >= low
    high_open: bool = False

    @property
    def text(self) -> str:
        kind = "a finite number" if self.high is None else "a number"
        return f"{kind} {_interval(self.low, self.high, self.low_open, self.high_open)}"

    def parse(self, value: Any, section: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError
        x = float(value)
        ok = math.isfinite(x) and (x > self.low if self.low_open else x >= self.low)
        if self.high is not None:
            ok = ok and (x < self.high if self.high_open else x <= self.high)
        if not ok:
            raise ValueError
        return x


@dataclass(frozen=True)
class Integer(Rule):
    low: int
    high: int | str | None = None  # a number, or an earlier field of the section
    high_open: bool = False

    @property
    def text(self) -> str:
        return f"an integer {_interval(self.low, self.high, False, self.high_open)}"

    def parse(self, value: Any, section: Any) -> int:
        # bool is an int in Python: keep `epochs: true` from passing as 1
        if isinstance(value, bool) or not isinstance(value, int) or value < self.low:
            raise ValueError
        high = _bound(self.high, section)
        if high is not None and (value >= high if self.high_open else value > high):
            raise ValueError
        return value


@dataclass(frozen=True)
class Choice(Rule):
    choices: tuple[Any, ...]

    @property
    def text(self) -> str:
        names = ["true" if c is True else "false" if c is False else str(c) for c in self.choices]
        return " or ".join(names) if len(names) == 2 else f"one of {', '.join(names)}"

    def parse(self, value: Any, section: Any) -> Any:
        # `1 in (True, False)` holds in Python: compare types too
        if not any(value == c and type(value) is type(c) for c in self.choices):
            raise ValueError
        return value


@dataclass(frozen=True)
class Pattern(Rule):
    regex: re.Pattern
    text: str

    def parse(self, value: Any, section: Any) -> str:
        if not isinstance(value, str) or not self.regex.fullmatch(value):
            raise ValueError
        return value


@dataclass(frozen=True)
class Either(Rule):
    rules: tuple[Rule, ...]
    text: str

    def parse(self, value: Any, section: Any) -> Any:
        for rule in self.rules:
            try:
                return rule.parse(value, section)
            except ValueError:
                continue
        raise ValueError


FLAG = Choice((True, False))


def param(rule: Rule, doc: str) -> Any:
    """A config field: required, checked against `rule`, described by `doc` in the README."""
    return dataclasses.field(metadata={"rule": rule, "doc": doc})


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if isinstance(value, bool):
        return str(value).lower()
    return "an empty value" if value is None else repr(value)


class _Checked:
    """Checks every field against its rule when built, from params.yaml or in code."""

    PREFIX: ClassVar[str]  # the section's dotted key, with a trailing dot

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if "rule" not in f.metadata:
                continue  # a nested section (a plain field), checked when it was built
            rule, value = f.metadata["rule"], getattr(self, f.name)
            try:
                parsed = rule.parse(value, self)
            except ValueError:
                raise RetinoError(
                    f"{self.PREFIX}{f.name}: must be {rule.text}{_where(rule, self)}, "
                    f"got {_show(value)}"
                ) from None
            object.__setattr__(self, f.name, parsed)  # e.g. lr: 1 -> 1.0


def _where(rule: Rule, section: Any) -> str:
    """`(train.epochs = 6)` where a bound names another field."""
    limit = getattr(rule, "high", None)
    return f" ({limit} = {_bound(limit, section)})" if isinstance(limit, str) else ""


@dataclass(frozen=True)
class DataConfig(_Checked):
    PREFIX: ClassVar[str] = "data."
    val_fraction: float = param(
        Number(0, 0.5, low_open=True), "share of train patients held out for model selection"
    )
    test_fraction: float = param(
        Number(0, 0.5, low_open=True),
        "share of patients held out as test where the layout has no test labels (APTOS)",
    )
    kaggle_usage_split: bool = param(
        FLAG, "Kaggle layout: Public test images = val, Private = test"
    )
    max_pixels: int = param(Integer(1), "larger images are refused before any pixel is decoded")
    image_size: int = param(
        Integer(32, 2048), "side of the square the retina disc is cropped and resized to (px)"
    )
    num_workers: int = param(
        Integer(-1, 64), "loader processes; -1 = none on CPU, one per core (at most 8) with a GPU"
    )
    stats_images: int = param(Integer(1), "train images sampled for the channel mean/std")
    cache_device: str = param(
        Choice(("auto", "cpu", "cuda")),
        "CUDA training: cuda = the splits in GPU memory, cpu = streamed from the file, auto = in "
        "GPU memory while they take at most half of it (free); CPU training reads the file",
    )


@dataclass(frozen=True)
class PreprocessConfig(_Checked):
    PREFIX: ClassVar[str] = "preprocess."
    normalize: str = param(
        Choice(("none", "graham")), "graham: Graham's local-contrast normalisation"
    )
    workers: int = param(Integer(-1, 1024), "processes decoding the images; -1 = one per core")
    device: str = param(
        Choice(("auto", "cpu", "cuda")),
        "cuda: JPEGs decoded (nvJPEG), cropped and resized on the GPU; auto = cuda when present",
    )


@dataclass(frozen=True)
class AugmentConfig(_Checked):
    PREFIX: ClassVar[str] = "train.augment."
    hflip: float = param(Number(0, 1), "probability of a left-right flip")
    vflip: float = param(Number(0, 1), "probability of an upside-down flip")
    rotation: float = param(Number(0, 180), "max degrees, uniform in [-rotation, rotation]")
    scale_min: float = param(
        Number(0, 1, low_open=True), "random resized crop: min area kept (1 = off)"
    )
    color_jitter: float = param(Number(0, 1), "max relative change of brightness and contrast")


@dataclass(frozen=True)
class TrainConfig(_Checked):
    PREFIX: ClassVar[str] = "train."
    epochs: int = param(Integer(1), "training epochs")
    freeze_epochs: int = param(
        Integer(0, "train.epochs"), "first epochs train the head only (with pretrained: true)"
    )
    batch_size: int = param(Integer(2), "per process; BatchNorm needs 2 images per batch")
    optimizer: str = param(Choice(("sgd", "adamw")), "SGD with momentum, or AdamW")
    lr: float = param(Number(0, low_open=True), "base learning rate, before warm-up and schedule")
    momentum: float = param(Number(0, 1, high_open=True), "SGD momentum (sgd only)")
    weight_decay: float = param(Number(0), "decoupled (adamw) or L2 (sgd) weight decay")
    schedule: str = param(Choice(("cosine", "step", "constant")), "learning-rate schedule")
    warmup_epochs: int = param(Integer(0, "train.epochs"), "epochs of linear lr warm-up")
    step_size: int = param(Integer(1), "step schedule: epochs between decays")
    gamma: float = param(Number(0, 1, low_open=True), "step schedule: decay factor")
    loss: str = param(
        Choice(("ce", "regression")),
        "ce: 5-way cross-entropy, argmax; regression: one output, MSE on the grade, cut by "
        "thresholds fitted on validation for QWK",
    )
    sampler: str = param(
        Choice(("shuffle", "balanced", "progressive")),
        "shuffle: each image once per epoch; balanced: every grade equally often; "
        "progressive: from instance to class balance over the epochs",
    )
    class_weights: bool = param(FLAG, "inverse-frequency weighted loss")
    label_smoothing: float = param(
        Number(0, 1, high_open=True), "cross-entropy label smoothing (ce only)"
    )
    select_metric: str = param(
        Choice(("val_qwk", "val_acc", "val_loss")), "the validation metric that picks best.pt"
    )
    track_test: bool = param(FLAG, "log test accuracy per epoch (lab report curves; never selects)")
    weights: str = param(
        Choice(("IMAGENET1K_V1", "IMAGENET1K_V2")), "torchvision weights, with pretrained: true"
    )
    device: str = param(
        Pattern(DEVICE, "auto, cpu, cuda or cuda:N"), "auto = cuda when present, else cpu"
    )
    compile: bool = param(FLAG, "torch.compile the model (CUDA)")
    # Data-parallel (torchrun + DDP). batch_size is per process: the global batch is
    # batch_size x processes; scale_lr multiplies lr by the number of processes (linear rule).
    nproc: int | str = param(
        Either((Choice(("auto",)), Integer(1, 1024)), "auto or an integer in [1, 1024]"),
        "processes per node; auto = one per visible GPU (1 on CPU)",
    )
    nnodes: int = param(Integer(1, 1024), "nodes of a multi-node job")
    node_rank: int = param(
        Integer(0, "train.nnodes", high_open=True), "this node's index (multi-node only)"
    )
    master_addr: str = param(
        Pattern(HOST, "a host name or IP address"), "rank 0's node (multi-node only)"
    )
    master_port: int = param(Integer(1, 65535), "rank 0's port (multi-node only)")
    scale_lr: bool = param(FLAG, "lr x processes (linear scaling rule)")
    sync_bn: bool = param(FLAG, "SyncBatchNorm across processes (CUDA only)")
    dist_timeout: int = param(Integer(1), "seconds a process waits for its peers before failing")
    augment: AugmentConfig


@dataclass(frozen=True)
class EvalConfig(_Checked):
    PREFIX: ClassVar[str] = "eval."
    batch_size: int = param(Integer(1), "batch size of validation, test and predict")
    tta: str = param(
        Choice(("none", "flips")),
        "flips: mean output over the 4 flip combinations (val calibration, test, predict)",
    )
    paired_eyes: bool = param(
        FLAG, "blend each eye's output with its fellow eye's, weight fitted on validation"
    )
    bootstrap: int = param(
        Integer(0, 100_000),
        "resamples of the test patients for the 95 % intervals (seeded by seed); 0 = none",
    )


@dataclass(frozen=True)
class Config(_Checked):
    PREFIX: ClassVar[str] = ""
    arch: str = param(Choice(ARCHS), "torchvision ResNet")
    pretrained: bool | str = param(
        Either((FLAG, Pattern(re.compile(r".*\S.*"), "a path")), "true, false or a .pth file path"),
        "true = torchvision ImageNet weights (from $TORCH_HOME), or a .pth state dict",
    )
    seed: int = param(
        Integer(0, 2**32 - 1),
        "seeds the split, initialisation, shuffling, augmentation and the test bootstrap",
    )
    data: DataConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    eval: EvalConfig

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
        raw = load_yaml(path)
    except FileNotFoundError:
        raise RetinoError(f"{path}: not found; run from the project root") from None
    except OSError as err:
        raise RetinoError(f"{path}: unreadable ({err.strerror}); check the file") from None
    try:
        return from_dict(raw)
    except RetinoError as err:
        raise RetinoError(f"{path}: {err}") from None


def from_dict(raw: Any) -> Config:
    """A Config from nested plain data: params.yaml as read, or `to_dict()` of one."""
    return _build(Config, raw, "")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:  # `eval:` with nothing below: an empty section, so its keys are missing
        raw = {}
    if not isinstance(raw, dict):
        what = prefix.rstrip(".") or "params"
        raise RetinoError(f"{what}: expected a mapping of keys, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise RetinoError(f"{prefix}{unknown[0]}: unknown key; known: {', '.join(fields)}")
    missing = [name for name in fields if name not in raw]
    if missing:
        rule = fields[missing[0]].metadata.get("rule")
        what = f"it, {rule.text}" if rule else "the section"
        raise RetinoError(f"{prefix}{missing[0]}: missing key; add {what}")
    values = {
        name: raw[name] if "rule" in f.metadata else _build(f.type, raw[name], f"{prefix}{name}.")
        for name, f in fields.items()
    }
    return cls(**values)

"""params.yaml is the one source of values: every key required, every value range-checked, each
error one line naming the file, the key and the range; the README's table says the same."""

import dataclasses
import re
from pathlib import Path

import pytest

from retino.config import AugmentConfig, Config, from_dict, load_config
from retino.errors import RetinoError
from tests.conftest import ROOT, tiny_config

COMMITTED = (ROOT / "params.yaml").read_text()


def leaf_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every value in params.yaml, in declaration order."""
    keys = []
    for f in dataclasses.fields(cls):
        if "rule" in f.metadata:
            keys.append((f"{prefix}{f.name}", f))
        else:
            keys += leaf_keys(f.type, f"{prefix}{f.name}.")
    return keys


def line_of(text: str, dotted: str) -> str:
    """The line of params.yaml text that holds `dotted` (e.g. train.augment.hflip)."""
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        match = re.match(r"( *)(\w+):", line)
        if not match:
            continue
        indent = len(match[1])
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match[2])]
        if ".".join(k for _, k in stack) == dotted:
            return line
    raise AssertionError(f"{dotted} not in params.yaml")


def params_with(tmp_path: Path, dotted: str, value: str | None) -> Path:
    """The committed params.yaml with one value replaced by `value` (YAML text), or its line
    deleted (None), as a user would edit it."""
    line = line_of(COMMITTED, dotted)
    indent, key = re.match(r"( *)(\w+):", line).groups()
    new = "" if value is None else f"{indent}{key}: {value}\n"
    path = tmp_path / "params.yaml"
    path.write_text(COMMITTED.replace(line + "\n", new, 1))
    return path


def load_error(path: Path) -> str:
    with pytest.raises(RetinoError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}") and "\n" not in text, text
    return text


def test_committed_params_load_and_round_trip():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.arch == "resnet18" and cfg.pretrained is False
    assert cfg.train.lr == 0.002 and cfg.train.warmup_epochs == 1
    assert cfg.train.augment.rotation == 15.0
    assert cfg.flat()["train.augment.hflip"] == 0.5
    # checkpoints store to_dict(): it must read back as the same config
    assert from_dict(cfg.to_dict()) == cfg


def test_no_field_has_a_default():
    for key, f in leaf_keys():
        missing = dataclasses.MISSING
        assert f.default is missing and f.default_factory is missing, key


@pytest.mark.parametrize("key", [key for key, _ in leaf_keys()])
def test_every_key_is_required(tmp_path, key):
    text = load_error(params_with(tmp_path, key, None))
    assert f": {key}: missing key; add it, " in text


def test_a_missing_section_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(COMMITTED.split("eval:")[0])
    assert load_error(path).endswith(": eval: missing key; add the section")
    data = COMMITTED[COMMITTED.index("data:") : COMMITTED.index("preprocess:")]
    path.write_text(COMMITTED.replace(data, "data: 3\n"))
    assert load_error(path).endswith(": data: expected a mapping of keys, got 3")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # the new user's hostile inputs
        ("train.lr", ".inf", "train.lr: must be a finite number > 0, got inf"),
        ("train.lr", ".nan", "train.lr: must be a finite number > 0, got nan"),
        ("data.stats_images", "0", "data.stats_images: must be an integer >= 1, got 0"),
        ("train.augment.hflip", "7", "train.augment.hflip: must be a number in [0, 1], got 7"),
        ("train.augment.color_jitter", "5", "must be a number in [0, 1], got 5"),
        ("train.augment.rotation", "-400", "rotation: must be a number in [0, 180], got -400"),
        ("train.weight_decay", "-1", "train.weight_decay: must be a finite number >= 0, got -1"),
        ("train.master_port", "99999", "must be an integer in [1, 65535], got 99999"),
        ("data.image_size", "100000", "must be an integer in [32, 2048], got 100000"),
        ("train.label_smoothing", "5", "must be a number in [0, 1), got 5"),
        ("train.device", "tpu", "train.device: must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ("train.step_size", "0", "train.step_size: must be an integer >= 1, got 0"),
        ("train.momentum", "-1", "train.momentum: must be a number in [0, 1), got -1"),
        ("seed", "-1", "seed: must be an integer in [0, 4294967295], got -1"),
        # bounds that name another key say its value
        ("train.freeze_epochs", "7", "must be an integer in [0, train.epochs] (train.epochs = 6)"),
        ("train.node_rank", "1", "in [0, train.nnodes) (train.nnodes = 1), got 1"),
        # already handled before, kept so
        ("arch", "resnet7", "arch: must be one of resnet18, resnet34, resnet50, resnet101, resnet"),
        ("train.lr", "fast", "train.lr: must be a finite number > 0, got 'fast'"),
        ("train.lr", "", "train.lr: must be a finite number > 0, got an empty value"),
        ("train.epochs", "true", "train.epochs: must be an integer >= 1, got true"),
        ("train.epochs", "2.5", "train.epochs: must be an integer >= 1, got 2.5"),
        ("train.optimizer", "adam", "train.optimizer: must be sgd or adamw, got 'adam'"),
        ("train.augment.hflip", "yes please", "must be a number in [0, 1], got 'yes please'"),
        ("train.nproc", "0", "train.nproc: must be auto or an integer in [1, 1024], got 0"),
        ("train.master_addr", "'a b'", "must be a host name or IP address, got 'a b'"),
        ("pretrained", "3", "pretrained: must be true, false or a .pth file path, got 3"),
        ("data.val_fraction", "1.5", "data.val_fraction: must be a number in (0, 0.5], got 1.5"),
        ("train.epochs", "[1", "not valid YAML; fix the syntax"),
    ],
)
def test_bad_values_say_the_range(tmp_path, key, value, message):
    assert message in load_error(params_with(tmp_path, key, value))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.lr", "1e-3", 0.001),  # YAML 1.2, as DVC reads and writes it
        ("train.lr", "1", 1.0),
        ("train.device", "cuda:1", "cuda:1"),  # whether it exists is checked when used
        ("train.nproc", "auto", "auto"),
        ("pretrained", "weights/r18.pth", "weights/r18.pth"),
        ("train.master_addr", "fe80::1", "fe80::1"),
    ],
)
def test_good_values(tmp_path, key, value, expected):
    cfg = load_config(params_with(tmp_path, key, value))
    got = cfg
    for part in key.split("."):
        got = getattr(got, part)
    assert got == expected and type(got) is type(expected)


def test_unknown_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(COMMITTED.replace("  lr: 0.002\n", "  learning_rate: 0.002\n"))
    assert ": train.learning_rate: unknown key; known: epochs, " in load_error(path)
    path.write_text(COMMITTED + "bogus: 1\n")
    assert ": bogus: unknown key" in load_error(path)


def test_duplicate_keys_are_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(COMMITTED.replace("  lr: 0.002\n", "  lr: 0.002\n  lr: 0.1\n"))
    line = COMMITTED.splitlines().index("  lr: 0.002") + 1
    assert load_error(path) == (
        f"{path}:{line + 1}: duplicate key 'lr' (also on line {line}); keep one"
    )
    path.write_text(COMMITTED + "seed: 1\n")
    assert "duplicate key 'seed'" in load_error(path)


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(RetinoError, match=r"^train\.augment\.hflip: must be a number in \[0, 1\]"):
        AugmentConfig(hflip=7, vflip=0, rotation=0, scale_min=1, color_jitter=0)
    with pytest.raises(RetinoError, match=r"^train\.lr: .* got -0\.1$"):
        tiny_config(train__lr=-0.1)


def test_int_is_accepted_as_float_and_flattened():
    cfg = tiny_config(train__lr=1)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.flat()["data.image_size"] == 32


def test_missing_file(tmp_path):
    with pytest.raises(RetinoError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        tiny_config().arch = "resnet50"


def committed_text(key: str) -> str:
    """The value of `key` as written in the committed params.yaml."""
    return re.sub(r"\s+#.*", "", line_of(COMMITTED, key).split(":", 1)[1]).strip()


def test_readme_parameter_table_matches_the_config():
    expected = [
        f"| `{key}` | {f.metadata['rule'].text} | `{committed_text(key)}` | {f.metadata['doc']} |"
        for key, f in leaf_keys()
    ]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Parameters\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == expected, "README parameter table is stale; it should read:\n" + "\n".join(
        expected
    )

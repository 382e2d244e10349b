import pytest

from retino.config import Config, load_config
from retino.errors import RetinoError
from tests.conftest import ROOT, tiny_config


def test_committed_params_load():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.arch == "resnet18" and cfg.pretrained is False
    assert cfg.flat()["train.augment.hflip"] == 0.5


def test_int_is_accepted_as_float_and_flattened():
    cfg = tiny_config(train__lr=1)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.flat()["data.image_size"] == 32


def test_pretrained_may_be_a_path():
    assert tiny_config(pretrained="weights/r18.pth").pretrained == "weights/r18.pth"


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("arch: resnet19\n", "arch: unknown architecture 'resnet19'"),
        ("train:\n  lr: fast\n", "train.lr: expected float, got 'fast'"),
        ("train:\n  epochs: true\n", "train.epochs: expected int, got True"),
        ("train:\n  learning_rate: 0.1\n", "train.learning_rate: unknown key"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("train:\n  optimizer: adam\n", "train.optimizer: 'adam' is not one of sgd, adamw"),
        ("train:\n  augment:\n    hflip: yes please\n", "train.augment.hflip: expected float"),
        ("data: 3\n", "data: expected a mapping"),
        ("data:\n  val_fraction: 1.5\n", "data.val_fraction: value out of range"),
        ("train:\n  epochs: [1\n", "not valid YAML"),
        ("pretrained: 3\n", "pretrained: expected bool or str, got 3"),
    ],
)
def test_bad_params_name_the_key(tmp_path, yaml_text, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml_text)
    with pytest.raises(RetinoError) as err:
        load_config(path)
    text = str(err.value)
    assert text.startswith(f"{path}")
    assert message in text
    assert "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(RetinoError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_configs_are_frozen():
    with pytest.raises(AttributeError):
        Config().arch = "resnet50"

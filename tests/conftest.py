"""Shared fixtures: tiny synthetic datasets and configs shrunk to run in seconds on a CPU."""

import os
import shutil
from pathlib import Path

import pytest

from retino.config import Config, from_dict
from retino.data.prepare import prepare
from retino.data.preprocess import preprocess
from retino.synth import synthesize
from retino.yamlfile import load_yaml

os.environ["HF_HUB_OFFLINE"] = "1"  # never wait on a download
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    """A 48-train / 16-test synthetic dataset at 48 px, made once per session (copy to modify)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    synthesize(out, n_train=48, n_test=16, size=48, seed=3)
    return out


@pytest.fixture
def tiny_data(tiny_source, tmp_path) -> Path:
    """A private, writable copy of the tiny dataset."""
    return Path(shutil.copytree(tiny_source, tmp_path / "data"))


def tiny_config(**overrides) -> Config:
    """The committed params.yaml shrunk: 32 px, 2 epochs, main-process loading, no warp or
    jitter, CPU decoding. `train__lr=0.1` overrides train.lr."""
    raw = load_yaml(ROOT / "params.yaml")
    tiny = {
        "seed": 7,
        "data__image_size": 32, "data__num_workers": 0, "data__val_fraction": 0.25,
        "data__stats_images": 16,
        "preprocess__device": "cpu",  # the same cache bytes on a GPU machine: tests compare them
        "train__epochs": 2, "train__batch_size": 8, "train__lr": 0.003, "train__warmup_epochs": 0,
        "train__augment__rotation": 0.0, "train__augment__scale_min": 1.0,
        "train__augment__color_jitter": 0.0,
        "eval__batch_size": 16,
    }  # fmt: skip
    for dotted, value in (tiny | overrides).items():
        *parents, key = dotted.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[key] = value
    return from_dict(raw)


@pytest.fixture
def project(tmp_path, tiny_data, monkeypatch):
    """A workspace with prepared and preprocessed splits; MLflow store at its root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    prepare_and_cache(tiny_data, tmp_path, tiny_config())
    return tmp_path


@pytest.fixture(scope="session")
def trained(tiny_source, tmp_path_factory) -> Path:
    """A project trained by the train step (1 epoch) as DVC experiment `tiny-exp`: an MLflow
    store with one finished run and the model it logged (best.pt, grading photographs). Shared:
    register under a name of your own."""
    from retino.training.train import train  # torchvision: only the tests that train pay

    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(tiny_source, root / "data")
    cfg = tiny_config(train__epochs=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("DVC_ROOT", str(root))
        mp.setenv("DVC_EXP_NAME", "tiny-exp")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        prepare_and_cache(root / "data", root, cfg)
        train(
            cfg, root / "prepared", root / "preprocessed", root / "models", root / "reports",
            root / "ckpt",
        )  # fmt: skip
    return root


def prepare_and_cache(data: Path, root: Path, cfg: Config) -> None:
    """What the prepare and preprocess stages write: root/prepared and root/preprocessed."""
    prepare(data, root / "prepared", cfg)
    preprocess(data, root / "prepared", root / "preprocessed", cfg)

"""The preprocess stage: the uint8 cache, its index, and failures named before anything is
published."""

import json

import numpy as np
import pandas as pd
import pytest
import simplejpeg
from PIL import ImageFile

from retino.data import images
from retino.data.cache import open_index
from retino.data.fundus import preprocess_image
from retino.data.prepare import prepare
from retino.data.preprocess import preprocess
from retino.data.splits import SPLITS
from retino.errors import RetinoError
from tests.conftest import tiny_config


def test_the_cache_holds_every_image_of_every_split(project):
    index = json.loads((project / "preprocessed" / "index.json").read_text())
    assert (index["image_size"], index["normalize"]) == (32, "none")
    assert all(0 < m < 1 for m in index["mean"]) and all(0 < s < 0.5 for s in index["std"])
    for split in ("train", "val", "test"):
        table = pd.read_csv(project / "prepared" / f"{split}.csv")
        images = np.load(project / "preprocessed" / f"{split}.npy", mmap_mode="r")
        assert images.shape == (len(table), 32, 32, 3) and images.dtype == np.uint8
        assert index["splits"][split]["rows"] == len(table)
        last = project / "data" / table.path.iloc[-1]
        assert np.array_equal(images[-1], preprocess_image(last, 32, "none", 10**8))


def test_one_process_or_several_write_the_same_cache(project, tmp_path):
    cfg = tiny_config(preprocess__workers=1)
    preprocess(project / "data", project / "prepared", tmp_path / "one", cfg)
    for split in ("train", "val", "test"):
        name = f"{split}.npy"
        assert (tmp_path / "one" / name).read_bytes() == (
            project / "preprocessed" / name
        ).read_bytes()


def test_unreadable_images_are_all_named_and_nothing_is_published(tiny_data, tmp_path):
    cfg = tiny_config()
    prepare(tiny_data, tmp_path / "prepared", cfg)
    broken = []
    for split in ("train", "test"):
        path = tiny_data / pd.read_csv(tmp_path / "prepared" / f"{split}.csv").path[0]
        path.write_bytes(path.read_bytes()[:300])  # the header survives: prepare would pass
        broken.append(path)
    with pytest.raises(RetinoError) as err:
        preprocess(tiny_data, tmp_path / "prepared", tmp_path / "cache", cfg)
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert all(any(f"image {path} is unreadable" in line for line in lines) for path in broken)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cache.partial").exists()


def test_a_cache_of_other_params_is_refused(project):
    with pytest.raises(RetinoError, match=r"preprocessed at 32 px, normalize none, but 64 px"):
        open_index(project / "preprocessed", 64, "none")
    with pytest.raises(RetinoError, match=r"run `dvc repro preprocess`"):
        open_index(project / "preprocessed", 32, "graham")


def test_prepare_reads_headers_only_and_preprocess_decodes_each_image_once(
    tiny_data, tmp_path, monkeypatch
):
    decodes = []  # JPEG decodes (libjpeg-turbo) and Pillow decodes, in this process

    def counted(decode):
        def wrapper(*args, **kwargs):
            decodes.append(decode.__name__)
            return decode(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", counted(simplejpeg.decode_jpeg))
    monkeypatch.setattr(ImageFile.ImageFile, "load", counted(ImageFile.ImageFile.load))
    cfg = tiny_config(preprocess__workers=1)  # decode here, where the counting is
    prepare(tiny_data, tmp_path / "prepared", cfg)
    assert decodes == []
    preprocess(tiny_data, tmp_path / "prepared", tmp_path / "cache", cfg)
    rows = sum(len(pd.read_csv(tmp_path / "prepared" / f"{s}.csv")) for s in SPLITS)
    assert rows == 64 and decodes == ["decode_jpeg"] * rows

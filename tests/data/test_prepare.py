import json

import pandas as pd
import pytest
from PIL import Image

from retino.data.layouts import patient_of, validate
from retino.data.prepare import channel_stats, prepare
from retino.errors import RetinoError
from tests.conftest import tiny_config


def test_split_is_grouped_stratified_and_deterministic(tiny_data, tmp_path):
    cfg = tiny_config()
    prepare(tiny_data, tmp_path / "a", cfg)
    prepare(tiny_data, tmp_path / "b", cfg)
    for name in ("train.csv", "val.csv", "test.csv", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()

    train = pd.read_csv(tmp_path / "a" / "train.csv")
    val = pd.read_csv(tmp_path / "a" / "val.csv")
    assert list(train.columns) == ["path", "label"]
    assert len(train) + len(val) == 48
    assert (tmp_path / "a" / "test.csv").read_text().count("\n") == 16 + 1
    # both eyes of a patient on one side of the split
    patients = lambda t: {patient_of(p.rsplit("/", 1)[1].removesuffix(".jpeg")) for p in t.path}  # noqa: E731
    assert not patients(train) & patients(val)
    # val is ~25% and keeps grade 0 as the majority, like train
    assert 0.15 <= len(val) / 48 <= 0.35
    assert val.label.value_counts().idxmax() == 0
    assert (tiny_data / train.path[0]).is_file()

    stats = json.loads((tmp_path / "a" / "stats.json").read_text())
    assert sum(stats["counts"]["train"]) == len(train)
    assert sum(stats["counts"]["test"]) == 16
    assert all(0 < m < 1 for m in stats["mean"]) and all(0 < s < 0.5 for s in stats["std"])


def test_other_seed_other_split(tiny_data, tmp_path):
    prepare(tiny_data, tmp_path / "a", tiny_config(seed=1))
    prepare(tiny_data, tmp_path / "b", tiny_config(seed=2))
    assert (tmp_path / "a/val.csv").read_text() != (tmp_path / "b/val.csv").read_text()


def test_invalid_data_writes_nothing(tiny_data, tmp_path):
    (tiny_data / "train_label.csv").write_text("0\n" * 3)
    with pytest.raises(RetinoError, match=r"48 images but train_label\.csv has 3 labels"):
        prepare(tiny_data, tmp_path / "out", tiny_config())
    assert not (tmp_path / "out").exists()


def test_blank_images_are_refused_before_anything_is_written(tiny_data, tmp_path):
    # every image one flat grey: a channel std of 0 would make training divide by zero
    for path in (tiny_data / "images").iterdir():
        Image.new("RGB", (48, 48), (90, 40, 20)).save(path, "JPEG")
    with pytest.raises(RetinoError) as err:
        prepare(tiny_data, tmp_path / "out", tiny_config())
    message = str(err.value)
    assert "\n" not in message
    assert "sampled train images have channel std (0.0000, 0.0000, 0.0000)" in message
    assert "blank or single-colour images" in message
    assert not (tmp_path / "out").exists()


def test_zero_images_sampled_is_refused(tiny_data):
    samples = validate(tiny_data).samples["train"]
    with pytest.raises(RetinoError, match=r"no train images sampled .* data\.stats_images >= 1"):
        channel_stats(tiny_data, samples, limit=0, seed=0)

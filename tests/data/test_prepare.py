import json

import pandas as pd
import pytest

from retino.data.layouts import patient_of
from retino.data.prepare import prepare
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

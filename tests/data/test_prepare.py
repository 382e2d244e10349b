import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from retino.data.layouts import patient_of
from retino.data.prepare import prepare
from retino.data.preprocess import channel_stats, preprocess
from retino.errors import RetinoError
from retino.synth import synthesize
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
    assert stats["layout"] == "lab"
    assert (
        stats["counts"]["train"]
        == train.label.value_counts().reindex(range(5), fill_value=0).tolist()
    )
    assert sum(stats["counts"]["test"]) == 16


def test_other_seed_other_split(tiny_data, tmp_path):
    prepare(tiny_data, tmp_path / "a", tiny_config(seed=1))
    prepare(tiny_data, tmp_path / "b", tiny_config(seed=2))
    assert (tmp_path / "a/val.csv").read_text() != (tmp_path / "b/val.csv").read_text()


def test_invalid_data_writes_nothing(tiny_data, tmp_path):
    (tiny_data / "train_label.csv").write_text("0\n" * 3)
    with pytest.raises(RetinoError, match=r"48 images but train_label\.csv has 3 labels"):
        prepare(tiny_data, tmp_path / "out", tiny_config())
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kaggle") / "data"
    synthesize(out, n_train=48, n_test=30, size=48, seed=3, layout="kaggle")
    return out


def test_kaggle_layout_keeps_its_test_split(kaggle, tmp_path):
    report = prepare(kaggle, tmp_path / "p", tiny_config())
    assert report.layout.name == "kaggle"
    test = pd.read_csv(tmp_path / "p" / "test.csv")
    labels = pd.read_csv(kaggle / "testLabels.csv")
    assert sorted(test.path) == sorted(f"test/{name}.jpeg" for name in labels.image)
    train, val = (pd.read_csv(tmp_path / "p" / f"{s}.csv") for s in ("train", "val"))
    assert len(train) + len(val) == 48 and all(p.startswith("train/") for p in train.path)


def test_kaggle_usage_split_makes_public_val_and_private_test(kaggle, tmp_path):
    prepare(kaggle, tmp_path / "p", tiny_config(data__kaggle_usage_split=True))
    labels = pd.read_csv(kaggle / "testLabels.csv")
    names = {s: {Path(p).stem for p in pd.read_csv(tmp_path / "p" / f"{s}.csv").path}
             for s in ("train", "val", "test")}  # fmt: skip
    assert names["val"] == set(labels.image[labels.Usage == "Public"])
    assert names["test"] == set(labels.image[labels.Usage == "Private"])
    assert len(names["train"]) == 48  # train stays whole


def test_usage_split_needs_a_usage_column(kaggle, tmp_path):
    data = Path(shutil.copytree(kaggle, tmp_path / "data"))
    labels = pd.read_csv(data / "testLabels.csv")
    labels.drop(columns="Usage").to_csv(data / "testLabels.csv", index=False)
    prepare(data, tmp_path / "plain", tiny_config())  # without the option it is not needed
    with pytest.raises(RetinoError, match=r"kaggle_usage_split: needs Kaggle's testLabels\.csv"):
        prepare(data, tmp_path / "p", tiny_config(data__kaggle_usage_split=True))


def test_aptos_layout_carves_a_test_split_out_of_train(tmp_path):
    data = tmp_path / "aptos"
    synthesize(data, n_train=60, n_test=20, size=48, seed=4, layout="aptos")
    report = prepare(data, tmp_path / "p", tiny_config(data__test_fraction=0.25))
    assert report.layout.name == "aptos" and set(report.samples) == {"train"}
    splits = {s: pd.read_csv(tmp_path / "p" / f"{s}.csv") for s in ("train", "val", "test")}
    assert sum(len(t) for t in splits.values()) == 80
    assert 0.15 <= len(splits["test"]) / 80 <= 0.35
    paths = [set(t.path) for t in splits.values()]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert all(p.startswith("train_images/") and p.endswith(".png") for p in splits["test"].path)


def test_blank_images_are_refused_before_anything_is_written(tiny_data, tmp_path):
    # every image one flat grey: a channel std of 0 would make training divide by zero
    for path in (tiny_data / "images").iterdir():
        Image.new("RGB", (48, 48), (90, 40, 20)).save(path, "JPEG")
    cfg = tiny_config()
    prepare(tiny_data, tmp_path / "prepared", cfg)
    with pytest.raises(RetinoError) as err:
        preprocess(tiny_data, tmp_path / "prepared", tmp_path / "cache", cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "sampled train images have channel std (0.0000, 0.0000, 0.0000)" in message
    assert "blank or single-colour images" in message
    assert not (tmp_path / "cache").exists() and not (tmp_path / "cache.partial").exists()


def test_zero_images_sampled_is_refused(project):
    with pytest.raises(RetinoError, match="no train images sampled for the channel mean/std"):
        channel_stats(project / "preprocessed" / "train.npy", limit=0, seed=0)

"""Tests for the synthetic fundus generator (`retino.synth`) and `retino synth`."""

import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retino.cli import main
from retino.errors import RetinoError
from retino.grades import NUM_CLASSES
from retino.synth import GRADE_PRIORS, dataset, layouts, render_fundus, synthesize, write_preview
from retino.synth.render import paint
from retino.synth.sensor import expose

NAME_RE = re.compile(r"^\d+_(left|right)$")


def read_split(out: Path, split: str) -> tuple[list[str], list[int]]:
    names = pd.read_csv(out / f"{split}_img.csv", header=None)
    labels = pd.read_csv(out / f"{split}_label.csv", header=None)
    assert names.shape[1] == 1 and labels.shape[1] == 1
    return names[0].astype(str).tolist(), labels[0].astype(int).tolist()


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> tuple[Path, dict[str, list[int]]]:
    out = tmp_path_factory.mktemp("synth") / "data"
    counts = synthesize(out, n_train=25, n_test=9, size=64, seed=3)
    return out, counts


def test_layout(small_dataset):
    out, counts = small_dataset
    for split, n in (("train", 25), ("test", 9)):
        for kind in ("img", "label"):
            first = (out / f"{split}_{kind}.csv").read_text().splitlines()[0]
            # headerless: the first row is already data
            assert NAME_RE.match(first) if kind == "img" else first in {"0", "1", "2", "3", "4"}
        names, labels = read_split(out, split)
        assert len(names) == len(labels) == n
        assert len(set(names)) == n
        assert all(NAME_RE.match(nm) for nm in names)
        assert set(labels) <= {0, 1, 2, 3, 4}
        assert counts[split] == [labels.count(g) for g in range(5)]
        for nm in names:
            with Image.open(out / "images" / f"{nm}.jpeg") as im:
                assert im.format == "JPEG"
                assert im.mode == "RGB"
                assert im.size == (64, 64)
    assert len(list((out / "images").glob("*.jpeg"))) == 25 + 9


def test_patients_and_splits(small_dataset):
    out, _ = small_dataset
    patients = {}
    for split in ("train", "test"):
        names, _ = read_split(out, split)
        eyes: dict[str, list[str]] = {}
        for nm in names:
            pid, eye = nm.split("_")
            eyes.setdefault(pid, []).append(eye)
        for pid_eyes in eyes.values():
            assert sorted(pid_eyes) in (["left", "right"], ["left"], ["right"])
        # n odd -> exactly one single-eyed patient; both eyes otherwise
        assert sum(len(e) == 1 for e in eyes.values()) == len(names) % 2
        patients[split] = set(eyes)
    assert not patients["train"] & patients["test"]


def test_every_grade_in_small_train(small_dataset):
    _, counts = small_dataset
    assert all(c >= 1 for c in counts["train"])


def test_deterministic_and_seed_dependent(tmp_path):
    kw = {"n_train": 5, "n_test": 3, "size": 48}
    synthesize(tmp_path / "a", seed=11, **kw)
    synthesize(tmp_path / "b", seed=11, **kw)
    synthesize(tmp_path / "c", seed=12, **kw)
    a, b, c = (all_files(tmp_path / d) for d in "abc")
    assert len(a) == 4 + 8
    assert a == b
    img_a = sorted(v for k, v in a.items() if k.endswith(".jpeg"))
    img_c = sorted(v for k, v in c.items() if k.endswith(".jpeg"))
    assert not set(img_a) & set(img_c)


def test_parallel_path_matches_serial(tmp_path, monkeypatch):
    kw = {"n_train": 20, "n_test": 14, "size": 32, "seed": 5}
    synthesize(tmp_path / "serial", **kw)
    monkeypatch.setattr(dataset, "_PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(dataset, "_available_cpus", lambda: 2)
    synthesize(tmp_path / "pool", **kw)
    assert all_files(tmp_path / "serial") == all_files(tmp_path / "pool")


@pytest.mark.parametrize("n", [1, 2, 5, 9, 25, 400, 1001])
def test_grade_counts_follow_the_priors_quota(n):
    for rows in dataset._plan(n_train=n, n_test=n, seed=n).values():
        counts = np.bincount([grade for _, grade in rows], minlength=NUM_CLASSES)
        assert counts.sum() == n
        for g in range(1, NUM_CLASSES):
            # the prior's share rounded down or up; from 5 images on, every grade at least once
            share = GRADE_PRIORS[g] * n
            allowed = {math.floor(share), math.ceil(share)} | ({1} if n >= 5 else set())
            assert counts[g] in allowed, (g, counts)
        if n >= 5:
            assert counts.min() >= 1


def _render(grade: int, seed: int, size: int = 64, eye: str = "left") -> np.ndarray:
    img = render_fundus(grade, size, np.random.default_rng(seed), eye)
    assert img.mode == "RGB" and img.size == (size, size)
    return np.asarray(img, dtype=np.float64)


def test_render_looks_like_a_fundus():
    img = _render(0, 1, size=96)
    lum = img.mean(axis=2)
    # black surround in the corners, bright field of view in the middle
    for corner in (lum[:6, :6], lum[:6, -6:], lum[-6:, :6], lum[-6:, -6:]):
        assert corner.mean() < 12
    centre = img[30:66, 30:66].reshape(-1, 3).mean(axis=0)
    assert centre.mean() > 40
    assert centre[0] > centre[1] > centre[2]  # orange-red retina


def test_eyes_are_mirrored():
    # the bright optic disc lies on the image's left for left eyes and on its right for right eyes
    def disc_x(img: np.ndarray) -> float:
        lum = img.mean(axis=2)
        xs = np.nonzero(lum >= np.percentile(lum, 99.5))[1]
        return float(np.median(xs))

    for seed in range(4):
        assert disc_x(_render(0, seed, eye="left")) < 32 < disc_x(_render(0, seed, eye="right"))


def test_lesions_grow_with_grade():
    """Renders from generators in the same state differ only by the lesions, so the mean
    deviation from the healthy render measures how much lesion there is."""
    seeds = range(8)
    dev = {g: [] for g in range(5)}
    changed = {g: [] for g in range(5)}
    for s in seeds:
        healthy = _render(0, s)
        for g in range(5):
            diff = np.abs(_render(g, s) - healthy).max(axis=2)
            dev[g].append(diff.mean())
            changed[g].append((diff > 20).mean())
    mean_dev = {g: float(np.mean(v)) for g, v in dev.items()}
    assert mean_dev[0] == 0.0  # grade 0 is the healthy render itself
    assert 0 < mean_dev[1] < mean_dev[2] < mean_dev[4]
    assert mean_dev[3] > mean_dev[2]
    assert all(d > 0 for d in dev[4])  # every proliferative image has lesions
    # lesions are local: mild eyes change only a tiny part of the image
    assert np.mean(changed[1]) < 0.01
    assert np.mean(changed[4]) > np.mean(changed[2]) > np.mean(changed[1])


def test_camera_variation_between_healthy_images():
    a, b = _render(0, 21), _render(0, 22)
    assert np.abs(a - b).mean() > 5


def test_preview(tmp_path):
    path = tmp_path / "sub" / "preview.png"
    write_preview(path, size=48, seed=0, per_grade=3)
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert 5 * 48 <= h < 6 * 48  # five rows
    assert w >= 3 * 48


def test_synthesize_writes_preview(tmp_path):
    prev = tmp_path / "p.png"
    synthesize(tmp_path / "d", n_train=2, n_test=1, size=32, seed=0, preview=prev)
    assert prev.is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_train": 0},
        {"n_train": -3},
        {"n_test": 0},
        {"n_test": -1},
        {"size": 31},
        {"size": 0},
        {"size": 4097},
        {"seed": -1},
        {"n_train": 2.5},
        {"layout": "coco"},
        {"frame": (100, 100)},
        {"frame": (200, 320)},
    ],
)
def test_synthesize_rejects_bad_arguments(tmp_path, kwargs):
    args = {"n_train": 4, "n_test": 2, "size": 32, "seed": 0} | kwargs
    with pytest.raises(RetinoError):
        synthesize(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("grade", "size", "eye"), [(5, 64, "left"), (-1, 64, "left"), (0, 16, "left"), (0, 64, "up")]
)
def test_render_rejects_bad_arguments(grade, size, eye):
    with pytest.raises(ValueError):
        render_fundus(grade, size, np.random.default_rng(0), eye)


def test_preview_rejects_bad_arguments(tmp_path):
    with pytest.raises(RetinoError):
        write_preview(tmp_path / "p.png", size=64, seed=0, per_grade=0)
    with pytest.raises(RetinoError):
        write_preview(tmp_path / "p.png", size=8, seed=0)


# --------------------------------------------------------------------------------------------
# camera-sized frames
# --------------------------------------------------------------------------------------------
def test_frames(tmp_path):
    kw = {"n_train": 3, "n_test": 2, "size": None, "seed": 4, "frame": (320, 200)}
    synthesize(tmp_path / "a", **kw)
    synthesize(tmp_path / "b", **kw)
    assert all_files(tmp_path / "a") == all_files(tmp_path / "b")
    paths = sorted((tmp_path / "a" / "images").glob("*.jpeg"))
    assert len(paths) == 5
    for path in paths:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (320, 200)
            lum = np.asarray(im, dtype=np.float64).mean(axis=2)
        bright = lum > 20  # the black frame stays below 12
        cols = np.nonzero(bright.sum(axis=0) >= 3)[0]
        rows = np.nonzero(bright.sum(axis=1) >= 3)[0]
        left, right = cols.min(), cols.max()
        assert 0.85 * 200 <= right - left <= 1.15 * 200  # the disc about as wide as the frame tall
        assert rows.max() - rows.min() >= 0.75 * 200  # (some field stops cut it flat)
        assert abs((left + right) / 2 - 160) > 5  # off-centre
        # the wider margin is the black frame: dark, but sensor noise rather than zeros
        border = lum[:, : left - 12] if left > 320 - right else lum[:, right + 12 :]
        assert border.shape[1] >= 40
        assert border.max() <= 20 and 1 <= border.mean() <= 12
        assert (border > 0).mean() > 0.9 and np.unique(border).size >= 5


def test_frame_geometry_varies():
    """Over many photographs the disc sits left and right of the middle, and some are cut."""
    render, view = paint(0, 64, np.random.default_rng(0), "left")
    sides, cut = set(), []
    for seed in range(40):
        lum = np.asarray(expose(render, view, (320, 200), np.random.default_rng(seed))).mean(axis=2)
        cols = np.nonzero((lum > 40).any(axis=0))[0]
        sides.add((cols.min() + cols.max()) / 2 > 160)
        cut.append(bool((lum[0] > 40).any() and (lum[-1] > 40).any()))
    assert sides == {False, True}
    assert 0 < sum(cut) < 40


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------
KW = {"n_train": 5, "n_test": 4, "size": 48, "seed": 2}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lab") / "data"
    synthesize(out, **KW)
    return out


def test_kaggle_layout(tmp_path, lab):
    out = tmp_path / "kaggle"
    counts = synthesize(out, **KW, layout="kaggle")
    assert sorted(p.name for p in out.iterdir()) == [
        "test", "testLabels.csv", "train", "trainLabels.csv"
    ]  # fmt: skip
    train = pd.read_csv(out / "trainLabels.csv")
    test = pd.read_csv(out / "testLabels.csv")
    assert list(train.columns) == ["image", "level"]
    assert list(test.columns) == ["image", "level", "Usage"]
    assert set(test.Usage) <= {"Public", "Private"}
    for split, table in (("train", train), ("test", test)):
        names, labels = read_split(lab, split)
        assert table.image.tolist() == names and table.level.tolist() == labels
        assert counts[split] == [labels.count(g) for g in range(NUM_CLASSES)]
        for name in names:  # the same photographs, only elsewhere
            kaggle_image = (out / split / f"{name}.jpeg").read_bytes()
            assert kaggle_image == (lab / "images" / f"{name}.jpeg").read_bytes()


def test_kaggle_usage_is_a_fifth_public_by_patient(tmp_path):
    plan = dataset._plan(n_train=2, n_test=600, seed=0)
    text = layouts.place("kaggle", tmp_path, plan, seed=0).tables[tmp_path / "testLabels.csv"]
    test = pd.read_csv(io.StringIO(text))
    assert (test.Usage == "Public").mean() == pytest.approx(0.2, abs=0.05)
    patients = test.image.str.split("_").str[0]
    assert test.groupby(patients).Usage.nunique().max() == 1  # both eyes on one leaderboard


def test_aptos_layout(tmp_path, lab):
    out = tmp_path / "aptos"
    counts = synthesize(out, **KW, layout="aptos")
    assert sorted(p.name for p in out.iterdir()) == ["train.csv", "train_images"]
    table = pd.read_csv(out / "train.csv", dtype={"id_code": str})
    assert list(table.columns) == ["id_code", "diagnosis"]
    assert table.id_code.str.fullmatch(r"[0-9a-f]{12}").all()
    assert table.id_code.is_unique and table.id_code.is_monotonic_increasing
    lab_images = {}
    for split in ("train", "test"):
        for name, label in zip(*read_split(lab, split), strict=True):
            with Image.open(lab / "images" / f"{name}.jpeg") as im:
                lab_images[name] = (np.asarray(im, dtype=np.float64), label)
    assert len(table) == KW["n_train"] + KW["n_test"] == len(lab_images)
    assert counts == {"train": np.bincount(table.diagnosis, minlength=NUM_CLASSES).tolist()}
    matched = set()
    for code, grade in zip(table.id_code, table.diagnosis, strict=True):
        with Image.open(out / "train_images" / f"{code}.png") as im:
            assert im.format == "PNG" and im.size == (48, 48)
            pixels = np.asarray(im, dtype=np.float64)
        # the lossless render is one lab JPEG up to compression error, with the same grade
        diffs = {name: np.abs(pixels - img).mean() for name, (img, _) in lab_images.items()}
        best, second = sorted(diffs, key=diffs.get)[:2]
        assert diffs[best] < 0.5 * diffs[second] and lab_images[best][1] == grade
        matched.add(best)
    assert len(matched) == len(lab_images)


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "option", "hint"),
    [
        (["--size", "100000"], "--size", "32 to 4096"),
        (["--size", "5"], "--size", "32 to 4096"),
        (["--frame", "10x10"], "--frame", "128 to 8192"),
        (["--frame", "abc"], "--frame", "WIDTHxHEIGHT"),
        (["--train", "-3"], "--train", "1 or more"),
        (["--layout", "coco"], "--layout", "lab, kaggle, aptos"),
    ],
)
def test_cli_rejects_bad_options(tmp_path, capsys, args, option, hint):
    out = tmp_path / "d"
    assert main(["synth", str(out), "--train", "2", "--test", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {option}") and hint in err, err
    assert not out.exists()


def test_cli_refuses_a_file_or_a_non_empty_folder(tmp_path, capsys):
    small = ["--train", "2", "--test", "1", "--size", "32"]
    file = tmp_path / "file"
    file.write_text("x")
    assert main(["synth", str(file), *small]) == 2
    assert "is a file" in capsys.readouterr().err
    assert file.read_text() == "x"

    data = tmp_path / "data"
    data.mkdir()  # an empty folder is fine ...
    assert main(["synth", str(data), *small]) == 0
    before = all_files(data)
    capsys.readouterr()
    assert main(["synth", str(data), *small, "--seed", "1"]) == 2  # ... a data set is not
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
    assert all_files(data) == before

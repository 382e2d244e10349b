"""`retino validate`: every rule fed with a real bad file, each a one-line error and exit 2."""

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from retino.cli import main
from retino.data import validation
from retino.data.validation import validate
from retino.synth import synthesize


def run_validate(capsys, root: Path) -> tuple[int, list[str], str]:
    code = main(["validate", str(root)])
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line], out


def rewrite(path: Path, rows: list[str]) -> None:
    path.write_text("".join(f"{r}\n" for r in rows))


def rows(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_valid_dataset_prints_summary(capsys, tiny_data):
    code, err, out = run_validate(capsys, tiny_data)
    assert code == 0, err
    assert "train" in out and "test" in out
    train_line = next(line for line in out.splitlines() if line.startswith("train"))
    assert train_line.split()[1] == "48"
    assert sum(int(c) for c in train_line.split()[2:]) == 48


def expect_problem(capsys, root: Path, *fragments: str) -> str:
    code, err, _ = run_validate(capsys, root)
    assert code == 2
    matching = [line for line in err if all(f in line for f in fragments)]
    assert matching, f"no line with {fragments} in {err}"
    assert "Traceback" not in "\n".join(err)
    return matching[0]


def test_missing_csv(capsys, tiny_data):
    (tiny_data / "test_label.csv").unlink()
    line = expect_problem(capsys, tiny_data, "test_label.csv", "missing")
    assert line.startswith(f"error: {tiny_data / 'test_label.csv'}")


def test_missing_images_folder(capsys, tiny_data, tmp_path):
    (tiny_data / "images").rename(tmp_path / "elsewhere")
    expect_problem(capsys, tiny_data, "images folder missing")


def test_length_mismatch(capsys, tiny_data):
    path = tiny_data / "train_label.csv"
    rewrite(path, rows(path)[:-3])
    expect_problem(capsys, tiny_data, "train_img.csv", "48 images", "45 labels")


@pytest.mark.parametrize("bad", ["7", "-1", "two", "1.5"])
def test_bad_label(capsys, tiny_data, bad):
    path = tiny_data / "train_label.csv"
    labels = rows(path)
    labels[4] = bad
    rewrite(path, labels)
    expect_problem(capsys, tiny_data, f"{path}:5:", f"label '{bad}' is not an integer grade 0-4")


def test_empty_split(capsys, tiny_data):
    rewrite(tiny_data / "test_img.csv", [])
    rewrite(tiny_data / "test_label.csv", [])
    expect_problem(capsys, tiny_data, "test_img.csv", "split is empty")


def test_duplicate_name_across_splits(capsys, tiny_data):
    train_names = rows(tiny_data / "train_img.csv")
    test_path = tiny_data / "test_img.csv"
    names = rows(test_path)
    names[2] = train_names[0]
    rewrite(test_path, names)
    line = expect_problem(capsys, tiny_data, f"{test_path}:3:", "duplicate image name")
    assert "train_img.csv:1" in line


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "sub/dir/17_left"])
def test_name_escaping_root(capsys, tiny_data, name):
    path = tiny_data / "train_img.csv"
    names = rows(path)
    names[1] = name
    rewrite(path, names)
    expect_problem(capsys, tiny_data, f"{path}:2:", "escapes the images folder")


def first_image(root: Path) -> Path:
    return root / "images" / f"{rows(root / 'train_img.csv')[0]}.jpeg"


def test_missing_image(capsys, tiny_data):
    first_image(tiny_data).unlink()
    expect_problem(capsys, tiny_data, "train_img.csv:1:", "not found")


def test_zero_byte_image(capsys, tiny_data):
    first_image(tiny_data).write_bytes(b"")
    expect_problem(capsys, tiny_data, "train_img.csv:1:", "empty (0 bytes)")


def test_truncated_image(capsys, tiny_data):
    path = first_image(tiny_data)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_problem(capsys, tiny_data, "train_img.csv:1:", "unreadable")


def test_not_an_image(capsys, tiny_data):
    first_image(tiny_data).write_text("name,grade\n17_left,3\n")
    expect_problem(capsys, tiny_data, "train_img.csv:1:", "is not an image")


def test_every_problem_reported_in_one_pass(capsys, tiny_data):
    first_image(tiny_data).unlink()
    path = tiny_data / "test_label.csv"
    labels = rows(path)
    labels[0] = "9"
    rewrite(path, labels)
    code, err, _ = run_validate(capsys, tiny_data)
    assert code == 2 and len(err) == 2


def test_header_rows_keep_every_sample(tiny_data):
    for split in ("train", "test"):
        img, label = tiny_data / f"{split}_img.csv", tiny_data / f"{split}_label.csv"
        rewrite(img, ["image", *rows(img)])
        rewrite(label, ["level", *rows(label)])
    report = validate(tiny_data)
    assert report.problems == []
    # the lab report's pd.read_csv defaults lost one sample per split: none lost here
    assert len(report.samples["train"]) == 48 and len(report.samples["test"]) == 16
    assert report.samples["train"][0].name == rows(tiny_data / "train_img.csv")[1]


def test_header_only_in_label_csv(tiny_data):
    label = tiny_data / "train_label.csv"
    rewrite(label, ["level", *rows(label)])
    report = validate(tiny_data)
    assert report.problems == [] and len(report.samples["train"]) == 48


def test_a_float_grade_in_row_1_is_a_sample_not_a_header(tiny_data):
    # spreadsheets and pandas write grades as 2.0: that is grade 2, never a header to skip
    label = tiny_data / "train_label.csv"
    labels = rows(label)
    rewrite(label, ["2.0", *labels[1:3], "4.0", *labels[4:]])
    report = validate(tiny_data)
    assert report.problems == [] and len(report.samples["train"]) == 48
    assert report.samples["train"][0].name == rows(tiny_data / "train_img.csv")[0]
    assert report.samples["train"][0].label == 2 and report.samples["train"][3].label == 4


@pytest.mark.parametrize("bad", ["2.5", "nan", "inf", "two"])
def test_a_bad_number_in_row_1_is_reported_not_skipped(capsys, tiny_data, bad):
    label = tiny_data / "train_label.csv"
    rewrite(label, [bad, *rows(label)[1:]])
    if bad == "two":  # not a number at all while the next row is: a header, one label short
        expect_problem(capsys, tiny_data, "48 images but train_label.csv has 47 labels")
    else:
        expect_problem(capsys, tiny_data, f"{label}:1:", f"label '{bad}' is not an integer grade")


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA"])
def test_other_colour_modes_are_accepted(tiny_data, mode):
    path = first_image(tiny_data)
    image = Image.open(path).convert(mode)
    image.save(path, format="PNG" if mode == "RGBA" else "JPEG")  # JPEG has no alpha
    assert validate(tiny_data).problems == []


def test_shared_patient_is_a_warning(capsys, tiny_data):
    # move one eye of a train patient to test: the other eye stays in train
    train_img, train_label = tiny_data / "train_img.csv", tiny_data / "train_label.csv"
    names, labels = rows(train_img), rows(train_label)
    moved_name, moved_label = names.pop(0), labels.pop(0)
    rewrite(train_img, names)
    rewrite(train_label, labels)
    for path, value in ((tiny_data / "test_img.csv", moved_name),
                        (tiny_data / "test_label.csv", moved_label)):  # fmt: skip
        rewrite(path, [*rows(path), value])
    code, err, _ = run_validate(capsys, tiny_data)
    assert code == 0
    patient = moved_name.rsplit("_", 1)[0]
    assert any(line.startswith("warning:") and "both train and test" in line and patient in line
               for line in err)  # fmt: skip


def test_missing_root(capsys, tmp_path):
    expect_problem(capsys, tmp_path / "nowhere", "dataset folder not found")


@pytest.fixture
def kaggle(tmp_path) -> Path:
    synthesize(tmp_path / "kaggle", n_train=24, n_test=12, size=40, seed=6, layout="kaggle")
    return tmp_path / "kaggle"


def test_kaggle_layout_is_detected_and_summarised(capsys, kaggle):
    code, err, out = run_validate(capsys, kaggle)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "layout: kaggle"
    train = next(line for line in lines if line.startswith("train"))
    assert train.split()[1] == "24"
    usage = pd.read_csv(kaggle / "testLabels.csv").Usage.value_counts()
    assert f"test Usage: Public {usage['Public']}, Private {usage['Private']}" in lines


def test_kaggle_header_must_name_the_columns(capsys, kaggle):
    path = kaggle / "trainLabels.csv"
    rewrite(path, ["img,grade", *rows(path)[1:]])
    expect_problem(capsys, kaggle, "trainLabels.csv:1: header img,grade lacks image, level")


def test_kaggle_rows_are_checked_like_the_labs(capsys, kaggle):
    path = kaggle / "trainLabels.csv"
    table = rows(path)
    table[1] = table[1].split(",")[0] + ",7"  # row 2: a bad grade
    rewrite(path, table)
    name = table[2].split(",")[0]
    (kaggle / "train" / f"{name}.jpeg").unlink()  # row 3: a missing image
    test = kaggle / "testLabels.csv"
    test_rows = rows(test)
    test_rows[2] = test_rows[2].rsplit(",", 1)[0] + ",Secret"
    rewrite(test, test_rows)
    code, err, _ = run_validate(capsys, kaggle)
    assert code == 2 and len(err) == 3
    assert any(f"{test}:3: Usage 'Secret' is not Public or Private" in line for line in err)
    assert any(f"{path}:2: label '7' is not an integer grade" in line for line in err)
    assert any(f"{path}:3: image" in line and "not found" in line for line in err)


def test_aptos_layout_has_only_a_train_split(capsys, tmp_path):
    synthesize(tmp_path / "aptos", n_train=20, n_test=5, size=40, seed=6, layout="aptos")
    code, err, out = run_validate(capsys, tmp_path / "aptos")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "layout: aptos" and lines[2].split()[:2] == ["train", "25"]
    assert len(lines) == 3  # no test split: prepare carves one out


def test_an_unknown_layout_names_the_ones_it_knows(capsys, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "labels.csv").write_text("file,grade\n")
    line = expect_problem(capsys, tmp_path / "photos", "no known dataset layout")
    assert "trainLabels.csv" in line and "train.csv" in line and "train_img.csv" in line


def test_a_camera_frame_cut_mid_scan_is_caught_by_the_scaled_decode(capsys, tmp_path):
    # EyePACS-sized frames, checked as `retino validate` checks them: 1/8-scale decoding in a
    # pool of worker processes. Cut mid-scan, the header is intact: only the decode can tell.
    root = tmp_path / "frames"
    synthesize(root, n_train=3, n_test=1, size=256, seed=5, frame=(3888, 2592))
    path = first_image(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert Image.open(path).size == (3888, 2592)
    code = main(["validate", str(root), "--workers", "2"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith(f"error: {root / 'train_img.csv'}:1: image {path} is unreadable")
    assert "Premature end of JPEG file" in err[0]


@pytest.mark.parametrize("decode", [False, True])
def test_the_pool_checks_headers_and_pixels_in_one_pass(tiny_data, monkeypatch, decode):
    # a small batch per task, so that 64 images go to two worker processes: headers (the
    # prepare stage's check) and decodes (`retino validate`'s) name the same files, in table
    # order, as one process does
    train = [tiny_data / "images" / f"{name}.jpeg" for name in rows(tiny_data / "train_img.csv")]
    train[3].unlink()
    train[10].write_bytes(b"")
    train[20].write_text("not a photograph\n")
    data = train[30].read_bytes()
    train[30].write_bytes(data[: len(data) // 2])  # header intact, pixels cut short
    serial = validate(tiny_data, decode=decode, workers=1).problems
    monkeypatch.setattr(validation, "CHUNK", {True: 4, False: 4})
    pooled = validate(tiny_data, decode=decode, workers=2).problems
    assert pooled == serial
    expected = ["train_img.csv:4:", "train_img.csv:11:", "train_img.csv:21:"]
    expected += ["train_img.csv:31:"] if decode else []
    assert [p.split(" ", 1)[0].rsplit("/", 1)[1] for p in serial] == expected

"""The lab layout: reading and validating a dataset root.

    <root>/train_img.csv  train_label.csv  test_img.csv  test_label.csv   one column each
    <root>/images/<patient>_<left|right>.jpeg

The CSVs are normally headerless. A header row is recognised and skipped (the lab report's
`pd.read_csv` defaults silently ate the first sample instead). Every problem is reported as
`file:row: what is wrong; what to do`, all of them in one pass.
"""

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image, UnidentifiedImageError

from retino.errors import RetinoError
from retino.grades import NUM_CLASSES

SPLITS = ("train", "test")
IMAGE_DIR = "images"
IMAGE_SUFFIX = ".jpeg"
MAX_REPORTED = 50  # problems printed before "... and N more"


@dataclass(frozen=True)
class Sample:
    name: str  # as written in the CSV, e.g. "17_left"
    path: str  # relative to the dataset root, e.g. "images/17_left.jpeg"
    label: int

    @property
    def patient(self) -> str:
        return patient_of(self.name)


@dataclass
class Report:
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self, split: str) -> list[int]:
        grades = Counter(s.label for s in self.samples.get(split, []))
        return [grades[g] for g in range(NUM_CLASSES)]

    def summary(self) -> str:
        lines = [
            f"{'split':<6} {'images':>7}  " + "  ".join(f"grade {g}" for g in range(NUM_CLASSES))
        ]
        for split in SPLITS:
            counts = self.counts(split)
            cells = "  ".join(f"{c:>7}" for c in counts)
            lines.append(f"{split:<6} {sum(counts):>7}  {cells}")
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        """One RetinoError carrying every problem line (capped), for stages and the CLI."""
        if self.problems:
            shown = self.problems[:MAX_REPORTED]
            more = len(self.problems) - len(shown)
            tail = [f"... and {more} more problems"] if more else []
            raise RetinoError("\n".join([*shown, *tail]))


def patient_of(name: str) -> str:
    """Kaggle names are <patient>_<left|right>; both eyes belong to one patient."""
    stem, _, side = name.rpartition("_")
    return stem if stem and side in ("left", "right") else name


def validate(root: Path, check_images: bool = True) -> Report:
    """Read and check the lab layout under `root`; never raises for bad data, reports it."""
    root = Path(root)
    report = Report()
    if not root.is_dir():
        report.problems.append(f"{root}: dataset folder not found; run `dvc pull` or `dvc add` it")
        return report
    if not (root / IMAGE_DIR).is_dir():
        report.problems.append(f"{root / IMAGE_DIR}: images folder missing; put the images there")
    seen: dict[str, str] = {}  # name -> "file:row" of its first occurrence, across splits
    for split in SPLITS:
        samples = _read_split(root, split, report, seen)
        if check_images and (root / IMAGE_DIR).is_dir():
            for sample, where in samples:
                problem = _check_image(root, sample.path)
                if problem:
                    report.problems.append(f"{where}: {problem}")
        report.samples[split] = [s for s, _ in samples]
    _warn_shared_patients(report)
    return report


def _read_split(root: Path, split: str, report: Report, seen: dict[str, str]):
    """The split's samples with their `file:row` locations; problems go to the report."""
    img_csv, label_csv = root / f"{split}_img.csv", root / f"{split}_label.csv"
    missing = [p for p in (img_csv, label_csv) if not p.is_file()]
    for path in missing:
        report.problems.append(
            f"{path}: missing; the lab layout needs {split}_img.csv and {split}_label.csv"
        )
    if missing:
        return []
    names, labels = _read_column(img_csv, report), _read_column(label_csv, report)
    # A header is a first label row that is not a number at all (`level`, not `2.0`) while the
    # next one is; the image CSV then has one too unless its first row names an existing image.
    if len(labels) > 1 and not _is_number(labels[0][1]) and _is_number(labels[1][1]):
        labels = labels[1:]
        if names and not (root / _image_path(names[0][1])).is_file():
            names = names[1:]
    if len(names) != len(labels):
        report.problems.append(
            f"{img_csv}: {len(names)} images but {label_csv.name} has {len(labels)} labels; "
            "the two files must have one row per image, in the same order"
        )
        return []
    if not names:
        report.problems.append(f"{img_csv}: the {split} split is empty; add samples")
        return []
    samples = []
    for (name_row, name), (label_row, raw_label) in zip(names, labels, strict=True):
        where = f"{img_csv}:{name_row}"
        label = _grade(raw_label)
        if label is None:
            report.problems.append(
                f"{label_csv}:{label_row}: label {raw_label!r} is not an integer grade 0-4; "
                "fix the label"
            )
            label = None
        bad_name = _check_name(name)
        if bad_name:
            report.problems.append(f"{where}: {bad_name}")
        elif name in seen:
            report.problems.append(
                f"{where}: duplicate image name {name!r} (also at {seen[name]}); keep one row"
            )
        else:
            seen[name] = where
            if label is not None:
                samples.append((Sample(name, _image_path(name), label), where))
    return samples


def _read_column(path: Path, report: Report) -> list[tuple[int, str]]:
    """(row number, first cell) of each non-blank row of a one-column CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(enumerate(csv.reader(f), start=1))
    except UnicodeDecodeError:
        report.problems.append(f"{path}: not a text CSV; export it as UTF-8 text")
        return []
    return [(i, r[0].strip()) for i, r in rows if r and r[0].strip()]


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _grade(value: str) -> int | None:
    """The grade a label cell holds: `2`, or `2.0` as spreadsheets and pandas export it."""
    number = float(value) if _is_number(value) else math.nan
    if not number.is_integer() or not 0 <= number < NUM_CLASSES:  # nan and inf are not integers
        return None
    return int(number)


def _image_path(name: str) -> str:
    return f"{IMAGE_DIR}/{name}{IMAGE_SUFFIX}"


def _check_name(name: str) -> str | None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name:
        return "empty image name; fill in the name or delete the row"
    if pure.is_absolute() or name[1:3] == ":\\" or ".." in pure.parts or len(pure.parts) != 1:
        return f"image name {name!r} escapes the images folder; use a bare name like 17_left"
    return None


def _check_image(root: Path, rel: str) -> str | None:
    path = root / rel
    if not path.is_file():
        return f"image {path} not found; add it or remove the row"
    if path.stat().st_size == 0:
        return f"image {path} is empty (0 bytes); replace it or remove the row"
    try:
        with Image.open(path) as img:
            img.load()  # decodes every byte: a truncated JPEG fails here, not mid-training
    except UnidentifiedImageError:
        return f"{path} is not an image; replace it or remove the row"
    except (OSError, SyntaxError, ValueError) as err:
        return f"image {path} is unreadable ({err}); replace it or remove the row"
    return None


def _warn_shared_patients(report: Report) -> None:
    train = {s.patient for s in report.samples.get("train", [])}
    both = sorted(train & {s.patient for s in report.samples.get("test", [])})
    if both:
        report.warnings.append(
            f"{len(both)} patient(s) appear in both train and test (e.g. {both[0]}); "
            "their eyes are correlated, so test accuracy is optimistic"
        )

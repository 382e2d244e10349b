"""Dataset layouts on disk, told apart by their files, read into labelled samples per split.

    lab     train_img.csv  train_label.csv  test_img.csv  test_label.csv   one column each
            images/<patient>_<left|right>.jpeg
    kaggle  trainLabels.csv (image,level) + train/<image>.jpeg               Kaggle's EyePACS
            testLabels.csv (image,level,Usage) + test/<image>.jpeg           optional
    aptos   train.csv (id_code,diagnosis) + train_images/<id_code>.png      APTOS 2019

The lab's CSVs are normally headerless; a header row is recognised and skipped (the lab
report's `pd.read_csv` defaults silently ate the first sample instead). Every problem is
reported as `file:row: what is wrong; what to do`, all of them in one pass.
"""

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from retino.errors import RetinoError
from retino.grades import NUM_CLASSES

USAGES = ("Public", "Private")  # Kaggle's testLabels.csv: public and private leaderboard halves


@dataclass(frozen=True)
class Layout:
    name: str
    marker: str  # the file whose presence identifies the layout
    description: str


LAB = Layout("lab", "train_img.csv", "train_img.csv, train_label.csv, test_*.csv + images/")
KAGGLE = Layout("kaggle", "trainLabels.csv", "trainLabels.csv + train/ [testLabels.csv + test/]")
APTOS = Layout("aptos", "train.csv", "train.csv + train_images/")
LAYOUTS = (LAB, KAGGLE, APTOS)


@dataclass(frozen=True)
class Sample:
    name: str  # as written in the CSV, e.g. "17_left"
    path: str  # relative to the dataset root, e.g. "images/17_left.jpeg"
    label: int
    usage: str = ""  # Kaggle test images: "Public" or "Private"

    @property
    def patient(self) -> str:
        return patient_of(self.name)


@dataclass
class Report:
    layout: Layout | None = None
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # "train" [, "test"]
    where: dict[str, str] = field(default_factory=dict)  # sample path -> "file:row"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self, split: str) -> list[int]:
        grades = Counter(s.label for s in self.samples.get(split, []))
        return [grades[g] for g in range(NUM_CLASSES)]

    def summary(self) -> str:
        name = self.layout.name if self.layout else "?"
        lines = [f"layout: {name}"]
        lines.append(f"{'split':<6} {'images':>7}  " + "  ".join(f"grade {g}" for g in range(5)))
        for split in self.samples:
            counts = self.counts(split)
            cells = "  ".join(f"{c:>7}" for c in counts)
            lines.append(f"{split:<6} {sum(counts):>7}  {cells}")
        usages = Counter(s.usage for s in self.samples.get("test", []) if s.usage)
        if usages:
            lines.append("test Usage: " + ", ".join(f"{u} {usages[u]}" for u in USAGES))
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        """One RetinoError carrying every problem line (capped), for stages and the CLI."""
        if self.problems:
            raise RetinoError.of_lines(self.problems)


def patient_of(name: str) -> str:
    """Kaggle names are <patient>_<left|right>; both eyes belong to one patient."""
    stem, _, side = name.rpartition("_")
    return stem if stem and side in ("left", "right") else name


def read_layout(root: Path) -> Report:
    """Detect the layout under `root` and read its samples; problems go to the report."""
    root = Path(root)
    report = Report()
    if not root.is_dir():
        report.problems.append(f"{root}: dataset folder not found; run `dvc pull` or `dvc add` it")
        return report
    report.layout = next((lay for lay in LAYOUTS if (root / lay.marker).is_file()), None)
    if report.layout is None:
        known = "; ".join(f"{lay.name}: {lay.description}" for lay in LAYOUTS)
        report.problems.append(f"{root}: no known dataset layout ({known})")
        return report
    seen: dict[str, str] = {}  # name -> "file:row" of its first occurrence, across splits
    reader = {"lab": _read_lab, "kaggle": _read_kaggle, "aptos": _read_aptos}[report.layout.name]
    for split, source, rows in reader(root, report):
        if rows:
            report.samples[split] = _samples(rows, report, seen)
        else:
            report.problems.append(f"{source}: the {split} split is empty; add samples")
    _warn_shared_patients(report)
    return report


# A row of a split as read from its CSV(s): the image name and where it stands, the raw label
# and where that stands, the image's path relative to the root, Kaggle's Usage.
_Row = tuple[str, str, str, str, str, str]


def _samples(rows: list[_Row], report: Report, seen: dict[str, str]) -> list[Sample]:
    samples = []
    for name, where, raw_label, label_where, path, usage in rows:
        label = _grade(raw_label)
        if label is None:
            report.problems.append(
                f"{label_where}: label {raw_label!r} is not an integer grade 0-4; fix the label"
            )
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
                samples.append(Sample(name, path, label, usage))
                report.where[path] = where
    return samples


def _read_lab(root: Path, report: Report) -> Iterator[tuple[str, Path, list[_Row]]]:
    if not (root / "images").is_dir():
        report.problems.append(f"{root / 'images'}: images folder missing; put the images there")
    for split in ("train", "test"):
        img_csv, label_csv = root / f"{split}_img.csv", root / f"{split}_label.csv"
        missing = [p for p in (img_csv, label_csv) if not p.is_file()]
        for path in missing:
            report.problems.append(
                f"{path}: missing; the lab layout needs {split}_img.csv and {split}_label.csv"
            )
        if missing:
            continue
        names, labels = _read_column(img_csv, report), _read_column(label_csv, report)
        # A header is a first label row that is not a number while the next one is; the
        # image CSV then has one too unless its first row names an existing image.
        if len(labels) > 1 and not _is_number(labels[0][1]) and _is_number(labels[1][1]):
            labels = labels[1:]
            if names and not (root / _lab_path(names[0][1])).is_file():
                names = names[1:]
        if len(names) != len(labels):
            report.problems.append(
                f"{img_csv}: {len(names)} images but {label_csv.name} has {len(labels)} labels; "
                "the two files must have one row per image, in the same order"
            )
            continue
        yield (
            split,
            img_csv,
            [
                (name, f"{img_csv}:{i}", label, f"{label_csv}:{j}", _lab_path(name), "")
                for (i, name), (j, label) in zip(names, labels, strict=True)
            ],
        )


def _lab_path(name: str) -> str:
    return f"images/{name}.jpeg"


def _read_kaggle(root: Path, report: Report) -> Iterator[tuple[str, Path, list[_Row]]]:
    for split, csv_name, folder in (("train", "trainLabels.csv", "train"),
                                    ("test", "testLabels.csv", "test")):  # fmt: skip
        path = root / csv_name
        if split == "test" and not path.is_file():
            continue  # no labelled test split: prepare carves one out of train
        if not (root / folder).is_dir():
            report.problems.append(f"{root / folder}: images folder missing; put the images there")
        columns = ("image", "level", "Usage") if split == "test" else ("image", "level")
        table = _read_table(path, columns, report, optional={"Usage"})
        _check_usages(table, report)
        yield (
            split,
            path,
            [
                (r["image"], w, r["level"], w, f"{folder}/{r['image']}.jpeg", r.get("Usage", ""))
                for w, r in table
            ],
        )


def _read_aptos(root: Path, report: Report) -> Iterator[tuple[str, Path, list[_Row]]]:
    if not (root / "train_images").is_dir():
        report.problems.append(
            f"{root / 'train_images'}: images folder missing; put the images there"
        )
    table = _read_table(root / "train.csv", ("id_code", "diagnosis"), report)
    yield (
        "train",
        root / "train.csv",
        [
            (r["id_code"], where, r["diagnosis"], where, f"train_images/{r['id_code']}.png", "")
            for where, r in table
        ],
    )


def _check_usages(table: list[tuple[str, dict[str, str]]], report: Report) -> None:
    for where, row in table:
        if "Usage" in row and row["Usage"] not in USAGES:
            report.problems.append(
                f"{where}: Usage {row['Usage']!r} is not Public or Private; fix the row"
            )


def _read_table(
    path: Path, columns: tuple[str, ...], report: Report, optional: set[str] = frozenset()
) -> list[tuple[str, dict[str, str]]]:
    """("file:row", {column: cell}) of each non-blank row of a CSV with a header row."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        report.problems.append(f"{path}: not a text CSV; export it as UTF-8 text")
        return []
    header = [cell.strip() for cell in rows[0]] if rows else []
    missing = [c for c in columns if c not in header and c not in optional]
    if missing:
        report.problems.append(
            f"{path}:1: header {','.join(header) or '(empty)'} lacks {', '.join(missing)}; "
            f"the first row must name the columns {','.join(columns)}"
        )
        return []
    index = {c: header.index(c) for c in columns if c in header}
    table = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {c: row[i].strip() if i < len(row) else "" for c, i in index.items()}
        table.append((f"{path}:{number}", cells))
    return table


def _read_column(path: Path, report: Report) -> list[tuple[int, str]]:
    """(row number, first cell) of each non-blank row of a one-column CSV."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(enumerate(csv.reader(f), start=1))
    except UnicodeDecodeError:
        report.problems.append(f"{path}: not a text CSV; export it as UTF-8 text")
        return []
    return [(i, r[0].strip()) for i, r in rows if r and r[0].strip()]


def _grade(value: str) -> int | None:
    """0-4 from "3" (or "3.0", as a spreadsheet may export it); None for anything else."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number < NUM_CLASSES else None


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _check_name(name: str) -> str | None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if not name:
        return "empty image name; fill in the name or delete the row"
    if pure.is_absolute() or name[1:3] == ":\\" or ".." in pure.parts or len(pure.parts) != 1:
        return f"image name {name!r} escapes the images folder; use a bare name like 17_left"
    return None


def _warn_shared_patients(report: Report) -> None:
    train = {s.patient for s in report.samples.get("train", [])}
    both = sorted(train & {s.patient for s in report.samples.get("test", [])})
    if both:
        report.warnings.append(
            f"{len(both)} patient(s) appear in both train and test (e.g. {both[0]}); "
            "their eyes are correlated, so test accuracy is optimistic"
        )

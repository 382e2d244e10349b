"""Where a data set's images and label tables go, in each supported layout.

* ``lab``: headerless one-column ``train_img.csv``/``test_img.csv`` (image names such as
  ``17_left``) and ``train_label.csv``/``test_label.csv`` (grades, same order), images in
  ``images/<name>.jpeg``.
* ``kaggle`` (the EyePACS competition): ``trainLabels.csv`` (``image,level``) with images in
  ``train/<name>.jpeg``; ``testLabels.csv`` (``image,level,Usage``, Usage ``Public`` or
  ``Private``) with images in ``test/<name>.jpeg``.
* ``aptos`` (APTOS 2019): ``train.csv`` (``id_code,diagnosis``, sorted by id) with images in
  ``train_images/<id_code>.png``.  APTOS has neither patient and eye names nor a labelled test
  set, so every image gets a random 12-hex-digit id and all of them go into ``train.csv``.
"""

from pathlib import Path
from typing import NamedTuple

import numpy as np

from retino.grades import NUM_CLASSES

LAYOUTS = ("lab", "kaggle", "aptos")
_PUBLIC_SHARE = 0.2  # Kaggle's test labels: 10,906 Public, 42,670 Private

Rows = list[tuple[str, int]]  # (image name, grade)


class Placement(NamedTuple):
    paths: dict[str, list[Path]]  # split -> where each planned image goes, in plan order
    tables: dict[Path, str]  # label table -> its text
    counts: dict[str, list[int]]  # grade counts per split as written


def place(layout: str, out: Path, plan: dict[str, Rows], seed: int) -> Placement:
    """Paths and tables of `plan` (split -> rows, patients in order) in `layout` under `out`."""
    rng = np.random.default_rng([seed, 7919, 1])  # for Usage and ids, apart from the plan's
    return {"lab": _lab, "kaggle": _kaggle, "aptos": _aptos}[layout](out, plan, rng)


def _counts(rows: Rows) -> list[int]:
    return [sum(1 for _, g in rows if g == k) for k in range(NUM_CLASSES)]


def _lab(out: Path, plan: dict[str, Rows], rng: np.random.Generator) -> Placement:
    tables = {}
    for split, rows in plan.items():
        tables[out / f"{split}_img.csv"] = "".join(f"{name}\n" for name, _ in rows)
        tables[out / f"{split}_label.csv"] = "".join(f"{grade}\n" for _, grade in rows)
    paths = {s: [out / "images" / f"{name}.jpeg" for name, _ in rows] for s, rows in plan.items()}
    return Placement(paths, tables, {s: _counts(rows) for s, rows in plan.items()})


def _kaggle(out: Path, plan: dict[str, Rows], rng: np.random.Generator) -> Placement:
    train, test = plan["train"], plan["test"]
    # Usage per patient, so that both eyes of a patient count towards the same leaderboard
    patients = sorted({name.split("_")[0] for name, _ in test}, key=int)
    chosen = rng.choice(len(patients), size=round(_PUBLIC_SHARE * len(patients)), replace=False)
    public = {patients[i] for i in chosen}
    usage = ["Public" if name.split("_")[0] in public else "Private" for name, _ in test]
    tables = {
        out / "trainLabels.csv": "image,level\n" + "".join(f"{n},{g}\n" for n, g in train),
        out / "testLabels.csv": "image,level,Usage\n"
        + "".join(f"{n},{g},{u}\n" for (n, g), u in zip(test, usage, strict=True)),
    }
    paths = {s: [out / s / f"{name}.jpeg" for name, _ in rows] for s, rows in plan.items()}
    return Placement(paths, tables, {s: _counts(rows) for s, rows in plan.items()})


def _aptos(out: Path, plan: dict[str, Rows], rng: np.random.Generator) -> Placement:
    rows = [row for split_rows in plan.values() for row in split_rows]
    codes = [f"{c:012x}" for c in rng.choice(1 << 48, size=len(rows), replace=False)]
    paths: dict[str, list[Path]] = {}
    start = 0
    for split, split_rows in plan.items():
        end = start + len(split_rows)
        paths[split] = [out / "train_images" / f"{c}.png" for c in codes[start:end]]
        start = end
    labelled = sorted(zip(codes, (g for _, g in rows), strict=True))
    table = "id_code,diagnosis\n" + "".join(f"{c},{g}\n" for c, g in labelled)
    return Placement(paths, {out / "train.csv": table}, {"train": _counts(labelled)})

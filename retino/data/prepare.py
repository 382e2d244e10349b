"""The prepare step: a validated dataset -> train/val/test tables and their grade counts.

The lab report chose its best epoch on the test set; we carve a validation split out of train
instead, stratified by grade and grouped by patient (both eyes of a patient are strongly
correlated, so splitting them would leak). Where the layout has no labelled test split (APTOS,
Kaggle without testLabels.csv) the test split is carved out of train first, the same way. With
`data.kaggle_usage_split`, Kaggle's test images split by their Usage column instead: Public is
the validation split and Private the test split (Huang et al.'s protocol), train stays whole.

Only image headers are checked here: the preprocess stage decodes every image anyway and names
each one it cannot read.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from retino.config import Config
from retino.data.layouts import Report, Sample
from retino.data.splits import SPLITS
from retino.data.validation import cpu_workers, validate
from retino.errors import RetinoError
from retino.grades import NUM_CLASSES


def hold_out(samples: list[Sample], fraction: float, seed: int, what: str, key: str):
    """(rest, held out): ~fraction of the patients, grade-stratified, both eyes together."""
    folds = max(2, round(1 / fraction))
    patients = len({s.patient for s in samples})
    if patients < folds:
        raise RetinoError(
            f"{what} has {patients} patient(s), too few to hold out {fraction} of them; "
            f"add data or raise {key}"
        )
    labels = [s.label for s in samples]
    groups = [s.patient for s in samples]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    rest_idx, held_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in rest_idx], [samples[i] for i in held_idx]


def make_splits(report: Report, cfg: Config) -> dict[str, list[Sample]]:
    data, seed = cfg.data, cfg.seed
    train, test = report.samples["train"], report.samples.get("test")
    if data.kaggle_usage_split:
        if not test or not all(s.usage for s in test):
            raise RetinoError(
                "data.kaggle_usage_split: needs Kaggle's testLabels.csv with its Usage column "
                "(Public/Private); set it to false for this dataset"
            )
        val = [s for s in test if s.usage == "Public"]
        return {"train": train, "val": val, "test": [s for s in test if s.usage == "Private"]}
    if test is None:
        train, test = hold_out(train, data.test_fraction, seed, "train", "data.test_fraction")
    train, val = hold_out(train, data.val_fraction, seed, "train", "data.val_fraction")
    return {"train": train, "val": val, "test": test}


def prepare(data_root: Path, out: Path, cfg: Config) -> Report:
    """Validate `data_root` (raising on problems), write out/{train,val,test}.csv and stats.json
    (the layout and the grade counts per split)."""
    report = validate(data_root, cfg.data.max_pixels, workers=cpu_workers())
    report.raise_if_invalid()
    splits = make_splits(report, cfg)
    for name in SPLITS:
        if not splits[name]:
            raise RetinoError(f"{data_root}: the {name} split would be empty; add images to it")
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        samples = splits[name]
        table = pd.DataFrame(
            {"path": [s.path for s in samples], "label": [s.label for s in samples]}
        )
        table.to_csv(out / f"{name}.csv", index=False)
    counts = {
        name: np.bincount([s.label for s in splits[name]], minlength=NUM_CLASSES).tolist()
        for name in SPLITS
    }
    stats = {"layout": report.layout.name, "counts": counts}
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return report

"""The prepare step: validated lab layout -> train/val/test tables and dataset statistics.

The lab report chose its best epoch on the test set; we carve a validation split out of train
instead, stratified by grade and grouped by patient (both eyes of a patient are strongly
correlated, so splitting them would leak).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from retino.config import Config
from retino.data.layouts import Report, Sample, validate
from retino.errors import RetinoError
from retino.grades import NUM_CLASSES


def split_train_val(samples: list[Sample], val_fraction: float, seed: int):
    """(train, val) lists: ~val_fraction of the patients, grade-stratified, both eyes together."""
    folds = max(2, round(1 / val_fraction))
    patients = len({s.patient for s in samples})
    if patients < folds:
        raise RetinoError(
            f"train split has {patients} patient(s), too few for val_fraction {val_fraction}; "
            "add data or raise data.val_fraction"
        )
    labels = [s.label for s in samples]
    groups = [s.patient for s in samples]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(samples)), labels, groups))
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


MIN_STD = 1e-3  # on the 0-1 scale: a quarter of one 8-bit grey level


def channel_stats(root: Path, samples: list[Sample], limit: int, seed: int) -> dict[str, list]:
    """Per-channel mean/std (0-1 scale) over up to `limit` images picked with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(samples), size=min(limit, len(samples)), replace=False)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    for i in sorted(chosen):
        with Image.open(root / samples[i].path) as img:
            img = img.convert("RGB")
            img.thumbnail((128, 128))  # statistics do not need full resolution
            x = np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0
        total += x.sum(0)
        total_sq += (x**2).sum(0)
        pixels += len(x)
    if pixels == 0:
        raise RetinoError(
            f"{root}: no train images sampled for the channel mean/std; set data.stats_images >= 1"
        )
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0))
    # Training divides by std: a channel without variation (blank or single-colour images)
    # would turn every input into inf or NaN and the training loss with it.
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or std.min() < MIN_STD:
        shown = ", ".join(f"{v:.4f}" for v in std)
        raise RetinoError(
            f"{root}: the {len(chosen)} sampled train images have channel std ({shown}), "
            f"below {MIN_STD} or not finite: blank or single-colour images; check the images, "
            "or sample more with data.stats_images"
        )
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}


def prepare(data_root: Path, out: Path, cfg: Config) -> Report:
    """Validate `data_root` (raising on problems), write out/{train,val,test}.csv and stats.json."""
    report = validate(data_root)
    report.raise_if_invalid()
    train, val = split_train_val(report.samples["train"], cfg.data.val_fraction, cfg.seed)
    splits = {"train": train, "val": val, "test": report.samples["test"]}
    # before writing anything: statistics that cannot normalise are an error
    stats = channel_stats(data_root, train, cfg.data.stats_images, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, samples in splits.items():
        table = pd.DataFrame(
            {"path": [s.path for s in samples], "label": [s.label for s in samples]}
        )
        table.to_csv(out / f"{name}.csv", index=False)
    counts = {
        name: np.bincount([s.label for s in samples], minlength=NUM_CLASSES).tolist()
        for name, samples in splits.items()
    }
    (out / "stats.json").write_text(json.dumps({"counts": counts, **stats}, indent=2) + "\n")
    return report

"""The prepared split tables: prepared/<split>.csv, a row per image (`path` relative to the
dataset root, `label`). prepare writes them; everything after it reads them through here."""

from pathlib import Path

import pandas as pd

from retino.errors import RetinoError

SPLITS = ("train", "val", "test")


def read_split(prepared: Path, split: str) -> pd.DataFrame:
    """prepared/<split>.csv: a row per image, `path` (relative to the dataset root), `label`."""
    path = Path(prepared) / f"{split}.csv"
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise RetinoError(f"{path}: not found; run `dvc repro prepare` first") from None
    if list(table.columns) != ["path", "label"] or table.empty:
        raise RetinoError(f"{path}: expected columns path,label and rows; rerun prepare")
    return table

"""Reading the preprocessed cache (retino.data.preprocess writes it): its index, and checks that
it matches the params and the prepared tables before a loader trusts its rows."""

import hashlib
import json
from pathlib import Path

from retino.errors import RetinoError

INDEX_FILE = "index.json"


def table_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_index(cache: Path) -> dict:
    path = Path(cache) / INDEX_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise RetinoError(f"{path}: missing or unreadable; run `dvc repro preprocess`") from None


def open_index(cache: Path, image_size: int, normalize: str) -> dict:
    """The cache's index, if it holds images preprocessed as the params (or a model) say."""
    index = read_index(cache)
    if (index["image_size"], index["normalize"]) != (image_size, normalize):
        raise RetinoError(
            f"{cache}: images preprocessed at {index['image_size']} px, normalize "
            f"{index['normalize']}, but {image_size} px, normalize {normalize} are asked for; "
            "run `dvc repro preprocess`"
        )
    return index


def check_table(cache: Path, prepared: Path, split: str) -> None:
    """The cache's rows follow prepared/<split>.csv as it is now, or a RetinoError says what to
    rerun (a prepare that ran without its preprocess would pair images with wrong labels)."""
    index = read_index(cache)
    entry = index["splits"].get(split, {})
    if entry.get("table_sha256") != table_sha256(Path(prepared) / f"{split}.csv"):
        raise RetinoError(
            f"{cache}: cached {split} images do not match {prepared}/{split}.csv; "
            "run `dvc repro preprocess`"
        )

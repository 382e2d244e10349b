"""The checkpoint format, in one place: a versioned dict, written atomically, read weights-only.

    version        FORMAT_VERSION; a file without one predates the format and is refused
    model          state dict of the bare module (never the DDP or compiled wrapper)
    config         `Config.to_dict()` of the training
    normalisation  {"mean": [r, g, b], "std": [r, g, b]} on a 0-1 scale: with the config, the
                   file alone is enough to grade a photograph
    epoch          epochs completed (1-based)
    best_epoch     the epoch whose weights best.pt holds (1-based)
    history        one row of metrics per completed epoch
    tag            `fingerprint` of config and prepared data: resume only what was trained on them
    thresholds     regression head: the four cut points of the score (fitted on validation once
                   training ends; rounding until then); None for ce
    eye_weight     eval.paired_eyes: the fellow eye's weight in the blend, fitted on validation
                   once training ends; None otherwise (retino.training.calibration)
    optimizer, scheduler, rng
                   training state, in resume.pt; None in best.pt

No GradScaler state: CUDA runs use bf16 autocast, which needs no loss scaling.
"""

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retino.config import Config
from retino.errors import RetinoError

FORMAT_VERSION = 2  # 2: thresholds and eye_weight (the regression head, paired eyes)
RESUME_FILE = "resume.pt"  # the work in progress, rewritten after every epoch
BEST_FILE = "best.pt"  # the selected epoch


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    config: dict[str, Any]
    normalisation: dict[str, list[float]]
    epoch: int
    best_epoch: int
    history: list[dict[str, float]]
    tag: str
    thresholds: list[float] | None
    eye_weight: float | None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] | None = None


def save(checkpoint: Checkpoint, path: Path) -> None:
    """torch.save to a temp file, then rename: a kill mid-write never leaves a torn checkpoint."""
    # not dataclasses.asdict: it would deep-copy every tensor
    state = {f.name: getattr(checkpoint, f.name) for f in dataclasses.fields(checkpoint)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    # Without the zip records' CRC-32s: computing them is half the time of writing a resume
    # checkpoint (~135 MB for ResNet18 with AdamW, every epoch), and torch.load never checks
    # them; the temp file + rename is what keeps a checkpoint whole.
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"version": FORMAT_VERSION, **state}, tmp)
    finally:
        torch.serialization.set_crc32_options(crc)
    os.replace(tmp, path)


def load(path: Path, name: str | None = None) -> Checkpoint:
    """A checkpoint written by `save`; anything else is a RetinoError naming the file (or `name`,
    where the file is a download of it)."""
    try:
        return _load(path)
    except RetinoError as err:
        if name is None:
            raise
        raise RetinoError(str(err).replace(str(path), name, 1)) from None


def _load(path: Path) -> Checkpoint:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RetinoError(
            f"{path}: checkpoint not found; train one with `dvc repro train`"
        ) from None
    except Exception:  # torch raises many types for a file that is no checkpoint
        raise RetinoError(
            f"{path}: not a readable checkpoint (truncated, or not written by torch.save); "
            "give models/best.pt as written by the train stage"
        ) from None
    if not isinstance(state, dict) or "version" not in state:
        raise RetinoError(
            f"{path}: a checkpoint without a format version (older retino, or not retino's); "
            "train it again with `dvc repro train`"
        )
    if state["version"] != FORMAT_VERSION:
        raise RetinoError(
            f"{path}: checkpoint format {state['version']}, this retino reads format "
            f"{FORMAT_VERSION}; use the retino version that wrote it, or train again"
        )
    names = {f.name for f in dataclasses.fields(Checkpoint)}
    missing = {f.name for f in dataclasses.fields(Checkpoint) if f.default is dataclasses.MISSING}
    missing -= set(state)
    if missing or not set(state) - {"version"} <= names:
        raise RetinoError(f"{path}: damaged checkpoint (keys {sorted(state)}); train it again")
    return Checkpoint(**{k: v for k, v in state.items() if k != "version"})


def load_resume(ckpt_dir: Path, tag: str) -> Checkpoint | None:
    """The resume checkpoint in `ckpt_dir` if it continues the training identified by `tag`.

    An unreadable one (power loss on a filesystem without atomic rename, a full disk) is set
    aside with a warning, and training starts fresh: it must never wedge every later run.
    """
    path = ckpt_dir / RESUME_FILE
    if not path.is_file():
        return None
    try:
        checkpoint = load(path)
    except RetinoError as err:
        aside = path.with_name(f"{RESUME_FILE}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        print(f"warning: {err}\nwarning: moved it to {aside}; training starts fresh",
              file=sys.stderr)  # fmt: skip
        return None
    return checkpoint if checkpoint.tag == tag else None


def fingerprint(cfg: Config, data_files: list[Path]) -> str:
    """Identifies what a checkpoint was trained on: the config and the data (the prepared
    tables and the cache's index, which holds their hashes and the normalisation)."""
    h = hashlib.sha256(json.dumps(cfg.flat(), sort_keys=True, default=str).encode())
    for path in data_files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]

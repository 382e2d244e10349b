"""Datasets and loaders over the prepared split tables.

A sample is decoded straight to a uint8 tensor and resized once to `image_size` (shorter side,
then a centre crop: fundus photos are a disc on a wider black frame). Conversion to float,
normalisation and augmentation happen per batch in `retino.data.transforms`, which is several times
cheaper than the lab report's per-image PIL -> ToTensor path.

Every batch allocates and frees the same large buffers (the float batch, the activations).
glibc returns blocks over 32 MB, and heap tops over 64 MB, to the kernel on free, so each batch
page-faults them in again; on the 2-core VM that made a ResNet18 train step 3-6x slower.
`make_loader` therefore has the process keep freed memory (`retain_freed_memory`).
"""

import ctypes
import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from retino.errors import RetinoError


class FundusDataset(Dataset):
    """Rows of a prepared table (`path` relative to `root`, `label`) as (uint8 CHW, label)."""

    def __init__(self, table: pd.DataFrame, root: Path, image_size: int) -> None:
        self.paths = [str(Path(root) / p) for p in table["path"]]
        self.labels = torch.tensor(table["label"].to_numpy(), dtype=torch.long)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.paths[index], self.image_size)
        return image, self.labels[index]


def load_image(path: str, size: int) -> torch.Tensor:
    """(3, size, size) uint8: decoded as RGB, shorter side resized to `size`, centre-cropped."""
    try:
        image = decode_image(path, mode=ImageReadMode.RGB)
    except RuntimeError:
        # libjpeg in torchvision rejects a few valid files (e.g. some CMYK JPEGs); PIL reads them.
        with Image.open(path) as img:
            image = TF.pil_to_tensor(img.convert("RGB"))
    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, [size, size])


def read_split(prepared: Path, split: str) -> pd.DataFrame:
    path = Path(prepared) / f"{split}.csv"
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise RetinoError(f"{path}: not found; run `dvc repro prepare` first") from None
    if list(table.columns) != ["path", "label"] or table.empty:
        raise RetinoError(f"{path}: expected columns path,label and rows; rerun prepare")
    return table


def default_workers(requested: int) -> int:
    """-1 = one loader process per core (at most 8); 0 = load in the main process."""
    return min(os.cpu_count() or 1, 8) if requested < 0 else requested


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


def retain_freed_memory() -> None:
    """Keep freed heap memory in this process (and the loader workers it forks) for reuse.

    Sets glibc's mmap threshold to 1 GiB and its trim threshold to 2 GiB (mallopt(3)); the
    process then holds on to its peak working set instead of faulting it in every batch. A no-op
    outside Linux. Idempotent; it changes no result, only where memory comes from.
    """
    if not sys.platform.startswith("linux"):
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)  # mallopt takes a C int


def make_loader(
    dataset: FundusDataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    pin_memory: bool,
    sampler: Sampler | None = None,
) -> DataLoader:
    retain_freed_memory()  # before the workers fork: they inherit it
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,  # training passes one that shuffles by (seed, epoch)
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def read_stats(prepared: Path) -> dict:
    """prepared/stats.json: grade counts per split and the train images' channel mean/std."""
    path = Path(prepared) / "stats.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise RetinoError(f"{path}: missing or unreadable; run `dvc repro prepare` first") from None

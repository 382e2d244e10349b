"""The preprocessed cache as a dataset, and the loader over it.

A cached split is a memory-mapped (N, S, S, 3) uint8 array (retino.data.preprocess): a batch is
gathered straight into one (B, 3, S, S) uint8 tensor, the gather doing the HWC -> CHW transpose,
with no decoding at all. Conversion to float, normalisation and augmentation happen per batch in
`retino.data.transforms`.

Every batch allocates and frees the same large buffers (the float batch, the activations).
glibc returns blocks over 32 MB, and heap tops over 64 MB, to the kernel on free, so each batch
page-faults them in again; on the 2-core VM that made a ResNet18 train step 3-6x slower.
`make_loader` therefore has the process keep freed memory (`retain_freed_memory`).
"""

import ctypes
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from retino.data.cache import check_table
from retino.data.splits import read_split


class CachedImages(Dataset):
    """A memory-mapped (N, S, S, 3) uint8 array as (uint8 (3, S, S) image, label) samples.

    The array is opened on first use, so each loader worker maps the file itself (a memory map
    does not survive pickling to a worker) and reads only the rows it is asked for.
    """

    def __init__(self, path: Path, labels: torch.Tensor) -> None:
        self.path, self.labels = Path(path), labels
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return self._images

    @property
    def nbytes(self) -> int:
        """Size of the array (read from its header; the file stays unmapped here)."""
        return np.load(self.path, mmap_mode="r").nbytes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.ascontiguousarray(self.images[index].transpose(2, 0, 1))
        return torch.from_numpy(image), self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one pass (the DataLoader calls this instead of __getitem__ per row);
        `collate_batch` then passes it through."""
        _, size, _, channels = self.images.shape
        batch = np.empty((len(indices), channels, size, size), dtype=np.uint8)
        for k, i in enumerate(indices):
            batch[k] = self.images[i].transpose(2, 0, 1)
        return torch.from_numpy(batch), self.labels[indices]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}  # workers map the file themselves


class CachedSplit(CachedImages):
    """A split of the preprocessed cache, a row per row of prepared/<split>.csv (checked)."""

    def __init__(self, cache: Path, prepared: Path, split: str) -> None:
        check_table(cache, prepared, split)
        self.split, self.table = split, read_split(prepared, split)
        labels = torch.tensor(self.table["label"].to_numpy())
        super().__init__(Path(cache) / f"{split}.npy", labels)


def collate_batch(batch):
    """A dataset with __getitems__ already returns the collated batch."""
    return batch


def default_workers(requested: int, cuda: bool) -> int:
    """Loader processes for the cache: `requested`, or for -1 none on CPU — a batch is one memory
    copy, cheaper than handing it between processes, and the cores are busy training (on 2 cores
    the main process alone fed 3.6x more 512 px images per second than 2 workers) — and one per
    core, at most 8, to keep a GPU fed while the main process drives it."""
    if requested >= 0:
        return requested
    return min(os.cpu_count() or 1, 8) if cuda else 0


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
    dataset: Dataset,
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
        collate_fn=collate_batch if hasattr(dataset, "__getitems__") else None,
    )

"""Batches of the cache for a CUDA training, without loader processes (`data.cache_device`).

A DataLoader hands every batch from a worker process to the main process through fresh shared
memory, then to the GPU: with ResNet50 at 512 px on an H200 the step waited 15-29 % of its time
for the next batch (benchmarks/README.md, "GPU"). A feed has no workers and two ways to deliver:

    resident   the split's (N, S, S, 3) uint8 array is copied into GPU memory once, in pinned
               chunks; a batch is one gather on the card (EyePACS' 35,126 train images at
               512 px take 27.6 GB)
    streamed   a thread gathers batch k+1's rows from the memory-mapped file into one of two
               pinned buffers and copies it to the GPU on a side stream while step k runs

Either way a batch is (uint8 (B, 3, S, S), labels (B,)) on the device: the array's NHWC rows
seen as NCHW, which is channels_last in memory, the layout the CUDA model takes, with no
transpose pass. The batches are the sampler's order cut as a DataLoader cuts it (the last one
shorter), so they are the very batches of the loader on the CPU, epoch by epoch: a resumed run
continues as an uninterrupted one. With CPU tensors (device "cpu") both ways run the same code
without streams or pinned memory: that is how the tests compare them with the loader.
"""

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Sampler

from retino.data.dataset import CachedImages
from retino.errors import RetinoError

RESIDENT_SHARE = 0.5  # auto: splits take at most this share of the GPU memory free at the start
CHUNK_BYTES = 256 << 20  # the pinned staging buffers of the one-off copy into GPU memory
GiB = 2**30


class CacheFeed:
    """Loader-like (`dataset`, `sampler`, len, iter) batches of `dataset` on `device`."""

    def __init__(
        self,
        dataset: CachedImages,
        batch_size: int,
        sampler: Sampler,
        device: torch.device,
        resident: bool,
    ) -> None:
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.device, self.resident = device, resident
        self._images: torch.Tensor | None = None  # resident: the split in device memory
        self._labels = dataset.labels.to(device)
        self._pinned: list[torch.Tensor] = []  # streamed: two staging buffers, made on first use
        self._copied: list[torch.cuda.Event] = []  # ...and when each was last copied from
        self._side: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        return self._gathered(order) if self.resident else self._streamed(order)

    def _gathered(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Resident: each batch one gather in device memory."""
        if self._images is None:
            self._images = upload(self.dataset.images, self.device)
        # the epoch's order copied once; slicing it by host offsets needs no sync
        for rows in _to_device(order, self.device).split(self.batch_size):
            images = self._images.index_select(0, rows).permute(0, 3, 1, 2)
            yield images, self._labels.index_select(0, rows)

    def _streamed(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Streamed: batch k+1 gathered and copied in a thread while batch k is used."""
        batches = order.split(self.batch_size)
        if not batches:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="retino-feed") as pool:
            ahead = pool.submit(self._stage, batches[0], 0)
            for k in range(len(batches)):
                staged = ahead.result()
                if k + 1 < len(batches):
                    ahead = pool.submit(self._stage, batches[k + 1], (k + 1) % 2)
                yield self._hand_over(*staged)

    def _stage(self, rows: torch.Tensor, slot: int):
        """(in the thread) (images NHWC, rows, copy event): batch `rows` gathered from the
        file and, on CUDA, on its way to the GPU in pinned buffer `slot`."""
        array = self.dataset.images
        if self.device.type != "cuda":  # a fresh buffer per batch: nothing to wait for
            return torch.from_numpy(np.take(array, rows.numpy(), axis=0)), rows, None
        if not self._pinned:
            shape = (self.batch_size, *array.shape[1:])
            self._pinned = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in (0, 1)]
            self._copied = [torch.cuda.Event(), torch.cuda.Event()]
            self._side = torch.cuda.Stream(self.device)
        self._copied[slot].synchronize()  # the copy out of this buffer, two batches ago, is done
        host = self._pinned[slot][: len(rows)]
        np.take(array, rows.numpy(), axis=0, out=host.numpy(), mode="clip")  # rows are valid
        with torch.cuda.stream(self._side):
            images = host.to(self.device, non_blocking=True)
            rows = _to_device(rows, self.device)
            self._copied[slot].record(self._side)
        return images, rows, self._copied[slot]

    def _hand_over(self, images: torch.Tensor, rows: torch.Tensor, copied):
        """A staged batch as (images NCHW, labels), usable on the current stream."""
        if copied is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(copied)  # the step's kernels wait for the copy, not the host
            images.record_stream(stream)  # allocated on the side stream, used on this one
            rows.record_stream(stream)
        return images.permute(0, 3, 1, 2), self._labels.index_select(0, rows)


def upload(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """The whole (N, S, S, 3) uint8 `array` (a memory-mapped file) as a tensor on `device`: on
    CUDA copied in chunks through two pinned buffers, reading the file into one while the other
    is copied."""
    if device.type != "cuda":
        return torch.from_numpy(np.array(array))
    out = torch.empty(array.shape, dtype=torch.uint8, device=device)
    rows = max(1, CHUNK_BYTES // max(1, array[0].nbytes)) if len(array) else 1
    pinned = [torch.empty((rows, *array.shape[1:]), dtype=torch.uint8, pin_memory=True)
              for _ in (0, 1)]  # fmt: skip
    copied = [torch.cuda.Event(), torch.cuda.Event()]
    for k, start in enumerate(range(0, len(array), rows)):
        part = array[start : start + rows]
        slot = k % 2
        copied[slot].synchronize()
        pinned[slot][: len(part)].numpy()[...] = part
        out[start : start + len(part)].copy_(pinned[slot][: len(part)], non_blocking=True)
        copied[slot].record()
    torch.cuda.synchronize(device)
    return out


def _to_device(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Indices on `device`; from pinned memory on CUDA, so the copy never blocks the host."""
    if device.type != "cuda":
        return rows
    return rows.pin_memory().to(device, non_blocking=True)


def residency(
    cache_device: str, device: torch.device, sizes: dict[str, int]
) -> dict[str, bool | None]:
    """For each split (in the order given, bytes of its array): True = held in GPU memory,
    False = streamed from the file, None = a CPU training's DataLoader.

    cache_device "cuda": every split in GPU memory, a RetinoError if they do not fit the free
    memory; "auto": each split in turn while the splits so placed take at most RESIDENT_SHARE
    of the free memory, the others streamed; "cpu": all streamed.
    """
    if device.type != "cuda":
        if cache_device == "cuda":
            raise RetinoError(
                "data.cache_device: cuda keeps the cache in GPU memory, but training runs on "
                f"{device}; set data.cache_device: auto or cpu, or train.device: cuda"
            )
        return dict.fromkeys(sizes)
    if cache_device == "cpu":
        return dict.fromkeys(sizes, False)
    free, _ = torch.cuda.mem_get_info(device)
    if cache_device == "cuda":
        total = sum(sizes.values())
        if total > free:
            listed = ", ".join(f"{split} {size / GiB:.1f}" for split, size in sizes.items())
            raise RetinoError(
                f"data.cache_device: cuda: the splits ({listed} GiB) do not fit the "
                f"{free / GiB:.1f} GiB free on {device}; set data.cache_device: auto"
            )
        return dict.fromkeys(sizes, True)
    budget, placed = RESIDENT_SHARE * free, {}
    for split, size in sizes.items():
        placed[split] = size <= budget
        budget -= size if placed[split] else 0
    return placed


def describe(placed: dict[str, bool | None], sizes: dict[str, int], device: torch.device) -> str:
    """One line for the log: where each split is read from."""
    where = [
        f"{split} ({sizes[split] / GiB:.2f} GiB) {'in GPU memory' if resident else 'streamed'}"
        for split, resident in placed.items()
    ]
    return f"cache for {device}: " + ", ".join(where)

"""Checking a dataset: its layout and CSVs, then every image — header first, pixels optionally.

Header checks (exists, not empty, an image, within the pixel limit, 8-bit) are cheap and always
run. A full decode — the only way to catch a truncated or corrupt file — costs 40-150 ms for a
camera photograph, so it runs where it is needed and no more than once per image: `retino
validate` decodes every image (at the smallest DCT scale, which still reads every byte of the
compressed data); the pipeline's prepare stage checks headers only, because its preprocess stage
decodes every image anyway and names each one it cannot read. Either way each image is one task
for a pool of worker processes, header and decode together.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from retino.data.images import ImageError, decode_rgb, inspect
from retino.data.layouts import Report, read_layout

DEFAULT_MAX_PIXELS = 36_000_000  # as params.yaml's data.max_pixels: twice EyePACS' 5184 x 3456
SMALLEST_DECODE = 64  # decode checks need every byte read, not the pixels: the 1/8 DCT scale
# images per task, and half the fewest worth a pool: a decode costs milliseconds, a header
# ~0.1 ms, so header checks go to the workers in larger batches, and only for large datasets
CHUNK = {True: 64, False: 2048}


def validate(
    root: Path, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = False, workers: int = 1
) -> Report:
    """Read and check the dataset under `root`; never raises for bad data, reports it. Each image
    is checked once — its header, or with `decode` its header and every byte — in `workers`
    processes when there are enough images to pay for them."""
    root = Path(root)
    report = read_layout(root)
    located = [(s.path, report.where[s.path]) for split in report.samples.values() for s in split]
    paths = [root / rel for rel, _ in located]
    for (_, where), problem in zip(located, _check_all(paths, max_pixels, decode, workers),
                                   strict=True):  # fmt: skip
        if problem:
            report.problems.append(f"{where}: {problem}")
    return report


def _check_all(paths: list[Path], max_pixels: int, decode: bool, workers: int) -> list[str | None]:
    """The problem of each image (None when it passes), in order, with a progress bar."""
    jobs = [(path, max_pixels, decode) for path in paths]
    bar = dict(total=len(jobs), desc="decoding" if decode else "checking", unit="img",
               leave=False, disable=None)  # fmt: skip
    per_task = CHUNK[decode]
    if workers <= 1 or len(jobs) < 2 * per_task:  # a pool's start-up would cost more
        return list(tqdm(map(_check, jobs), **bar))
    with ProcessPoolExecutor(workers) as pool:
        chunk = max(1, min(per_task, len(jobs) // (8 * workers)))
        return list(tqdm(pool.map(_check, jobs, chunksize=chunk), **bar))


def _check(job: tuple[Path, int, bool]) -> str | None:
    path, max_pixels, decode = job
    try:
        if decode:  # checks the header too
            decode_rgb(path, max_pixels, min_side=SMALLEST_DECODE)
        else:
            inspect(path, max_pixels)
    except ImageError as err:
        return str(err)
    return None


def cpu_workers(requested: int = -1) -> int:
    """-1 = one process per core this process may use."""
    if requested > 0:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

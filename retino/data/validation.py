"""Checking a dataset: its layout and CSVs, then every image — header first, pixels optionally.

Header checks (exists, not empty, an image, within the pixel limit, 8-bit) are cheap and always
run. A full decode — the only way to catch a truncated or corrupt file — costs 40-150 ms for a
camera photograph, so it runs where it is needed and no more than once per image: `retino
validate` decodes every image (in worker processes, at the smallest DCT scale, which still
reads every byte of the compressed data); the pipeline's prepare stage checks headers only,
because its preprocess stage decodes every image anyway and names each one it cannot read.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from retino.data.images import ImageError, decode_rgb, inspect
from retino.data.layouts import Report, read_layout

DEFAULT_MAX_PIXELS = 36_000_000  # as params.yaml's data.max_pixels: twice EyePACS' 5184 x 3456
SMALLEST_DECODE = 64  # decode checks need every byte read, not the pixels: the 1/8 DCT scale


def validate(
    root: Path, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = False, workers: int = 1
) -> Report:
    """Read and check the dataset under `root`; never raises for bad data, reports it."""
    root = Path(root)
    report = read_layout(root)
    located = [(s.path, report.where[s.path]) for split in report.samples.values() for s in split]
    readable = []
    for rel, where in located:
        try:
            inspect(root / rel, max_pixels)
            readable.append((rel, where))
        except ImageError as err:
            report.problems.append(f"{where}: {err}")
    if decode and readable:
        paths = [root / rel for rel, _ in readable]
        for (_, where), problem in zip(readable, _decode_all(paths, max_pixels, workers),
                                       strict=True):  # fmt: skip
            if problem:
                report.problems.append(f"{where}: {problem}")
    return report


def _decode_all(paths: list[Path], max_pixels: int, workers: int) -> list[str | None]:
    """The decode problem of each path (None when it decodes), in order, with a progress bar."""
    jobs = [(path, max_pixels) for path in paths]
    bar = dict(total=len(jobs), desc="decoding", unit="img", leave=False, disable=None)
    if workers <= 1 or len(jobs) < 2 * workers:
        return list(tqdm(map(_decode_problem, jobs), **bar))
    with ProcessPoolExecutor(workers) as pool:
        chunk = max(1, min(64, len(jobs) // (8 * workers)))
        return list(tqdm(pool.map(_decode_problem, jobs, chunksize=chunk), **bar))


def _decode_problem(job: tuple[Path, int]) -> str | None:
    path, max_pixels = job
    try:
        decode_rgb(path, max_pixels, min_side=SMALLEST_DECODE)
    except ImageError as err:
        return str(err)
    return None


def cpu_workers(requested: int = -1) -> int:
    """-1 = one process per core this process may use."""
    if requested > 0:
        return requested
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

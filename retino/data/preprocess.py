"""The preprocess step: every image of the prepared tables, decoded once, into a uint8 cache.

    <out>/train.npy, val.npy, test.npy   (N, S, S, 3) uint8, a row per row of prepared/<split>.csv
    <out>/index.json                     size, normalisation mode, the train images' channel
                                         mean/std, and per split the row count and the sha256
                                         of the table the rows follow

Decoding a camera photograph costs 30-150 ms; an epoch that read them all again would starve any
GPU. Here each one is decoded once (scaled, see retino.data.images), its retina disc cropped and
resized (retino.data.fundus), in worker processes on all cores that write straight into the
memory-mapped arrays; loaders then read S x S x 3 bytes per image. The arrays are DVC outputs:
experiments that change only training params reuse them.

An image that fails is named with its reason; all failures are reported together, and nothing is
published: the arrays are written into `<out>.partial/` and renamed into place at the end.
"""

import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retino.config import Config
from retino.data.cache import INDEX_FILE, table_sha256
from retino.data.fundus import preprocess_image
from retino.data.images import ImageError
from retino.data.splits import SPLITS, read_split
from retino.data.validation import cpu_workers
from retino.errors import RetinoError

CHUNK = 16  # images per task: amortises the inter-process round trip


def preprocess(data_root: Path, prepared: Path, out: Path, cfg: Config) -> dict:
    """Write the cache for every split of `prepared` into `out`; return its index."""
    tables = {split: read_split(prepared, split) for split in SPLITS}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    images = {split: [Path(data_root) / p for p in t["path"]] for split, t in tables.items()}
    data, workers = cfg.data, cpu_workers(cfg.preprocess.workers)
    try:
        failures = cache_images(
            images, partial, data.image_size, cfg.preprocess.normalize, data.max_pixels, workers
        )
        if failures:
            raise RetinoError.of_lines(failures)
        stats = channel_stats(partial / "train.npy", data.stats_images, cfg.seed)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-written is left behind
        raise

    index = {
        "image_size": data.image_size,
        "normalize": cfg.preprocess.normalize,
        **stats,
        "splits": {
            split: {"rows": len(table), "table_sha256": table_sha256(prepared / f"{split}.csv")}
            for split, table in tables.items()
        },
    }
    (partial / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return index


def cache_images(
    images: dict[str, list[Path]],
    out: Path,
    size: int,
    normalize: str,
    max_pixels: int,
    workers: int,
) -> list[str]:
    """Write out/<split>.npy for the images of each split, in `workers` processes; return the
    failures (one line each, in order)."""
    jobs = []
    for split, paths in images.items():
        array = out / f"{split}.npy"
        np.lib.format.open_memmap(array, "w+", np.uint8, (len(paths), size, size, 3)).flush()
        for start in range(0, len(paths), CHUNK):
            rows = list(enumerate(map(str, paths[start : start + CHUNK]), start))
            jobs.append((str(array), rows, size, normalize, max_pixels))
    return _run(jobs, sum(len(paths) for paths in images.values()), workers)


def _run(jobs: list[tuple], total: int, workers: int) -> list[str]:
    """Run the jobs, in `workers` processes when there is more than one job; the failures, in
    table order (map keeps the order of the jobs)."""
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    failures: list[str] = []
    try:
        results = pool.map(_write_rows, jobs) if pool else map(_write_rows, jobs)
        with tqdm(total=total, desc="preprocess", unit="img", dynamic_ncols=True,
                  disable=None) as bar:  # fmt: skip
            for done, failed in results:
                bar.update(done)
                failures += failed
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return failures


def _write_rows(job: tuple) -> tuple[int, list[str]]:
    """Worker: preprocess a chunk of images into rows of the memory-mapped array."""
    array_path, rows, size, normalize, max_pixels = job
    array = np.load(array_path, mmap_mode="r+")
    failed = []
    for row, path in rows:
        try:
            array[row] = preprocess_image(Path(path), size, normalize, max_pixels)
        except ImageError as err:
            failed.append(str(err))
    array.flush()
    return len(rows), failed


MIN_STD = 1e-3  # on the 0-1 scale: a quarter of one 8-bit grey level


def channel_stats(array_path: Path, limit: int, seed: int) -> dict[str, list[float]]:
    """Per-channel mean/std (0-1 scale) over up to `limit` cached images picked with `seed`:
    the normalisation of what the model sees."""
    images = np.load(array_path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(images), size=min(limit, len(images)), replace=False))
    total, total_sq, pixels = np.zeros(3), np.zeros(3), 0
    for i in chosen:
        x = images[i].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x**2).sum(0)
        pixels += len(x)
    if pixels == 0:
        raise RetinoError("no train images sampled for the channel mean/std; add train images")
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    # Training divides by std: a channel without variation (blank or single-colour images)
    # would turn every input into inf or NaN and the training loss with it.
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or std.min() < MIN_STD:
        shown = ", ".join(f"{v:.4f}" for v in std)
        raise RetinoError(
            f"the {len(chosen)} sampled train images have channel std ({shown}), below "
            f"{MIN_STD} or not finite: blank or single-colour images; check the images, or "
            "sample more with data.stats_images"
        )
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}

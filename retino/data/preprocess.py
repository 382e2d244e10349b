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

With a GPU (`preprocess.device`), the workers check each file (header, then the strict decode at
1/8 scale that `retino validate` makes: a broken file fails as on the CPU path) and the main
process decodes the JPEGs in batches with nvJPEG and crops and resizes them on the GPU
(retino.data.gpu_decode, within a stated tolerance of the CPU path's pixels). The workers
preprocess whatever is no JPEG (PNGs, CMYK) the CPU way; a JPEG nvJPEG refuses is decoded on the
CPU too, named in the log.

An image that fails is named with its reason; all failures are reported together, and nothing is
published: the arrays are written into `<out>.partial/` and renamed into place at the end.
"""

import json
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retino.config import Config
from retino.data.cache import INDEX_FILE, table_sha256
from retino.data.fundus import preprocess_image
from retino.data.images import ImageError, decode_rgb, header, is_jpeg
from retino.data.splits import SPLITS, read_split
from retino.data.validation import SMALLEST_DECODE, cpu_workers
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
    gpu = decode_device(cfg.preprocess.device) == "cuda"
    try:
        failures = cache_images(
            images, partial, data.image_size, cfg.preprocess.normalize, data.max_pixels, workers,
            "cuda" if gpu else None,
        )  # fmt: skip
        if failures:
            raise RetinoError.of_lines(failures)
        stats = channel_stats(partial / "train.npy", data.stats_images, cfg.seed)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half-written is left behind
        raise

    index = {
        "image_size": data.image_size,
        "normalize": cfg.preprocess.normalize,
        "decoder": "nvjpeg" if gpu else "cpu",
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
    decode_on: str | None = None,
) -> list[str]:
    """Write out/<split>.npy for the images of each split, in `workers` processes; with
    `decode_on` (a torch device: "cuda"), the JPEGs are decoded, cropped and resized in batches
    there (with "cpu", torchvision's decoder runs the same code). Returns the failures (one
    line each, in table order)."""
    jobs = []
    for split, paths in images.items():
        array = out / f"{split}.npy"
        np.lib.format.open_memmap(array, "w+", np.uint8, (len(paths), size, size, 3)).flush()
        for start in range(0, len(paths), CHUNK):
            rows = list(enumerate(map(str, paths[start : start + CHUNK]), start))
            jobs.append((str(array), rows, size, normalize, max_pixels))
    total = sum(len(paths) for paths in images.values())
    if decode_on is None:
        return _run(jobs, total, workers)
    return _run_batched(jobs, total, workers, decode_on)


def decode_device(name: str) -> str:
    """preprocess.device as "cpu" or "cuda". auto looks for an NVIDIA device node before it
    imports torch (a second, on a machine without one)."""
    if name == "cpu" or (name == "auto" and not any(Path(p).exists() for p in GPU_NODES)):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        raise RetinoError(
            "preprocess.device: cuda, but this machine has no CUDA device; set auto or cpu"
        )
    return "cpu"


GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")  # Linux; WSL's GPU node


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


def _run_batched(jobs: list[tuple], total: int, workers: int, device: str) -> list[str]:
    """The jobs with the JPEGs decoded in batches on `device` (`_route_rows` sorts them out in
    the worker processes, and preprocesses the rest); the failures, in table order."""
    import torch

    from retino.data import gpu_decode  # torch and torchvision: this path only

    _, _, size, normalize, max_pixels = jobs[0] if jobs else (None, None, 0, "none", 0)
    gpu = torch.device(device)
    arrays: dict[str, np.ndarray] = {}
    failures: list[tuple[int, str]] = []  # (position in the tables, message)
    on_cpu: Counter = Counter()  # image format -> images the workers preprocessed
    pending: list[tuple[int, str, int, str]] = []  # (position, array, row, path) for the GPU

    def array(path: str) -> np.ndarray:
        if path not in arrays:
            arrays[path] = np.load(path, mmap_mode="r+")
        return arrays[path]

    def flush(bar: tqdm) -> None:
        decoded = gpu_decode.decode([gpu_decode.read(item[3]) for item in pending], gpu)
        ok = [(item, image) for item, image in zip(pending, decoded, strict=True)
              if not isinstance(image, str)]  # fmt: skip
        for (position, array_path, row, path), image in zip(pending, decoded, strict=True):
            if isinstance(image, str):  # rare: the CPU path, here
                print(f"preprocess: {path}: nvJPEG refused it ({image}); decoded on the CPU",
                      flush=True)  # fmt: skip
                try:
                    array(array_path)[row] = preprocess_image(Path(path), size, normalize,
                                                              max_pixels)  # fmt: skip
                except ImageError as err:
                    failures.append((position, str(err)))
        squares = gpu_decode.squares([image for _, image in ok], size, normalize)
        for ((_, array_path, row, _), _), square in zip(ok, squares, strict=True):
            array(array_path)[row] = square
        bar.update(len(pending))
        pending.clear()

    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        # the workers start (fork) here, before this process initialises CUDA
        results = pool.map(_route_rows, jobs) if pool else map(_route_rows, jobs)
        if gpu.type == "cuda":
            print(f"preprocess: JPEGs decoded by nvJPEG on {torch.cuda.get_device_name(gpu)}",
                  flush=True)  # fmt: skip
        with tqdm(total=total, desc="preprocess", unit="img", dynamic_ncols=True,
                  disable=None) as bar:  # fmt: skip
            position = 0
            for (array_path, rows, *_), routes in zip(jobs, results, strict=True):
                for (row, path), (route, detail) in zip(rows, routes, strict=True):
                    if route == "gpu":
                        pending.append((position, array_path, row, path))
                    else:
                        bar.update(1)
                        if route == "failed":
                            failures.append((position, detail))
                        else:
                            on_cpu[detail] += 1
                    position += 1
                if len(pending) >= gpu_decode.BATCH:
                    flush(bar)
            if pending:
                flush(bar)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    for mapped in arrays.values():
        mapped.flush()
    if on_cpu:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(on_cpu.items()))
        print(f"preprocess: {sum(on_cpu.values())} images that are no JPEG nvJPEG decodes "
              f"({kinds}) preprocessed on the CPU", flush=True)  # fmt: skip
    return [message for _, message in sorted(failures)]


def _route_rows(job: tuple) -> list[tuple[str, str | None]]:
    """Worker, GPU path: per row ("gpu", None) for a JPEG that passed the strict check,
    ("cpu", format) for an image this worker preprocessed into its row, or ("failed", reason)."""
    array_path, rows, size, normalize, max_pixels = job
    array, routes = None, []
    for row, path in rows:
        try:
            _, mode, kind = header(Path(path), max_pixels)
            if is_jpeg(mode, kind):
                # the decode that checks every byte (as `retino validate`): a truncated or
                # corrupt file fails here, as on the CPU path, whatever nvJPEG would make of it
                decode_rgb(Path(path), max_pixels, min_side=SMALLEST_DECODE)
                routes.append(("gpu", None))
                continue
            if array is None:
                array = np.load(array_path, mmap_mode="r+")
            array[row] = preprocess_image(Path(path), size, normalize, max_pixels)
            routes.append(("cpu", kind))
        except ImageError as err:
            routes.append(("failed", str(err)))
    if array is not None:
        array.flush()
    return routes


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

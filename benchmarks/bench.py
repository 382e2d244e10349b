"""`retino bench input|train`: retino's input path and train step timed side by side with the lab
report's loader and loop, in one process, on the train images of a dataset (any layout).

- lab-report: the lab report's loader and step as they were (benchmarks/baseline.py): every
  epoch opens each full photograph with PIL, resizes it to --size (a camera frame: the shorter
  side, then a centre crop), flips, ToTensor; no workers.
- full decode + resize, and preprocess (1 process): the cost per image of decoding the
  photograph at full size then resizing, against retino's `preprocess_image` (scaled decode,
  disc crop, resize) — what the one-time preprocess stage pays per image.
- preprocess stage: `cache_images` with a process per core writing the uint8 cache.
- retino: an epoch reading that cache (CachedImages + make_loader, a worker per core, pinned
  memory on CUDA) + BatchTransform with the lab report's flips; `train` adds the engine's step
  (AdamW, bf16 autocast + channels_last on CUDA) with the same model.

Loaders are timed after a warm-up, from the start of an epoch, looping epochs when --batches asks
for more than one holds. The lab-report loop runs first because `make_loader` sets the process to
keep freed memory (`retain_freed_memory`); a last row times it again under that setting, to show
what share of the gain is the allocator.

stdout: the tables, then one JSON line (always the last). Progress goes to stderr.
"""

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.baseline import lab_report_loader, lab_report_step
from retino.config import AugmentConfig, load_config
from retino.data.dataset import CachedImages, default_workers, make_loader
from retino.data.fundus import preprocess_image
from retino.data.layouts import read_layout
from retino.data.preprocess import cache_images
from retino.data.transforms import BatchTransform
from retino.data.validation import DEFAULT_MAX_PIXELS, cpu_workers
from retino.errors import RetinoError
from retino.training.models import build_model

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
WARMUP_BATCHES = 3  # the heap, the page cache and the workers reach a steady state
LAB_REPORT_FLIPS = AugmentConfig(
    hflip=0.5, vflip=0.5, rotation=0.0, scale_min=1.0, color_jitter=0.0
)
# The raw dataset has no normalisation statistics; any mean/std costs the same.
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# dense bf16 peaks (datasheets), by a part of torch.cuda.get_device_name(); H100 PCIe is lower
PEAK_BF16_FLOPS = {"H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H200": 989e12}

Step = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class Timing:
    path: str
    images: int
    seconds: float
    batches: int
    wait: float  # seconds spent waiting for the next batch (the baseline decodes in that time)
    peak_bytes: int | None = None  # CUDA memory high-water mark

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def bench_input(data: Path, size: int, batch_size: int, batches: int) -> dict:
    """Loader throughput (normalised retino batches vs the lab report's ToTensor batches), and
    what decoding costs once per image against every epoch."""
    device = _device()
    table, stored = bench_images(data, batch_size, batches)
    paths = [Path(data) / p for p in table["path"]]
    print(f"timing input paths on {len(table)} train images of {data}", file=sys.stderr)

    def baseline_step(x: torch.Tensor, y: torch.Tensor) -> None:
        x.to(device)

    baseline = lab_report_loader(table, data, size, batch_size, stored)
    rows = [_run("lab-report loader", baseline, batches, baseline_step, device)]
    full = _per_image(paths, lambda p: _full_decode_resize(p, size))
    scaled = _per_image(paths, lambda p: preprocess_image(p, size, "none", DEFAULT_MAX_PIXELS))
    with _cache(table, data, size) as (cached, stage_rate):
        transform = BatchTransform(MEAN, STD, device, LAB_REPORT_FLIPS, device.type == "cuda")
        generator = torch.Generator().manual_seed(0)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            transform(x, generator)

        rows.append(_run("retino loader (cache)", _loader(cached, batch_size, device), batches,
                         step, device))  # fmt: skip
    rows.append(_run("lab-report, memory kept", baseline, batches, baseline_step, device))

    workers = default_workers(-1, device.type == "cuda")
    title = f"retino bench input: {size} px, batch {batch_size}, {batches} batches timed"
    title += f" ({len(table)} train images, stored {stored[0]}x{stored[1]})"
    notes = [
        f"lab-report: {_baseline_description(size, stored)}, no workers, batch_size={batch_size}",
        f"retino: the uint8 cache + make_loader ({workers} workers"
        f"{', pinned' if device.type == 'cuda' else ''}) + BatchTransform "
        "(flips p=0.5, uint8 -> normalised float)",
        "lab-report, memory kept: the lab report's loader again after retino set the process "
        "to keep freed memory (reference only)",
    ]
    decode_rows = [
        ("full decode + resize, 1 process", full),
        ("preprocess_image, 1 process", scaled),
        (f"preprocess stage, {cpu_workers()} processes", stage_rate),
    ]
    extra = {
        "full_decode_images_per_s": round(full, 2),
        "preprocess_images_per_s": round(stage_rate, 2),
        "preprocess_ratio": round(scaled / full, 2),  # one process each: what scaling buys
    }
    return _report(title, rows, notes, device, decode_rows=decode_rows, extra=extra)


def bench_train(
    data: Path, arch: str, size: int, batch_size: int, batches: int, compile: bool = False
) -> dict:
    """Full train steps (forward, backward, optimizer step) per second, in images/s; `compile`:
    retino's model through torch.compile, as with train.compile (compiled in the warm-up)."""
    # the engine pulls in tqdm and scikit-learn: only `bench train` pays for them
    from retino.training.engine import train_step
    from retino.training.optim import make_optimizer

    device = _device()
    cuda = device.type == "cuda"
    build_model(arch)  # an unknown arch fails before anything is timed
    table, stored = bench_images(data, batch_size, batches)
    print(f"timing {arch} train steps on {len(table)} train images of {data}", file=sys.stderr)

    def baseline_run(name: str) -> Timing:
        torch.manual_seed(0)
        model = build_model(arch).to(device)
        step = lab_report_step(model, device)
        model.train()
        loader = lab_report_loader(table, data, size, batch_size, stored)
        return _run(name, loader, batches, step, device)

    def retino_run(cached: CachedImages) -> tuple[Timing, float | None]:
        torch.manual_seed(0)
        transform = BatchTransform(MEAN, STD, device, LAB_REPORT_FLIPS, channels_last=cuda)
        model = build_model(arch).to(device, memory_format=transform.memory_format)
        optimizer = make_optimizer(model, load_config(PARAMS).train)  # the committed recipe
        criterion = torch.nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(0)

        def step_of(net: torch.nn.Module) -> Step:
            def step(images: torch.Tensor, labels: torch.Tensor) -> None:  # as train_one_epoch
                loss, _, _ = train_step(
                    net, images, labels, transform, optimizer, criterion, generator
                )
                loss.item()

            return step

        model.train()
        loader = _loader(cached, batch_size, device)
        flops = _flops_per_image(loader, step_of(model)) if cuda else None  # counted eagerly
        step = step_of(torch.compile(model) if compile else model)
        return _run("retino train step", loader, batches, step, device), flops

    rows = [baseline_run("lab-report loop")]
    with _cache(table, data, size) as (cached, _):
        retino, flops = retino_run(cached)
    rows += [retino, baseline_run("lab-report, memory kept")]

    workers = default_workers(-1, cuda)
    precision = "bf16 autocast, channels_last" if cuda else "fp32"
    precision += ", torch.compile" if compile else ""
    notes = [
        f"lab-report: {_baseline_description(size, stored)}, no workers, batch_size={batch_size}; "
        "fp32, default memory format, SGD(momentum 0.9)",
        f"retino: the uint8 cache + make_loader ({workers} workers) + BatchTransform (flips "
        f"p=0.5) + the engine's step ({precision}, AdamW); the cache is written beforehand",
        "lab-report, memory kept: the lab report's loop again after retino set the process "
        "to keep freed memory (reference only)",
    ]
    title = f"retino bench train: {arch}, {size} px, batch {batch_size}, {batches} batches timed"
    title += f" ({len(table)} train images)"
    return _report(title, rows, notes, device, flops)


def bench_images(data: Path, batch_size: int, batches: int) -> tuple[pd.DataFrame, tuple[int, int]]:
    """The train images every path reads, as many as the warm-up and the timed batches take (at
    most the split), each read once beforehand so all paths find them in the page cache; and
    the size of the first."""
    report = read_layout(data)
    report.raise_if_invalid()
    samples = report.samples["train"][: (WARMUP_BATCHES + batches) * batch_size]
    table = pd.DataFrame({"path": [s.path for s in samples], "label": [s.label for s in samples]})
    for rel in table["path"]:
        try:
            (Path(data) / rel).read_bytes()
        except OSError as err:
            raise RetinoError(
                f"{Path(data) / rel}: cannot read ({err.strerror}); check the dataset"
            ) from None
    with Image.open(Path(data) / table["path"][0]) as first:
        return table, first.size


@contextmanager
def _cache(table: pd.DataFrame, data: Path, size: int) -> Iterator[tuple[CachedImages, float]]:
    """The images preprocessed into a temporary cache by the preprocess stage's own code, and
    its throughput in images/s."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(data) / p for p in table["path"]]
        print(f"  preprocess stage: {len(paths)} images", file=sys.stderr)
        start = time.perf_counter()
        failures = cache_images({"bench": paths}, Path(tmp), size, "none", DEFAULT_MAX_PIXELS,
                                cpu_workers())  # fmt: skip
        rate = len(paths) / (time.perf_counter() - start)
        if failures:
            raise RetinoError(failures[0])
        yield CachedImages(Path(tmp) / "bench.npy", torch.tensor(table["label"].to_numpy())), rate


def _loader(cached: CachedImages, batch_size: int, device: torch.device) -> DataLoader:
    cuda = device.type == "cuda"
    return make_loader(cached, batch_size, True, default_workers(-1, cuda), cuda)


def _full_decode_resize(path: Path, size: int) -> None:
    """What an epoch of the lab report's loader pays per image before its flips."""
    with Image.open(path) as image:
        image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def _per_image(paths: list[Path], work: Callable[[Path], object]) -> float:
    """Images per second of `work` in this one process (after one warm-up call)."""
    work(paths[0])
    start = time.perf_counter()
    for path in paths:
        work(path)
    return len(paths) / (time.perf_counter() - start)


def _run(name: str, loader: DataLoader, batches: int, step: Step, device: torch.device) -> Timing:
    print(f"  {name}: warm-up", file=sys.stderr)
    _timed(name, loader, WARMUP_BATCHES, step, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    print(f"  {name}: {batches} batches", file=sys.stderr)
    timing = _timed(name, loader, batches, step, device)
    if device.type == "cuda":
        timing.peak_bytes = torch.cuda.max_memory_allocated(device)
    return timing


def _timed(name: str, loader: DataLoader, batches: int, step: Step, device: torch.device) -> Timing:
    images = done = 0
    wait = 0.0
    start = time.perf_counter()
    while done < batches:
        epoch = iter(loader)  # a new epoch: the loader starts (and prefetches) from scratch
        while done < batches:
            t = time.perf_counter()
            batch = next(epoch, None)
            wait += time.perf_counter() - t
            if batch is None:
                break
            step(*batch)
            images += len(batch[1])
            done += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Timing(name, images, time.perf_counter() - start, done, wait)


def _flops_per_image(loader: DataLoader, step: Step) -> float:
    """Model FLOPs of one train step (forward + backward), per image, counted by torch."""
    images, labels = next(iter(loader))
    with FlopCounterMode(display=False) as counter:
        step(images, labels)
    return counter.get_total_flops() / len(labels)


def _baseline_description(size: int, stored: tuple[int, int]) -> str:
    steps = ["PIL open"]
    if stored != (size, size):
        steps.append(f"Resize({size})")  # the stored images are another size
        if stored[0] != stored[1]:
            steps.append(f"CenterCrop({size})")
    steps += ["hflip", "vflip", "ToTensor"]
    extra = f" (stored images are {stored[0]}x{stored[1]} px)" if stored != (size, size) else ""
    return " -> ".join(steps) + extra


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _peak_flops(device: torch.device) -> float | None:
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def _report(
    title: str,
    rows: list[Timing],
    notes: list[str],
    device: torch.device,
    flops: float | None = None,  # model FLOPs per image and train step (CUDA only)
    decode_rows: list[tuple[str, float]] = (),
    extra: dict | None = None,
) -> dict:
    baseline, retino = rows[0], rows[1]
    name = _device_name(device)
    header = f"{'path':<26}{'images/s':>10}{'x base':>8}{'s/batch':>9}{'wait/batch':>12}"
    cuda = device.type == "cuda"
    peak = _peak_flops(device) if cuda else None
    if cuda:
        header += f"{'peak GiB':>10}" + (f"{'TFLOP/s':>9}{'MFU':>7}" if flops else "")
    lines = [title, f"device: {name}", header]
    for row in rows:
        line = f"{row.path:<26}{row.rate:>10.1f}{row.rate / baseline.rate:>8.2f}"
        line += f"{row.seconds / row.batches:>9.3f}{row.wait / row.batches:>12.3f}"
        if cuda:
            line += f"{row.peak_bytes / 2**30:>10.2f}"
            if flops:
                achieved = flops * row.rate
                mfu = f"{achieved / peak:.1%}" if peak else "n/a"
                line += f"{achieved / 1e12:>9.1f}{mfu:>7}"
        lines.append(line)
    if cuda and flops:
        mfu = "MFU vs the dense bf16 peak" if peak else "MFU n/a: no peak known for this card"
        lines.append(f"model: {flops / 1e9:.2f} GFLOP per image per train step; {mfu}")
    if decode_rows:
        lines += ["", f"{'decoding, once per image':<34}{'images/s':>10}{'ms/image':>10}"]
        lines += [f"{label:<34}{rate:>10.1f}{1000 / rate:>10.1f}" for label, rate in decode_rows]
    lines += [f"- {note}" for note in notes]
    print("\n".join(lines))
    result = {
        "baseline_images_per_s": round(baseline.rate, 2),
        **(extra or {}),
        "retino_images_per_s": round(retino.rate, 2),
        "ratio": round(retino.rate / baseline.rate, 2),
        "device": name,
    }
    print(json.dumps(result), flush=True)
    return result

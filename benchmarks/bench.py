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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.baseline import lab_report_loader, lab_report_step
from benchmarks.machine import cpu_description
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
    table, stored = bench_images(data, (WARMUP_BATCHES + batches) * batch_size)
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
    data: Path,
    arch: str,
    size: int,
    batch_size: int,
    batches: int,
    compile: str | None = None,
    lab_report: bool = True,
) -> dict:
    """Full train steps (forward, backward, optimizer step) per second, in images/s, through
    each input path, and with no input path at all (one batch kept on the device) — the rate
    the step alone allows, against which the input's share of the time is measured. `compile`:
    a torch.compile mode for retino's model (compiled in the warm-up), as with train.compile."""
    # the engine pulls in tqdm and scikit-learn: only `bench train` pays for them
    from retino.data.feed import CacheFeed
    from retino.training.engine import EpochSums, compiled, train_step
    from retino.training.optim import make_optimizer

    device = _device()
    cuda = device.type == "cuda"
    build_model(arch)  # an unknown arch fails before anything is timed
    table, stored = bench_images(data, (WARMUP_BATCHES + batches) * batch_size)
    print(f"timing {arch} train steps on {len(table)} train images of {data}", file=sys.stderr)

    def baseline_run(name: str) -> Timing:
        torch.manual_seed(0)
        model = build_model(arch).to(device)
        step = lab_report_step(model, device)
        model.train()
        loader = lab_report_loader(table, data, size, batch_size, stored)
        return _run(name, loader, batches, step, device)

    # retino's model, optimizer and transform, shared by its rows (compiled once)
    torch.manual_seed(0)
    transform = BatchTransform(MEAN, STD, device, LAB_REPORT_FLIPS, channels_last=cuda)
    model = build_model(arch).to(device, memory_format=transform.memory_format)
    optimizer = make_optimizer(model, load_config(PARAMS).train, fused=cuda)  # the recipe's
    criterion = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    model.train()
    net = compiled(model, size, mode=compile) if compile else model

    def step_of(module: torch.nn.Module) -> Step:
        def step(images: torch.Tensor, labels: torch.Tensor) -> None:  # as train_one_epoch
            loss, logits, y = train_step(module, images, labels, transform, optimizer,
                                         criterion, generator)  # fmt: skip
            sums.add(1, loss, logits.argmax(1), y)  # on the device: no wait for the GPU

        return step

    sums = EpochSums(device)
    step = step_of(net)
    rows = [baseline_run("lab-report loop")] if lab_report else []
    flops = None
    with _cache(table, data, size) as (cached, _):
        sampler = RandomSampler(cached, generator=torch.Generator().manual_seed(0))
        if cuda:
            flops = _flops_per_image(_loader(cached, batch_size, device), step_of(model))
            start = time.perf_counter()
            feed = CacheFeed(cached, batch_size, sampler, device, resident=True)
            next(iter(feed))  # the one copy into GPU memory, outside the timing
            print(f"  upload: {cached.nbytes / 2**30:.2f} GiB into GPU memory in "
                  f"{time.perf_counter() - start:.2f} s", file=sys.stderr)  # fmt: skip
            paths = {
                "retino, cache on GPU": feed,
                "retino, cache streamed": CacheFeed(cached, batch_size, sampler, device, False),
                "retino, loader workers": _loader(cached, batch_size, device),
            }
        else:
            paths = {"retino train step": _loader(cached, batch_size, device)}
        for name, loader in paths.items():
            rows.append(_run(name, loader, batches, step, device))
        one = next(iter(paths[next(iter(paths))]))  # a batch, where the first path puts it
        rows.append(_run("retino, no input", _Repeat(one), batches, step, device))
    sums.read(1, optimizer)  # a non-finite loss would make the timings meaningless
    if lab_report:
        rows.append(baseline_run("lab-report, memory kept"))

    workers = default_workers(-1, cuda)
    precision = "bf16 autocast, channels_last, fused AdamW" if cuda else "fp32, AdamW"
    precision += f", torch.compile mode {compile}" if compile else ""
    notes = [
        f"retino: the engine's step ({precision}) + BatchTransform (flips p=0.5) over the uint8 "
        "cache (written beforehand): "
        + (
            "held in GPU memory, streamed from the file through pinned buffers, or through "
            f"make_loader's {workers} workers (data.cache_device: cuda, cpu; the old path)"
            if cuda
            else "make_loader in the main process"
        ),
        "no input: the same batch, already on the device, every step: the step alone",
        "wait: the loop waiting for the next batch; input: 1 - images/s / no input's images/s",
    ]
    if lab_report:
        notes.insert(
            0,
            f"lab-report: {_baseline_description(size, stored)}, no workers, "
            f"batch_size={batch_size}; fp32, default memory format, SGD(momentum 0.9)",
        )
        notes.append(
            "lab-report, memory kept: the lab report's loop again after retino set the process "
            "to keep freed memory (reference only)"
        )
    title = f"retino bench train: {arch}, {size} px, batch {batch_size}, {batches} batches timed"
    title += f" ({len(table)} train images)"
    return _report(title, rows, notes, device, flops, lab_report=lab_report)


class _Repeat:
    """One batch over and over, as many times as a loader of its length would give: the step
    with no input path."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def bench_preprocess(data: Path, size: int, images: int) -> dict:
    """The preprocess stage's throughput on the train images of `data` (camera frames, for a
    meaningful figure): a process per core on the CPU, and with a GPU the batched nvJPEG path
    (after an untimed warm-up batch: nvJPEG's and CUDA's start-up are paid once per run); how
    far apart the two caches are, in grey levels."""
    table, stored = bench_images(data, images)
    paths = [Path(data) / p for p in table["path"]]
    device = _device()
    workers = cpu_workers()
    print(f"preprocessing {len(paths)} train images of {data}", file=sys.stderr)
    rows, arrays = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("cpu", None)] + ([("nvjpeg", "cuda")] if device.type == "cuda" else [])
        for name, decode_on in runs:
            if decode_on:  # warm-up
                _cache_rate(paths[: min(len(paths), 32)], Path(tmp, "warm"), size, decode_on)
            rate = _cache_rate(paths, Path(tmp, name), size, decode_on)
            label = f"{workers} processes" + (", nvJPEG batches on the GPU" if decode_on else "")
            rows.append((label, rate))
            arrays[name] = np.load(Path(tmp, name, "bench.npy"))
    lines = [
        f"retino bench preprocess: {len(paths)} images of {stored[0]}x{stored[1]} px to {size} px",
        f"device: {_device_name(device)}",
        f"{'preprocess stage':<46}{'images/s':>10}{'ms/image':>10}",
    ]
    lines += [f"{label:<46}{rate:>10.1f}{1000 / rate:>10.2f}" for label, rate in rows]
    result = {"cpu_images_per_s": round(rows[0][1], 2), "device": _device_name(device)}
    if "nvjpeg" in arrays:
        diff = np.abs(arrays["nvjpeg"].astype(np.int16) - arrays["cpu"].astype(np.int16))
        mean, p99 = float(diff.mean()), float(np.percentile(diff, 99))
        lines.append(f"caches apart: mean {mean:.3f}, 99th percentile {p99:.0f}, largest "
                     f"{int(diff.max())} grey levels")  # fmt: skip
        result |= {
            "nvjpeg_images_per_s": round(rows[1][1], 2),
            "ratio": round(rows[1][1] / rows[0][1], 2),
            "mean_difference": round(mean, 4),
            "p99_difference": p99,
        }
    print("\n".join(lines))
    print(json.dumps(result), flush=True)
    return result


def _cache_rate(paths: list[Path], out: Path, size: int, decode_on: str | None) -> float:
    """Images/s of the preprocess stage's `cache_images` writing `paths` into `out`."""
    out.mkdir()
    start = time.perf_counter()
    failures = cache_images({"bench": paths}, out, size, "none", DEFAULT_MAX_PIXELS,
                            cpu_workers(), decode_on)  # fmt: skip
    rate = len(paths) / (time.perf_counter() - start)
    if failures:
        raise RetinoError(failures[0])
    return rate


def bench_images(data: Path, count: int) -> tuple[pd.DataFrame, tuple[int, int]]:
    """The first `count` train images (at most the split), which every path reads, each read
    once beforehand so all paths find them in the page cache; and the size of the first."""
    report = read_layout(data)
    report.raise_if_invalid()
    samples = report.samples["train"][:count]
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
        rate = _cache_rate(paths, Path(tmp, "cache"), size, None)
        labels = torch.tensor(table["label"].to_numpy())
        yield CachedImages(Path(tmp, "cache", "bench.npy"), labels), rate


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
    """Model FLOPs of one train step (forward + backward), per image, counted by torch (on the
    eager model: the timed steps may run a compiled one)."""
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
    return f"cpu: {cpu_description()}, {torch.get_num_threads()} torch threads"


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
    lab_report: bool = True,
) -> dict:
    """Print the table and the JSON line (returned). The first row is the lab report's (with
    `lab_report`), the first other one retino's headline; a "no input" row gives each row's
    input share."""
    baseline = rows[0] if lab_report else None
    retino = next(row for row in rows if not row.path.startswith("lab-report"))
    alone = next((row for row in rows if row.path.endswith("no input")), None)
    name = _device_name(device)
    cuda = device.type == "cuda"
    peak = _peak_flops(device) if cuda else None
    header = f"{'path':<26}{'images/s':>10}{'x base':>8}{'s/batch':>9}{'wait/batch':>12}"
    header += f"{'wait':>7}" + (f"{'input':>7}" if alone else "")
    if cuda:
        header += f"{'peak GiB':>10}" + (f"{'TFLOP/s':>9}{'MFU':>7}" if flops else "")
    lines = [title, f"device: {name}", header]
    for row in rows:
        ratio = f"{row.rate / baseline.rate:>8.2f}" if baseline else f"{'-':>8}"
        line = f"{row.path:<26}{row.rate:>10.1f}{ratio}"
        line += f"{row.seconds / row.batches:>9.3f}{row.wait / row.batches:>12.3f}"
        line += f"{row.wait / row.seconds:>7.1%}"
        if alone:
            share = _input_share(row, alone) if row.path.startswith("retino") else None
            line += f"{share:>7.1%}" if share is not None else " " * 7
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
        "baseline_images_per_s": round(baseline.rate, 2) if baseline else None,
        **(extra or {}),
        "retino_images_per_s": round(retino.rate, 2),
        "ratio": round(retino.rate / baseline.rate, 2) if baseline else None,
        "device": name,
    }
    if alone:
        result |= {
            "no_input_images_per_s": round(alone.rate, 2),
            "wait_share": round(retino.wait / retino.seconds, 4),
            "input_share": round(_input_share(retino, alone), 4),
            "paths": {row.path: round(row.rate, 2) for row in rows},
        }
    if cuda:
        result["peak_gib"] = round(retino.peak_bytes / 2**30, 2)
        if flops and peak:
            result["mfu"] = round(flops * retino.rate / peak, 4)
    print(json.dumps(result), flush=True)
    return result


def _input_share(row: Timing, alone: Timing) -> float:
    """The share of `row`'s time the input path costs: 1 - its rate / the step's alone."""
    return max(0.0, 1 - row.rate / alone.rate)

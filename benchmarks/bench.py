"""`retino bench input|train`: retino's fast path timed side by side with the lab report's loop.

Both paths run in this one process on the train images of a lab-layout dataset, each after a
warm-up and timed from the start of an epoch (a prefetching loader gets no head start), looping
epochs when --batches asks for more than one holds:

- lab-report: the lab report's loader and step as they were (benchmarks/baseline.py), plus a PIL
  Resize when --size differs from the stored images, so both paths deliver the same shape.
- retino: FundusDataset + make_loader (a worker per core, pinned memory on CUDA) + BatchTransform
  with the lab report's flips; `train` adds the engine's step (AdamW, bf16 autocast +
  channels_last on CUDA) with the same model.

The lab-report loop runs first because `make_loader` sets the process to keep freed memory
(`retain_freed_memory`); a last reference row times the lab-report loop again under that setting,
which shows what share of the gain is the allocator and what share the pipeline.

stdout: a table, then one JSON line (always the last) with baseline_images_per_s,
retino_images_per_s, ratio and device. Progress goes to stderr.
"""

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.baseline import lab_report_loader, lab_report_step
from retino.config import AugmentConfig, load_config
from retino.data.dataset import FundusDataset, default_workers, make_loader
from retino.data.layouts import validate
from retino.data.transforms import BatchTransform
from retino.errors import RetinoError
from retino.training.models import build_model

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
WARMUP_BATCHES = 3  # the heap, the page cache and the workers reach a steady state
LAB_REPORT_FLIPS = AugmentConfig(
    hflip=0.5, vflip=0.5, rotation=0.0, scale_min=1.0, color_jitter=0.0
)
# The raw dataset has no prepared/stats.json; any mean/std costs the same.
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
    """Loader throughput: images/s of the normalised (retino) or ToTensor (lab report) batches."""
    device = _device()
    table, stored = bench_images(data, batch_size, batches)
    print(f"timing input pipelines on {len(table)} train images of {data}", file=sys.stderr)

    def baseline_step(x: torch.Tensor, y: torch.Tensor) -> None:
        x.to(device)

    def retino_run() -> Timing:  # its loader, and with it the workers, end on return
        loader = retino_loader(table, data, size, batch_size, device)
        transform = BatchTransform(MEAN, STD, device, LAB_REPORT_FLIPS, device.type == "cuda")
        generator = torch.Generator().manual_seed(0)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            transform(x, generator)

        return _run("retino loader", loader, batches, step, device)

    baseline = lab_report_loader(table, data, size, batch_size, stored)
    rows = [_run("lab-report loader", baseline, batches, baseline_step, device)]
    rows.append(retino_run())
    rows.append(_run("lab-report, memory kept", baseline, batches, baseline_step, device))

    workers = default_workers(-1)
    notes = [
        f"lab-report: {_baseline_description(size, stored)}, no workers, batch_size={batch_size}",
        f"retino: FundusDataset + make_loader ({workers} workers"
        f"{', pinned' if device.type == 'cuda' else ''}) + BatchTransform "
        "(flips p=0.5, uint8 -> normalised float)",
        "lab-report, memory kept: the lab report's loader again after retino set the process "
        "to keep freed memory (reference only)",
    ]
    title = f"retino bench input: {size} px, batch {batch_size}, {batches} batches timed"
    title += f" ({len(table)} train images)"
    return _report(title, rows, notes, device)


def bench_train(data: Path, arch: str, size: int, batch_size: int, batches: int) -> dict:
    """Full train steps (forward, backward, optimizer step) per second, in images/s."""
    # the engine pulls in tqdm and scikit-learn: only `bench train` pays for them
    from retino.training.engine import train_step
    from retino.training.optim import make_optimizer

    device = _device()
    cuda = device.type == "cuda"
    table, stored = bench_images(data, batch_size, batches)
    build_model(arch)  # an unknown arch fails before anything is timed
    print(f"timing {arch} train steps on {len(table)} train images of {data}", file=sys.stderr)

    def baseline_run(name: str) -> Timing:
        torch.manual_seed(0)
        model = build_model(arch).to(device)
        step = lab_report_step(model, device)
        model.train()
        loader = lab_report_loader(table, data, size, batch_size, stored)
        return _run(name, loader, batches, step, device)

    def retino_run() -> tuple[Timing, float | None]:
        torch.manual_seed(0)
        transform = BatchTransform(MEAN, STD, device, LAB_REPORT_FLIPS, channels_last=cuda)
        model = build_model(arch).to(device, memory_format=transform.memory_format)
        optimizer = make_optimizer(model, load_config(PARAMS).train)  # the committed recipe
        criterion = torch.nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(0)

        def step(images: torch.Tensor, labels: torch.Tensor) -> None:  # as train_one_epoch
            loss, _, _ = train_step(
                model, images, labels, transform, optimizer, criterion, generator
            )
            loss.item()

        model.train()
        loader = retino_loader(table, data, size, batch_size, device)
        flops = _flops_per_image(loader, step) if cuda else None
        return _run("retino train step", loader, batches, step, device), flops

    rows = [baseline_run("lab-report loop")]
    retino, flops = retino_run()
    rows += [retino, baseline_run("lab-report, memory kept")]

    workers = default_workers(-1)
    precision = "bf16 autocast, channels_last" if cuda else "fp32"
    notes = [
        f"lab-report: {_baseline_description(size, stored)}, no workers, batch_size={batch_size}; "
        "fp32, default memory format, SGD(momentum 0.9)",
        f"retino: FundusDataset + make_loader ({workers} workers) + BatchTransform (flips p=0.5) "
        f"+ the engine's step ({precision}, AdamW)",
        "lab-report, memory kept: the lab report's loop again after retino set the process "
        "to keep freed memory (reference only)",
    ]
    title = f"retino bench train: {arch}, {size} px, batch {batch_size}, {batches} batches timed"
    title += f" ({len(table)} train images)"
    return _report(title, rows, notes, device, flops)


def train_split(data: Path) -> tuple[pd.DataFrame, tuple[int, int]]:
    """The train split of a lab-layout dataset as a (path, label) table, and its image size."""
    report = validate(data, check_images=False)
    report.raise_if_invalid()
    samples = report.samples["train"]
    table = pd.DataFrame({"path": [s.path for s in samples], "label": [s.label for s in samples]})
    first = Path(data) / samples[0].path
    try:
        with Image.open(first) as image:
            stored = image.size
    except OSError as err:
        raise RetinoError(f"{first}: cannot read the image ({err}); check the dataset") from None
    return table, stored


def bench_images(data: Path, batch_size: int, batches: int) -> tuple[pd.DataFrame, tuple[int, int]]:
    """The train images both paths read, as many as the warm-up and the timed batches take (at
    most the split), each read once beforehand: both paths then find them in the page cache."""
    table, stored = train_split(data)
    table = table.head((WARMUP_BATCHES + batches) * batch_size)
    for rel in table["path"]:
        try:
            (Path(data) / rel).read_bytes()
        except OSError as err:
            raise RetinoError(
                f"{Path(data) / rel}: cannot read ({err.strerror}); check the dataset"
            ) from None
    return table, stored


def retino_loader(
    table: pd.DataFrame, root: Path, size: int, batch_size: int, device: torch.device
) -> DataLoader:
    dataset = FundusDataset(table, root, size)
    return make_loader(dataset, batch_size, True, default_workers(-1), device.type == "cuda")


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
    lines += [f"- {note}" for note in notes]
    print("\n".join(lines))
    result = {
        "baseline_images_per_s": round(baseline.rate, 2),
        "retino_images_per_s": round(retino.rate, 2),
        "ratio": round(retino.rate / baseline.rate, 2),
        "device": name,
    }
    print(json.dumps(result), flush=True)
    return result

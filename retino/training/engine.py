"""Training and evaluation loops: batches in, metrics out.

The engine neither writes files nor talks to MLflow: `fit` calls `on_epoch` after each epoch
and the train step (retino.training.train) writes checkpoints and logs there.

Reproducibility: the shuffle order (the train loader's sampler) and every augmentation of epoch
e are seeded with (seed, e), and the checkpoint holds model, optimizer and scheduler state. A run
resumed after epoch e therefore continues exactly as the uninterrupted run did (on CPU, bit for
bit). A regression head's thresholds are refitted on every epoch's validation outputs, a
deterministic function of them, so they need no state.
"""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from retino.config import DEVICE, Config, TrainConfig
from retino.data.transforms import BatchTransform
from retino.errors import RetinoError
from retino.grades import NUM_CLASSES
from retino.metrics import counts_qwk
from retino.training.distributed import Dist, all_sum, gather_ordered
from retino.training.heads import CE, Head

SINGLE = Dist()  # a plain single-process run
FLIPS = ((), (-1,), (-2,), (-1, -2))  # none, left-right, upside-down, both: flip TTA's views


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N as a device of this machine; anything else is a RetinoError
    (`train.device` in params.yaml, `--device` of retino predict)."""
    if not DEVICE.fullmatch(name):
        raise RetinoError(f"device {name!r}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        have = {0: "no CUDA device", 1: "one, cuda:0"}.get(count, f"cuda:0 to cuda:{count - 1}")
        raise RetinoError(f"device {name!r}: this machine has {have}; use auto or cpu")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 on CPU, where bf16 is an order of magnitude slower."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """Independent, reproducible random stream per (seed, epoch, stream)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step on a uint8 batch: (loss, logits, labels on the device)."""
    x = transform(images, generator)
    y = labels.to(transform.device, non_blocking=True)
    with autocast(transform.device):
        logits = model(x)
        loss = criterion(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits, y


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    generator: torch.Generator,
    epoch: int,
    desc: str = "train",
    job: Dist = SINGLE,
    head: Head = CE,
) -> dict[str, float]:
    """One epoch (1-based `epoch`) of optimisation: mean loss, accuracy and QWK of the
    (augmented) batches as they were trained on (`head.batch_grades`), and throughput; a loss
    that is not finite is a RetinoError. Under DDP the sums and the confusion matrix are reduced
    across ranks, so QWK is exactly that of all ranks' predictions together.

    The running sums stay on the device and are read about once a second (the progress bar,
    the non-finite check) and at the end: reading a CUDA value makes the host wait for the GPU,
    and a wait per step would leave the GPU idle while the next step is queued.
    """
    model.train()
    device = transform.device
    sums = EpochSums(device)
    start = shown = time.perf_counter()
    bar = _progress(loader, desc, job)
    for step, (images, labels) in enumerate(bar, start=1):
        loss, logits, y = train_step(
            model, images, labels, transform, optimizer, criterion, generator
        )
        sums.add(step, loss, head.batch_grades(logits), y)
        if time.perf_counter() - shown >= READ_EVERY_S:
            _show(bar, sums.read(epoch, optimizer), start)
            shown = time.perf_counter()
    seconds = time.perf_counter() - start
    total_loss, correct, seen, counts = sums.read(epoch, optimizer)
    # one collective for all: float64 holds counts exactly up to 2**53
    total_loss, correct, seen, *cells = all_sum(job, [total_loss, correct, seen, *counts], device)
    qwk = counts_qwk(np.asarray(cells, dtype=np.int64).reshape(NUM_CLASSES, NUM_CLASSES))
    return {
        "loss": total_loss / seen,
        "acc": correct / seen,
        "qwk": qwk,
        "images_per_s": seen / seconds,
    }


READ_EVERY_S = 1.0  # the progress bar's pace (tqdm's mininterval): a host sync at most this often


class EpochSums:
    """An epoch's running loss, accuracy and confusion counts, kept on the device, and the first
    step whose loss was not finite (its number and value), found without reading every loss."""

    def __init__(self, device: torch.device) -> None:
        self.seen = 0  # batch sizes are known on the host
        self.loss = torch.zeros((), dtype=torch.float64, device=device)  # sum of loss * n
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.counts = torch.zeros(NUM_CLASSES**2, dtype=torch.int64, device=device)
        self.bad_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)

    def add(self, step: int, loss: torch.Tensor, predicted: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        loss = loss.detach()
        # float64 as Python's float was: loss * n summed in the same order, bit for bit
        self.loss += loss.double() * n
        self.correct += (predicted == y).sum()
        # index_add_, not bincount: bincount on CUDA reads its input's maximum (a host sync)
        cells = y * NUM_CLASSES + predicted
        self.counts.index_add_(0, cells, torch.ones_like(cells))
        first = (self.bad_step == 0) & ~torch.isfinite(loss)
        self.bad_step.copy_(torch.where(first, step, self.bad_step))
        self.bad_loss.copy_(torch.where(first, loss.float(), self.bad_loss))
        self.seen += n

    def read(self, epoch: int, optimizer: torch.optim.Optimizer) -> tuple[float, int, int, list]:
        """(loss sum, correct, seen, confusion counts) so far, one host sync; a RetinoError
        naming the epoch and step if a loss was not finite: the weights are ruined, so stop
        rather than publish NaN."""
        bad_step, bad_loss, total, correct, *counts = torch.cat([
            self.bad_step.view(1).double(), self.bad_loss.view(1).double(),
            self.loss.view(1), self.correct.view(1).double(), self.counts.double(),
        ]).tolist()  # fmt: skip
        if bad_step:
            lr = optimizer.param_groups[0]["lr"]  # the schedule steps per epoch
            raise RetinoError(
                f"epoch {epoch}, step {int(bad_step)}: training loss is {bad_loss}; the learning "
                f"rate is likely too high (train.lr, {lr:g} at this step), or the input "
                "normalisation bad (the mean/std of prepared/stats.json); lower train.lr or rerun "
                "prepare"
            )
        return total, int(correct), self.seen, [int(c) for c in counts]


def _show(bar: tqdm, sums: tuple[float, int, int, list], start: float) -> None:
    total, correct, seen, _ = sums
    rate = seen / (time.perf_counter() - start)
    bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")


def _progress(loader: DataLoader, desc: str, job: Dist, show: bool = True) -> tqdm:
    """A bar on a terminal, in the main process only (and where `show`)."""
    return tqdm(
        loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
        disable=None if job.is_main and show else True,
    )  # fmt: skip


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    desc: str = "predict",
    job: Dist = SINGLE,
    head: Head = CE,
    tta: bool = False,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), outputs (N, K)) for every sample of `loader`, in order: softmax
    probabilities or the regression score (`head.activate`). With `tta`, the mean output over
    the four flips of each image (flipping the normalised batch is flipping the photograph).
    `progress=False`: no bar (a server grading many small requests at once).

    Under DDP each rank predicts its shard and every rank gets the whole, reassembled.
    """
    model.eval()
    labels, outputs = [], []
    for images, y in _progress(loader, desc, job, progress):
        x = transform(images)
        views = [x.flip(dims) for dims in FLIPS] if tta else [x]
        with autocast(transform.device):
            out = sum(head.activate(model(v)) for v in views) / len(views)
        outputs.append(out)
        labels.append(y.to(transform.device))
    total = len(loader.dataset)
    labels_all = gather_ordered(job, torch.cat(labels), total).cpu().numpy()
    return labels_all, gather_ordered(job, torch.cat(outputs), total).cpu().numpy()


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    desc: str = "eval",
    job: Dist = SINGLE,
    head: Head = CE,
    thresholds: list[float] | None = None,
) -> dict[str, float]:
    """loss, acc, qwk on a held-out loader (a regression score cut at `thresholds`)."""
    labels, outputs = predict(model, loader, transform, desc, job, head)
    return head.metrics(labels, outputs, thresholds)


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the `fc` head (the lab's first, head-only phase)."""
    for name, param in model.named_parameters():
        if not name.startswith("fc."):
            param.requires_grad_(trainable)


@dataclass
class Loaders:
    train: DataLoader  # its sampler has set_epoch(epoch): a fixed order per epoch
    val: DataLoader
    test: DataLoader | None = None  # only for the lab report's per-epoch test curve


@dataclass
class Trainee:
    """What `fit` trains with, built by the train step (and restored there on resume)."""

    model: nn.Module  # the bare module: what checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per epoch
    criterion: nn.Module
    train_tf: BatchTransform  # augments
    eval_tf: BatchTransform
    head: Head  # what the outputs mean: ce or regression


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per epoch, epoch 1 first
    best_epoch: int  # 1-based, the selected epoch

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


EpochCallback = Callable[[FitResult, bool], None]


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric.endswith("loss") else new > old


def fit(
    trainee: Trainee,
    loaders: Loaders,
    cfg: Config,
    done: FitResult | None = None,
    on_epoch: EpochCallback = lambda result, improved: None,
    job: Dist = SINGLE,
) -> FitResult:
    """Train epochs len(done.history)+1 .. cfg.train.epochs and select on validation.

    `done` holds the epochs a resumed run has already completed (their weights and optimizer
    state already restored into `trainee`). After every epoch the main process calls
    `on_epoch(result so far, whether this epoch is the new best)`: the train step writes the
    checkpoints and logs there. Under DDP `trainee.model` stays the bare module; a wrapped one
    only runs the steps.
    """
    tc = cfg.train
    sampler = loaders.train.sampler
    if not hasattr(sampler, "set_epoch"):
        # the order of epoch e must depend on (seed, e) alone, or a resumed run diverges
        raise TypeError("fit: the train loader needs a sampler with set_epoch(epoch)")
    result = FitResult([dict(row) for row in done.history], done.best_epoch) if done else None
    history = result.history if result else []
    best_value = result.best[tc.select_metric] if result else None
    device, head = trainee.train_tf.device, trainee.head

    net, net_trains_backbone = trainee.model, None
    for epoch in range(len(history), tc.epochs):
        trains_backbone = epoch >= tc.freeze_epochs
        if trains_backbone != net_trains_backbone:  # DDP must be rebuilt when that set changes
            set_backbone_trainable(trainee.model, trains_backbone)
            net = _wrap(trainee.model, tc, job, device, cfg.data.image_size)
            net_trains_backbone = trains_backbone
        lr = trainee.optimizer.param_groups[0]["lr"]
        sampler.set_epoch(epoch)
        aug_gen = epoch_generator(cfg.seed, epoch, job.rank)  # each rank its own draws
        tr = train_one_epoch(
            net, loaders.train, trainee.train_tf, trainee.optimizer, trainee.criterion, aug_gen,
            epoch + 1, desc=f"epoch {epoch + 1}/{tc.epochs} train", job=job, head=head,
        )  # fmt: skip
        trainee.scheduler.step()
        labels, outputs = predict(
            net, loaders.val, trainee.eval_tf, f"epoch {epoch + 1} val", job, head
        )
        # selection sees QWK with the thresholds fitted on this epoch's validation outputs,
        # and the test curve uses them too: test never fits anything
        thresholds = head.fit(outputs, labels)
        va = head.metrics(labels, outputs, thresholds)
        if not math.isfinite(va["loss"]):  # the last step of the epoch broke the weights
            raise RetinoError(
                f"epoch {epoch + 1}: validation loss is {va['loss']}; lower train.lr, or rerun "
                "prepare if prepared/stats.json is damaged"
            )
        row = {"epoch": epoch + 1, "lr": lr}
        row |= {f"train_{k}": v for k, v in tr.items() if k != "images_per_s"}
        row |= {f"val_{k}": v for k, v in va.items()}
        if loaders.test is not None:
            desc = f"epoch {epoch + 1} test"
            te = evaluate(net, loaders.test, trainee.eval_tf, desc, job, head, thresholds)
            row |= {f"test_{k}": v for k, v in te.items()}
        row["images_per_s"] = tr["images_per_s"]
        history.append(row)

        improved = better(tc.select_metric, row[tc.select_metric], best_value)
        if improved:
            best_value = row[tc.select_metric]
        result = FitResult(history, epoch + 1 if improved else result.best_epoch)
        if job.is_main:
            on_epoch(result, improved)
        _say(job, _epoch_line(row, tc.epochs))
    return result


def _wrap(
    model: nn.Module, cfg: TrainConfig, job: Dist, device: torch.device, image_size: int
) -> nn.Module:
    """The module the steps run through: DDP under torchrun, optionally torch.compile'd."""
    net = model
    if job.enabled:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return compiled(net, image_size, job) if cfg.compile else net


# torch.compile's mode for train.compile, chosen by measurement: `retino bench train --compile
# MODE` times each (benchmarks/README.md, "GPU"). "reduce-overhead" adds CUDA graphs.
COMPILE_MODE = "default"
FINAL_STRIDE = 32  # a ResNet's last feature map is ceil(size / 32) pixels wide


def compiled(
    net: nn.Module, image_size: int, job: Dist = SINGLE, mode: str = COMPILE_MODE
) -> nn.Module:
    """`net` through torch.compile, except where the last feature map is 1 x 1 (32 px images):
    there a size-1 dimension has two valid strides, cuDNN's backward may return the other one
    than inductor assumed, and the compiled backward fails on its stride check (seen on an
    H200 at 32 px). One pixel per channel leaves nothing for a compiler to gain anyway."""
    if math.ceil(image_size / FINAL_STRIDE) < 2:
        _say(job, f"train.compile: not at {image_size} px (a 1 x 1 final feature map); eager")
        return net
    return torch.compile(net, mode=mode)


def _say(job: Dist, message: str) -> None:
    if job.is_main:
        print(message, flush=True)


def _epoch_line(row: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}"]
    parts += [f"train_acc {row['train_acc']:.3f}", f"val_acc {row['val_acc']:.3f}"]
    parts += [f"val_qwk {row['val_qwk']:.3f}"]
    if "test_acc" in row:
        parts.append(f"test_acc {row['test_acc']:.3f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return "  ".join(parts)

"""Training and evaluation loops: metrics in, metrics out, checkpoints on disk.

The engine never talks to MLflow: `fit` calls `on_epoch(epoch, metrics)` after each epoch and
the train stage wires that callback to the tracker.

Reproducibility: the shuffle order (the train loader's sampler) and every augmentation of epoch
e are seeded with (seed, e), and the checkpoint holds model, optimizer and scheduler state. A run
resumed after epoch e therefore continues exactly as the uninterrupted run did (on CPU, bit for
bit).
"""

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from retino.config import Config, TrainConfig
from retino.distributed import Dist, all_sum, gather_ordered
from retino.metrics import quick_metrics
from retino.transforms import BatchTransform

SINGLE = Dist()  # a plain single-process run
RESUME_FILE = "resume.pt"
BEST_FILE = "best.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    desc: str = "train",
    job: Dist = SINGLE,
) -> dict[str, float]:
    model.train()
    device = transform.device
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = _progress(loader, desc, job)
    for images, labels in bar:
        loss, logits, y = train_step(
            model, images, labels, transform, optimizer, criterion, generator
        )
        n = len(y)
        total_loss += loss.item() * n
        correct += (logits.argmax(1) == y).sum().item()
        seen += n
        rate = seen / (time.perf_counter() - start)
        bar.set_postfix(
            loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}"
        )
    seconds = time.perf_counter() - start
    total_loss, correct, seen = all_sum(job, [total_loss, correct, seen], device)
    return {"loss": total_loss / seen, "acc": correct / seen, "images_per_s": seen / seconds}


def _progress(loader: DataLoader, desc: str, job: Dist) -> tqdm:
    """A bar on a terminal, in the main process only."""
    return tqdm(
        loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
        disable=None if job.is_main else True,
    )  # fmt: skip


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    desc: str = "predict",
    job: Dist = SINGLE,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), softmax probabilities (N, 5)) for every sample of `loader`, in order.

    Under DDP each rank predicts its shard and every rank gets the whole, reassembled.
    """
    model.eval()
    labels, probs = [], []
    for images, y in _progress(loader, desc, job):
        with autocast(transform.device):
            logits = model(transform(images))
        probs.append(torch.softmax(logits.float(), 1))
        labels.append(y.to(transform.device))
    total = len(loader.dataset)
    labels_all = gather_ordered(job, torch.cat(labels), total).cpu().numpy()
    return labels_all, gather_ordered(job, torch.cat(probs), total).cpu().numpy()


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    transform: BatchTransform,
    desc: str = "eval",
    job: Dist = SINGLE,
) -> dict[str, float]:
    """loss, acc, qwk on a held-out loader."""
    labels, probs = predict(model, loader, transform, desc, job)
    nll = F.nll_loss(torch.log(torch.as_tensor(probs).clamp_min(1e-12)), torch.as_tensor(labels))
    return {"loss": nll.item(), **quick_metrics(labels, probs.argmax(1))}


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over present grades); absent grades get weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.divide(
        len(labels), num_classes * counts, out=np.zeros(num_classes), where=counts > 0
    )
    return torch.as_tensor(weights, dtype=torch.float32)


def make_optimizer(model: nn.Module, cfg: TrainConfig, processes: int = 1) -> torch.optim.Optimizer:
    lr = cfg.lr * processes if cfg.scale_lr else cfg.lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at `epoch` (0-based): linear warm-up, then the schedule."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.schedule == "step":
        return cfg.gamma ** ((epoch - cfg.warmup_epochs) // cfg.step_size)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return 1.0


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze everything but the `fc` head (the seed's first, head-only phase)."""
    for name, param in model.named_parameters():
        if not name.startswith("fc."):
            param.requires_grad_(trainable)


def fingerprint(cfg: Config, prepared: Path) -> str:
    """Identifies what a checkpoint was trained on: the config and the prepared split tables."""
    h = hashlib.sha256(json.dumps(cfg.flat(), sort_keys=True, default=str).encode())
    for name in ("train.csv", "val.csv", "test.csv", "stats.json"):
        path = Path(prepared) / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temp file, then rename: a kill mid-write never leaves a torn checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_resume(ckpt_dir: Path, tag: str) -> dict | None:
    """The resume checkpoint in ckpt_dir if it belongs to the training identified by `tag`."""
    path = ckpt_dir / RESUME_FILE
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    return state if state.get("tag") == tag else None


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader | None = None  # only for the seed-style per-epoch test curve


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per epoch, epoch 1 first
    best_epoch: int  # 1-based, the epoch best.pt holds

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_epoch - 1]


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old if metric.endswith("loss") else new > old


def fit(
    model: nn.Module,
    loaders: Loaders,
    train_tf: BatchTransform,
    eval_tf: BatchTransform,
    cfg: Config,
    ckpt_dir: Path,
    tag: str,
    resume: dict | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None,
    job: Dist = SINGLE,
) -> FitResult:
    """Train for cfg.train.epochs, continuing from `resume` (see `read_resume`) if given.

    Each epoch the main process writes ckpt_dir/best.pt (when the selection metric improves)
    and then ckpt_dir/resume.pt, stamped with `tag` (see `fingerprint`). Under DDP `model` stays
    the bare module (what checkpoints hold); the wrapped one only runs the steps.
    """
    tc = cfg.train
    device = train_tf.device
    if tc.sync_bn and job.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=train_tf.memory_format)
    labels = loaders.train.dataset.labels.numpy()
    weight = class_weights(labels, model.fc.out_features).to(device) if tc.class_weights else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=tc.label_smoothing)
    optimizer = make_optimizer(model, tc, job.world_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, tc))

    history: list[dict[str, float]] = []
    start_epoch, best_epoch, best_value = 0, -1, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"]["torch"])
        history = [dict(row) for row in resume["history"]]
        start_epoch, best_epoch = resume["epoch"] + 1, resume["best_epoch"]
        best_value = history[best_epoch][tc.select_metric]
        _say(job, f"resuming after epoch {start_epoch} of {tc.epochs}")

    net, net_trains_backbone = model, None
    for epoch in range(start_epoch, tc.epochs):
        trains_backbone = epoch >= tc.freeze_epochs
        if trains_backbone != net_trains_backbone:  # DDP must be rebuilt when that set changes
            set_backbone_trainable(model, trains_backbone)
            net, net_trains_backbone = _wrap(model, tc, job, device), trains_backbone
        lr = optimizer.param_groups[0]["lr"]
        loaders.train.sampler.set_epoch(epoch)  # a DistributedSampler: fixed order per epoch
        aug_gen = epoch_generator(cfg.seed, epoch, job.rank)  # each rank its own draws
        tr = train_one_epoch(
            net, loaders.train, train_tf, optimizer, criterion, aug_gen,
            desc=f"epoch {epoch + 1}/{tc.epochs} train", job=job,
        )  # fmt: skip
        scheduler.step()
        va = evaluate(net, loaders.val, eval_tf, f"epoch {epoch + 1} val", job)
        row = {"epoch": epoch + 1, "lr": lr}
        row |= {f"train_{k}": v for k, v in tr.items() if k != "images_per_s"}
        row |= {f"val_{k}": v for k, v in va.items()}
        if loaders.test is not None:
            te = evaluate(net, loaders.test, eval_tf, f"epoch {epoch + 1} test", job)
            row |= {"test_loss": te["loss"], "test_acc": te["acc"]}
        row["images_per_s"] = tr["images_per_s"]
        history.append(row)

        if better(tc.select_metric, row[tc.select_metric], best_value):
            best_epoch, best_value = epoch, row[tc.select_metric]
            if job.is_main:
                save_atomic(
                    {"model": model.state_dict(), "epoch": epoch, "config": cfg.to_dict()},
                    ckpt_dir / BEST_FILE,
                )
        if job.is_main:
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best_epoch": best_epoch,
                    "config": cfg.to_dict(),
                    "tag": tag,
                    "history": history,
                    "rng": {"torch": torch.get_rng_state()},
                },
                ckpt_dir / RESUME_FILE,
            )
            on_epoch(epoch + 1, row)
        _say(job, _epoch_line(row, tc.epochs))
    return FitResult(history, best_epoch + 1)


def _wrap(model: nn.Module, cfg: TrainConfig, job: Dist, device: torch.device) -> nn.Module:
    """The module the steps run through: DDP under torchrun, optionally torch.compile'd."""
    net = model
    if job.enabled:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(net) if cfg.compile else net


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

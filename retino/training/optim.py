"""The training recipe's parts, built from the config: loss, optimizer, learning-rate schedule."""

import math

import numpy as np
import torch
from torch import nn

from retino.config import TrainConfig
from retino.grades import NUM_CLASSES


def make_criterion(cfg: TrainConfig, train_labels: np.ndarray, device: torch.device) -> nn.Module:
    """Cross-entropy (label-smoothed as configured) or the regression head's squared error,
    either optionally weighted by inverse grade frequency."""
    weight = class_weights(train_labels).to(device) if cfg.class_weights else None
    if cfg.loss == "regression":
        return GradeMSE(weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


class GradeMSE(nn.Module):
    """Squared error of a (B, 1) score against the integer grade. MSE rather than smooth-L1:
    it punishes a far miss quadratically, as QWK does (Huang et al.'s choice too). With
    `weight`, the weighted mean sum(w[y] * err^2) / sum(w[y]), as CrossEntropyLoss weighs."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        error = (logits[:, 0] - target.float()) ** 2
        if self.weight is None:
            return error.mean()
        w = self.weight[target]
        return (w * error).sum() / w.sum()


def class_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Inverse-frequency weights: every present grade carries the same total weight (sklearn's
    "balanced"); absent grades get weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.divide(
        len(labels), num_classes * counts, out=np.zeros(num_classes), where=counts > 0
    )
    return torch.as_tensor(weights, dtype=torch.float32)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, processes: int = 1, fused: bool = False
) -> torch.optim.Optimizer:
    """SGD or AdamW over every parameter (frozen ones get no gradient, so no update). `fused`
    (CUDA): torch's one-kernel update of all parameters, instead of a few kernels per tensor;
    off on the CPU, whose results must stay bit for bit those of earlier runs."""
    lr = cfg.lr * processes if cfg.scale_lr else cfg.lr
    kernel = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            **kernel,
        )  # fmt: skip
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, **kernel)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: the lr of epoch e is the base lr times `lr_factor(e, cfg)`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, cfg))


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

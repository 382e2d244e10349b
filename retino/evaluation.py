"""The evaluate step: the selected checkpoint, run once over the test split.

Test data is touched here and only here (the per-epoch test curve aside, which decides nothing).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from retino.config import Config, from_dict
from retino.data import FundusDataset, default_workers, make_loader, read_split, read_stats
from retino.engine import load_checkpoint, predict, resolve_device
from retino.errors import RetinoError
from retino.metrics import classification_metrics, confusion, normalise_rows
from retino.models import build_model
from retino.transforms import BatchTransform


def load_trained(path: Path, device: torch.device) -> tuple[torch.nn.Module, Config]:
    """A model rebuilt from a checkpoint written by training (weights_only: no pickled code)."""
    try:
        state = load_checkpoint(path)
        cfg = from_dict(state["config"])
    except FileNotFoundError:
        raise RetinoError(f"{path}: not found; run the train stage first") from None
    except (RuntimeError, KeyError, TypeError) as err:
        raise RetinoError(f"{path}: not a retino checkpoint ({err})") from None
    model = build_model(cfg.arch, pretrained=False)  # the checkpoint holds every weight
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def evaluate_test(
    checkpoint: Path, data_root: Path, prepared: Path, out_dir: Path, batch_size: int, device: str
) -> dict[str, float]:
    """Write metrics.json, predictions.csv and confusion.json to out_dir; return the metrics."""
    dev = resolve_device(device)
    model, cfg = load_trained(checkpoint, dev)
    stats = read_stats(prepared)
    table = read_split(prepared, "test")
    dataset = FundusDataset(table, data_root, cfg.data.image_size)
    loader = make_loader(dataset, batch_size, False, default_workers(cfg.data.num_workers), False)
    transform = BatchTransform(stats["mean"], stats["std"], dev, None, dev.type == "cuda")
    labels, probs = predict(model, loader, transform, desc="test")

    metrics = classification_metrics(labels, probs)
    cm = confusion(labels, probs.argmax(1))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "confusion.json").write_text(
        json.dumps({"counts": cm.tolist(), "normalised": normalise_rows(cm).round(4).tolist()})
        + "\n"
    )
    predictions_table(table["path"], labels, probs).to_csv(out_dir / "predictions.csv", index=False)
    return metrics


def predictions_table(images, labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame({"image": list(images), "label": labels, "predicted": probs.argmax(1)})
    for grade in range(probs.shape[1]):
        table[f"p{grade}"] = probs[:, grade].round(6)
    return table

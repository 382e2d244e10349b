"""The evaluate step: the selected checkpoint, run once over the test split.

Test data is touched here and only here (the per-epoch test curve aside, which decides nothing).
"""

import json
from pathlib import Path

import pandas as pd

from retino.data.dataset import FundusDataset, read_split
from retino.evaluation.predict import PROBS, Predictor, load_predictor, loader_for, write_gallery
from retino.metrics import classification_metrics, confusion, normalise_rows
from retino.training.engine import predict


def predict_split(pred: Predictor, data_root: Path, prepared: Path, split: str) -> pd.DataFrame:
    """Predictions for a prepared split: image, label, predicted grade, p0..p4."""
    table = read_split(prepared, split)
    dataset = FundusDataset(table, data_root, pred.image_size)
    labels, probs = predict(pred.model, loader_for(dataset, pred.cfg.eval.batch_size),
                            pred.transform, desc=split)  # fmt: skip
    predictions = pd.DataFrame(
        {"image": table["path"], "label": labels, "predicted": probs.argmax(1)}
    )
    predictions[PROBS] = probs.round(6)
    return predictions


def evaluate_test(
    pred: Predictor, data_root: Path, prepared: Path, out_dir: Path
) -> dict[str, float]:
    """Write metrics.json, predictions.csv and confusion.json to out_dir; return the metrics."""
    table = predict_split(pred, data_root, prepared, "test")
    labels, probs = table["label"].to_numpy(), table[PROBS].to_numpy()
    metrics = classification_metrics(labels, probs)
    cm = confusion(labels, table["predicted"].to_numpy())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "confusion.json").write_text(
        json.dumps({"counts": cm.tolist(), "normalised": normalise_rows(cm).round(4).tolist()})
        + "\n"
    )
    table.to_csv(out_dir / "predictions.csv", index=False)
    return metrics


def explain(
    source: str, data_root: Path, prepared: Path, out_dir: Path, per_grade: int = 1,
    device: str = "auto",
) -> list[Path]:  # fmt: skip
    """Grad-CAMs of the most confident right and wrong test predictions per true grade."""
    pred = load_predictor(source, device)
    table = predict_split(pred, data_root, prepared, "test")
    return write_gallery(pred, table, data_root, out_dir, per_grade)

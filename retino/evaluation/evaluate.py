"""The evaluate step: the selected checkpoint, run once over the test split.

Test data is touched here and only here (the per-epoch test curve aside, which decides nothing).
"""

import json
from pathlib import Path

import pandas as pd

from retino.data.cache import open_index
from retino.data.dataset import CachedSplit, default_workers
from retino.evaluation.bootstrap import with_intervals
from retino.evaluation.predict import Predictor, load_predictor, loader_for, write_gallery
from retino.evaluation.reliability import referable_output, reliability
from retino.metrics import confusion, normalise_rows


def predict_split(pred: Predictor, cached: CachedSplit) -> pd.DataFrame:
    """Predictions for a cached split: image, label, predicted grade, then p0..p4 or the
    score (with the model's TTA, blended with the fellow eye's where it was so trained)."""
    workers = default_workers(pred.cfg.data.num_workers, pred.transform.device.type == "cuda")
    loader = loader_for(cached, pred.cfg.eval.batch_size, workers)
    labels, outputs = pred.outputs(loader, desc=cached.split)
    images = cached.table["path"]
    outputs, grades, _ = pred.grade(outputs, list(images))
    predictions = pd.DataFrame({"image": images, "label": labels, "predicted": grades})
    predictions[pred.head.columns] = outputs.round(6)
    return predictions


def evaluate_test(
    pred: Predictor, cached: CachedSplit, out_dir: Path, resamples: int, seed: int
) -> tuple[dict, pd.DataFrame]:
    """Write metrics.json, predictions.csv and confusion.json to out_dir; return the metrics and
    the predictions. With `resamples`, each headline metric gets its 95 % bootstrap interval
    (`qwk_lo`, `qwk_hi`, ...: retino.evaluation.bootstrap), seeded by `seed`; a ce head adds
    `referable_ece`, the calibration error of P(referable) (retino.evaluation.reliability)."""
    table = predict_split(pred, cached)
    labels, predicted = table["label"].to_numpy(), table["predicted"].to_numpy()
    metrics = pred.head.report(labels, table[pred.head.columns].to_numpy(), predicted)
    if resamples:
        score, _ = referable_output(table)
        metrics = with_intervals(metrics, table["image"], labels, predicted, score, resamples, seed)
    ece = reliability(table).ece
    if ece is not None:
        metrics["referable_ece"] = ece
    cm = confusion(labels, predicted)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "confusion.json").write_text(
        json.dumps({"counts": cm.tolist(), "normalised": normalise_rows(cm).round(4).tolist()})
        + "\n"
    )
    table.to_csv(out_dir / "predictions.csv", index=False)
    return metrics, table


def cached_test(pred: Predictor, prepared: Path, cache: Path) -> CachedSplit:
    """The test split of the cache, after checking it was preprocessed as the model's data was."""
    open_index(cache, pred.cfg.data.image_size, pred.cfg.preprocess.normalize)
    return CachedSplit(cache, prepared, "test")


def explain(
    source: str, prepared: Path, cache: Path, out_dir: Path, per_grade: int = 1,
    device: str = "auto",
) -> list[Path]:  # fmt: skip
    """Grad-CAMs of the most confident right and wrong test predictions per true grade."""
    pred = load_predictor(source, device)
    cached = cached_test(pred, prepared, cache)
    table = predict_split(pred, cached)
    return write_gallery(pred, table, cached.images, out_dir, per_grade)

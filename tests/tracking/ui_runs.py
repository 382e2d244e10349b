"""A 2x2 grid of runs as the pipeline logs them, without training: the browser tests' store.

Every name, tag, param, dataset and image goes through retino.tracking as in a real run; only
the numbers are made up (curves that rise, a confusion matrix per run).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retino.evaluation.plots import plot_confusion_grid
from retino.tracking.names import best_metrics, epoch_metrics, headline_placeholders, test_metrics
from retino.tracking.runs import open_run, run_name, run_params, run_tags
from tests.conftest import tiny_config

# DVC experiment name: arch, pretrained, best.pt's test QWK and accuracy
GRID = {
    "bandy-skin": ("resnet18", True, 0.78, 0.84),
    "sappy-duct": ("resnet18", False, 0.61, 0.79),
    "mossy-tram": ("resnet50", True, 0.83, 0.86),
    "fiery-loom": ("resnet50", False, 0.55, 0.77),
}
EPOCHS = 6
SPREAD = 0.06  # each side of the test QWK: its 95 % interval, as on the demo's 200 images


def run_names() -> dict[str, str]:
    """DVC experiment name -> MLflow run name, e.g. bandy-skin -> resnet18-pretrained-bandy-skin."""
    kind = {True: "pretrained", False: "scratch"}
    return {exp: f"{arch}-{kind[p]}-{exp}" for exp, (arch, p, _, _) in GRID.items()}


def ranked() -> list[str]:
    """Run names, best test QWK first."""
    return [run_names()[exp] for exp in sorted(GRID, key=lambda e: -GRID[e][2])]


def history(qwk: float) -> list[dict[str, float]]:
    rows = []
    for epoch in range(1, EPOCHS + 1):
        rise = 1 - np.exp(-epoch / 2)  # 0.39 .. 0.95
        row = {"epoch": epoch, "lr": 0.002 * (1 - epoch / (EPOCHS + 1))}
        for split, offset in (("train", 0.08), ("val", 0.0), ("test", -0.03)):
            row |= {f"{split}_loss": 1.2 - 0.7 * rise - offset,
                    f"{split}_acc": 0.7 + 0.18 * rise + offset / 2,
                    f"{split}_qwk": (qwk + offset) * rise}  # fmt: skip
        rows.append(row)
    return rows


def confusion(qwk: float) -> np.ndarray:
    """A test confusion matrix whose diagonal grows with the run's QWK (EyePACS-like grades)."""
    totals = np.array([147, 14, 30, 5, 4])
    cm = np.zeros((5, 5), dtype=np.int64)
    for grade, total in enumerate(totals):
        right = round(total * (0.35 + 0.6 * qwk if grade else 0.97))
        cm[grade, grade] = right
        cm[grade, 0 if grade else 2] += total - right
    return cm


def log_grid(root: Path, scratch: Path) -> None:
    """Log GRID into the store at `root` (cwd must be a git work tree: run names use it)."""
    splits = {s: pd.DataFrame({"path": [f"images/{s}_{i}.jpeg" for i in range(n)],
                               "label": [i % 5 for i in range(n)]})
              for s, n in (("train", 640), ("val", 160), ("test", 200))}  # fmt: skip
    for exp, (arch, pretrained, qwk, accuracy) in GRID.items():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DVC_EXP_NAME", exp)
            flat = tiny_config(arch=arch, pretrained=pretrained, train__epochs=EPOCHS).flat()
            tags = run_tags(flat)
            name = run_name(flat)
        with open_run(root, name=name, tags=tags) as run:
            run.log_metrics(headline_placeholders("val_qwk"), step=0)
            run.log_params(run_params(flat))
            for split, table in splits.items():
                run.log_dataset(split, table, "b5352b0edfd84e49c00dba8200d2c443.dir")
            rows = history(qwk)
            for row in rows:
                best = rows[row["epoch"] - 1]  # the curves only rise: the latest is the best
                metrics = best_metrics(best, "val_qwk") | epoch_metrics(row)
                run.log_epochs({row["epoch"]: metrics})
            per_grade = {
                f"{m}_{g}": 0.5 + 0.1 * g for m in ("precision", "recall") for g in range(5)
            }
            run.log_metrics(test_metrics({"qwk": qwk, "qwk_lo": round(qwk - SPREAD, 2),
                                          "qwk_hi": round(qwk + SPREAD, 2), "accuracy": accuracy,
                                          "majority_accuracy": 0.735, **per_grade}))  # fmt: skip
            figure = scratch / f"{exp}-confusion.png"
            plot_confusion_grid({"best.pt on test (rows sum to 1)": confusion(qwk)}, figure)
            run.log_image(figure, "confusion")

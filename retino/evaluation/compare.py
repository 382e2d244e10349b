"""`retino compare`: the lab report's results table and figures, from the runs in MLflow.

The lab report compared ResNet18/50 with and without ImageNet weights in a 2x2 table of test
accuracy, one train/test accuracy plot per architecture and a confusion matrix per run. Here the
table holds the selected checkpoint's test accuracy and QWK (chosen on validation) beside the lab
report's "highest per-epoch test accuracy", which peeks at test and is only for comparison.
Runs with another recipe (the regression head, balanced sampling, flip TTA, both eyes) get rows
of their own, named after what they changed (`retino.tracking.names.recipe`).
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retino.errors import RetinoError
from retino.evaluation.plots import plot_accuracy_comparison, plot_confusion_grid
from retino.tracking.names import BEST_TEST_ACCURACY, BEST_TEST_MAJORITY, BEST_TEST_QWK, recipe
from retino.tracking.queries import RunRecord, list_runs, metric_history, read_artifact
from retino.tracking.store import Store, existing_store


@dataclass(frozen=True)
class Cell:
    """The run shown for one (arch, pretrained, recipe) cell of the table."""

    run: RunRecord
    arch: str
    kind: str  # "pretrained" or "scratch"
    recipe: str  # "" for the lab report's, else what the run changed

    @property
    def label(self) -> str:
        """pretrained, or scratch, regression, flips TTA: a row's name in figures."""
        return ", ".join(filter(None, (self.kind, self.recipe)))


def pick_runs(runs: list[RunRecord]) -> tuple[list[Cell], list[str]]:
    """The latest complete run per (arch, pretrained, recipe); notes on every run left out and
    why."""
    chosen: dict[tuple[str, str, str], Cell] = {}
    notes = []
    for run in runs:  # oldest first: a later run replaces an earlier one in its cell
        if run.status != "FINISHED":
            notes.append(f"skipped {run.name} ({run.run_id[:8]}): status {run.status}")
            continue
        if math.isnan(run.metrics.get(BEST_TEST_QWK, math.nan)):  # NaN: evaluate did not run
            notes.append(f"skipped {run.name} ({run.run_id[:8]}): no test metrics (run evaluate)")
            continue
        kind = "scratch" if run.params.get("pretrained", "False") == "False" else "pretrained"
        arch, variant = run.params.get("arch", "?"), recipe(run.params)
        cell = Cell(run, arch, kind, variant)
        previous = chosen.get((arch, kind, variant))
        if previous:
            notes.append(f"{arch} {cell.label}: showing {run.name}, newer than {previous.run.name}")
        chosen[arch, kind, variant] = cell
    order = lambda c: (c.arch, c.kind != "pretrained", c.recipe)  # noqa: E731
    return sorted(chosen.values(), key=order), notes


def results_table(store: Store, cells: list[Cell]) -> pd.DataFrame:
    rows = []
    for cell in cells:
        per_epoch = metric_history(store, cell.run.run_id, "test/acc")
        rows.append(
            {
                "arch": cell.arch,
                "weights": cell.kind,
                "recipe": cell.recipe,
                "run_name": cell.run.name,
                "run_id": cell.run.run_id,
                "test_accuracy": cell.run.metrics[BEST_TEST_ACCURACY],
                "test_qwk": cell.run.metrics[BEST_TEST_QWK],
                "majority_accuracy": cell.run.metrics.get(BEST_TEST_MAJORITY, np.nan),
                "highest_epoch_test_acc": max(per_epoch.values()) if per_epoch else np.nan,
            }
        )
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """The lab report's layout: rows pretrained / scratch, a column per architecture; each
    other recipe a row of its own below its weights' row."""
    archs = sorted(table.arch.unique())
    recipes = ["", *sorted(set(table.recipe) - {""})]

    def grid(title: str, cell) -> list[str]:
        lines = [
            f"### {title}",
            "",
            "| | " + " | ".join(archs) + " |",
            "|---" * (len(archs) + 1) + "|",
        ]
        for kind in ("pretrained", "scratch"):
            for variant in recipes:
                same = (table.weights == kind) & (table.recipe == variant)
                if variant and not same.any():
                    continue  # the lab's two rows always show; other recipes where they ran
                values = []
                for arch in archs:
                    row = table[same & (table.arch == arch)]
                    values.append(cell(row.iloc[0]) if len(row) else "—")
                label = "with pretrained" if kind == "pretrained" else "w/o pretrained"
                label += f", {variant}" if variant else ""
                lines.append(f"| {label} | " + " | ".join(values) + " |")
        return [*lines, ""]

    lines = ["# Results", ""]
    lines += grid(
        "Test accuracy / QWK of the checkpoint selected on validation",
        lambda r: f"{r.test_accuracy:.2%} / {r.test_qwk:.3f}",
    )
    lines += grid(
        "Highest per-epoch test accuracy (the lab report's number; peeks at test)",
        lambda r: "—" if np.isnan(r.highest_epoch_test_acc) else f"{r.highest_epoch_test_acc:.2%}",
    )
    majority = table.majority_accuracy.dropna()
    if len(majority):
        lines.append(f"Always predicting grade 0 scores {majority.iloc[0]:.2%} on this test split.")
    return "\n".join(lines) + "\n"


def accuracy_curves(store: Store, run_id: str) -> pd.DataFrame:
    train, test = (metric_history(store, run_id, k) for k in ("train/acc", "test/acc"))
    epochs = sorted(set(train) | set(test))
    return pd.DataFrame(
        {
            "epoch": epochs,
            "train_acc": [train.get(e, np.nan) for e in epochs],
            "test_acc": [test.get(e, np.nan) for e in epochs],
        }
    )


def compare(root: Path, out: Path, experiment: str, run_ids: list[str] | None) -> list[str]:
    """Write results.md, results.csv, accuracy_<arch>.png and confusion_grid.png; return notes."""
    store = existing_store(root)
    cells, notes = pick_runs(list_runs(store, experiment, run_ids))
    if not cells:
        detail = f" ({'; '.join(notes)})" if notes else ""
        raise RetinoError(
            f"no complete runs in MLflow experiment {experiment!r}{detail}; run `dvc repro` first"
        )
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(store, cells)
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(markdown(table))

    for arch in sorted({c.arch for c in cells}):
        series = {c.label: accuracy_curves(store, c.run.run_id) for c in cells if c.arch == arch}
        title = f"{arch}: train and test accuracy, with vs without pretraining"
        plot_accuracy_comparison(series, out / f"accuracy_{arch}.png", title)

    matrices = {}
    for cell in cells:
        text = read_artifact(store, cell.run.run_id, "eval/confusion.json")
        if text is None:
            notes.append(f"{cell.run.name}: no eval/confusion.json artifact; left out of the grid")
        else:
            matrices[f"{cell.arch} {cell.label}"] = np.array(json.loads(text)["counts"])
    if matrices:
        plot_confusion_grid(matrices, out / "confusion_grid.png", "Test confusion (row-normalised)")
    return notes

"""plot: training curves, confusion matrices and the reliability of P(referable) as PNGs, logged
to the same MLflow run."""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from retino.errors import exit_on_error, exit_process
from retino.evaluation.plots import (
    plot_confusion,
    plot_confusion_grid,
    plot_curves,
    plot_reliability,
)
from retino.evaluation.reliability import reliability
from retino.tracking.runs import open_run, read_run_file
from retino.tracking.store import check_server, project_root


@exit_on_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=Path, default=Path("reports/train/history.csv"))
    parser.add_argument("--confusion", type=Path, default=Path("reports/eval/confusion.json"))
    parser.add_argument("--predictions", type=Path, default=Path("reports/eval/predictions.csv"))
    parser.add_argument("--run", type=Path, default=Path("models/run.json"))
    parser.add_argument("--out", type=Path, default=Path("reports/figures"))
    args = parser.parse_args()
    check_server(project_root())
    counts = np.array(json.loads(args.confusion.read_text())["counts"])
    figures = {name: args.out / f"{name}.png" for name in ("curves", "confusion", "reliability")}
    plot_curves(pd.read_csv(args.history), figures["curves"])
    plot_confusion(counts, figures["confusion"], title="Test set")
    plot_reliability(reliability(pd.read_csv(args.predictions)), figures["reliability"])
    with (
        open_run(project_root(), read_run_file(args.run)) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for path in figures.values():
            run.log_artifact(path, "figures")
        # keyed images, which the chart view's image grid puts side by side across runs; the
        # confusion matrix as one square panel, legible in a grid tile
        square = Path(tmp, "confusion.png")
        plot_confusion_grid({"best.pt on test (rows sum to 1)": counts}, square)
        run.log_image(square, "confusion")
        run.log_image(figures["curves"], "curves")
        run.log_image(figures["reliability"], "reliability")
    print("wrote " + ", ".join(str(p) for p in figures.values()))


if __name__ == "__main__":
    exit_process(main())

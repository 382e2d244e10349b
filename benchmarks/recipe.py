"""What flip TTA and the paired-eye blend do for trained models, without training them again.

    PYTHONPATH=. python -m benchmarks.recipe --prepared prepared --preprocessed preprocessed \\
        ce.pt regression.pt ...

For each checkpoint (a train stage's best.pt), for eval.tta none / flips x eval.paired_eyes
false / true, the validation split is calibrated exactly as the train stage calibrates it
(retino.training.calibration: the eye blend weight, then a regression head's thresholds) and the
test split graded once. Training never reads eval.tta or eval.paired_eyes, so each row is what
`dvc exp run -S eval.tta=... -S eval.paired_eyes=...` would report for the same training. Prints
a Markdown table: test QWK, balanced accuracy, recall per grade, macro-F1.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from retino.data.dataset import CachedSplit
from retino.errors import exit_on_error
from retino.evaluation.evaluate import cached_test
from retino.evaluation.predict import Predictor, load_predictor, loader_for
from retino.training.calibration import calibrate
from retino.training.eyes import fellow_index


def recipe_rows(model: Path, prepared: Path, cache: Path, device: str = "cpu") -> list[dict]:
    """The four eval variants of one checkpoint (see above), a dict of metrics each."""
    pred = load_predictor(str(model), device)
    splits = {
        "val": CachedSplit(cache, prepared, "val"),
        "test": cached_test(pred, prepared, cache),
    }
    fellows = {name: fellow_index(list(split.table["path"])) for name, split in splits.items()}
    alone = {name: np.full(len(f), -1) for name, f in fellows.items()}
    rows = []
    for tta in ("none", "flips"):
        variant = _with_eval(pred, tta)
        outputs = {
            name: variant.outputs(loader_for(split, pred.cfg.eval.batch_size, 0), f"{name} {tta}")
            for name, split in splits.items()
        }
        (val_labels, val_out), (test_labels, test_out) = outputs["val"], outputs["test"]
        for eyes in (False, True):
            fitted = calibrate(pred.head, val_out, val_labels, fellows["val"], eyes)
            out, grades = fitted.apply(pred.head, test_out, (fellows if eyes else alone)["test"])
            metrics = pred.head.report(test_labels, out, grades)
            rows.append(
                {"model": model.stem, "loss": pred.cfg.train.loss,
                 "sampler": pred.cfg.train.sampler, "tta": tta, "paired_eyes": eyes,
                 "eye_weight": fitted.eye_weight, **metrics}
            )  # fmt: skip
    return rows


def _with_eval(pred: Predictor, tta: str) -> Predictor:
    cfg = dataclasses.replace(pred.cfg, eval=dataclasses.replace(pred.cfg.eval, tta=tta))
    return dataclasses.replace(pred, cfg=cfg)


def markdown(table: pd.DataFrame) -> str:
    head = ("| model | loss | sampler | TTA | eyes (w) | QWK | bal. acc | recall 0 / 1 / 2 / 3 / 4 "
            "| macro-F1 |\n|---|---|---|---|---|--:|--:|---|--:|")  # fmt: skip
    lines = [head]
    for r in table.itertuples():
        eyes = f"yes ({r.eye_weight:.2f})" if r.paired_eyes else "no"
        recall = " / ".join(f"{getattr(r, f'recall_{g}'):.2f}" for g in range(5))
        lines.append(
            f"| {r.model} | {r.loss} | {r.sampler} | {r.tta} | {eyes} | {r.qwk:.3f} | "
            f"{r.balanced_accuracy:.3f} | {recall} | {r.macro_f1:.3f} |"
        )
    return "\n".join(lines) + "\n"


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe", description=__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="best.pt files")
    parser.add_argument("--prepared", type=Path, default=Path("prepared"))
    parser.add_argument("--preprocessed", type=Path, default=Path("preprocessed"))
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")
    parser.add_argument("--csv", type=Path, help="also write every metric as CSV")
    args = parser.parse_args(argv)
    rows = [r for m in args.models for r in recipe_rows(m, args.prepared, args.preprocessed,
                                                         args.device)]  # fmt: skip
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(markdown(table), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

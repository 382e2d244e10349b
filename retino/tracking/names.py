"""What things are called in MLflow: metrics, runs, the logged model. No mlflow import here.

The UI's chart view makes a section of every metric prefix (the part before the first `/`):

    train/  val/  test/   per epoch (step = epoch): loss, acc, qwk; train/ also lr, images_per_s.
                          test/ exists with `train.track_test`: the lab report's curve, which
                          peeks at test and never selects anything.
    best/                 best.pt, the epoch selected on validation: best/epoch and
                          best/val_{qwk,acc,loss} (step = epoch: the best so far, so the last
                          value is the selection), then best/test_* — best.pt measured once on
                          the test set by the evaluate stage. best/test_qwk is what ranks runs;
                          it is not the highest point of the test/qwk curve.
                          best/threshold_1..4 (regression head) and best/eye_weight (paired
                          eyes): the grading rule fitted on validation once training ended.
    per_grade/            best.pt's test precision and recall per grade.

reports/train/history.csv keeps flat column names (train_acc, val_qwk, ...) for `dvc plots`.
"""

import math
from typing import Any

SPLITS = ("train", "val", "test")
BEST_TEST_QWK = "best/test_qwk"  # the column to sort runs by
BEST_TEST_ACCURACY = "best/test_accuracy"
BEST_TEST_MAJORITY = "best/test_majority_accuracy"
# evaluate's headline metrics first: the UI lists metrics in the order they were first logged
HEADLINE = ("qwk", "accuracy", "balanced_accuracy", "macro_f1", "majority_accuracy")
PER_GRADE = ("precision_", "recall_")
BOOTSTRAP = "bootstrap_"  # metrics.json's description of its intervals: a tag in MLflow


def variant(arch: str, pretrained: Any) -> str:
    """resnet18-scratch, resnet50-pretrained: what ran, as the lab report names it."""
    return f"{arch}-{'scratch' if pretrained is False else 'pretrained'}"


# The recipe beyond arch and weights: (param, the lab report's value, how a row names another)
RECIPE = (
    ("train.loss", "ce", lambda v: v),
    ("train.sampler", "shuffle", lambda v: f"{v} sampling"),
    ("eval.tta", "none", lambda v: f"{v} TTA"),
    ("eval.paired_eyes", "False", lambda v: "both eyes"),
)


def recipe(params: dict[str, Any]) -> str:
    """What a run did beyond the lab report's recipe (ce, shuffled, no TTA, each eye alone), e.g.
    'regression, balanced sampling, flips TTA, both eyes'; '' for the lab's own. `params` are
    flat config values or MLflow's strings of them; a run logged before a key existed had its
    lab value."""
    parts = []
    for key, lab, name in RECIPE:
        value = str(params.get(key, lab))
        if value != lab:
            parts.append(name(value))
    return ", ".join(parts)


def calibration_metrics(
    thresholds: list[float] | None, eye_weight: float | None, prefix: str = "best/"
) -> dict[str, float]:
    """threshold_1..4 (regression) and eye_weight (paired eyes), where they were fitted."""
    out = {f"{prefix}threshold_{k}": t for k, t in enumerate(thresholds or [], start=1)}
    if eye_weight is not None:
        out[f"{prefix}eye_weight"] = eye_weight
    return out


def headline_placeholders(select_metric: str) -> dict[str, float]:
    """NaN ("not measured yet") under the headline names, logged as a run starts: the UI lists
    metrics in the order first logged and its compare view opens on the first, which would
    otherwise be the epoch's or MLflow's system metrics. The epochs and evaluate overwrite them."""
    return dict.fromkeys((BEST_TEST_QWK, BEST_TEST_ACCURACY, f"best/{select_metric}"), math.nan)


def epoch_metrics(row: dict[str, float]) -> dict[str, float]:
    """A history row (train_loss, val_qwk, lr, ...) as train/loss, val/qwk, train/lr, ..."""
    out = {}
    for key, value in row.items():
        split, _, name = key.partition("_")
        if key != "epoch":
            out[f"{split}/{name}" if split in SPLITS else f"train/{key}"] = value
    return out


def best_metrics(row: dict[str, float], select_metric: str) -> dict[str, float]:
    """best/epoch and best/val_* of the selected history row, the selection metric first."""
    others = sorted(k for k in row if k.startswith("val_") and k != select_metric)
    return {**{f"best/{k}": row[k] for k in (select_metric, *others)}, "best/epoch": row["epoch"]}


def test_metrics(metrics: dict) -> dict[str, float]:
    """The evaluate stage's metrics of best.pt on test: best/test_* and per_grade/test_*, the
    headline first, then the intervals (best/test_qwk_lo, ...); bootstrap_* go in a tag."""
    numbers = {k: v for k, v in metrics.items() if not k.startswith(BOOTSTRAP)}
    first = [k for k in HEADLINE if k in numbers]
    bounds = [f"{k}{end}" for k in first for end in ("_lo", "_hi") if f"{k}{end}" in numbers]
    rest = sorted(set(numbers) - set(first) - set(bounds))
    return {
        (f"per_grade/test_{k}" if k.startswith(PER_GRADE) else f"best/test_{k}"): numbers[k]
        for k in first + bounds + rest
    }

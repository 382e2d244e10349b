"""Classification metrics for the 5-grade DR task, computed as scikit-learn computes them.

Every metric is scikit-learn's definition written out in numpy over the 5x5 confusion counts
(tests/test_metrics.py checks them against scikit-learn): importing scikit-learn costs ~0.7 s
in each stage process that would need it, a share of a small run.

Every function takes plain arrays (numpy, lists, or anything `np.asarray` understands) and
returns plain Python floats, so the results go straight into JSON files and MLflow.

Conventions
-----------
* Grades are the integers 0..4 (`GRADE_NAMES`); from probabilities the predicted grade is
  `argmax(probs)` (a regression head cuts its score at thresholds: `grading_metrics`).
* Per-class scores always use ``labels=range(5)``: a grade missing from a small split still
  gets its column (precision/recall 0 by ``zero_division=0``), so every run logs the same keys.
* "Referable" DR is grade >= 2 (moderate or worse), the usual screening threshold.
* Quadratic weighted kappa (QWK) is undefined when there is no disagreement to expect by
  chance, e.g. when labels and predictions are both a single, common grade. We report 0.0
  ("no agreement beyond chance") instead of NaN: such a model carries no grading information,
  and NaN would break model selection (``nan > x`` is always False) and JSON output. A model
  that predicts only grade 0 on a mixed set gets exactly 0.0 from scikit-learn anyway.
"""

import numpy as np

from retino.grades import NUM_CLASSES, REFERABLE_GRADE

_GRADES = np.arange(float(NUM_CLASSES))
_WEIGHTS = np.subtract.outer(_GRADES, _GRADES) ** 2  # quadratic disagreement, as floats


def _grades(values, name: str) -> np.ndarray:
    """1-D int array of grades in 0..4, or ValueError."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer grades, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= NUM_CLASSES:
        raise ValueError(f"{name} must lie in 0..{NUM_CLASSES - 1}, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64, copy=False)


def _pair(labels, preds) -> tuple[np.ndarray, np.ndarray]:
    y, p = _grades(labels, "labels"), _grades(preds, "preds")
    if len(y) != len(p):
        raise ValueError(f"labels and preds differ in length: {len(y)} vs {len(p)}")
    return y, p


def _counts(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """5x5 int64 confusion counts, rows true, columns predicted."""
    return np.bincount(y * NUM_CLASSES + p, minlength=NUM_CLASSES**2).reshape(
        NUM_CLASSES, NUM_CLASSES
    )


def _qwk(y: np.ndarray, p: np.ndarray) -> float:
    """Quadratic weighted kappa, step for step as scikit-learn's `cohen_kappa_score(y, p,
    weights="quadratic", labels=range(5))`; 0.0 where it is undefined (module docstring)."""
    observed = _counts(y, p).astype(np.float64)
    sum0, sum1 = observed.sum(axis=0), observed.sum(axis=1)
    expected = np.outer(sum0, sum1) / sum0.sum()
    chance = np.sum(_WEIGHTS * expected)
    if chance == 0:  # a sum of non-negative terms: exact
        return 0.0
    return float(1 - np.sum(_WEIGHTS * observed) / chance)


def quick_metrics(labels, preds) -> dict[str, float]:
    """Cheap per-epoch subset from predicted grades: ``acc`` (accuracy) and ``qwk``.

    The key is ``acc`` (not ``accuracy``) because the training loop prefixes it into the
    history columns ``train_acc`` / ``val_acc`` / ``test_acc``.
    """
    y, p = _pair(labels, preds)
    return {"acc": _accuracy(y, p), "qwk": _qwk(y, p)}


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.average(y == p))  # scikit-learn's accuracy_score


def classification_metrics(labels, probs) -> dict[str, float]:
    """Full evaluation of softmax outputs against true grades.

    labels: int array (N,) of grades 0..4; probs: float array (N, 5) of class probabilities.
    Returns a flat dict of plain floats:

    * ``accuracy``, ``balanced_accuracy`` (mean recall over the grades present in `labels`),
      ``qwk``, ``macro_f1`` (over all 5 grades, absent grades count as 0),
    * ``majority_accuracy``: share of the most frequent true grade, i.e. the accuracy of
      always predicting it; a model is only useful if it beats this,
    * ``precision_<g>``, ``recall_<g>`` for g in 0..4,
    * ``referable_auc``: ROC-AUC of P(grade >= 2) = ``probs[:, 2:].sum(1)``; omitted when
      the labels hold only referable or only non-referable cases,
    * ``referable_sensitivity`` / ``referable_specificity`` of the rule argmax >= 2; each
      omitted when there are no positives / no negatives to compute it on.
    """
    y = _grades(labels, "labels")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must have shape (N, {NUM_CLASSES}), got {probs.shape}")
    if probs.shape[0] != len(y):
        raise ValueError(f"labels and probs differ in length: {len(y)} vs {probs.shape[0]}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or inf")
    return grading_metrics(y, probs.argmax(axis=1), probs[:, REFERABLE_GRADE:].sum(axis=1))


def grading_metrics(labels, preds, referable_score) -> dict[str, float]:
    """`classification_metrics` of predicted grades, whatever made them: `referable_score` (N,)
    is any score that orders the images by how likely they are referable — P(grade >= 2), or a
    regression head's continuous grade — and only the referable AUC uses it."""
    y, p = _pair(labels, preds)
    ref_score = np.asarray(referable_score, dtype=np.float64)
    if ref_score.shape != y.shape or not np.all(np.isfinite(ref_score)):
        raise ValueError(f"referable_score must be {len(y)} finite numbers")
    cm = _counts(y, p)
    hits, true, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    recall = _divide(hits, true)  # zero_division=0, as every per-grade score here
    out = {
        "accuracy": _accuracy(y, p),
        "balanced_accuracy": float(recall[true > 0].mean()),  # over the grades in `labels`
        "qwk": _qwk(y, p),
        "macro_f1": float(_divide(2 * hits, true + predicted).mean()),
        "majority_accuracy": float(true.max() / len(y)),
    }
    for g, value in enumerate(_divide(hits, predicted)):
        out[f"precision_{g}"] = float(value)
    for g, value in enumerate(recall):
        out[f"recall_{g}"] = float(value)

    referable = y >= REFERABLE_GRADE
    flagged = p >= REFERABLE_GRADE
    positives, negatives = int(referable.sum()), int((~referable).sum())
    if positives and negatives:
        out["referable_auc"] = _auc(referable, ref_score)
    if positives:
        out["referable_sensitivity"] = float(np.sum(flagged & referable) / positives)
    if negatives:
        out["referable_specificity"] = float(np.sum(~flagged & ~referable) / negatives)
    return out


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as floats, 0 where the denominator is 0."""
    out = np.zeros(len(numerator))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic: the chance that a positive outscores a negative,
    ties counting a half (average ranks), which is the ROC curve's trapezoidal area."""
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # each tie group's first
    sizes = np.diff(np.r_[starts, len(ranked)])
    ranks = np.empty(len(score))
    ranks[order] = np.repeat(starts + (sizes + 1) / 2, sizes)  # 1-based, ties averaged
    n_pos = int(positive.sum())
    n_neg = len(score) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion(labels, preds) -> np.ndarray:
    """5x5 int64 confusion matrix: rows = true grade, columns = predicted grade."""
    return _counts(*_pair(labels, preds))


def normalise_rows(cm) -> np.ndarray:
    """Row-normalised float matrix (each row sums to 1); all-zero rows stay 0, never NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2:
        raise ValueError(f"confusion matrix must be 2-D, got shape {cm.shape}")
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals != 0)

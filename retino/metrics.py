"""Classification metrics for the 5-grade DR task, computed as scikit-learn computes them.

Accuracy, QWK and the confusion matrix, which every training epoch needs, are scikit-learn's
formulas written out in numpy (the same floats, tests/test_metrics.py checks): importing
scikit-learn costs ~0.7 s, a share of a small run. The full report imports it when called.

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

import warnings

import numpy as np

from retino.grades import NUM_CLASSES, REFERABLE_GRADE

_LABELS = list(range(NUM_CLASSES))
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
    from sklearn.metrics import (  # ~0.7 s: only where the full report is made
        balanced_accuracy_score,
        f1_score,
        precision_recall_fscore_support,
        recall_score,
        roc_auc_score,
    )

    y, p = _pair(labels, preds)
    ref_score = np.asarray(referable_score, dtype=np.float64)
    if ref_score.shape != y.shape or not np.all(np.isfinite(ref_score)):
        raise ValueError(f"referable_score must be {len(y)} finite numbers")
    with warnings.catch_warnings():
        # a grade predicted but absent from a small split, or a split holding a single grade,
        # is expected and handled by sklearn; its warnings would only clutter training logs
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        balanced = balanced_accuracy_score(y, p)
    precision, recall, _, _ = precision_recall_fscore_support(
        y, p, labels=_LABELS, average=None, zero_division=0
    )
    out = {
        "accuracy": _accuracy(y, p),
        "balanced_accuracy": float(balanced),
        "qwk": _qwk(y, p),
        "macro_f1": float(f1_score(y, p, labels=_LABELS, average="macro", zero_division=0)),
        "majority_accuracy": float(np.bincount(y, minlength=NUM_CLASSES).max() / len(y)),
    }
    for g in _LABELS:
        out[f"precision_{g}"] = float(precision[g])
    for g in _LABELS:
        out[f"recall_{g}"] = float(recall[g])

    ref_true = (y >= REFERABLE_GRADE).astype(np.int64)
    ref_pred = (p >= REFERABLE_GRADE).astype(np.int64)
    has_pos, has_neg = bool(ref_true.any()), bool((ref_true == 0).any())
    if has_pos and has_neg:
        out["referable_auc"] = float(roc_auc_score(ref_true, ref_score))
    if has_pos:
        out["referable_sensitivity"] = float(recall_score(ref_true, ref_pred, pos_label=1))
    if has_neg:
        out["referable_specificity"] = float(recall_score(ref_true, ref_pred, pos_label=0))
    return out


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

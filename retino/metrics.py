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


def counts_qwk(cm: np.ndarray) -> float:
    """Quadratic weighted kappa of one 5x5 confusion matrix (rows true): a training epoch's, from
    its sums, by the formulas of every other QWK here, so train and val QWK compare exactly."""
    return float(confusion_metrics(np.asarray(cm)[None])["qwk"][0])


def quick_metrics(labels, preds) -> dict[str, float]:
    """Cheap per-epoch subset from predicted grades: ``acc`` (accuracy) and ``qwk``.

    The key is ``acc`` (not ``accuracy``) because the training loop prefixes it into the
    history columns ``train_acc`` / ``val_acc`` / ``test_acc``.
    """
    shared = confusion_metrics(_counts(*_pair(labels, preds))[None])
    return {"acc": float(shared["accuracy"][0]), "qwk": float(shared["qwk"][0])}


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
    shared = {k: float(v[0]) for k, v in confusion_metrics(cm[None]).items()}
    hits, true, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    out = {k: shared[k] for k in ("accuracy", "balanced_accuracy", "qwk", "macro_f1")}
    out["majority_accuracy"] = float(true.max() / len(y))
    for name, total in (("precision", predicted), ("recall", true)):
        per_grade = np.zeros(NUM_CLASSES)  # zero_division=0, as scikit-learn was asked
        np.divide(hits, total, out=per_grade, where=total > 0)
        out |= {f"{name}_{g}": float(value) for g, value in enumerate(per_grade)}

    referable = y >= REFERABLE_GRADE
    if referable.any() and not referable.all():
        block = score_blocks(ref_score, referable)
        pos, neg = (np.bincount(block[side], minlength=block.max() + 1)[None]
                    for side in (referable, ~referable))  # fmt: skip
        out["referable_auc"] = float(weighted_auc(pos, neg)[0])
    # each defined where there are positives / negatives to compute it on
    for key in ("referable_sensitivity", "referable_specificity"):
        if np.isfinite(shared[key]):
            out[key] = shared[key]
    return out


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of a stack of (weighted) 5x5 confusion matrices (B, 5, 5), rows = true grade,
    each a (B,) array: one test set's, or the bootstrap's resamples'. Sensitivity and specificity
    are NaN where no referable (or no other) case is counted."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum(axis=(1, 2))
    diag = np.diagonal(cm, axis1=1, axis2=2)
    truth, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(truth > 0, diag / truth, np.nan)
        # scikit-learn's balanced accuracy: mean recall over the grades present in the labels
        balanced = np.nanmean(recall, axis=1)
        f1 = np.where(truth + predicted > 0, 2 * diag / (truth + predicted), 0.0)
        # QWK as scikit-learn's `cohen_kappa_score(y, p, weights="quadratic", labels=range(5))`,
        # to the last bit: the chance agreement in its order (predicted x true); 0.0 where it
        # is undefined (module docstring)
        expected = np.einsum("bi,bj->bij", predicted, truth) / n[:, None, None]
        chance = (_WEIGHTS * expected).sum(axis=(1, 2))
        qwk = np.where(chance > 0, 1 - (_WEIGHTS * cm).sum(axis=(1, 2)) / chance, 0.0)
        r = REFERABLE_GRADE
        sensitivity = cm[:, r:, r:].sum(axis=(1, 2)) / truth[:, r:].sum(axis=1)
        specificity = cm[:, :r, :r].sum(axis=(1, 2)) / truth[:, :r].sum(axis=1)
    return {
        "accuracy": diag.sum(axis=1) / n,
        "balanced_accuracy": balanced,
        "qwk": qwk,
        "macro_f1": f1.mean(axis=1),
        "referable_sensitivity": sensitivity,
        "referable_specificity": specificity,
    }


def score_blocks(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Each image's block of the sorted scores, for the AUC: tie groups in ascending score, with
    runs of groups holding only negatives (or only positives) merged, which changes no term of
    the Mann-Whitney sum and leaves far fewer columns to add up."""
    _, group = np.unique(score, return_inverse=True)
    groups = int(group.max()) + 1
    has_pos = np.bincount(group[positive], minlength=groups) > 0
    has_neg = np.bincount(group[~positive], minlength=groups) > 0
    kind = has_pos.astype(np.int64) + 2 * has_neg  # 1 positives only, 2 negatives only, 3 both
    new = np.ones(groups, dtype=bool)
    new[1:] = (kind[1:] != kind[:-1]) | (kind[1:] == 3)
    return (np.cumsum(new) - 1)[group]


def weighted_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC-AUC per row from (B, blocks) positive and negative weights, blocks in ascending score:
    the Mann-Whitney chance that a positive outscores a negative, ties a half, which is the ROC
    curve's trapezoidal area."""
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


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

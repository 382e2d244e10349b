"""Cutting a continuous grade into grades 0..4, and fitting the cut points for QWK.

A regression head predicts the grade as a number s; the grade is the number of thresholds s
reaches (thresholds[g-1] <= s < thresholds[g] gives g). Rounding is (0.5, 1.5, 2.5, 3.5). A
model trained with squared error on 73 % grade 0 pulls its scores towards the mean, and QWK
rewards being close rather than exact, so the thresholds are fitted on the validation split to
maximise QWK, as the Kaggle 2015 winners did.

The fit is a coordinate search. From rounding, each threshold in turn is tried at every place
between its neighbours where it changes a grade — the midpoint between two consecutive scores
there, or half a grade beyond the outermost — with the others held (one sweep over the sorted
scores gives every candidate's QWK), and moves to the best only on a strict gain, to the nearest
of equally good places. Passes repeat until one moves nothing. No grid, no randomness: the same
scores always give the same thresholds (a resumed run selects and calibrates as an uninterrupted
one), and a model whose scores are shifted or scaled is cut as well as one on the grade scale.
"""

import numpy as np

from retino.grades import NUM_CLASSES

DEFAULT = (0.5, 1.5, 2.5, 3.5)  # rounding, where the search starts
MAX_PASSES = 100  # a pass that gains nothing ends the search long before
_N = NUM_CLASSES
_WEIGHTS = np.subtract.outer(np.arange(_N), np.arange(_N)) ** 2.0  # quadratic disagreement


def cut(scores: np.ndarray, thresholds) -> np.ndarray:
    """Grades (int64) of continuous `scores`: how many thresholds each score reaches."""
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64), scores, side="right")


def _kappas(observed: np.ndarray) -> np.ndarray:
    """QWK of each (M, 5, 5) confusion matrix (rows true, columns predicted): scikit-learn's
    formula, 0.0 where it is undefined (retino.metrics's convention)."""
    expected = observed.sum(2)[:, :, None] * observed.sum(1)[:, None, :] / observed[0].sum()
    chance = (_WEIGHTS * expected).sum((1, 2))
    disagreement = (_WEIGHTS * observed).sum((1, 2))
    return np.where(chance > 0, 1 - disagreement / np.where(chance > 0, chance, 1), 0.0)


def _confusion(labels: np.ndarray, grades: np.ndarray) -> np.ndarray:
    return np.bincount(labels * _N + grades, minlength=_N * _N).reshape(_N, _N).astype(np.float64)


def qwk(labels: np.ndarray, grades: np.ndarray) -> float:
    """Quadratic weighted kappa of integer `grades` against `labels`."""
    return float(_kappas(_confusion(labels, grades)[None])[0])


def fit_thresholds(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """The four thresholds that maximise QWK of `cut(scores)` against `labels` (see above)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    thresholds = list(DEFAULT)
    best = qwk(labels, cut(scores, thresholds))
    for _ in range(MAX_PASSES):
        moved = False
        for k in range(len(thresholds)):
            value, kappa = _best_place(scores, labels, thresholds, k)
            if kappa > best:
                best, thresholds[k], moved = kappa, value, True
        if not moved:
            break
    return thresholds


def _best_place(
    scores: np.ndarray, labels: np.ndarray, thresholds: list[float], k: int
) -> tuple[float, float]:
    """(value, QWK) of the best place for threshold k between its neighbours, the others held."""
    low = thresholds[k - 1] if k > 0 else -np.inf
    high = thresholds[k + 1] if k + 1 < len(thresholds) else np.inf
    window = (scores >= low) & (scores < high)  # graded k or k + 1: threshold k alone decides
    if not window.any():
        return thresholds[k], -np.inf
    held = _confusion(labels[~window], cut(scores[~window], thresholds))
    order = np.argsort(scores[window], kind="stable")
    s, y = scores[window][order], labels[window][order]
    # place j = 0..m: the j lowest scores of the window get grade k, the others k + 1
    below = np.zeros((len(s) + 1, _N))
    below[1:] = np.cumsum(np.eye(_N)[y], axis=0)
    observed = np.repeat(held[None], len(s) + 1, axis=0)
    observed[:, :, k] += below
    observed[:, :, k + 1] += below[-1] - below
    kappas = _kappas(observed)
    # where each place puts the threshold; a place between two equal scores does not exist
    first = (low + s[0]) / 2 if np.isfinite(low) else s[0] - 0.5
    last = (s[-1] + high) / 2 if np.isfinite(high) else s[-1] + 0.5
    values = np.concatenate([[first], (s[:-1] + s[1:]) / 2, [last]])
    exists = np.concatenate([[True], s[:-1] < s[1:], [True]])
    kappas = np.where(exists, kappas, -np.inf)
    top = np.flatnonzero(kappas == kappas.max())
    pick = top[np.argmin(np.abs(values[top] - thresholds[k]))]  # the nearest of equals
    return float(values[pick]), float(kappas[pick])

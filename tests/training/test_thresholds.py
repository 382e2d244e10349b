"""Thresholds of the regression head: the cut, the QWK it is fitted for, the deterministic fit."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from retino.training.thresholds import DEFAULT, cut, fit_thresholds, qwk


def test_a_score_on_a_threshold_takes_the_higher_grade():
    scores = np.array([-3.0, 0.49, 0.5, 1.5, 2.2, 3.49, 3.5, 9.0])
    assert cut(scores, DEFAULT).tolist() == [0, 0, 1, 2, 2, 3, 4, 4]  # rounding
    assert cut(scores, [1.0, 1.0, 3.0, 3.0]).tolist() == [0, 0, 0, 2, 2, 4, 4, 4]  # 1, 3 unused


def test_qwk_is_scikit_learns():
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels, grades = rng.integers(0, 5, 60), rng.integers(0, 5, 60)
        expected = cohen_kappa_score(labels, grades, weights="quadratic", labels=range(5))
        assert qwk(labels, grades) == pytest.approx(expected, abs=1e-12)
    assert qwk(np.zeros(4, int), np.zeros(4, int)) == 0.0  # undefined: no chance disagreement


def shrunk_scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """EyePACS-like grades, scores pulled towards the mean as squared error pulls them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), [147, 14, 30, 5, 4])
    return 0.5 * labels + rng.normal(0, 0.25, len(labels)), labels


def test_fitted_thresholds_beat_rounding_on_shrunk_scores():
    scores, labels = shrunk_scores()
    fitted = fit_thresholds(scores, labels)
    assert fitted == sorted(fitted) and fitted != list(DEFAULT)
    assert qwk(labels, cut(scores, fitted)) > qwk(labels, cut(scores, DEFAULT)) + 0.1


def test_separable_scores_get_a_perfect_cut_anywhere_on_the_scale():
    labels = np.arange(5)
    assert fit_thresholds(0.5 * labels, labels) == [0.25, 0.875, 1.25, 1.75]
    for scores in (0.5 * labels, 10 * labels + 40, -1 - 0.1 * labels[::-1]):
        assert qwk(labels, cut(scores, fit_thresholds(scores, labels))) == 1.0


def test_the_fit_is_a_function_of_the_scores_alone():
    scores, labels = shrunk_scores(1)
    order = np.random.default_rng(2).permutation(len(labels))
    assert fit_thresholds(scores, labels) == fit_thresholds(scores[order], labels[order])
    # nothing to gain (a single grade): rounding stays
    assert fit_thresholds(np.linspace(0, 1, 9), np.zeros(9, int)) == list(DEFAULT)

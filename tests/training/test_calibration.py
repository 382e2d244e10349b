"""The grading rule fitted after training: the eye blend first, then thresholds on its output."""

import numpy as np

from retino.training.calibration import Calibration, calibrate
from retino.training.eyes import blend
from retino.training.heads import CE, Head
from retino.training.thresholds import fit_thresholds


def test_thresholds_are_fitted_on_the_blended_scores_and_applied_after_the_blend():
    regression = Head("regression")
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.choice(5, 150, p=[0.7, 0.1, 0.1, 0.05, 0.05]), 2)
    scores = (0.6 * labels + rng.normal(0, 0.5, 300))[:, None].astype(np.float32)
    fellow = np.arange(300) ^ 1
    fitted = calibrate(regression, scores, labels, fellow, paired_eyes=True)
    assert fitted.eye_weight > 0
    blended = blend(scores, fellow, fitted.eye_weight)
    assert fitted.thresholds == fit_thresholds(blended[:, 0], labels)
    outputs, grades = fitted.apply(regression, scores, fellow)
    assert np.array_equal(outputs, blended)
    assert np.array_equal(grades, regression.grades(blended, fitted.thresholds))

    alone = calibrate(regression, scores, labels, fellow, paired_eyes=False)
    assert alone.eye_weight is None and alone.thresholds == fit_thresholds(scores[:, 0], labels)
    outputs, _ = alone.apply(regression, scores, fellow)
    assert np.array_equal(outputs, scores)  # no blend without a fitted weight


def test_ce_keeps_argmax():
    probs = np.eye(5, dtype=np.float32)[[0, 3, 3, 1]]
    fitted = calibrate(CE, probs, np.array([0, 3, 3, 1]), np.array([1, 0, 3, 2]), True)
    assert fitted.thresholds is None and fitted.eye_weight is not None
    assert Calibration(None, None).apply(CE, probs, np.full(4, -1))[1].tolist() == [0, 3, 3, 1]

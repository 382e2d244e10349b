"""The two heads: what their outputs mean, how they grade and what they report."""

import numpy as np
import pytest
import torch

from retino.metrics import classification_metrics
from retino.training.heads import CE, Head

REGRESSION = Head("regression")


def test_widths_and_columns():
    assert (CE.outputs, REGRESSION.outputs) == (5, 1)
    assert CE.columns == ["p0", "p1", "p2", "p3", "p4"] and REGRESSION.columns == ["score"]


def test_regression_grades_round_while_training_and_cut_at_fitted_thresholds():
    logits = torch.tensor([[-0.7], [0.5], [1.49], [2.6], [7.0]])
    assert REGRESSION.batch_grades(logits).tolist() == [0, 1, 1, 3, 4]
    outputs = REGRESSION.activate(logits).numpy()
    assert outputs.tolist() == logits.tolist()  # the score as it is
    assert REGRESSION.grades(outputs).tolist() == [0, 1, 1, 3, 4]
    assert REGRESSION.grades(outputs, [0.0, 1.0, 2.0, 3.0]).tolist() == [0, 1, 2, 3, 4]


def test_losses_are_nll_and_squared_error():
    labels = np.array([0, 2, 4])
    probs = np.array([[0.5, 0.5, 0, 0, 0], [0, 0, 1.0, 0, 0], [0.25, 0, 0, 0, 0.75]])
    assert CE.loss(probs.astype(np.float32), labels) == pytest.approx(
        -(np.log(0.5) + np.log(1.0) + np.log(0.75)) / 3, rel=1e-6
    )
    scores = np.array([[0.5], [2.0], [3.0]], dtype=np.float32)
    assert REGRESSION.loss(scores, labels) == pytest.approx((0.25 + 0 + 1) / 3)
    metrics = REGRESSION.metrics(labels, scores, [0.6, 1.0, 2.5, 2.8])
    assert metrics["acc"] == 1.0 and metrics["qwk"] == 1.0


def test_expected_grade():
    probs = np.array([[0.5, 0, 0.5, 0, 0], [0, 0, 0, 0, 1]], dtype=np.float32)
    assert CE.expected_grade(probs).tolist() == [1.0, 4.0]
    assert REGRESSION.expected_grade(np.array([[2.5], [0.1]])).tolist() == [2.5, 0.1]


def test_regression_report_ranks_referable_cases_by_the_score():
    labels = np.array([0, 0, 1, 2, 3, 4])
    scores = np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.6]])  # right order, wrong scale
    grades = REGRESSION.grades(scores)
    report = REGRESSION.report(labels, scores, grades)
    assert report["referable_auc"] == 1.0 and report["accuracy"] == pytest.approx(2 / 6)
    probs = np.eye(5)[[0, 1, 1, 2, 3, 4]]
    assert CE.report(labels, probs, probs.argmax(1)) == classification_metrics(labels, probs)


def test_grad_cam_follows_the_grade_or_the_score():
    grades = np.array([3, 0, 4])
    assert CE.cam_targets(grades).tolist() == [3, 0, 4]
    assert REGRESSION.cam_targets(grades).tolist() == [0, 0, 0]

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from retino.grades import NUM_CLASSES
from retino.metrics import (
    classification_metrics,
    confusion,
    grading_metrics,
    normalise_rows,
    quick_metrics,
)

PER_CLASS = [f"{kind}_{g}" for kind in ("precision", "recall") for g in range(NUM_CLASSES)]
ALWAYS = ["accuracy", "balanced_accuracy", "qwk", "macro_f1", "majority_accuracy", *PER_CLASS]


def one_hot_probs(preds, confidence: float = 0.8) -> np.ndarray:
    """Softmax-like rows whose argmax is `preds`."""
    preds = np.asarray(preds)
    probs = np.full((len(preds), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1))
    probs[np.arange(len(preds)), preds] = confidence
    return probs


def majority_set() -> np.ndarray:
    """200 grades, 73.5 % of them grade 0 (an EyePACS-like imbalance)."""
    return np.array([0] * 147 + [1] * 14 + [2] * 26 + [3] * 6 + [4] * 7)


def assert_plain_json(metrics: dict) -> None:
    for key, value in metrics.items():
        assert type(value) is float, f"{key} is {type(value).__name__}, not float"
        assert math.isfinite(value), key
    assert json.loads(json.dumps(metrics)) == metrics


def test_perfect_predictions():
    labels = np.array([0, 0, 1, 2, 2, 3, 4, 4, 1, 0])
    m = classification_metrics(labels, one_hot_probs(labels))
    assert m["accuracy"] == 1.0
    assert m["balanced_accuracy"] == 1.0
    assert m["qwk"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx(1.0)
    assert m["majority_accuracy"] == pytest.approx(0.3)
    assert all(m[k] == 1.0 for k in PER_CLASS)
    assert m["referable_auc"] == 1.0
    assert m["referable_sensitivity"] == 1.0
    assert m["referable_specificity"] == 1.0
    assert quick_metrics(labels, labels) == {"acc": 1.0, "qwk": pytest.approx(1.0)}
    assert_plain_json(m)


def test_majority_only_model_scores_zero_kappa():
    labels = majority_set()
    preds = np.zeros_like(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the expected degenerate case must not spam warnings
        m = classification_metrics(labels, one_hot_probs(preds))
    assert m["accuracy"] == pytest.approx(0.735)
    assert m["accuracy"] == m["majority_accuracy"]
    assert m["qwk"] == 0.0
    assert m["balanced_accuracy"] == pytest.approx(1 / NUM_CLASSES)
    assert m["recall_0"] == 1.0
    assert m["recall_2"] == 0.0
    assert m["precision_0"] == pytest.approx(0.735)
    assert m["precision_2"] == 0.0  # never predicted: zero_division=0, not NaN
    # every sample gets the same P(referable), so the ranking is uninformative
    assert m["referable_auc"] == 0.5
    assert m["referable_sensitivity"] == 0.0
    assert m["referable_specificity"] == 1.0
    assert quick_metrics(labels, preds) == {"acc": pytest.approx(0.735), "qwk": 0.0}
    assert_plain_json(m)


def test_undefined_kappa_is_zero_not_nan():
    # one grade in labels and predictions: sklearn's kappa is 0/0 (NaN by default)
    labels = np.zeros(6, dtype=int)
    with pytest.warns(UndefinedMetricWarning):
        raw = cohen_kappa_score(labels, labels, weights="quadratic", labels=range(5))
    assert math.isnan(raw)
    assert quick_metrics(labels, labels)["qwk"] == 0.0
    m = classification_metrics(labels, one_hot_probs(labels))
    assert m["qwk"] == 0.0
    assert_plain_json(m)


def test_per_epoch_metrics_are_scikit_learns_to_the_last_bit():
    # written out in numpy so that training need not import scikit-learn: model selection
    # compares these floats, so they must be exactly scikit-learn's, not merely close
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 7, 50, 333, 2000] * 20:
        labels = rng.choice(NUM_CLASSES, n, p=[0.7, 0.1, 0.1, 0.05, 0.05])
        preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, rng.integers(1, 6), n))
        m = quick_metrics(labels, preds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            kappa = cohen_kappa_score(labels, preds, weights="quadratic", labels=range(5))
        assert m["qwk"] == (0.0 if math.isnan(kappa) else kappa)
        assert m["acc"] == accuracy_score(labels, preds)
        assert classification_metrics(labels, one_hot_probs(preds))["qwk"] == m["qwk"]
        assert np.array_equal(
            confusion(labels, preds), confusion_matrix(labels, preds, labels=range(5))
        )


def test_the_report_is_scikit_learns():
    # the evaluate stage's metrics, without importing scikit-learn there; scores rounded to
    # tenths so that ties (which the AUC counts as a half) are common
    rng = np.random.default_rng(1)
    for n in [2, 3, 7, 50, 333, 2000] * 10:
        labels = rng.choice(NUM_CLASSES, n, p=[0.6, 0.1, 0.15, 0.1, 0.05])
        preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, rng.integers(1, 6), n))
        score = np.round(np.clip(preds / 4 + rng.normal(0, 0.3, n), 0, 1), 1)
        m = grading_metrics(labels, preds, score)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # absent grades: scikit-learn warns, both give 0
            expected = {
                "balanced_accuracy": balanced_accuracy_score(labels, preds),
                "macro_f1": f1_score(labels, preds, labels=range(5), average="macro",
                                     zero_division=0),
            }  # fmt: skip
            precision, recall, _, _ = precision_recall_fscore_support(
                labels, preds, labels=range(5), average=None, zero_division=0
            )
        for g in range(NUM_CLASSES):
            expected |= {f"precision_{g}": precision[g], f"recall_{g}": recall[g]}
        referable, flagged = labels >= 2, preds >= 2
        if referable.any() and not referable.all():
            expected["referable_auc"] = roc_auc_score(referable, score)
            expected["referable_specificity"] = recall_score(referable, flagged, pos_label=0)
        if referable.any():
            expected["referable_sensitivity"] = recall_score(referable, flagged)
        assert set(expected) - {"macro_f1"} <= set(m)
        for key, value in expected.items():
            assert m[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (n, key)


def test_off_by_one_has_high_kappa_but_low_accuracy():
    # Every prediction is one grade off. Accuracy counts each as a full miss, while quadratic
    # weights charge a 1-grade miss only (1/4)^2 = 1/16 of a 0-vs-4 miss: QWK stays high.
    labels = np.repeat(np.arange(NUM_CLASSES), 20)
    preds = np.array([1, 2, 3, 4, 3])[labels]
    q = quick_metrics(labels, preds)
    assert q["acc"] == 0.0
    assert q["qwk"] == pytest.approx(12 / 17)  # 0.706, see the hand computation below
    # same accuracy-ish, but predictions mirrored (0<->4): maximal disagreement
    mirrored = quick_metrics(labels, 4 - labels)
    assert mirrored["acc"] == pytest.approx(0.2)
    assert mirrored["qwk"] == pytest.approx(-1.0)


def test_off_by_one_kappa_by_hand():
    # QWK = 1 - sum(w*O) / sum(w*E), w_ij = (i-j)^2, O observed counts, E = outer(row, col) / N.
    labels = np.repeat(np.arange(NUM_CLASSES), 20)
    preds = np.array([1, 2, 3, 4, 3])[labels]
    weights = np.subtract.outer(np.arange(5), np.arange(5)) ** 2
    observed = confusion(labels, preds)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    by_hand = 1 - (weights * observed).sum() / (weights * expected).sum()
    assert (weights * observed).sum() == 100  # 100 one-grade misses, weight 1 each
    assert by_hand == pytest.approx(12 / 17)
    assert quick_metrics(labels, preds)["qwk"] == pytest.approx(by_hand)


def test_referable_metrics_hand_computed():
    labels = np.array([0, 1, 2, 3, 0, 4])
    probs = np.array(
        [
            [0.70, 0.20, 0.05, 0.03, 0.02],  # neg, P(ref)=0.10, pred 0: TN
            [0.20, 0.30, 0.40, 0.05, 0.05],  # neg, P(ref)=0.50, pred 2: FP
            [0.10, 0.20, 0.60, 0.05, 0.05],  # pos, P(ref)=0.70, pred 2: TP
            [0.30, 0.40, 0.10, 0.10, 0.10],  # pos, P(ref)=0.30, pred 1: FN
            [0.50, 0.30, 0.10, 0.05, 0.05],  # neg, P(ref)=0.20, pred 0: TN
            [0.05, 0.05, 0.10, 0.20, 0.60],  # pos, P(ref)=0.90, pred 4: TP
        ]
    )
    m = classification_metrics(labels, probs)
    # AUC = share of (pos, neg) pairs ranked correctly: 0.7 and 0.9 beat all three negatives,
    # 0.3 beats 0.1 and 0.2 but not 0.5 -> 8 of 9 pairs
    assert m["referable_auc"] == pytest.approx(8 / 9)
    assert m["referable_sensitivity"] == pytest.approx(2 / 3)  # TP 2, FN 1
    assert m["referable_specificity"] == pytest.approx(2 / 3)  # TN 2, FP 1
    preds = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds)) == pytest.approx(4 / 6)
    assert m["qwk"] == pytest.approx(
        cohen_kappa_score(labels, preds, weights="quadratic", labels=range(5))
    )
    assert m["majority_accuracy"] == pytest.approx(2 / 6)
    assert m["recall_3"] == 0.0 and m["precision_2"] == 0.5
    assert_plain_json(m)


def test_referable_keys_omitted_when_one_side_missing():
    no_referable = np.array([0, 1, 0, 1])
    m = classification_metrics(no_referable, one_hot_probs([0, 2, 0, 1]))
    assert "referable_auc" not in m and "referable_sensitivity" not in m
    assert m["referable_specificity"] == pytest.approx(3 / 4)

    only_referable = np.array([2, 3, 4, 4])
    m = classification_metrics(only_referable, one_hot_probs([2, 0, 4, 3]))
    assert "referable_auc" not in m and "referable_specificity" not in m
    assert m["referable_sensitivity"] == pytest.approx(3 / 4)
    assert set(ALWAYS) <= set(m)
    assert_plain_json(m)


def test_key_set_is_stable():
    labels = majority_set()
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), size=len(labels))
    m = classification_metrics(labels, probs)
    referable = ["referable_auc", "referable_sensitivity", "referable_specificity"]
    assert sorted(m) == sorted([*ALWAYS, *referable])
    assert_plain_json(m)


def test_accepts_lists_and_float_labels():
    m = classification_metrics([0.0, 1.0, 2.0], one_hot_probs([0, 1, 2]).tolist())
    assert m["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("labels", "probs"),
    [
        ([0, 1], np.ones((3, 5)) / 5),  # length mismatch
        ([0, 5], np.ones((2, 5)) / 5),  # grade out of range
        ([0, -1], np.ones((2, 5)) / 5),
        ([0, 1], np.ones((2, 4)) / 4),  # wrong class count
        ([], np.ones((0, 5))),  # empty
        ([0, 0.5], np.ones((2, 5)) / 5),  # non-integer grade
        ([0, 1], np.full((2, 5), np.nan)),
    ],
)
def test_rejects_bad_input(labels, probs):
    with pytest.raises(ValueError):
        classification_metrics(labels, probs)


def test_quick_metrics_rejects_mismatch():
    with pytest.raises(ValueError):
        quick_metrics([0, 1, 2], [0, 1])


def test_confusion_tiny_case():
    labels = [0, 0, 1, 2, 4, 4, 4]
    preds = [0, 1, 1, 2, 3, 4, 4]
    cm = confusion(labels, preds)
    expected = np.array(
        [
            [1, 1, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 0],  # no true grade 3: row of zeros, still present
            [0, 0, 0, 1, 2],
        ]
    )
    assert cm.shape == (5, 5)
    assert np.issubdtype(cm.dtype, np.integer)
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == len(labels)


def test_normalise_rows_keeps_empty_rows_at_zero():
    cm = confusion([0, 0, 1, 2, 4, 4, 4], [0, 1, 1, 2, 3, 4, 4])
    norm = normalise_rows(cm)
    assert norm.dtype == np.float64
    assert not np.isnan(norm).any()
    np.testing.assert_array_equal(norm[3], np.zeros(5))
    np.testing.assert_allclose(norm.sum(1), [1, 1, 1, 0, 1])
    np.testing.assert_allclose(norm[0], [0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(norm[4], [0, 0, 0, 1 / 3, 2 / 3])
    np.testing.assert_array_equal(normalise_rows(np.zeros((5, 5))), np.zeros((5, 5)))
    np.testing.assert_allclose(normalise_rows(norm), norm)  # idempotent

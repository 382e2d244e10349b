"""Bootstrap intervals: the closed forms against scikit-learn, patients kept whole, coverage."""

import numpy as np
import pytest

from retino.evaluation.bootstrap import METRICS, Bootstrap, interval, units, with_intervals
from retino.metrics import confusion_metrics, grading_metrics

PRIOR = [0.55, 0.12, 0.18, 0.09, 0.06]


def eyes(patients: int, rng: np.random.Generator, folder: str = "images"):
    """Two eyes per patient, graded alike, predicted by a model whose errors both eyes share:
    (paths, labels, predictions, referable scores)."""
    grade = rng.choice(5, patients, p=PRIOR)
    labels = np.repeat(grade, 2)
    other = rng.random(2 * patients) < 0.15  # one eye a grade off
    labels = np.clip(labels + other * rng.choice([-1, 1], 2 * patients), 0, 4)
    shared = np.repeat(rng.choice([-1, 0, 1], patients, p=[0.2, 0.6, 0.2]), 2)
    own = rng.choice([-1, 0, 1], 2 * patients, p=[0.1, 0.8, 0.1])
    preds = np.clip(labels + np.where(rng.random(2 * patients) < 0.8, shared, own), 0, 4)
    scores = preds + rng.normal(0, 0.5, 2 * patients)
    paths = [f"{folder}/{p}_{side}.jpeg" for p in range(patients) for side in ("left", "right")]
    return paths, labels, preds, scores


def test_each_resample_is_the_metric_of_its_images_repeated():
    rng = np.random.default_rng(0)
    paths, labels, preds, scores = eyes(60, rng)
    scores = np.round(scores)  # ties, which the AUC counts as a half
    boot = Bootstrap(paths, 5, seed=1)
    resampled = boot.metrics(labels, preds, scores)
    assert set(resampled) == set(METRICS)
    counts = next(boot.draws())  # (patients, resamples)
    for b in range(5):
        times = counts[boot.units.of_image, b].astype(int)  # each image as often as its patient
        expected = grading_metrics(*(np.repeat(a, times) for a in (labels, preds, scores)))
        for key in METRICS:
            assert resampled[key][b] == pytest.approx(expected[key], abs=1e-12), key


def test_both_eyes_of_a_patient_are_always_drawn_together():
    rng = np.random.default_rng(1)
    paths, *_ = eyes(40, rng)
    paths = [*paths, "images/99_left.jpeg", "other/3_left.jpeg"]  # one eye; a namesake elsewhere
    boot = Bootstrap(paths, 300, seed=2)
    assert boot.units.kind == "patient" and boot.units.count == 42
    weights = np.concatenate([c[boot.units.of_image] for c in boot.draws()], axis=1)
    assert weights.shape == (82, 300)
    left, right = weights[0:80:2], weights[1:80:2]
    assert np.array_equal(left, right)  # in every resample, as often as each other
    assert (left == 0).any() and (left >= 2).any()  # resampled: some left out, some repeated
    assert not np.array_equal(weights[80], weights[81])
    # the same seed, the same resamples: what pairs two models' predictions
    again = np.concatenate([c[boot.units.of_image] for c in Bootstrap(paths, 300, 2).draws()], 1)
    assert np.array_equal(weights, again)


def test_without_patient_names_images_are_resampled():
    found = units(["train_images/000c1434d8d7.png", "train_images/001639a390f0.png"])
    assert found.kind == "image" and found.count == 2
    assert "images resampled" in found.describe()
    assert units(["images/10_left.jpeg", "images/10_right.jpeg"]).describe() == (
        "1 patients (both eyes together)"
    )


def test_intervals_hold_their_point_estimates_and_sit_beside_them():
    rng = np.random.default_rng(3)
    paths, labels, preds, scores = eyes(100, rng)
    point = grading_metrics(labels, preds, scores)
    out = with_intervals(point, paths, labels, preds, scores, resamples=400, seed=0)
    keys = list(out)
    for key in METRICS:
        assert out[f"{key}_lo"] <= out[key] <= out[f"{key}_hi"], key
        assert keys.index(f"{key}_lo") == keys.index(key) + 1  # `dvc exp show` shows them beside
    assert out["qwk_lo"] < out["qwk"] - 0.02 and out["qwk_hi"] > out["qwk"] + 0.02
    assert out["bootstrap_unit"] == "patient" and out["bootstrap_units"] == 100
    assert out["bootstrap_resamples"] == 400
    assert "precision_0_lo" not in out
    assert interval(np.array([0.5, 0.6, np.nan]), 0.9) == (pytest.approx(0.5025), 0.9)


def test_no_referable_case_no_referable_interval():
    paths = [f"images/{p}_{s}.jpeg" for p in range(20) for s in ("left", "right")]
    labels = np.tile([0, 1], 20)
    out = Bootstrap(paths, 50, 0).metrics(labels, labels, labels.astype(float))
    assert {"referable_auc", "referable_sensitivity"}.isdisjoint(out)
    assert np.isfinite(out["referable_specificity"]).all()


def qwk(labels, preds) -> float:
    """QWK from the confusion matrix (as scikit-learn's, above; without its input checks)."""
    cells = np.bincount(labels * 5 + preds, minlength=25).reshape(1, 5, 5)
    return float(confusion_metrics(cells)["qwk"][0])


def test_95_percent_intervals_cover_the_true_qwk():
    """200 test sets of 150 patients drawn from one known model: the 95 % interval of QWK
    covers the model's true QWK (from a million patients) in 90-99 % of them. Resampling images
    instead, ignoring that both eyes share their errors, covers it less often."""
    truth = qwk(*eyes(1_000_000, np.random.default_rng(2026))[1:3])
    rng = np.random.default_rng(7)
    covered = {"patient": 0, "image": 0}
    draws = 200
    for i in range(draws):
        paths, labels, preds, scores = eyes(150, rng)
        for kind, names in (("patient", paths), ("image", [f"x/{k}.png" for k in range(300)])):
            boot = Bootstrap(names, 1000, seed=i)
            assert boot.units.kind == kind
            lo, hi = interval(boot.metrics(labels, preds, scores)["qwk"], qwk(labels, preds))
            covered[kind] += lo <= truth <= hi
    assert 0.90 * draws <= covered["patient"] <= 0.99 * draws, covered
    assert covered["image"] < covered["patient"], covered

"""Paired eyes: which image is whose fellow, the blend, its weight fitted on validation."""

import numpy as np

from retino.training.eyes import blend, fellow_index, fit_eye_weight, pair_index
from retino.training.heads import CE, Head


def test_fellows_are_the_other_eye_of_the_same_patient_in_the_same_folder():
    paths = [
        "images/10_left.jpeg", "images/10_right.jpeg",  # a pair (lab, Kaggle names)
        "train/7_right.jpeg", "test/7_left.jpeg",  # other folders: another dataset's patient 7
        "images/3_left.jpeg",  # no right eye
        "x/5_left.jpeg", "x/5_left.png", "x/5_right.jpeg",  # the left eye twice: ambiguous
        "train_images/000c1434d8d7.png",  # APTOS: no patient in the name
        "images/10_left_copy.jpeg",  # not the pattern
    ]  # fmt: skip
    assert fellow_index(paths).tolist() == [1, 0, -1, -1, -1, -1, -1, -1, -1, -1]
    assert fellow_index([]).tolist() == []


def test_given_keys_pair_exactly_two_rows():
    keys = ["p1", "p2", "p1", "", "", "p3", "p3", "p3", "p4"]  # p3 three times: ambiguous
    assert pair_index(keys).tolist() == [2, -1, 0, -1, -1, -1, -1, -1, -1]
    assert pair_index([]).tolist() == []


def test_blend_mixes_paired_rows_only():
    outputs = np.array([[1.0], [3.0], [2.0]], dtype=np.float32)
    fellow = np.array([1, 0, -1])
    assert blend(outputs, fellow, 0.25).tolist() == [[1.5], [2.5], [2.0]]
    assert blend(outputs, fellow, 0.0).tolist() == outputs.tolist()


def eyes(seed: int, informative: bool):
    """200 patients whose two eyes share a grade; each eye's score is its grade plus noise.
    With `informative` false, each image is paired with a random other image instead."""
    rng = np.random.default_rng(seed)
    grades = np.repeat(rng.integers(0, 5, 200), 2)
    scores = (grades + rng.normal(0, 0.8, 400))[:, None].astype(np.float32)
    fellow = np.arange(400) ^ 1  # 0<->1, 2<->3, ...
    if not informative:
        fellow = rng.permutation(400)
    return scores, fellow, grades


def test_the_weight_is_fitted_where_the_fellow_helps_and_zero_where_it_does_not():
    regression = Head("regression")
    scores, fellow, grades = eyes(0, informative=True)
    weight = fit_eye_weight(regression, scores, fellow, grades)
    assert 0.4 <= weight <= 0.5  # equal noise on both eyes: the mean is best
    own = regression.loss(scores, grades)
    assert regression.loss(blend(scores, fellow, weight), grades) < own
    # a fellow that says nothing: no weight, although blending would shrink towards the mean
    scores, fellow, grades = eyes(1, informative=False)
    assert fit_eye_weight(regression, scores, fellow, grades) < 0.1  # sampling noise only
    # ce: the same fit on the expected grade of the probabilities
    probs = np.eye(5, dtype=np.float32)[np.clip(np.round(scores[:, 0]), 0, 4).astype(int)]
    assert fit_eye_weight(CE, probs, np.arange(400) ^ 1, grades) > 0.3
    assert fit_eye_weight(CE, np.full((3, 5), 0.2), np.array([-1, -1, -1]), np.zeros(3)) == 0.0

"""Both eyes of a patient (`eval.paired_eyes`): finding each image's fellow eye, blending outputs.

The two eyes of one patient almost always share a grade neighbourhood; the Kaggle 2015 winners
fed both eyes to their final model. Here each image's output (probabilities or score) becomes
(1 - w) * its own + w * its fellow's, with one weight w fitted on the validation split: a linear
model grade ~ a + b * own + c * fellow's, least squares over the validation images that have a
fellow, on the continuous grade (the regression score, or the expected grade sum g * p_g), gives
the fellow's share w = c / (b + c), kept in [0, 0.5] (never more than the eye itself). The
intercept and the overall scale are left out on purpose: shrinking towards the mean would lower
the squared error even with a fellow that says nothing, but changes no grade once thresholds are
fitted. The blend keeps outputs on their scale, so an image without a fellow keeps its own output
and the same thresholds apply to both.

Fellows are found by name: Kaggle's EyePACS and the lab's layout call images
`<patient>_<left|right>` (10_left.jpeg, 10_right.jpeg). Two images are fellows when they sit in
the same folder and differ only in left/right; a name that does not follow the pattern (APTOS), a
missing eye, or an eye given twice (10_left.jpeg and 10_left.png) leaves an image on its own.
A caller that knows the pairs says so instead (`pair_index`: the served model's `eye_pair`).
"""

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from retino.training.heads import Head

EYE_NAME = re.compile(r"(?P<patient>.+)_(?P<eye>left|right)")
MAX_WEIGHT = 0.5  # the fellow never counts for more than the eye itself


def fellow_index(paths: Sequence[str | Path]) -> np.ndarray:
    """For each path, the index of its fellow eye among `paths`, or -1 where it has none."""
    eyes: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, path in enumerate(paths):
        match = EYE_NAME.fullmatch(Path(path).stem)
        if match:
            patient = (str(Path(path).parent), match["patient"])
            eyes[patient][match["eye"]].append(i)
    fellow = np.full(len(paths), -1, dtype=np.int64)
    for sides in eyes.values():
        if len(sides["left"]) == 1 and len(sides["right"]) == 1:
            (left,), (right,) = sides["left"], sides["right"]
            fellow[left], fellow[right] = right, left
    return fellow


def pair_index(keys: Sequence[str]) -> np.ndarray:
    """For each key, the index of the one other image with the same key, or -1: an empty key, or
    one held by a single image or by more than two, pairs nothing."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        if key:
            rows[key].append(i)
    fellow = np.full(len(keys), -1, dtype=np.int64)
    for pair in rows.values():
        if len(pair) == 2:
            fellow[pair[0]], fellow[pair[1]] = pair[1], pair[0]
    return fellow


def blend(outputs: np.ndarray, fellow: np.ndarray, weight: float) -> np.ndarray:
    """(1 - weight) * own + weight * fellow's output, for the rows that have a fellow."""
    out = outputs.copy()
    paired = fellow >= 0
    out[paired] = (1 - weight) * outputs[paired] + weight * outputs[fellow[paired]]
    return out


def fit_eye_weight(
    head: Head, outputs: np.ndarray, fellow: np.ndarray, labels: np.ndarray
) -> float:
    """The fellow's weight (see above); 0.0 where no image has a fellow or the fit says the
    fellow adds nothing."""
    paired = np.flatnonzero(fellow >= 0)
    if len(paired) == 0:
        return 0.0
    grade = head.expected_grade(outputs).astype(np.float64)
    design = np.column_stack([np.ones(len(paired)), grade[paired], grade[fellow[paired]]])
    (_, own, other), *_ = np.linalg.lstsq(design, labels[paired].astype(np.float64), rcond=None)
    if other <= 0 or own + other <= 0:
        return 0.0
    return float(min(other / (own + other), MAX_WEIGHT))

"""The grading rule fitted after training on the validation split, applied at test and predict.

Training selects the weights. Then, on the selected model's validation outputs (with the flip TTA
that test and predict will use, `eval.tta`), the train step fits in order:

    1. with `eval.paired_eyes`: the fellow eye's blend weight (retino.training.eyes);
    2. with `train.loss: regression`: the thresholds, on the blended scores (thresholds.py).

Both go into best.pt and the logged model; test and `retino predict` apply them in the same
order. Test data is never looked at.
"""

from dataclasses import dataclass

import numpy as np

from retino.training.eyes import blend, fit_eye_weight
from retino.training.heads import Head


@dataclass(frozen=True)
class Calibration:
    thresholds: list[float] | None  # regression: the four cut points; ce: None (argmax)
    eye_weight: float | None  # the fellow eye's weight; None: eyes graded alone

    def apply(
        self, head: Head, outputs: np.ndarray, fellow: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(outputs blended with their fellows', grades) of (N, K) `outputs`; `fellow` from
        `eyes.fellow_index` (-1: none)."""
        if self.eye_weight is not None:
            outputs = blend(outputs, fellow, self.eye_weight)
        return outputs, head.grades(outputs, self.thresholds)


def calibrate(
    head: Head, outputs: np.ndarray, labels: np.ndarray, fellow: np.ndarray, paired_eyes: bool
) -> Calibration:
    """The Calibration fitted on validation `outputs` (see above)."""
    weight = fit_eye_weight(head, outputs, fellow, labels) if paired_eyes else None
    if weight is not None:
        outputs = blend(outputs, fellow, weight)
    return Calibration(head.fit(outputs, labels), weight)

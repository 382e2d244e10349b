"""Is P(referable) a probability a clinic can act on? Reliability bins and the expected
calibration error (ECE) of the referable-DR output, from a prediction table.

A ce head's P(grade >= 2) = p2 + p3 + p4 is binned into ten equal-width bins of [0, 1]; in each
bin the share of truly referable images should match the mean predicted probability. The ECE is
the images-weighted mean gap, sum_b n_b / N * |observed_b - predicted_b|: 0 for a calibrated
model, 0.1 when it is off by ten points on average. A regression head outputs a grade score, not a
probability: its bins span the scores instead and show how the referable share rises with the
score, and it has no ECE (there is no probability to be calibrated).
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retino.grades import NUM_CLASSES, REFERABLE_GRADE

BINS = 10
PROBS = [f"p{g}" for g in range(NUM_CLASSES)]


@dataclass(frozen=True)
class Reliability:
    edges: np.ndarray  # (BINS + 1,) bin edges on the output's scale
    predicted: np.ndarray  # (BINS,) mean output per bin (NaN where empty)
    observed: np.ndarray  # (BINS,) share truly referable per bin (NaN where empty)
    observed_lo: np.ndarray  # (BINS,) its 95 % Wilson interval: how little a bin of few says
    observed_hi: np.ndarray
    count: np.ndarray  # (BINS,) images per bin
    ece: float | None  # None for a score, which is no probability
    probability: bool


def referable_output(table: pd.DataFrame) -> tuple[np.ndarray, bool]:
    """(output, is a probability) of a prediction table: P(grade >= 2), or the regression score."""
    if all(c in table.columns for c in PROBS):
        return table[PROBS[REFERABLE_GRADE:]].to_numpy(np.float64).sum(axis=1), True
    if "score" in table.columns:
        return table["score"].to_numpy(np.float64), False
    raise ValueError(f"a prediction table needs p0..p4 or score, got {list(table.columns)}")


def reliability(table: pd.DataFrame) -> Reliability:
    """The reliability bins of a prediction table (`label` and p0..p4 or `score`)."""
    output, probability = referable_output(table)
    truth = table["label"].to_numpy() >= REFERABLE_GRADE
    if probability:
        edges = np.linspace(0.0, 1.0, BINS + 1)
    else:
        edges = np.linspace(output.min(), max(output.max(), output.min() + 1e-9), BINS + 1)
    # bin k holds edges[k] <= x < edges[k + 1], the last bin its upper edge too
    index = np.clip(np.searchsorted(edges, output, side="right") - 1, 0, BINS - 1)
    count = np.bincount(index, minlength=BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(index, output, minlength=BINS) / count
        observed = np.bincount(index, truth, minlength=BINS) / count
    lo, hi = wilson(observed, count)
    ece = None
    if probability:
        filled = count > 0
        gaps = np.abs(observed[filled] - predicted[filled])
        ece = float((count[filled] * gaps).sum() / count.sum())
    return Reliability(edges, predicted, observed, lo, hi, count, ece, probability)


def wilson(share: np.ndarray, n: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson score interval of binomial shares (NaN where n = 0): unlike share ± z * SE it
    stays within [0, 1] and is not 0 wide for a bin of one image."""
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (share + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * np.sqrt(share * (1 - share) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        # it always holds the share; in floats a bound can miss 0 or 1 by an ulp
        return np.minimum(centre - half, share), np.maximum(centre + half, share)

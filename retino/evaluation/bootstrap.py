"""95 % bootstrap intervals of the test metrics, resampling patients: both eyes move together.

The two eyes of a patient are graded alike far more often than two strangers' eyes, so a test set
of 2P images holds less than 2P images' worth of evidence. Resampling images would treat them as
independent and draw intervals too narrow; here each resample draws P patients with replacement
and takes every image of each drawn patient (the cluster bootstrap). Patients are read from the
image names, `<patient>_<left|right>` (the lab's and Kaggle's layouts); where no name follows that
pattern (APTOS) each image is its own unit, and `Units.kind` says "image".

Vectorised over the resamples, in chunks: a resample is a (patients,) vector of draw counts, and
every metric follows from the weighted 5x5 confusion matrix — counts (B, P) @ the patients' cells
(P, 25) — in closed form (accuracy, balanced accuracy, QWK, macro-F1, referable sensitivity and
specificity, each as `retino.metrics.grading_metrics` defines it). The referable AUC is the
weighted Mann-Whitney statistic: scores sorted once into tie groups, each resample's positive
weight per group times the negative weight below it (a cumulative sum), ties counting a half.

Intervals are percentile intervals (2.5th and 97.5th percentile of the resampled values): over
200 synthetic test sets drawn from a known model the 95 % interval of QWK covers the true value
in 90-99 % of them (tests/evaluation/test_bootstrap.py). A skewed resampling distribution can
leave the point estimate just outside them on tiny sets; the interval is then widened to it.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from retino.data.layouts import patient_of
from retino.grades import NUM_CLASSES, REFERABLE_GRADE

LEVEL = 0.95
# the metrics that get an interval, as grading_metrics names them
METRICS = ("accuracy", "balanced_accuracy", "qwk", "macro_f1", "referable_auc",
           "referable_sensitivity", "referable_specificity")  # fmt: skip
CHUNK_CELLS = 2_000_000  # resamples x units per chunk: ~16 MB of counts at a time
_GRADES = np.arange(NUM_CLASSES)
_QUADRATIC = (_GRADES[:, None] - _GRADES[None, :]) ** 2.0


@dataclass(frozen=True)
class Units:
    """What a resample draws: each image's unit (patient, or the image itself)."""

    of_image: np.ndarray  # (N,) int, the unit index of each image
    count: int
    kind: str  # "patient" or "image"

    def describe(self) -> str:
        return resampled(self.kind, self.count)


def resampled(kind: str, count: int) -> str:
    """'100 patients (both eyes together)', or '730 images (no <patient>_<left|right> names:
    images resampled)'."""
    if kind == "patient":
        return f"{count} patients (both eyes together)"
    return f"{count} images (no <patient>_<left|right> names: images resampled)"


def units(paths: Sequence[str]) -> Units:
    """Patients from `<patient>_<left|right>` names in the same folder; each image its own unit
    when no name follows that pattern."""
    keys, by_patient = [], False
    for path in paths:
        folder, _, name = str(path).replace("\\", "/").rpartition("/")
        stem = name.rpartition(".")[0] or name
        patient = patient_of(stem)
        by_patient |= patient != stem
        keys.append(f"{folder}/{patient}")
    if not by_patient:
        return Units(np.arange(len(keys)), len(keys), "image")
    _, of_image = np.unique(np.array(keys), return_inverse=True)
    return Units(of_image.astype(np.int64), int(of_image.max()) + 1, "patient")


class Bootstrap:
    """`resamples` patient resamples of one test set, the same ones at every call (the seed):
    two models' predictions on these images are resampled alike, so their difference is paired."""

    def __init__(self, paths: Sequence[str], resamples: int, seed: int) -> None:
        if resamples < 1:
            raise ValueError(f"resamples must be >= 1, got {resamples}")
        self.units = units(paths)
        self.resamples, self.seed = resamples, seed

    def draws(self) -> Iterator[np.ndarray]:
        """Chunks of (units, b) float counts: how often each unit is drawn in each resample."""
        rng = np.random.default_rng(self.seed)
        n = self.units.count
        chunk = max(1, CHUNK_CELLS // n)
        for start in range(0, self.resamples, chunk):
            size = min(chunk, self.resamples - start)
            picks = rng.integers(0, n, size=(size, n))
            picks += np.arange(size)[:, None] * n  # row r's draws land in row r
            counts = np.bincount(picks.ravel(), minlength=size * n).reshape(size, n)
            yield np.ascontiguousarray(counts.T, dtype=np.float64)

    def metrics(self, labels, preds, referable_score) -> dict[str, np.ndarray]:
        """(resamples,) values of each metric in `METRICS` that the full set defines (NaN in a
        resample where it is undefined, e.g. no referable case drawn)."""
        y = np.asarray(labels, dtype=np.int64)
        p = np.asarray(preds, dtype=np.int64)
        score = np.asarray(referable_score, dtype=np.float64)
        unit = self.units.of_image
        if not (len(y) == len(p) == len(score) == len(unit)):
            raise ValueError("labels, preds and scores must hold one value per image")
        # (units, 25): each unit's images by (true, predicted) cell
        cells = _incidence(unit, y * NUM_CLASSES + p, self.units.count, NUM_CLASSES**2)
        positive = y >= REFERABLE_GRADE
        with_auc = bool(positive.any() and (~positive).any())
        if with_auc:
            block = _blocks(score, positive)
            blocks = int(block.max()) + 1
            pos = _incidence(unit[positive], block[positive], self.units.count, blocks)
            neg = _incidence(unit[~positive], block[~positive], self.units.count, blocks)
        parts: dict[str, list[np.ndarray]] = {}
        for counts in self.draws():  # (units, b): sparse (units, k).T @ it is (k, b)
            cm = (cells.T @ counts).T.reshape(-1, NUM_CLASSES, NUM_CLASSES)
            values = confusion_metrics(cm)
            if with_auc:
                values["referable_auc"] = _auc((pos.T @ counts).T, (neg.T @ counts).T)
            for key, value in values.items():
                parts.setdefault(key, []).append(value)
        out = {key: np.concatenate(parts[key]) for key in METRICS if key in parts}
        if not positive.any():
            out.pop("referable_sensitivity")
        if positive.all():
            out.pop("referable_specificity")
        return out


def _incidence(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sparse.csr_array:
    """(n_rows, n_cols) counts of the (row, col) pairs."""
    ones = np.ones(len(rows))
    return sparse.csr_array((ones, (rows, cols)), shape=(n_rows, n_cols))


def confusion_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of a stack of (weighted) 5x5 confusion matrices (B, 5, 5), rows = true grade:
    each a (B,) array, defined as `retino.metrics.grading_metrics` defines it."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum(axis=(1, 2))
    diag = np.diagonal(cm, axis1=1, axis2=2)
    truth, predicted = cm.sum(axis=2), cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(truth > 0, diag / truth, np.nan)
        # sklearn's balanced accuracy: mean recall over the grades present in the labels
        balanced = np.nanmean(recall, axis=1)
        f1 = np.where(truth + predicted > 0, 2 * diag / (truth + predicted), 0.0)
        expected = np.einsum("bi,bj->bij", truth, predicted) / n[:, None, None]
        chance = (expected * _QUADRATIC).sum(axis=(1, 2))
        observed = (cm * _QUADRATIC).sum(axis=(1, 2))
        qwk = np.where(chance > 0, 1 - observed / chance, 0.0)  # undefined: 0 (retino.metrics)
        r = REFERABLE_GRADE
        sensitivity = cm[:, r:, r:].sum(axis=(1, 2)) / truth[:, r:].sum(axis=1)
        specificity = cm[:, :r, :r].sum(axis=(1, 2)) / truth[:, :r].sum(axis=1)
    return {
        "accuracy": diag.sum(axis=1) / n,
        "balanced_accuracy": balanced,
        "qwk": qwk,
        "macro_f1": f1.mean(axis=1),
        "referable_sensitivity": sensitivity,
        "referable_specificity": specificity,
    }


def _blocks(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Each image's block of the sorted scores, for the AUC: tie groups in ascending score, with
    runs of groups holding only negatives (or only positives) merged, which changes no term of
    the Mann-Whitney sum and leaves far fewer columns to add up."""
    _, group = np.unique(score, return_inverse=True)
    groups = int(group.max()) + 1
    has_pos = np.bincount(group[positive], minlength=groups) > 0
    has_neg = np.bincount(group[~positive], minlength=groups) > 0
    kind = has_pos.astype(np.int64) + 2 * has_neg  # 1 positives only, 2 negatives only, 3 both
    new = np.ones(groups, dtype=bool)
    new[1:] = (kind[1:] != kind[:-1]) | (kind[1:] == 3)
    return (np.cumsum(new) - 1)[group]


def _auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC per row from (B, blocks) positive and negative weights, blocks
    in ascending score: P(positive scores above negative), ties a half."""
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def interval(values: np.ndarray, point: float, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of resampled `values` (NaN ignored), widened to hold `point`."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return point, point
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(min(lo, point)), float(max(hi, point))


def with_intervals(
    metrics: dict[str, float], paths: Sequence[str], labels, preds, referable_score,
    resamples: int, seed: int,
) -> dict:  # fmt: skip
    """`metrics` with `<metric>_lo` / `<metric>_hi` after each metric of `METRICS`, then
    bootstrap_resamples, bootstrap_unit ("patient" or "image") and bootstrap_units (how many)."""
    boot = Bootstrap(paths, resamples, seed)
    resampled = boot.metrics(labels, preds, referable_score)
    out: dict = {}
    for key, value in metrics.items():
        out[key] = value
        if key in resampled:
            out[f"{key}_lo"], out[f"{key}_hi"] = interval(resampled[key], value)
    out["bootstrap_resamples"] = resamples
    out["bootstrap_unit"] = boot.units.kind
    out["bootstrap_units"] = boot.units.count
    return out

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
from retino.metrics import confusion_metrics, score_blocks, weighted_auc

LEVEL = 0.95
# the metrics that get an interval, as grading_metrics names them
METRICS = ("accuracy", "balanced_accuracy", "qwk", "macro_f1", "referable_auc",
           "referable_sensitivity", "referable_specificity")  # fmt: skip
CHUNK_CELLS = 2_000_000  # resamples x units per chunk: ~16 MB of counts at a time


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
            block = score_blocks(score, positive)
            blocks = int(block.max()) + 1
            pos = _incidence(unit[positive], block[positive], self.units.count, blocks)
            neg = _incidence(unit[~positive], block[~positive], self.units.count, blocks)
        parts: dict[str, list[np.ndarray]] = {}
        for counts in self.draws():  # (units, b): sparse (units, k).T @ it is (k, b)
            cm = (cells.T @ counts).T.reshape(-1, NUM_CLASSES, NUM_CLASSES)
            values = confusion_metrics(cm)
            if with_auc:
                values["referable_auc"] = weighted_auc((pos.T @ counts).T, (neg.T @ counts).T)
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

"""Which variant wins, and how sure: seed repeats pooled, paired differences, verdicts in words.

A variant is what a user chose (architecture, weights, recipe, every param but `seed`); its runs
are its seed repeats. All of them were measured on the same test images, so one set of patient
resamples (`retino.evaluation.bootstrap.Bootstrap`, a fixed seed) serves every run: each run's
metric per resample is a column of a (resamples, runs) matrix, and a difference between two
variants is taken resample by resample — paired, so the test images both got right or both got
wrong cancel out, and the interval is narrower than two separate intervals suggest.

Two sources of noise, two terms:
- the test sample: the spread of the resampled values of the variant's mean over its seeds;
- training (initialisation, shuffling, augmentation: `seed`): with k >= 2 seeds, the SD s of the
  per-seed values adds s^2 / k to the variance of their mean. A difference between variants run
  with the same seeds takes s from the per-seed differences; other seeds, Welch's form (a
  variant with one seed borrows the other's SD).
With one seed per variant, the training noise is unmeasured and the interval covers the test
sample only (the verdict says so): the percentile interval of the resampled values, and a
two-sided p-value of twice the share of resampled differences on the far side of 0 ("p < 0.001"
when none is, with 1000 resamples). With seeds, point ± t * sqrt(test variance + s^2 / k), the
degrees of freedom by Welch-Satterthwaite: near the normal 1.96 where the test sample dominates,
Student's t with k - 1 where the few seeds' own spread does; the p-value from the same t.
Accuracy gets McNemar's exact test as well, per pair of runs with the same seed: the images one
got right and the other wrong, under "either is as likely" (it takes images as independent; the
bootstrap interval is the one that keeps a patient's eyes together).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, t

from retino.evaluation.bootstrap import LEVEL, interval


@dataclass(frozen=True)
class Estimate:
    """A variant's metric (the mean over its seeds), or a difference, with its 95 % interval."""

    point: float
    lo: float
    hi: float
    sd: float | None = None  # over seeds, with >= 2
    seeds: tuple[float, ...] = ()  # each seed's own value

    @property
    def crosses_zero(self) -> bool:
        return self.lo <= 0 <= self.hi


@dataclass(frozen=True)
class Runs:
    """One variant's seed repeats: their seeds, their point values of a metric and its
    resampled values (resamples, runs), the same resamples for every variant."""

    seeds: tuple[str, ...]
    points: np.ndarray  # (runs,)
    resampled: np.ndarray  # (resamples, runs)


def _combine(point: float, draws: np.ndarray, se_seed: float, df_seed: float):
    """(lo, hi, p, p_floor) from the resampled values and the training noise's standard error
    (0: unmeasured) with its degrees of freedom."""
    if not se_seed > 0:
        lo, hi = interval(draws, point)
        p = min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0)))
        return lo, hi, float(p), 1 / len(draws)
    test_var = float(np.nanvar(draws, ddof=1))
    total = test_var + se_seed**2
    df = total**2 / (se_seed**4 / df_seed)  # Welch-Satterthwaite; the resampled part: df infinite
    half = float(t.ppf(0.5 + LEVEL / 2, df)) * np.sqrt(total)
    p = float(2 * t.sf(abs(point) / np.sqrt(total), df)) if total > 0 else 1.0
    return point - half, point + half, p, 0.001


def estimate(runs: Runs, bounds: tuple[float, float]) -> Estimate:
    """The mean over seeds with its interval (test sample + training noise), within the metric's
    `bounds` (a few seeds' t interval can reach past them), and the seeds' SD."""
    k = len(runs.points)
    mean = float(runs.points.mean())
    sd = float(runs.points.std(ddof=1)) if k >= 2 else None
    se = sd / np.sqrt(k) if sd is not None else 0.0
    lo, hi, _, _ = _combine(mean, runs.resampled.mean(axis=1), se, k - 1)
    lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Estimate(mean, lo, hi, sd, tuple(float(v) for v in runs.points))


@dataclass(frozen=True)
class Difference:
    """a - b of one metric, paired on the test images."""

    estimate: Estimate
    p: float
    p_floor: float  # a p-value below it reads "p < p_floor" (1 / resamples, or 0.001)
    training: str  # how the seeds entered: "paired seeds", "unpaired seeds" or "one seed each"

    @property
    def p_text(self) -> str:
        return f"p < {self.p_floor:g}" if self.p < self.p_floor else f"p = {self.p:.3f}"


def difference(a: Runs, b: Runs) -> Difference:
    """The paired difference of the means over seeds, a - b, with interval and p-value."""
    point = float(a.points.mean() - b.points.mean())
    draws = a.resampled.mean(axis=1) - b.resampled.mean(axis=1)
    ka, kb = len(a.points), len(b.points)
    if a.seeds == b.seeds and ka >= 2:
        per_seed = a.points - b.points  # the same seeds: differences seed by seed
        se, df, training = per_seed.std(ddof=1) / np.sqrt(ka), ka - 1, "paired seeds"
    elif max(ka, kb) >= 2:
        var_a = a.points.var(ddof=1) / ka if ka >= 2 else None
        var_b = b.points.var(ddof=1) / kb if kb >= 2 else None
        if var_a is None or var_b is None:  # one seed on one side: the other's SD stands in
            sd2, k = (var_b * kb, kb) if var_a is None else (var_a * ka, ka)
            se, df = np.sqrt(sd2 * (1 / ka + 1 / kb)), k - 1
        else:  # Welch
            se = np.sqrt(var_a + var_b)
            df = (var_a + var_b) ** 2 / (var_a**2 / (ka - 1) + var_b**2 / (kb - 1) or np.inf)
        training = "unpaired seeds"
    else:
        se, df, training = 0.0, 1, "one seed each"
    lo, hi, p, floor = _combine(point, draws, float(se), df)
    return Difference(Estimate(point, lo, hi), p, floor, training)


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> float:
    """McNemar's exact two-sided p-value of two models' per-image correctness."""
    only_a = int(np.sum(right_a & ~right_b))
    only_b = int(np.sum(~right_a & right_b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def signed(value: float, digits: int, scale: float = 1.0) -> str:
    return f"{value * scale:+.{digits}f}"


def verdict(
    better: str, worse: str, qwk: Difference, accuracy: Difference | None,
    mcnemar_p: Sequence[float], seeds: Sequence[str] = (),
) -> str:  # fmt: skip
    """One line in plain words, e.g. 'resnet50-pretrained vs resnet18-pretrained: QWK +0.021
    [+0.008, +0.034], p = 0.002: resnet50-pretrained is better; accuracy +1.5 pp [...]'.
    `mcnemar_p`: McNemar's test of accuracy per pair of runs, with their `seeds` (if any)."""
    e = qwk.estimate
    line = (f"{better} vs {worse}: QWK {signed(e.point, 3)} [{signed(e.lo, 3)}, "
            f"{signed(e.hi, 3)}], {qwk.p_text}")  # fmt: skip
    if e.crosses_zero:
        line += ": no difference shown (interval crosses 0)"
    else:
        line += f": {better} is better"
    if accuracy is not None:
        a = accuracy.estimate
        line += (f"; accuracy {signed(a.point, 1, 100)} pp [{signed(a.lo, 1, 100)}, "
                 f"{signed(a.hi, 1, 100)}]")  # fmt: skip
        if mcnemar_p:
            line += ", McNemar " + ", ".join(
                "p < 0.001" if p < 0.001 else f"p = {p:.3f}" for p in mcnemar_p
            )
            if seeds:
                line += f" (seeds {', '.join(seeds)})" if len(seeds) > 1 else f" (seed {seeds[0]})"
    if qwk.training == "one seed each":
        line += " (one seed each: training noise not measured)"
    return line

"""Variants: seed repeats pooled, paired differences narrower than unpaired, verdicts in words."""

import numpy as np
import pytest

from retino.evaluation.bootstrap import Bootstrap, interval
from retino.evaluation.variants import Runs, difference, estimate, mcnemar, verdict
from retino.metrics import grading_metrics

PATIENTS = 150


def draw_test_set(rng):
    grade = rng.choice(5, PATIENTS, p=[0.5, 0.12, 0.2, 0.1, 0.08])
    labels = np.repeat(grade, 2)
    paths = [f"images/{p}_{s}.jpeg" for p in range(PATIENTS) for s in ("left", "right")]
    return paths, labels


def model(labels, rng, wrong: float):
    """Predictions one grade off on a `wrong` share of the images."""
    off = rng.random(len(labels)) < wrong
    return np.clip(labels + off * rng.choice([-1, 1], len(labels)), 0, 4)


def qwk_runs(boot, labels, *predictions, seeds=None) -> Runs:
    """A variant's runs (one per prediction set) of QWK, resampled by `boot`."""
    values = [boot.metrics(labels, p, p.astype(float))["qwk"] for p in predictions]
    full = np.array([_qwk(labels, p) for p in predictions])
    seeds = tuple(seeds or (str(i) for i in range(len(predictions))))
    return Runs(seeds, full, np.column_stack(values))


def _qwk(labels, preds):
    return grading_metrics(labels, preds, preds.astype(float))["qwk"]


def test_a_paired_difference_is_narrower_than_an_unpaired_one():
    """Two models that agree on most images: resampled together, the images both got right or
    wrong cancel out; resampled apart (as two separate intervals would), they do not."""
    rng = np.random.default_rng(0)
    paths, labels = draw_test_set(rng)
    a = model(labels, rng, 0.3)
    b = a.copy()
    changed = rng.random(len(b)) < 0.08  # b differs from a on 8 % of the images
    b[changed] = model(labels[changed], rng, 0.6)
    boot = Bootstrap(paths, 1000, seed=1)
    runs_a = qwk_runs(boot, labels, a, seeds=["1"])
    runs_b = qwk_runs(boot, labels, b, seeds=["1"])
    paired = difference(runs_a, runs_b)
    other = Bootstrap(paths, 1000, seed=2)  # b resampled apart from a
    apart = runs_a.resampled[:, 0] - qwk_runs(other, labels, b).resampled[:, 0]
    lo, hi = interval(apart, paired.estimate.point)
    width = paired.estimate.hi - paired.estimate.lo
    assert width < 0.6 * (hi - lo)
    assert paired.estimate.lo <= paired.estimate.point <= paired.estimate.hi
    assert paired.training == "one seed each"


def test_seeds_widen_the_interval_by_their_spread():
    rng = np.random.default_rng(1)
    paths, labels = draw_test_set(rng)
    boot = Bootstrap(paths, 1000, seed=0)
    seeds = [model(labels, rng, w) for w in (0.2, 0.3, 0.4)]  # training noise: 0.2-0.4 wrong
    three = estimate(qwk_runs(boot, labels, *seeds), (-1, 1))
    assert three.sd == pytest.approx(np.std([_qwk(labels, p) for p in seeds], ddof=1))
    assert three.point == pytest.approx(np.mean(three.seeds))
    one = estimate(qwk_runs(boot, labels, seeds[1]), (-1, 1))
    assert one.sd is None
    assert three.hi - three.lo > 1.5 * (one.hi - one.lo)


def test_paired_seeds_difference_uses_the_per_seed_differences():
    rng = np.random.default_rng(2)
    paths, labels = draw_test_set(rng)
    boot = Bootstrap(paths, 1000, seed=0)
    good = [model(labels, rng, w) for w in (0.10, 0.12)]
    bad = [model(labels, rng, w) for w in (0.45, 0.5)]
    d = difference(qwk_runs(boot, labels, *good), qwk_runs(boot, labels, *bad))
    assert d.training == "paired seeds" and d.estimate.lo > 0 and d.p < 0.05
    assert d.p_text in ("p < 0.001", f"p = {d.p:.3f}")
    same = difference(qwk_runs(boot, labels, *good), qwk_runs(boot, labels, *good[::-1]))
    assert same.estimate.crosses_zero and same.p > 0.5
    unpaired = qwk_runs(boot, labels, *bad, seeds=["7", "8"])
    assert difference(qwk_runs(boot, labels, *good), unpaired).training == "unpaired seeds"


def test_mcnemar_exact():
    a = np.array([True] * 10 + [False] * 5)
    b = np.array([True] * 2 + [False] * 8 + [False] * 5)  # a alone right on 8, b alone on none
    assert mcnemar(a, b) == pytest.approx(2 * 0.5**8)
    assert mcnemar(a, a) == 1.0


def test_verdicts_in_plain_words():
    rng = np.random.default_rng(3)
    paths, labels = draw_test_set(rng)
    boot = Bootstrap(paths, 1000, seed=0)
    good, bad = model(labels, rng, 0.05), model(labels, rng, 0.6)
    d = difference(qwk_runs(boot, labels, good), qwk_runs(boot, labels, bad))
    line = verdict("resnet50-pretrained", "resnet18-pretrained", d, d, [0.0021])
    assert line.startswith("resnet50-pretrained vs resnet18-pretrained: QWK +0.")
    assert ": resnet50-pretrained is better; accuracy +" in line
    assert "McNemar p = 0.002" in line and "one seed each" in line
    same = difference(qwk_runs(boot, labels, good), qwk_runs(boot, labels, good))
    line = verdict("a", "b", same, None, [])
    assert (
        line.startswith("a vs b: QWK +0.000 [")
        and "no difference shown (interval crosses 0)" in line
    )

"""The reliability of P(referable): bins, the expected calibration error, the diagram."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from retino.evaluation.plots import plot_reliability
from retino.evaluation.reliability import reliability, wilson


def table(prob_referable: np.ndarray, referable: np.ndarray) -> pd.DataFrame:
    """A ce prediction table whose P(grade >= 2) is `prob_referable` (all of it on p2)."""
    return pd.DataFrame({"image": [f"images/{i}_left.jpeg" for i in range(len(referable))],
                         "label": np.where(referable, 2, 0), "predicted": 0,
                         "p0": 1 - prob_referable, "p1": 0.0, "p2": prob_referable,
                         "p3": 0.0, "p4": 0.0})  # fmt: skip


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_its_gap():
    rng = np.random.default_rng(0)
    prob = rng.random(20_000)
    referable = rng.random(20_000) < prob  # referable exactly as often as predicted
    calibrated = reliability(table(prob, referable))
    assert calibrated.probability and calibrated.ece < 0.02
    assert calibrated.count.sum() == 20_000 and len(calibrated.count) == 10
    assert np.allclose(calibrated.observed, calibrated.predicted, atol=0.03)
    # says 0.9 where the truth is 0.6, and 0.1 where it is 0.4: 0.3 off everywhere
    prob = np.repeat([0.1, 0.9], 1000)
    referable = np.concatenate([np.arange(1000) < 400, np.arange(1000) < 600])
    assert reliability(table(prob, referable)).ece == pytest.approx(0.3)


def test_a_regression_score_has_bins_but_no_ece(tmp_path):
    scores = np.linspace(0, 4, 50)
    rel = reliability(pd.DataFrame({"label": np.round(scores).astype(int), "score": scores}))
    assert rel.ece is None and not rel.probability
    assert rel.edges[0] == 0 and rel.edges[-1] == 4
    assert rel.observed[0] == 0 and rel.observed[-1] == 1
    plot_reliability(rel, tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as img:
        assert img.format == "PNG"


def test_the_diagram(tmp_path):
    rng = np.random.default_rng(1)
    prob = rng.random(300)
    plot_reliability(reliability(table(prob, rng.random(300) < prob)), tmp_path / "f" / "r.png")
    with Image.open(tmp_path / "f" / "r.png") as img:
        assert img.format == "PNG" and img.width >= 600


def test_a_bin_of_one_image_has_a_wide_interval():
    share, n = np.array([1.0, 0.5, np.nan]), np.array([1, 1000, 0])
    lo, hi = wilson(share, n)
    assert 0.2 < lo[0] < 0.25 and hi[0] == pytest.approx(1.0)  # one image says little
    assert hi[1] - lo[1] == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 1000), rel=0.01)
    assert np.isnan(lo[2]) and np.isnan(hi[2])


def test_the_interval_holds_a_bin_of_all_or_none():
    # in floats the formula's bounds miss 0 or 1 by an ulp for many bin sizes; the plot's error
    # bars (share - lo, hi - share) must never be negative
    n = np.arange(1.0, 5000.0)
    for share in (np.zeros_like(n), np.ones_like(n)):
        lo, hi = wilson(share, n)
        assert np.all(lo <= share) and np.all(share <= hi)

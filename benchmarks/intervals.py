"""`retino bench intervals`: the evaluate stage's bootstrap intervals on a test set the size of
EyePACS' Private split, timed against the plain way of computing them.

- vectorised: `retino.evaluation.bootstrap.Bootstrap.metrics`, the evaluate stage's path: every
  resample a vector of patient counts, every metric from the weighted confusion matrices, the
  referable AUC from a weighted Mann-Whitney sum, all resamples at once in chunks.
- per resample: the plain loop — draw the patients, gather their images, and call
  `retino.metrics.grading_metrics` (scikit-learn) on them — timed over --loop resamples and
  scaled to --resamples.

The test set is synthetic: --images images, two eyes per patient, grades at EyePACS' priors,
predictions one grade off on a fifth of them, a continuous referable score. Only the sizes
matter for the time. stdout: the table, then one JSON line (always the last).
"""

import json
import time

import numpy as np

from benchmarks.machine import cpu_description
from retino.evaluation.bootstrap import METRICS, Bootstrap
from retino.metrics import grading_metrics

PRIORS = [0.735, 0.07, 0.15, 0.025, 0.02]  # EyePACS' grades


def synthetic_test_set(images: int, seed: int = 0):
    """(paths, labels, predictions, referable scores) of `images` images, two per patient."""
    rng = np.random.default_rng(seed)
    patients = images // 2
    labels = np.repeat(rng.choice(5, patients, p=PRIORS), 2)
    off = rng.random(len(labels)) < 0.2
    preds = np.clip(labels + off * rng.choice([-1, 1], len(labels)), 0, 4)
    scores = preds + rng.normal(0, 0.7, len(labels))
    paths = [f"test/{p}_{eye}.jpeg" for p in range(patients) for eye in ("left", "right")]
    return paths, labels, preds, scores


def bench_intervals(images: int, resamples: int, loop: int) -> dict:
    paths, labels, preds, scores = synthetic_test_set(images)
    start = time.perf_counter()
    boot = Bootstrap(paths, resamples, seed=0)
    resampled = boot.metrics(labels, preds, scores)
    vectorised = time.perf_counter() - start
    assert set(resampled) == set(METRICS)

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    of_image = boot.units.of_image
    order = np.argsort(of_image, kind="stable")  # each patient's images, together
    first = np.searchsorted(of_image[order], np.arange(boot.units.count))
    size = np.diff(np.append(first, len(order)))
    for _ in range(loop):
        drawn = rng.integers(0, boot.units.count, boot.units.count)
        chosen = np.concatenate([order[first[u] : first[u] + size[u]] for u in drawn])
        grading_metrics(labels[chosen], preds[chosen], scores[chosen])
    plain = (time.perf_counter() - start) / loop * resamples

    result = {"images": len(paths), "patients": boot.units.count, "resamples": resamples,
              "vectorised_s": round(vectorised, 4), "per_resample_s": round(plain, 2),
              "ratio": round(plain / vectorised, 1), "cpu": cpu_description()}  # fmt: skip
    lines = [
        f"retino bench intervals: {len(paths)} test images, {boot.units.count} patients, "
        f"{resamples} resamples, 7 metrics ({cpu_description()})",
        "",
        f"{'path':<16} {'seconds':>9}",
        f"{'per resample':<16} {plain:>9.1f}   (timed over {loop} resamples, scaled)",
        f"{'vectorised':<16} {vectorised:>9.2f}   {plain / vectorised:.0f}x faster",
    ]
    print("\n".join(lines))
    print(json.dumps(result), flush=True)
    return result

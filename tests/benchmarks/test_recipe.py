"""`python -m benchmarks.recipe`: the eval variants of trained models, as the pipeline grades."""

import shutil

import pandas as pd
import pytest

from benchmarks.recipe import main
from retino.data.dataset import CachedSplit
from retino.evaluation.evaluate import cached_test, evaluate_test
from retino.evaluation.predict import load_predictor, loader_for
from retino.training.calibration import Calibration
from tests.conftest import prepare_and_cache, tiny_config
from tests.evaluation.test_predict import save_checkpoint


def test_four_variants_the_plain_one_as_the_pipeline_grades(tiny_source, tmp_path, capsys):
    shutil.copytree(tiny_source, tmp_path / "data")
    prepare_and_cache(tmp_path / "data", tmp_path, tiny_config())
    cache = tmp_path / "preprocessed"
    model = save_checkpoint(tmp_path / "regression.pt", cache, thresholds=[0.5, 1.5, 2.5, 3.5],
                            train__loss="regression", train__sampler="balanced")  # fmt: skip
    argv = ["--prepared", tmp_path / "prepared", "--preprocessed", cache, model]
    assert main([*map(str, argv), "--csv", str(tmp_path / "t.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | loss | sampler | TTA | eyes (w) | QWK |")
    assert len(lines) == 2 + 4
    assert lines[-1].startswith("| regression | regression | balanced | flips | yes (")
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(zip(table.tta, table.paired_eyes, strict=True)) == [
        ("none", False), ("none", True), ("flips", False), ("flips", True)
    ]  # fmt: skip
    # no TTA, no eyes: the train stage's calibration and the evaluate stage's numbers
    pred = load_predictor(str(model), "cpu")
    val = CachedSplit(cache, tmp_path / "prepared", "val")
    labels, outputs = pred.outputs(loader_for(val, 16, 0))
    pred.calibration = Calibration(pred.head.fit(outputs, labels), None)
    metrics, _ = evaluate_test(pred, cached_test(pred, tmp_path / "prepared", cache),
                               tmp_path / "eval", resamples=0, seed=0)  # fmt: skip
    for key in ("qwk", "balanced_accuracy", "macro_f1", "recall_0", "recall_4"):
        assert table[key][0] == pytest.approx(metrics[key], abs=1e-9), key

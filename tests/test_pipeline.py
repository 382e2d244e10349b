"""End to end: the whole `dvc repro` on tiny data in a fresh repo, then everything it promised."""

import base64
import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import yaml
from PIL import Image

from retino.synth import synthesize
from tests.dvc_project import make_project, project_env, run

pytestmark = pytest.mark.slow  # whole dvc repro runs


def test_dvc_repro_end_to_end(tmp_path, tiny_source):
    dvc_project = make_project(tmp_path / "project", tiny_source)
    env = project_env(dvc_project)
    out = run(["dvc", "repro"], dvc_project, env, timeout=900)
    assert "best epoch" in out and "test accuracy" in out

    pipeline = yaml.safe_load((dvc_project / "dvc.yaml").read_text())
    for name, stage in pipeline["stages"].items():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            assert (dvc_project / path).exists(), f"stage {name}: {path} missing"
    for png in ("curves.png", "confusion.png", "reliability.png"):
        with Image.open(dvc_project / "reports" / "figures" / png) as img:
            assert img.format == "PNG" and img.width >= 400

    test_metrics = json.loads((dvc_project / "reports/eval/metrics.json").read_text())
    assert {"accuracy", "qwk", "balanced_accuracy", "macro_f1", "majority_accuracy"} <= set(
        test_metrics
    )
    # each headline metric with its 95 % interval, the patients resampled (both eyes together)
    intervals = ["accuracy", "balanced_accuracy", "qwk", "macro_f1", "referable_auc",
                 "referable_sensitivity", "referable_specificity"]  # fmt: skip
    intervals = [k for k in intervals if k in test_metrics]
    assert {"accuracy", "qwk", "macro_f1"} <= set(intervals)
    for key in intervals:
        assert test_metrics[f"{key}_lo"] <= test_metrics[key] <= test_metrics[f"{key}_hi"], key
    assert test_metrics["accuracy_lo"] < test_metrics["accuracy_hi"]  # 16 test images: wide
    assert test_metrics["bootstrap_unit"] == "patient" and test_metrics["bootstrap_units"] == 8
    assert test_metrics["bootstrap_resamples"] == 1000
    assert 0 <= test_metrics["referable_ece"] <= 1
    assert (
        (dvc_project / "reports/eval/predictions.csv")
        .read_text()
        .startswith("image,label,predicted,p0,p1,p2,p3,p4\n")
    )

    mlflow.set_tracking_uri(f"sqlite:///{dvc_project}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["retino"])
    assert len(runs) == 1
    logged = runs.iloc[0]
    assert logged.status == "FINISHED"
    train_metrics = json.loads((dvc_project / "reports/train/metrics.json").read_text())
    assert logged["metrics.best/val_qwk"] == train_metrics["val_qwk"]
    assert logged["metrics.best/epoch"] == train_metrics["best_epoch"]
    assert logged["metrics.best/test_accuracy"] == test_metrics["accuracy"]
    assert logged["metrics.best/test_qwk"] == test_metrics["qwk"]
    for key in intervals:
        for end in ("_lo", "_hi"):
            assert logged[f"metrics.best/test_{key}{end}"] == test_metrics[f"{key}{end}"]
    assert logged["tags.test_intervals"] == (
        "95 % bootstrap: 1000 resamples of 8 patients (both eyes together)"
    )
    assert logged["tags.variant"] == "resnet18-scratch"  # the UI's "Group by" of seed repeats
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(logged.run_id)}
    assert artifacts == {"eval", "figures", "history.csv", "images"}  # best.pt only as the model
    assert logged["tags.data_md5"].endswith(".dir")
    (model,) = client.search_logged_models([logged.experiment_id])
    assert model.name == "resnet18-scratch" and model.source_run_id == logged.run_id
    # train and val from train (tiny params track no test per epoch), test from evaluate
    inputs = client.get_run(logged.run_id).inputs.dataset_inputs
    assert sorted(i.tags[0].value for i in inputs) == ["test", "training", "validation"]
    sources = {json.loads(i.dataset.source)["tags"]["dvc_md5"] for i in inputs}
    assert sources == {logged["tags.data_md5"]}
    # the confusion matrix, the curves and the Grad-CAMs as keyed images for the image grid
    images = {a.path.split("+")[0] for a in client.list_artifacts(logged.run_id, "images")}
    assert {"images/confusion", "images/curves", "images/reliability"} <= images
    assert any(name.startswith("images/gradcam~grade0_") for name in images), images

    # nothing changed: a second repro does nothing; `dvc exp show` lists the metrics
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], dvc_project, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], dvc_project, env))
    metrics = next(b for b in shown if b["rev"] == "workspace")["data"]["metrics"]
    assert metrics["reports/train/metrics.json"]["data"] == train_metrics
    assert metrics["reports/eval/metrics.json"]["data"]["qwk"] == test_metrics["qwk"]
    shown_eval = metrics["reports/eval/metrics.json"]["data"]
    assert (shown_eval["qwk_lo"], shown_eval["qwk_hi"]) == (
        test_metrics["qwk_lo"], test_metrics["qwk_hi"])  # fmt: skip

    # the kappa recipe, one command away; it reuses the prepared splits and the cache
    recipe = ["train.loss=regression", "train.sampler=progressive", "eval.tta=flips",
              "eval.paired_eyes=true"]  # fmt: skip
    out = run(["dvc", "exp", "run", *(f"-S{s}" for s in recipe)], dvc_project, env, timeout=900)
    for stage in ("prepare", "preprocess"):
        assert f"Stage '{stage}' didn't change, skipping" in out
    for stage in ("train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in out
    train_metrics = json.loads((dvc_project / "reports/train/metrics.json").read_text())
    test_metrics = json.loads((dvc_project / "reports/eval/metrics.json").read_text())
    thresholds = [train_metrics[f"threshold_{k}"] for k in range(1, 5)]
    assert thresholds == sorted(thresholds) and 0 <= train_metrics["eye_weight"] <= 0.5
    assert "qwk" in test_metrics and "referable_auc" in test_metrics
    predictions = (dvc_project / "reports/eval/predictions.csv").read_text()
    assert predictions.startswith("image,label,predicted,score\n")
    run_id = json.loads((dvc_project / "models/run.json").read_text())["run_id"]
    logged = mlflow.MlflowClient().get_run(run_id).data
    assert logged.params["train.loss"] == "regression"
    assert [logged.metrics[f"best/threshold_{k}"] for k in range(1, 5)] == thresholds
    assert logged.metrics["best/eye_weight"] == train_metrics["eye_weight"]
    assert logged.metrics["best/test_qwk"] == test_metrics["qwk"]
    assert test_metrics["qwk_lo"] <= test_metrics["qwk"] <= test_metrics["qwk_hi"]
    assert "referable_ece" not in test_metrics  # a score, not a probability
    assert logged.tags["variant"] == (
        "resnet18-scratch, regression, progressive sampling, flips TTA, both eyes"
    )

    # the two variants, paired on the same 16 test images: a verdict and the forest plot
    out = run(["retino", "compare", "--out", "cmp"], dvc_project, env, timeout=300)
    (line,) = [v for v in out.splitlines() if " vs " in v]
    assert ": QWK " in line and ("is better" in line or "no difference shown" in line)
    assert "16 test images" in out
    with Image.open(dvc_project / "cmp" / "forest.png") as img:
        assert img.format == "PNG"

    # predict on a folder holding both eyes of each patient: each is blended with its fellow;
    # the run's logged model grades as best.pt does (its metadata holds the calibration)
    graded = {}
    for model in ("models/best.pt", f"runs:/{run_id}/resnet18-scratch"):
        run(["retino", "predict", "data/images", "--model", model, "--out", "grades.csv"],
            dvc_project, env)  # fmt: skip
        graded[model] = (dvc_project / "grades.csv").read_text()
    assert graded["models/best.pt"] == graded[f"runs:/{run_id}/resnet18-scratch"]
    rows = [line.split(",") for line in graded["models/best.pt"].splitlines()]
    assert rows[0] == ["path", "grade", "grade_name", "score", "referable", "fellow"]
    assert all(row[-1] and row[-1] != row[0] for row in rows[1:])  # every eye has its fellow
    # the MLflow model itself takes the photographs (named as the files, so the eyes pair up)
    # and answers as retino predict did
    paths = [Path(row[0]) for row in rows[1:5]]
    request = pd.DataFrame({"image": [base64.b64encode((dvc_project / p).read_bytes()).decode()
                                      for p in paths], "id": [p.name for p in paths]})  # fmt: skip
    answer = mlflow.pyfunc.load_model(f"runs:/{run_id}/resnet18-scratch").predict(request)
    assert [f"{s:.6f}" for s in answer.score] == [f"{float(row[3]):.6f}" for row in rows[1:5]]
    assert list(answer.fellow) == [Path(row[-1]).name for row in rows[1:5]]


@pytest.mark.parametrize("layout", ["kaggle", "aptos"])
def test_dvc_repro_on_other_layouts(tmp_path, layout):
    data = tmp_path / "source"
    synthesize(data, n_train=40, n_test=24, size=48, seed=9, layout=layout)
    dvc_project = make_project(tmp_path / "project", data)
    if layout == "kaggle":  # Huang et al.'s protocol: Public = val, Private = test
        params = yaml.safe_load((dvc_project / "params.yaml").read_text())
        params["data"]["kaggle_usage_split"] = True
        (dvc_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(dvc_project)
    assert f"layout: {layout}" in run(["retino", "validate", "data"], dvc_project, env)
    out = run(["dvc", "repro"], dvc_project, env, timeout=900)
    assert "best epoch" in out and "test accuracy" in out
    stats = json.loads((dvc_project / "prepared" / "stats.json").read_text())
    assert stats["layout"] == layout and sum(map(sum, stats["counts"].values())) == 64
    predictions = (dvc_project / "reports/eval/predictions.csv").read_text().splitlines()
    folder = {"kaggle": "test/", "aptos": "train_images/"}[layout]
    assert all(line.split(",")[0].startswith(folder) for line in predictions[1:])
    # APTOS names no patients: its intervals resample images, and say so
    test_metrics = json.loads((dvc_project / "reports/eval/metrics.json").read_text())
    unit = {"kaggle": "patient", "aptos": "image"}[layout]
    assert test_metrics["bootstrap_unit"] == unit
    assert test_metrics["qwk_lo"] <= test_metrics["qwk"] <= test_metrics["qwk_hi"]

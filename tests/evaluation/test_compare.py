"""`retino compare` over runs logged to a real MLflow store."""

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from retino.cli import main
from retino.tracking.names import headline_placeholders
from retino.tracking.queries import list_runs
from retino.tracking.runs import open_run
from retino.tracking.store import existing_store


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def log_run(root, arch, pretrained, acc, qwk, status_error=None, evaluated=True, **recipe):
    params = {"arch": arch, "pretrained": pretrained, **recipe}
    tags = {"dvc_exp_name": f"exp-{arch}-{pretrained}"}
    try:
        with open_run(root, name=f"{arch}-{pretrained}", tags=tags) as run:
            run.log_metrics(headline_placeholders("val_qwk"), step=0)  # as train does
            run.log_params(params)
            for epoch in (1, 2, 3):
                curves = {"train/acc": 0.6 + 0.1 * epoch, "test/acc": acc - 0.1 + 0.05 * epoch}
                run.log_metrics(curves, step=epoch)
            if evaluated:
                run.log_metrics({"best/test_accuracy": acc, "best/test_qwk": qwk,
                                 "best/test_majority_accuracy": 0.735})  # fmt: skip
                cm = root / "confusion.json"
                cm.write_text(json.dumps({"counts": [[5, 1, 0, 0, 0]] + [[0, 0, 2, 0, 0]] * 4}))
                run.log_artifact(cm, "eval")
            if status_error:
                raise status_error
    except RuntimeError:
        pass


def test_seed_table_and_figures(store, capsys):
    log_run(store, "resnet18", True, 0.82, 0.61)
    log_run(store, "resnet18", False, 0.74, 0.02)
    log_run(store, "resnet50", True, 0.80, 0.58)
    log_run(store, "resnet50", False, 0.73, 0.0)
    log_run(store, "resnet50", False, 0.99, 0.99, status_error=RuntimeError("crash"))
    log_run(store, "resnet18", True, 0.5, 0.5, evaluated=False)

    assert main(["compare", "--out", str(store / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "status FAILED" in out and "no test metrics" in out

    table = pd.read_csv(store / "cmp" / "results.csv")
    assert len(table) == 4
    cell = table[(table.arch == "resnet50") & (table.weights == "scratch")].iloc[0]
    assert cell.test_accuracy == 0.73  # the failed 0.99 run is not shown
    assert cell.highest_epoch_test_acc == pytest.approx(0.78)
    md = (store / "cmp" / "results.md").read_text()
    assert "| | resnet18 | resnet50 |" in md
    assert "| with pretrained | 82.00% / 0.610 | 80.00% / 0.580 |" in md
    assert "| w/o pretrained | 74.00% / 0.020 | 73.00% / 0.000 |" in md
    for name in ("accuracy_resnet18.png", "accuracy_resnet50.png", "confusion_grid.png"):
        with Image.open(store / "cmp" / name) as img:
            assert img.format == "PNG" and img.width > 400


def test_other_recipes_get_rows_of_their_own(store, capsys):
    log_run(store, "resnet18", False, 0.74, 0.40)  # logged before the recipe keys existed
    lab = {"train.loss": "ce", "train.sampler": "shuffle", "eval.tta": "none",
           "eval.paired_eyes": False}  # fmt: skip
    log_run(store, "resnet50", False, 0.75, 0.45, **lab)
    kappa = {"train.loss": "regression", "train.sampler": "balanced", "eval.tta": "flips",
             "eval.paired_eyes": True}  # fmt: skip
    log_run(store, "resnet18", False, 0.70, 0.62, **kappa)
    log_run(store, "resnet18", False, 0.72, 0.55, **{**lab, "eval.tta": "flips"})
    assert main(["compare", "--out", str(store / "cmp")]) == 0
    assert "newer than" not in capsys.readouterr().out  # four variants, none hides another
    md = (store / "cmp" / "results.md").read_text()
    assert "| w/o pretrained | 74.00% / 0.400 | 75.00% / 0.450 |" in md
    assert "| w/o pretrained, flips TTA | 72.00% / 0.550 | — |" in md
    assert "| w/o pretrained, regression, balanced sampling, flips TTA, both eyes | " in md
    table = pd.read_csv(store / "cmp" / "results.csv", keep_default_na=False)
    assert sorted(table.recipe) == [
        "",
        "",
        "flips TTA",
        "regression, balanced sampling, flips TTA, both eyes",
    ]


def test_selected_runs_only(store):
    log_run(store, "resnet18", True, 0.82, 0.61)
    log_run(store, "resnet18", False, 0.74, 0.02)
    log_run(store, "resnet50", False, 0.73, 0.0)
    assert main(["compare", "--out", str(store / "cmp"), "--runs", "resnet18-False"]) == 0
    assert len(pd.read_csv(store / "cmp" / "results.csv")) == 1
    # a DVC experiment's name picks its run too
    runs = ["resnet18-True", "exp-resnet50-False"]
    assert main(["compare", "--out", str(store / "cmp"), "--runs", *runs]) == 0
    table = pd.read_csv(store / "cmp" / "results.csv")
    assert sorted(table.run_name) == ["resnet18-True", "resnet50-False"]


def test_empty_store_is_a_clear_error(store, capsys):
    assert main(["compare", "--out", str(store / "cmp")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no MLflow store at sqlite:") and err.count("\n") == 1
    assert not (store / "mlflow.db").exists()
    log_run(store, "resnet18", True, 0.5, 0.5, status_error=RuntimeError("crash"))
    assert main(["compare", "--out", str(store / "cmp")]) == 2
    assert "no complete runs" in capsys.readouterr().err
    assert not (store / "cmp").exists()


def test_unknown_run(store, capsys):
    log_run(store, "resnet18", True, 0.82, 0.61)
    assert main(["compare", "--out", str(store / "cmp"), "--runs", "nope"]) == 2
    assert "run 'nope' not found" in capsys.readouterr().err


def test_the_newest_run_shows_also_past_a_page_of_search_results(store, monkeypatch):
    # MLflow answers a search a page at a time, 1000 runs unless asked otherwise; the runs past
    # the first page are the newest and must count. Pages of 2 stand for that here.
    search = MlflowClient.search_runs

    def paged(self, *args, max_results=1000, **kwargs):
        return search(self, *args, max_results=min(max_results, 2), **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", paged)
    for acc in (0.70, 0.71, 0.72, 0.73, 0.74):
        log_run(store, "resnet18", False, acc, 0.5)
    assert main(["compare", "--out", str(store / "cmp")]) == 0
    assert pd.read_csv(store / "cmp" / "results.csv").test_accuracy.tolist() == [0.74]
    runs = list_runs(existing_store(store))
    assert [r.metrics["best/test_accuracy"] for r in runs] == [0.70, 0.71, 0.72, 0.73, 0.74]

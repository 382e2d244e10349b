"""`retino compare` over runs logged to a real MLflow store."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from retino.cli import main
from retino.metrics import grading_metrics
from retino.tracking import names
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


# Per-image predictions, as the evaluate stage logs them: a test set of 100 patients (both eyes)
PATIENTS = 100
GRADES = np.repeat(np.random.default_rng(0).choice(5, PATIENTS, p=[0.5, 0.1, 0.2, 0.1, 0.1]), 2)
IMAGES = [f"images/{p}_{side}.jpeg" for p in range(PATIENTS) for side in ("left", "right")]


def predictions(wrong: float, seed: int, labels=GRADES, images=IMAGES) -> pd.DataFrame:
    """A model one grade off on a `wrong` share of the images (the same share, other images,
    for another seed)."""
    rng = np.random.default_rng(seed)
    off = rng.random(len(labels)) < wrong
    predicted = np.clip(labels + off * rng.choice([-1, 1], len(labels)), 0, 4)
    probs = np.full((len(labels), 5), 0.05)
    probs[np.arange(len(labels)), predicted] = 0.8
    table = pd.DataFrame({"image": images, "label": labels, "predicted": predicted})
    table[[f"p{g}" for g in range(5)]] = probs
    return table


def log_evaluated(root, arch, pretrained, seed, table, data_md5="3f2a1c0b9e.dir", **more):
    """A finished, evaluated run with its per-image predictions, as the pipeline logs it."""
    params = {"arch": arch, "pretrained": pretrained, "seed": seed, "eval.bootstrap": 1000, **more}
    name = f"{arch}-{'pretrained' if pretrained else 'scratch'}-s{seed}"
    metrics = grading_metrics(table.label, table.predicted, table.p2 + table.p3 + table.p4)
    with open_run(root, name=name, tags={"data_md5": data_md5, "dvc_exp_name": name}) as run:
        run.log_params(params)
        run.log_metrics({"train/acc": 0.9, "test/acc": metrics["accuracy"]}, step=1)
        run.log_metrics(names.test_metrics(metrics))
        table.to_csv(root / "predictions.csv", index=False)
        (root / "confusion.json").write_text(json.dumps({"counts": np.eye(5).tolist()}))
        for file in ("predictions.csv", "confusion.json"):
            run.log_artifact(root / file, "eval")
    return metrics


GRID = {  # (arch, pretrained): the share each seed's model gets wrong
    ("resnet50", True): (0.04, 0.06),
    ("resnet18", True): (0.05, 0.07),
    ("resnet50", False): (0.45, 0.5),
    ("resnet18", False): (0.5, 0.55),
}


def test_a_two_by_two_grid_with_two_seeds(store, capsys):
    points = {}
    for (arch, pretrained), wrong in GRID.items():
        for seed, share in zip((1, 2), wrong, strict=True):
            m = log_evaluated(store, arch, pretrained, seed, predictions(share, seed))
            points.setdefault((arch, pretrained), []).append(m["qwk"])
    assert main(["compare", "--out", str(store / "cmp")]) == 0
    out = capsys.readouterr().out
    verdicts = [line for line in out.splitlines() if " vs " in line and ": QWK " in line]
    assert len(verdicts) == 6  # every two of the four variants, each once
    # far apart: shown, with interval and p-value; close together: not shown, said so
    shown = next(v for v in verdicts if v.startswith("resnet50-pretrained vs resnet18-scratch"))
    assert re.search(r"QWK \+0\.\d{3} \[\+0\.\d{3}, \+0\.\d{3}\], p [=<] 0\.0", shown), shown
    assert shown.split("p ")[1].split(":")[1].strip().startswith("resnet50-pretrained is better")
    close = next(v for v in verdicts if v.startswith("resnet50-pretrained vs resnet18-pretrained"))
    assert "no difference shown (interval crosses 0)" in close
    assert "McNemar p < 0.001, p < 0.001 (seeds 1, 2)" in shown  # per seed both ran
    assert "logged to MLflow: retino-compare / " in out

    table = pd.read_csv(store / "cmp" / "results.csv")
    cell = table[table.variant == "resnet18-scratch"].iloc[0]
    assert cell.runs == 2 and cell.seeds == "1 2"
    assert cell.test_qwk == pytest.approx(np.mean(points["resnet18", False]))
    assert cell.test_qwk_sd == pytest.approx(np.std(points["resnet18", False], ddof=1))
    assert cell.test_qwk_lo < cell.test_qwk < cell.test_qwk_hi
    # two seeds 2 points apart near 96 %: Student's t with one degree of freedom would reach
    # past 100 %; an interval stays within what accuracy can be
    assert (table.test_accuracy_hi <= 1).all() and (table.test_qwk_hi <= 1).all()
    md = (store / "cmp" / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| w/o pretrained |"))
    assert row.count("(2 seeds)") == 2 and row.count(" ± ") == 4 and row.count("[") == 4
    assert "## Which variant wins, and how sure" in md and "200 test images" in md
    assert "100 patients (both eyes together)" in md
    pairs = pd.read_csv(store / "cmp" / "pairs.csv")
    assert len(pairs) == 6 and set(pairs.seeds) == {"paired seeds"}
    assert (pairs.qwk_diff > 0).all()  # the better one first
    with Image.open(store / "cmp" / "forest.png") as img:
        assert img.format == "PNG" and img.width >= 800

    # the results as a run of their own experiment, out of the training runs' table
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("retino-compare").experiment_id])
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} >= {
        "forest.png", "results.md", "results.csv", "pairs.csv"}  # fmt: skip
    assert len(logged.data.tags["compared_runs"].split()) == 8
    retino = client.get_experiment_by_name("retino").experiment_id
    assert len(client.search_runs([retino])) == 8


def test_runs_on_different_test_sets_are_refused_by_name_and_left_out_otherwise(store, capsys):
    log_evaluated(store, "resnet18", True, 1, predictions(0.1, 1))
    log_evaluated(store, "resnet50", True, 1, predictions(0.1, 2), data_md5="9e8d7c6b.dir")
    names = ["resnet18-pretrained-s1", "resnet50-pretrained-s1"]
    assert main(["compare", "--out", str(store / "cmp"), "--runs", *names]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different test sets (data.dvc 9e8d7c6b vs 3f2a1c0b)" in err
    assert not (store / "cmp").exists()
    # without --runs: the newest run's test set, the other run left out with a note
    assert main(["compare", "--out", str(store / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "note: left out resnet18-pretrained-s1: another test set than " in out
    assert pd.read_csv(store / "cmp" / "results.csv").variant.tolist() == ["resnet50-pretrained"]
    assert "One variant, nothing to compare it with" in out

    # the same data version, other test images
    fewer = predictions(0.1, 3).iloc[:150]
    log_evaluated(store, "resnet18", False, 1, fewer, data_md5="9e8d7c6b.dir")
    names = ["resnet50-pretrained-s1", "resnet18-scratch-s1"]
    assert main(["compare", "--out", str(store / "c2"), "--runs", *names]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sets (150 vs 200 test images, e.g. images/7" in err
    assert "_left.jpeg only in resnet50-pretrained-s1's)" in err


def test_a_cell_shows_the_seeds_of_its_newest_params(store, capsys):
    lr = {"train.lr": 0.01}
    log_evaluated(store, "resnet18", False, 1, predictions(0.2, 1), **lr)
    log_evaluated(store, "resnet18", False, 2, predictions(0.2, 2), **lr)
    log_evaluated(store, "resnet18", False, 1, predictions(0.3, 1), **{"train.lr": 0.001})
    log_evaluated(store, "resnet18", False, 2, predictions(0.3, 2), **{"train.lr": 0.001})
    log_evaluated(store, "resnet18", False, 2, predictions(0.25, 3), **{"train.lr": 0.001})
    assert main(["compare", "--out", str(store / "cmp")]) == 0
    out = capsys.readouterr().out
    assert out.count("other params than the newest run of its cell") == 2
    assert "(train.lr 0.01 vs 0.001)" in out
    assert "resnet18 scratch, seed 2: showing resnet18-scratch-s2, newer than" in out
    (row,) = pd.read_csv(store / "cmp" / "results.csv").itertuples()
    assert row.runs == 2 and row.seeds == "1 2"

"""The train step: learning, MLflow logging, determinism, resume after kill -9, SIGTERM."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml

from retino.errors import RetinoError
from retino.tracking.registry import load_logged_model
from retino.tracking.store import existing_store
from retino.training import checkpoint
from retino.training.engine import EpochSums
from retino.training.train import train
from tests.conftest import ROOT, tiny_config


def run_train(root: Path, cfg, name: str = "") -> dict:
    out = root / name if name else root
    data = (root / "prepared", root / "preprocessed")
    train(cfg, *data, out / "models", out / "reports", out / "ckpt")
    return json.loads((out / "reports" / "metrics.json").read_text())


def runs(root: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.search_runs(experiment_names=["retino"])


def test_learns_and_logs_everything_to_mlflow(project):
    cfg = tiny_config(train__epochs=3)
    metrics = run_train(project, cfg)
    history = pd.read_csv(project / "reports" / "history.csv")
    assert list(history.epoch) == [1, 2, 3]
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    assert list(history.columns) == [
        "epoch", "lr", "train_loss", "train_acc", "train_qwk", "val_loss", "val_acc", "val_qwk",
        "test_loss", "test_acc", "test_qwk", "images_per_s",
    ]  # fmt: skip
    assert "images_per_s" not in metrics and "test_acc" not in metrics  # reproducible, no test
    assert metrics["val_qwk"] == history.val_qwk.max()  # best.pt = best val QWK
    best = history[history.val_qwk == history.val_qwk.max()].iloc[0]
    assert metrics["best_epoch"] == best.epoch and metrics["train_qwk"] == best.train_qwk
    assert sorted(p.name for p in (project / "models").iterdir()) == ["best.pt", "run.json"]
    assert list((project / "ckpt").iterdir()) == []  # finished: nothing to resume

    table = runs(project)
    assert len(table) == 1
    run = table.iloc[0]
    assert run.status == "FINISHED"
    run_id = json.loads((project / "models" / "run.json").read_text())["run_id"]
    assert run.run_id == run_id
    assert run["params.arch"] == "resnet18" and run["params.train.epochs"] == "3"
    assert run["tags.arch"] == "resnet18" and run["tags.pretrained"] == "False"
    assert run["tags.mlflow.runName"].startswith("resnet18-scratch-")
    # setup values are tags: the params are what was tried
    for key in ("train.master_port", "train.node_rank", "data.num_workers", "train.device",
                "preprocess.workers"):  # fmt: skip
        assert f"params.{key}" not in table and run[f"tags.{key}"] == str(cfg.flat()[key])
    assert run["tags.device"] == "cpu" and run["tags.world_size"] == "1"
    assert run["tags.mlflow.note.content"].startswith(
        "resnet18 from scratch, 32 px, 3 epochs, adamw lr 0.003 cosine, batch 8; selects on val_qwk"
    )
    client = mlflow.MlflowClient()
    logged = client.get_run(run_id).data.metrics
    # the headline first (the UI lists metrics in logging order), then a section per split;
    # best/test_* is NaN until the evaluate stage measures best.pt on test
    assert list(logged)[:3] == ["best/test_qwk", "best/test_accuracy", "best/val_qwk"]
    assert math.isnan(logged["best/test_qwk"]) and math.isnan(logged["best/test_accuracy"])
    for split in ("train", "val", "test"):
        for name in ("loss", "acc", "qwk"):
            values = client.get_metric_history(run_id, f"{split}/{name}")
            assert [(m.step, m.value) for m in values] == list(
                zip(history.epoch, history[f"{split}_{name}"], strict=True)
            )
    assert logged["train/lr"] == history.lr.iloc[-1] and "train/images_per_s" in logged
    # best/ holds the best epoch so far at every step: its last value is the selection
    running = client.get_metric_history(run_id, "best/val_qwk")
    assert [m.value for m in running if m.step > 0] == list(history.val_qwk.cummax())
    assert logged["best/epoch"] == metrics["best_epoch"]
    assert logged["best/val_qwk"] == metrics["val_qwk"]
    assert {a.path for a in client.list_artifacts(run_id)} == {"history.csv"}  # no best.pt copy
    (logged_model,) = client.search_logged_models([run.experiment_id])
    assert logged_model.name == "resnet18-scratch" and logged_model.source_run_id == run_id
    # the model grades photographs: best.pt inside, a signature that says so
    model = mlflow.pyfunc.load_model(f"models:/{logged_model.model_id}")
    assert model.metadata.get_input_schema().input_names() == ["image", "id", "eye_pair"]
    assert model.metadata.metadata["retino_model"] == 1
    best = checkpoint.load(project / "models" / "best.pt")
    logged = load_logged_model(existing_store(project), run_id)
    assert all(torch.equal(v, best.model[k]) for k, v in logged.model.items())
    assert (logged.config, logged.normalisation) == (best.config, best.normalisation)
    assert str(project / "mlruns") in run.artifact_uri

    # the Dataset column: the split tables, by context, with the DVC data version as source
    inputs = client.get_run(run_id).inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert {c: d.name for c, d in contexts.items()} == {
        "training": "train", "validation": "val", "test": "test"
    }  # fmt: skip
    assert json.loads(contexts["training"].source)["tags"]["table"] == "prepared/train.csv"


@pytest.mark.slow  # two trainings
def test_same_seed_same_metrics(project):
    cfg = tiny_config()
    assert run_train(project, cfg, "a") == run_train(project, cfg, "b")
    a = checkpoint.load(project / "a" / "models" / "best.pt").model
    b = checkpoint.load(project / "b" / "models" / "best.pt").model
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # three trainings
def test_the_cache_feed_trains_as_the_loader_does_resume_included(project, monkeypatch):
    # What a CUDA training reads through (data.cache_device): the split held in device memory
    # or streamed from the file, here with CPU tensors. Same batches, same order, same draws:
    # the same metrics, bit for bit, also across a crash and resume that switch between the two.
    cfg = tiny_config(train__epochs=2, train__augment__rotation=10.0,
                      train__augment__scale_min=0.9, train__sampler="balanced")  # fmt: skip
    expected = run_train(project, cfg, "loader")

    placed = []

    def feeds(resident: bool) -> None:
        def residency(cache_device, device, sizes):
            placed.append(resident)
            return dict.fromkeys(sizes, resident)

        monkeypatch.setattr("retino.training.train.residency", residency)

    feeds(resident=True)
    assert run_train(project, cfg, "resident") == expected

    def power_cut(row, epochs):
        raise RuntimeError("power cut")

    feeds(resident=False)
    with pytest.MonkeyPatch.context() as mp, pytest.raises(RuntimeError, match="power cut"):
        mp.setattr("retino.training.engine._epoch_line", power_cut)
        run_train(project, cfg, "resumed")  # epoch 1 streamed, and on disk
    feeds(resident=True)
    run_train(project, cfg, "resumed")  # epoch 2 from the card
    assert placed == [True, False, True]
    reports = [project / name / "reports" / "metrics.json" for name in ("loader", "resumed")]
    assert reports[0].read_bytes() == reports[1].read_bytes()


def test_config_change_discards_stale_checkpoints(project, capsys):
    ckpt = project / "ckpt"
    ckpt.mkdir()
    (ckpt / "run.json").write_text(json.dumps({"run_id": "gone", "tag": "other"}))
    (ckpt / "resume.pt").write_bytes(b"stale")
    run_train(project, tiny_config(train__epochs=1))
    assert "starting fresh" in capsys.readouterr().out
    assert len(runs(project)) == 1


def write_params(path: Path, cfg) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict()))


def start_stage(project: Path, out: str, extra_path: str = "") -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "stages" / "train.py"), "--params", "params.yaml",
           "--models", f"{out}/models", "--reports", f"{out}/reports",
           "--checkpoints", f"{out}/ckpt"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [extra_path, str(ROOT)]))}
    pipe = subprocess.PIPE
    return subprocess.Popen(cmd, cwd=project, env=env, stdout=pipe, stderr=pipe, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted_run(project):
    # as the demo: persistent loader workers, every augmentation, warm-up
    demo_like = tiny_config(
        train__epochs=3, data__num_workers=2, train__warmup_epochs=1,
        train__augment__rotation=15.0, train__augment__scale_min=0.85,
        train__augment__color_jitter=0.1,
    )  # fmt: skip
    write_params(project / "params.yaml", demo_like)
    full = start_stage(project, "full")
    out, err = full.communicate(timeout=600)
    assert full.returncode == 0, err

    killed = start_stage(project, "crash")
    wait_for(project / "crash" / "ckpt" / "resume.pt", killed)  # epoch 1 is safe on disk
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert checkpoint.load(project / "crash" / "ckpt" / "resume.pt").epoch in (1, 2)

    resumed = start_stage(project, "crash")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming after epoch" in out
    full_metrics = (project / "full" / "reports" / "metrics.json").read_bytes()
    assert (project / "crash" / "reports" / "metrics.json").read_bytes() == full_metrics

    table = runs(project)
    assert len(table) == 2  # the resumed training continued its own run
    assert set(table.status) == {"FINISHED"}
    run_id = json.loads((project / "crash" / "models" / "run.json").read_text())["run_id"]
    for key, steps in (("val/qwk", [1, 2, 3]), ("train/qwk", [1, 2, 3]),
                       ("best/val_qwk", [0, 1, 2, 3])):  # fmt: skip
        history = mlflow.MlflowClient().get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == steps  # each epoch logged once (0: NaN)


@pytest.mark.slow
def test_sigterm_marks_run_killed_and_keeps_checkpoint(project):
    write_params(project / "params.yaml", tiny_config(train__epochs=50))
    proc = start_stage(project, "term")
    wait_for(project / "term" / "ckpt" / "resume.pt", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err and "resume" in err
    state = checkpoint.load(project / "term" / "ckpt" / "resume.pt")
    assert 1 <= state.epoch < 50 and len(state.history) == state.epoch
    assert state.optimizer["state"] and state.rng is not None  # enough to resume
    assert list(runs(project).status) == ["KILLED"]


def test_a_non_finite_loss_fails_the_run_and_publishes_nothing(project):
    reports = project / "reports"
    reports.mkdir()
    previous = {"history.csv": "epoch,val_qwk\n1,0.5\n", "metrics.json": '{"val_qwk": 0.5}\n'}
    for name, text in previous.items():  # the last good run's results, kept by DVC (persist)
        (reports / name).write_text(text)
    with pytest.raises(RetinoError) as err:
        run_train(project, tiny_config(train__optimizer="sgd", train__lr=1e6))
    message = str(err.value)
    assert re.fullmatch(
        r"epoch 1, step \d+: training loss is (nan|inf); the learning rate is likely too high "
        r"\(train\.lr, 1e\+06 at this step\), or the input normalisation bad .*",
        message,
    ), message
    assert not (project / "models" / "best.pt").exists()
    assert {p.name: p.read_text() for p in reports.iterdir()} == previous
    assert list(runs(project).status) == ["FAILED"]


def test_the_first_non_finite_step_is_named_when_the_sums_are_read_later():
    # the sums stay on the device and are read about once a second, not every step: the step
    # that broke is recorded there, and named when they are read
    sums = EpochSums(torch.device("cpu"))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    y = torch.tensor([0, 1, 2, 2])
    for step, loss in enumerate([1.0, 2.0, float("inf"), float("nan"), 3.0], start=1):
        sums.add(step, torch.tensor(loss), torch.tensor([0, 1, 1, 2]), y)
    with pytest.raises(RetinoError, match=r"^epoch 4, step 3: training loss is inf; .* 0\.5 at"):
        sums.read(4, optimizer)

    fine = EpochSums(torch.device("cpu"))
    fine.add(1, torch.tensor(0.5), torch.tensor([0, 1, 1, 2]), y)
    fine.add(2, torch.tensor(0.25), torch.tensor([0, 0, 0, 0]), y)
    total, correct, seen, counts = fine.read(1, optimizer)
    assert (total, correct, seen) == (0.5 * 4 + 0.25 * 4, 3 + 1, 8)
    assert counts[0 * 5 + 0] == 2 and counts[1 * 5 + 1] == 1 and counts[2 * 5 + 1] == 1


@pytest.mark.slow  # the stage in its own process
def test_bad_normalisation_is_one_line_from_the_stage(project):
    index_path = project / "preprocessed" / "index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "std": [0.0, 0.0, 0.0]}))  # a hand-edited file
    write_params(project / "params.yaml", tiny_config())
    proc = start_stage(project, "out")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    # (numpy warns about the division by zero on the way)
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: epoch 1, step 1: training loss is nan;")
    assert "input normalisation bad" in last
    assert not (project / "out" / "models").exists() and not (project / "out" / "reports").exists()
    assert list(runs(project).status) == ["FAILED"]


def test_a_gpu_this_machine_lacks_fails_before_training(tmp_path):
    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, on any machine
    with pytest.raises(RetinoError, match=rf"^device '{missing}': this machine has .*; use auto"):
        run_train(tmp_path, tiny_config(train__device=missing))
    assert list(tmp_path.iterdir()) == []  # no run, no checkpoint folder

"""Experiments in parallel on one MLflow store.

A fresh SQLite store must survive processes creating it at the same moment (MLflow's schema
migration breaks when two run it at once), and a DVC grid queued and run two at a time must land
as FINISHED runs, named by their DVC experiments, in the store at the workspace root: not in the
throwaway copies under .dvc/tmp/exps/, which DVC deletes.
"""

import json
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
from torchvision.models import resnet50

from tests.dvc_project import make_project, project_env, run
from tests.training.test_models import random_imagenet_weights

pytestmark = pytest.mark.slow  # concurrent processes against one store, a DVC queue

WRITER = """
import sys, time
from pathlib import Path
from retino.tracking.runs import open_run

root, name = Path(sys.argv[1]), sys.argv[2]
(root / f"{name}.ready").touch()
deadline = time.monotonic() + 120
while not (root / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.01)  # all start together: the race is in the store's first seconds
(root / f"{name}.txt").write_text(name)
with open_run(root, name=name) as run:
    run.log_params({"writer": name})
    for step in range(30):
        run.log_metrics({"m": float(step)}, step=step)
    run.log_artifact(root / f"{name}.txt", "notes")
"""


def store_runs(root: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    return mlflow.search_runs(experiment_names=["retino"])


def wait_for(condition, timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def test_fresh_store_survives_simultaneous_writers(tmp_path):
    names = [f"writer{i}" for i in range(4)]
    env = project_env(DVC_ROOT=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name], cwd=tmp_path,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in names
    ]  # fmt: skip
    try:
        ready = lambda: all((tmp_path / f"{n}.ready").exists() for n in names)  # noqa: E731
        wait_for(ready, 120, "the writers to import mlflow")
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out

    runs = store_runs(tmp_path)
    assert sorted(runs["tags.mlflow.runName"]) == names
    assert set(runs.status) == {"FINISHED"}
    client = mlflow.MlflowClient()
    for run_id, name in zip(runs.run_id, runs["tags.mlflow.runName"], strict=True):
        assert [m.step for m in client.get_metric_history(run_id, "m")] == list(range(30))
        artifact = tmp_path / "mlruns" / run_id / "artifacts" / "notes" / f"{name}.txt"
        assert artifact.read_text() == name


def queue_status(project: Path, env: dict[str, str]) -> str:
    return run(["dvc", "queue", "status"], project, env, timeout=60)


def stop_queue_workers(project: Path) -> None:
    """DVC's celery workers are daemons; make sure none outlives the test."""
    for pid_file in (project / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        pid = int(pid_file.read_text().split()[0])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone
        if b"dvc" in cmdline:
            os.kill(pid, signal.SIGKILL)


def test_queued_grid_runs_into_the_root_store(tmp_path, tiny_source):
    project = make_project(tmp_path / "project", tiny_source)
    torch_home = tmp_path / "torch"
    weights = torch_home / "hub" / "checkpoints"
    random_imagenet_weights(weights / "resnet18-f37072fd.pth")
    random_imagenet_weights(weights / "resnet50-0676ba61.pth", resnet50)
    env = project_env(project, TORCH_HOME=str(torch_home))
    # the lab report's grid
    grid = ["-S", "arch=resnet18,resnet50", "-S", "pretrained=true,false"]
    queued = run(["dvc", "exp", "run", "--queue", *grid], project, env)
    names = re.findall(r"Queued experiment '([^']+)'", queued)
    assert len(names) == 4, queued

    start = time.monotonic()
    try:
        # not a pipe: the workers inherit it and `dvc queue start` would block until they end
        with open(tmp_path / "queue-start.log", "w") as log:
            cmd = ["dvc", "queue", "start", "-j", "2"]
            subprocess.run(cmd, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=log,
                           stderr=subprocess.STDOUT, timeout=120, check=True)  # fmt: skip
        status = ""

        def finished() -> bool:
            nonlocal status
            status = queue_status(project, env)
            return not re.search(r"\b(Queued|Running)\b", status)

        wait_for(finished, 1200, "the queue to finish", every=5)
    finally:
        stop_queue_workers(project)
    print(f"4 experiments, -j 2: {time.monotonic() - start:.0f} s")
    failed = re.findall(r"^\w+\s+(\S+)\s.*\bFailed$", status, re.MULTILINE)
    assert not failed, status + run(["dvc", "queue", "logs", failed[0]], project, env)[-3000:]
    assert status.count("Success") == 4, status

    runs = store_runs(project)
    assert sorted(runs["tags.dvc_exp_name"]) == sorted(names)
    for _, logged in runs.iterrows():  # what ran, then which DVC experiment
        kind = "pretrained" if logged["params.pretrained"] == "True" else "scratch"
        variant = f"{logged['params.arch']}-{kind}"
        assert logged["tags.mlflow.runName"] == f"{variant}-{logged['tags.dvc_exp_name']}"
    assert set(runs.status) == {"FINISHED"}
    ran = set(zip(runs["params.arch"], runs["params.pretrained"], strict=True))
    assert ran == {(a, p) for a in ("resnet18", "resnet50") for p in ("True", "False")}
    # what the UI's sort does: best.pt's test QWK ranks the four
    by_qwk = ["metrics.`best/test_qwk` DESC"]
    ranked = mlflow.search_runs(experiment_names=["retino"], order_by=by_qwk)
    qwk = "metrics.best/test_qwk"
    assert list(ranked[qwk]) == sorted(runs[qwk], reverse=True) and ranked[qwk].notna().all()

    # each MLflow run holds the test metrics of its own DVC experiment
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env, timeout=120))
    exps = {
        r["name"]: r["data"] for b in shown for e in b.get("experiments") or [] for r in e["revs"]
    }
    for _, logged in runs.iterrows():
        metrics = exps[logged["tags.dvc_exp_name"]]["metrics"]
        test = metrics["reports/eval/metrics.json"]["data"]
        selected = metrics["reports/train/metrics.json"]["data"]
        assert logged["metrics.best/test_accuracy"] == test["accuracy"]
        assert logged["metrics.best/test_qwk"] == test["qwk"]
        assert logged["metrics.best/val_qwk"] == selected["val_qwk"]

    # artifacts in <root>/mlruns, where they survive; nothing in the deleted temp copies
    for run_id, uri in zip(runs.run_id, runs.artifact_uri, strict=True):
        assert uri == (project / "mlruns" / run_id / "artifacts").as_uri()
        artifacts = project / "mlruns" / run_id / "artifacts"
        for path in ("history.csv", "eval/metrics.json", "figures/curves.png"):
            assert (artifacts / path).is_file(), path
        images = [p.name for p in (artifacts / "images").iterdir()]
        assert any(name.startswith("confusion+step+0+") for name in images), images
    leaked = [p for p in (project / ".dvc" / "tmp").rglob("*") if p.name in ("mlflow.db", "mlruns")]
    assert leaked == []

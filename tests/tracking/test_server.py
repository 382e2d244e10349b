"""Tracking-server mode: with MLFLOW_TRACKING_URI=http://..., a whole `dvc repro` logs to a server.

The server runs as a team would run it (SQLite here, PostgreSQL there; --serve-artifacts proxies
artifact uploads to its own store), on a free loopback port, in a process group of its own that
the test stops by its PID. The workspace itself must stay free of any local store.
"""

import json
import socket
from pathlib import Path

import mlflow
import pytest

from retino.tracking.server import mlflow_server
from tests.dvc_project import make_project, project_env, run

pytestmark = pytest.mark.slow  # a real MLflow server and a dvc repro


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    home = tmp_path / "server"
    home.mkdir()
    with (
        open(home / "server.log", "w") as log,
        mlflow_server(f"sqlite:///{home}/mlflow.db", home / "artifacts", free_port(), log) as srv,
    ):
        yield srv.url, home


def test_dvc_repro_logs_to_a_tracking_server(server, tmp_path, tiny_source):
    url, home = server
    project = make_project(tmp_path / "project", tiny_source)
    run(["dvc", "repro"], project, project_env(project, MLFLOW_TRACKING_URI=url), timeout=900)

    client = mlflow.MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("retino")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
    assert logged.data.params["arch"] == "resnet18" and logged.data.params["train.epochs"] == "1"
    assert logged.data.tags["mlflow.runName"].startswith("resnet18-scratch-")
    test_metrics = json.loads((project / "reports" / "eval" / "metrics.json").read_text())
    assert logged.data.metrics["best/test_accuracy"] == test_metrics["accuracy"]
    run_id = logged.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "val/qwk")] == [1]

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"eval", "figures", "history.csv", "images"}
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    assert figures == {"figures/curves.png", "figures/confusion.png", "figures/reliability.png"}
    fetched = client.download_artifacts(run_id, "eval/metrics.json", str(tmp_path))
    assert json.loads(Path(fetched).read_text()) == test_metrics
    (model,) = client.search_logged_models([experiment.experiment_id])
    assert model.source_run_id == run_id and model.name == "resnet18-scratch"

    # everything went through the server: into its folders, none in the workspace
    stored = [p.name for p in (home / "artifacts").rglob("*")]
    assert {"model_code.py", "metrics.json", "curves.png", "MLmodel"} <= set(stored)
    assert stored.count("best.pt") == 1  # logged once, as the model's artifact
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()

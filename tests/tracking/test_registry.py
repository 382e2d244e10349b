"""Which run a `--model` name means, in a real MLflow store."""

import pytest
from mlflow.tracking import MlflowClient

from retino.errors import RetinoError
from retino.tracking.registry import resolve_run
from retino.tracking.store import open_store

NAME = "resnet18-scratch-bluff-quiz"


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return open_store(tmp_path)


def add_run(store, experiment_id: str, start: int, status: str = "FINISHED", **tags) -> str:
    client = store[0].client
    run = client.create_run(experiment_id, start_time=start, run_name=NAME, tags=tags)
    client.set_terminated(run.info.run_id, status, end_time=start + 1)
    return run.info.run_id


def test_a_name_means_its_newest_finished_run_also_past_a_page_of_matches(store, monkeypatch):
    # MLflow answers a search a page at a time (1000 runs unless asked otherwise); pages of 2
    # stand for that here. Runs are created out of start order, and the newest has crashed.
    search = MlflowClient.search_runs

    def paged(self, *args, max_results=1000, **kwargs):
        return search(self, *args, max_results=min(max_results, 2), **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", paged)
    st, experiment_id = store
    starts = [5_000, 1_000, 3_000, 2_000, 4_000]
    ids = {
        start: add_run(store, experiment_id, start, dvc_exp_name="bluff-quiz") for start in starts
    }
    add_run(store, experiment_id, 9_000, status="FAILED", dvc_exp_name="bluff-quiz")
    assert resolve_run(st, NAME) == ids[5_000]
    assert resolve_run(st, "bluff-quiz") == ids[5_000]  # the DVC experiment's name
    assert resolve_run(st, f"runs:/{ids[2_000]}/model") == ids[2_000]
    with pytest.raises(RetinoError, match="no checkpoint file, MLflow URI or finished run"):
        resolve_run(st, "resnet50-scratch-bluff-quiz")

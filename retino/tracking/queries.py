"""Reading runs back: what `retino compare` and `retino predict` need, without MLflow types."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from retino.errors import RetinoError
from retino.tracking.store import DEFAULT_EXPERIMENT, Store, retry

PAGE = 1000  # runs per search request (MLflow's default page size)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    dvc_exp_name: str = ""
    data_md5: str = ""  # the data version evaluated on (data.dvc's md5)

    def named(self, names: set[str]) -> set[str]:
        """Which of `names` refer to this run: its id, run name or DVC experiment name."""
        return names & {self.run_id, self.name, self.dvc_exp_name}


def list_runs(
    store: Store, experiment: str = DEFAULT_EXPERIMENT, run_ids: list[str] | None = None
) -> list[RunRecord]:
    """Runs of `experiment` (or just `run_ids`: ids, run names or DVC experiment names), oldest
    first."""
    experiment_id = store.experiment_id(experiment)
    if experiment_id is None:
        raise RetinoError(
            f"no MLflow experiment {experiment!r} in {store.uri}; run `dvc repro` first"
        )
    records = [_record(r) for r in _all_runs(store, experiment_id)]
    if run_ids:
        wanted = set(run_ids)
        records = [r for r in records if r.named(wanted)]
        missing = wanted - set().union(*(r.named(wanted) for r in records))
        if missing:
            raise RetinoError(f"run {sorted(missing)[0]!r} not found in experiment {experiment!r}")
    return records


def runs_of_commit(
    store: Store, commit: str, experiment: str = DEFAULT_EXPERIMENT
) -> list[RunRecord]:
    """Runs of `experiment` that trained `commit` (their git_commit tag), oldest first; none
    while the experiment does not exist yet."""
    experiment_id = store.experiment_id(experiment)
    if experiment_id is None:
        return []
    return [_record(r) for r in _all_runs(store, experiment_id, f"tags.git_commit = '{commit}'")]


def _record(run) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name, run.info.status, run.data.params,
                     run.data.metrics, run.data.tags.get("dvc_exp_name", ""),
                     run.data.tags.get("data_md5", ""))  # fmt: skip


def _all_runs(store: Store, experiment_id: str, where: str = "") -> list:
    """Every run of the experiment (that matches the filter `where`), oldest first. MLflow
    answers a page at a time (1000 runs by default) and says nothing of the rest: an unpaged
    search would drop every run after the first page, the newest ones."""
    runs, token = [], None
    while True:
        page = retry(
            lambda token=token: store.client.search_runs(
                [experiment_id], where, order_by=["start_time ASC"], max_results=PAGE,
                page_token=token,
            )
        )  # fmt: skip
        runs += page
        token = page.token
        if not token:
            return runs


def metric_history(store: Store, run_id: str, key: str) -> dict[int, float]:
    """step -> value of a per-epoch metric (the last value logged at each step)."""
    return {m.step: m.value for m in retry(lambda: store.client.get_metric_history(run_id, key))}


def download_artifact(store: Store, run_id: str, path: str, dst: Path) -> Path:
    """A run's artifact `path`, copied under `dst`."""
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=store.uri
        )
    except (MlflowException, OSError):
        raise RetinoError(f"MLflow run {run_id}: no artifact {path}; was it trained?") from None
    return Path(local)


def read_artifact(store: Store, run_id: str, path: str) -> str | None:
    """Text of a run's artifact, or None when the run has no such artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return download_artifact(store, run_id, path, Path(tmp)).read_text()
        except RetinoError:
            return None

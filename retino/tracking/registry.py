"""Model sources and the registry: which run a `--model` argument means, the model it logged;
`retino register`."""

import tempfile
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from retino.errors import RetinoError
from retino.tracking.logged_model import CHECKPOINT, FORMAT, FORMAT_KEY
from retino.tracking.store import DEFAULT_EXPERIMENT, Store, retry
from retino.training import checkpoint
from retino.training.checkpoint import Checkpoint


def resolve_run(store: Store, source: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """The run id behind `runs:/<id>/<model>`, `models:/<name>/<version>`, `models:/<name>@<alias>`
    or a run name / DVC experiment name (the latest finished run carrying it)."""
    client = store.client
    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").split("/")[0]
        try:
            return retry(lambda: client.get_run(run_id)).info.run_id
        except MlflowException:
            raise RetinoError(f"{source}: no run {run_id!r} in {store.uri}") from None
    if source.startswith("models:/"):
        version = _model_version(store, source)
        if not version.run_id:
            raise RetinoError(f"{source}: not registered from a run; use `retino register`")
        return version.run_id
    experiment_id = store.experiment_id(experiment)
    runs = []
    if experiment_id is not None and "'" not in source:  # a quote cannot be in a name we logged
        for key in ("attributes.run_name", "tags.dvc_exp_name"):
            # the newest match, asked for as such: not the newest of a first page of matches
            query = f"{key} = '{source}' AND attributes.status = 'FINISHED'"
            runs += retry(
                lambda query=query: client.search_runs(
                    [experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
                )
            )
    if not runs:
        raise RetinoError(
            f"{source}: no checkpoint file, MLflow URI or finished run / DVC experiment of that "
            f"name in {store.uri}; give models/best.pt, runs:/<id>/<model> or "
            "models:/<name>@<alias>"
        )
    return max(runs, key=lambda r: r.info.start_time).info.run_id


def _model_version(store: Store, uri: str) -> Any:
    name, alias = uri.removeprefix("models:/").partition("@")[::2]
    try:
        if alias:
            return retry(lambda: store.client.get_model_version_by_alias(name, alias))
        name, _, version = name.rpartition("/")
        if name and version.isdigit():
            return retry(lambda: store.client.get_model_version(name, version))
    except MlflowException as err:
        raise RetinoError(f"{uri}: {err.message.splitlines()[0]}") from None
    raise RetinoError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")


def logged_model_id(store: Store, run_id: str) -> str:
    """The id of the model `Run.log_model` logged in `run_id` (one per run, named after its
    variant, e.g. resnet18-scratch)."""
    client = store.client
    try:
        run = retry(lambda: client.get_run(run_id))
    except MlflowException:
        raise RetinoError(f"MLflow run {run_id!r} not found in {store.uri}") from None
    query = f"source_run_id = '{run_id}'"
    logged = retry(lambda: client.search_logged_models([run.info.experiment_id], query))
    if not logged:
        raise RetinoError(f"MLflow run {run_id}: no logged model; only a finished train has one")
    return max(logged, key=lambda m: m.creation_timestamp).model_id


def load_logged_model(store: Store, run_id: str) -> Checkpoint:
    """best.pt, as the model logged in `run_id` carries it (retino.tracking.logged_model)."""
    import mlflow

    model_id = logged_model_id(store, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_id}", dst_path=tmp, tracking_uri=store.uri
            )
            model = mlflow.models.Model.load(local)
        except (MlflowException, OSError):
            raise RetinoError(f"MLflow run {run_id}: its model {model_id} cannot be read") from None
        found = (model.metadata or {}).get(FORMAT_KEY)
        if found is None:
            raise RetinoError(
                f"MLflow run {run_id}: its model was logged by an older retino (a network "
                "taking normalised tensors, not photographs); grade with that run's "
                "models/best.pt, or train it again"
            )
        if found != FORMAT:
            raise RetinoError(
                f"MLflow run {run_id}: its model has format {found}, this retino reads format "
                f"{FORMAT}; use the retino version that logged it, or train it again"
            )
        artifact = model.flavors["python_function"]["artifacts"][CHECKPOINT]["path"]
        return checkpoint.load(Path(local) / artifact, name=f"MLflow model {model_id}")


def register_model(store: Store, run_id: str, name: str, alias: str | None = None) -> str:
    """Register the model `Run.log_model` logged in `run_id` as a new version of `name`; point
    `alias` at it. Returns the version."""
    client = store.client
    model_id = logged_model_id(store, run_id)
    try:
        try:
            retry(lambda: client.create_registered_model(name))
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        # the logged model's own location: MLflow would look a models:/<model id> source up in
        # its global store, which need not be this one
        location = retry(lambda: client.get_logged_model(model_id)).artifact_location
        version = retry(
            lambda: client.create_model_version(name, location, run_id=run_id, model_id=model_id)
        )
        if alias:
            retry(lambda: client.set_registered_model_alias(name, alias, version.version))
    except MlflowException as err:
        raise RetinoError(f"registering {name!r}: {err.message.splitlines()[0]}") from None
    return str(version.version)
